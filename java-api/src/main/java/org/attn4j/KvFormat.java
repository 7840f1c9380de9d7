package org.attn4j;

import java.util.Objects;

/**
 * How a KV cache stores each head_dim vector: a float type (F32, F16, BF16) or a quantized format
 * (INT8, INT4, INT2) with groups of {@code groupSize} values along head_dim, an F32 or F16
 * {scale, zero} pair per group (asymmetric min/max with a clipping ratio) and an optional rotation.
 * Immutable; the {@code with...} methods return modified copies.
 *
 * <pre>{@code
 * KvFormat int2 = KvFormat.quantized(DType.INT2, 128).withRotation(Rotation.HADAMARD);
 * int2.effectiveBits(128); // 2.5: 2-bit codes plus an F32 scale and zero per 128 values
 * }</pre>
 */
public final class KvFormat {
    private final DType dtype;
    private final int groupSize;
    private final DType metaDtype;
    private final Rotation rotation;
    private final float keyClip;
    private final float valueClip;

    private KvFormat(DType dtype, int groupSize, DType metaDtype, Rotation rotation, float keyClip, float valueClip) {
        this.dtype = dtype;
        this.groupSize = groupSize;
        this.metaDtype = metaDtype;
        this.rotation = rotation;
        this.keyClip = keyClip;
        this.valueClip = valueClip;
    }

    /** Unquantized storage: F32, F16 or BF16. */
    public static KvFormat of(DType dtype) {
        if (dtype == null || !dtype.isFloat()) {
            throw Attn4jException.invalid("dtype: expected F32, F16 or BF16 for an unquantized cache, got " + dtype
                    + (dtype != null && dtype.isQuantized() ? " (use KvFormat.quantized)" : ""));
        }
        return new KvFormat(dtype, 0, null, Rotation.NONE, 1f, 1f);
    }

    /**
     * A quantized format: INT8, INT4 or INT2 codes in groups of {@code groupSize} (32, 64 or 128;
     * must divide the cache's head_dim), F32 scales and zeros, no rotation, no clipping.
     */
    public static KvFormat quantized(DType dtype, int groupSize) {
        if (dtype == null || !dtype.isQuantized()) {
            throw Attn4jException.invalid("dtype: expected INT8, INT4 or INT2, got " + dtype);
        }
        if (groupSize != 32 && groupSize != 64 && groupSize != 128) {
            throw Attn4jException.invalid("groupSize: expected 32, 64 or 128, got " + groupSize);
        }
        return new KvFormat(dtype, groupSize, DType.F32, Rotation.NONE, 1f, 1f);
    }

    /** Scale and zero stored as F32 (default) or F16. */
    public KvFormat withMetaDtype(DType meta) {
        requireQuantized("withMetaDtype");
        if (meta != DType.F32 && meta != DType.F16) {
            throw Attn4jException.invalid("meta: expected F32 or F16, got " + meta);
        }
        return new KvFormat(dtype, groupSize, meta, rotation, keyClip, valueClip);
    }

    /**
     * Rotation of K and V before quantization. {@link Rotation#CALIBRATED} needs a calibration
     * given to the cache builder, which then also supplies the clipping ratios.
     */
    public KvFormat withRotation(Rotation r) {
        requireQuantized("withRotation");
        return new KvFormat(dtype, groupSize, metaDtype, Objects.requireNonNull(r, "rotation"), keyClip, valueClip);
    }

    /**
     * Clipping ratios in (0, 1] for keys and values: the quantization range of a group is
     * [clip * min, clip * max]. OSCAR's published defaults are 0.96 and 0.92 for INT2.
     */
    public KvFormat withClip(float key, float value) {
        requireQuantized("withClip");
        checkClip("key", key);
        checkClip("value", value);
        return new KvFormat(dtype, groupSize, metaDtype, rotation, key, value);
    }

    public DType dtype() {
        return dtype;
    }

    public boolean isQuantized() {
        return dtype.isQuantized();
    }

    /** Values per {scale, zero} pair; 0 for float formats. */
    public int groupSize() {
        return groupSize;
    }

    /** F32 or F16 for quantized formats; null for float formats. */
    public DType metaDtype() {
        return metaDtype;
    }

    public Rotation rotation() {
        return rotation;
    }

    public float keyClip() {
        return keyClip;
    }

    public float valueClip() {
        return valueClip;
    }

    /** Bytes one token of one KV head takes in K (or in V), scales and zeros included. */
    public long tokenBytes(int headDim) {
        if (headDim <= 0) {
            throw Attn4jException.invalid("headDim: must be > 0, got " + headDim);
        }
        if (!isQuantized()) {
            return (long) headDim * dtype.byteSize();
        }
        if (headDim % groupSize != 0) {
            throw Attn4jException.invalid("groupSize: " + groupSize + " does not divide headDim " + headDim);
        }
        return (long) headDim * dtype.bits() / 8 + (long) (headDim / groupSize) * 2 * metaDtype.byteSize();
    }

    /** Stored bits per element, scales and zeros included (16 for BF16, 2.5 for INT2 G128 F32). */
    public double effectiveBits(int headDim) {
        return tokenBytes(headDim) * 8.0 / headDim;
    }

    @Override
    public String toString() {
        if (!isQuantized()) {
            return dtype.toString();
        }
        StringBuilder b = new StringBuilder().append(dtype).append(" G").append(groupSize);
        if (metaDtype != DType.F32) {
            b.append(" meta ").append(metaDtype);
        }
        if (rotation != Rotation.NONE) {
            b.append(' ').append(rotation.toString().toLowerCase(java.util.Locale.ROOT));
        }
        if (keyClip != 1f || valueClip != 1f) {
            b.append(" clip ").append(keyClip).append('/').append(valueClip);
        }
        return b.toString();
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof KvFormat f && f.dtype == dtype && f.groupSize == groupSize && f.metaDtype == metaDtype
                && f.rotation == rotation && f.keyClip == keyClip && f.valueClip == valueClip;
    }

    @Override
    public int hashCode() {
        return Objects.hash(dtype, groupSize, metaDtype, rotation, keyClip, valueClip);
    }

    private void requireQuantized(String what) {
        if (!isQuantized()) {
            throw Attn4jException.invalid(what + ": " + dtype + " is not a quantized format");
        }
    }

    private static void checkClip(String name, float c) {
        if (!(c > 0f && c <= 1f)) {
            throw Attn4jException.invalid(name + "Clip: expected a ratio in (0, 1], got " + c);
        }
    }
}
