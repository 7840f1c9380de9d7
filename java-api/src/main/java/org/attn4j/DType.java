package org.attn4j;

/** Element types of tensors and KV storage formats (attn4j.h ATTN4J_DTYPE_*). */
public enum DType {
    F32(1, 4), F16(2, 2), BF16(3, 2), I32(4, 4);

    private final int code;
    private final int byteSize;

    DType(int code, int byteSize) {
        this.code = code;
        this.byteSize = byteSize;
    }

    /** The native code of this type. */
    public int code() {
        return code;
    }

    /** Bytes per element. */
    public int byteSize() {
        return byteSize;
    }

    /** Whether attention inputs, outputs and KV caches may use this type. */
    public boolean isFloat() {
        return this != I32;
    }
}
