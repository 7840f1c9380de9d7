package org.attn4j;

/**
 * Element types of tensors and KV storage formats (attn4j.h ATTN4J_DTYPE_*). INT8, INT4 and INT2
 * are quantized KV cache formats only (see {@link KvFormat}); tensors cannot hold them.
 */
public enum DType {
    F32(1, 32), F16(2, 16), BF16(3, 16), I32(4, 32), INT8(16, 8), INT4(17, 4), INT2(18, 2);

    private final int code;
    private final int bits;

    DType(int code, int bits) {
        this.code = code;
        this.bits = bits;
    }

    /** The native code of this type. */
    public int code() {
        return code;
    }

    /** Bytes per element of a tensor type; the quantized formats have none (see {@link #bits()}). */
    public int byteSize() {
        if (isQuantized()) {
            throw new UnsupportedOperationException(this + " is a quantized KV format: "
                    + "use KvFormat.tokenBytes for its size");
        }
        return bits / 8;
    }

    /** Bits per element (per code for the quantized formats, without scales and zeros). */
    public int bits() {
        return bits;
    }

    /** Whether attention inputs, outputs and float KV caches may use this type. */
    public boolean isFloat() {
        return this == F32 || this == F16 || this == BF16;
    }

    /** INT8, INT4 or INT2: a quantized KV cache format. */
    public boolean isQuantized() {
        return code >= 16;
    }
}
