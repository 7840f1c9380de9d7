package org.attn4j.quant;

import org.attn4j.Attn4jException;
import org.attn4j.Status;

/**
 * Java reference of the native INT8 / INT4 / INT2 group quantizer (attn4j.h, attn4j_kv_quant) and
 * of the orthonormal Walsh-Hadamard transform. Per group of {@code groupSize} values:
 * {@code lo = clip * min, hi = clip * max, scale = (hi - lo) / (2^bits - 1), zero = lo,
 * code = clamp(rint((x - zero) / scale), 0, 2^bits - 1)}, decoded as {@code code * scale + zero}.
 * A group with {@code scale == 0} gets code 0 and {@code zero = min} (exact for constant groups).
 * All arithmetic is float, as in the native code; rounding is round-half-to-even ({@link Math#rint},
 * like {@code nearbyintf} / {@code cvtps2dq}).
 */
public final class QuantReference {
    private QuantReference() {}

    /** Codes (one per value, 0 .. 2^bits - 1) and per group {scale, zero}. */
    public record Quantized(int bits, int groupSize, int[] codes, float[] scale, float[] zero) {}

    /** Quantizes {@code x} (length a multiple of {@code groupSize}). */
    public static Quantized quantize(float[] x, int bits, int groupSize, float clip) {
        check(x.length, bits, groupSize, clip);
        int groups = x.length / groupSize;
        int[] codes = new int[x.length];
        float[] scale = new float[groups];
        float[] zero = new float[groups];
        quantizeInto(x, 0, x.length, bits, groupSize, clip, codes, scale, zero);
        return new Quantized(bits, groupSize, codes, scale, zero);
    }

    /** Decodes into a new array. */
    public static float[] dequantize(Quantized q) {
        float[] out = new float[q.codes().length];
        for (int i = 0; i < out.length; i++) {
            int g = i / q.groupSize();
            out[i] = q.codes()[i] * q.scale()[g] + q.zero()[g];
        }
        return out;
    }

    /**
     * Quantizes then decodes {@code n} values of {@code x} from {@code off} into {@code out} (same
     * offset), without allocating: the inner loop of the calibrator's clip search.
     */
    public static void roundTrip(float[] x, int off, int n, int bits, int groupSize, float clip, float[] out) {
        check(n, bits, groupSize, clip);
        int maxCode = (1 << bits) - 1;
        for (int g0 = off; g0 < off + n; g0 += groupSize) {
            float min = Float.POSITIVE_INFINITY, max = Float.NEGATIVE_INFINITY;
            for (int i = g0; i < g0 + groupSize; i++) {
                min = Math.min(min, x[i]);
                max = Math.max(max, x[i]);
            }
            float lo = clip * min, hi = clip * max;
            float scale = (hi - lo) / maxCode;
            if (scale == 0f) {
                for (int i = g0; i < g0 + groupSize; i++) {
                    out[i] = min;
                }
                continue;
            }
            for (int i = g0; i < g0 + groupSize; i++) {
                out[i] = code(x[i], lo, scale, maxCode) * scale + lo;
            }
        }
    }

    private static void quantizeInto(float[] x, int off, int n, int bits, int groupSize, float clip,
                                     int[] codes, float[] scales, float[] zeros) {
        int maxCode = (1 << bits) - 1;
        for (int g = 0; g < n / groupSize; g++) {
            int g0 = off + g * groupSize;
            float min = Float.POSITIVE_INFINITY, max = Float.NEGATIVE_INFINITY;
            for (int i = g0; i < g0 + groupSize; i++) {
                min = Math.min(min, x[i]);
                max = Math.max(max, x[i]);
            }
            float lo = clip * min, hi = clip * max;
            float scale = (hi - lo) / maxCode;
            if (scale == 0f) {
                scales[g] = 0f;
                zeros[g] = min;
                continue; // codes stay 0
            }
            scales[g] = scale;
            zeros[g] = lo;
            for (int i = g0; i < g0 + groupSize; i++) {
                codes[i - off] = code(x[i], lo, scale, maxCode);
            }
        }
    }

    private static int code(float x, float zero, float scale, int maxCode) {
        float c = (float) Math.rint((x - zero) / scale);
        return c <= 0f ? 0 : c >= maxCode ? maxCode : (int) c; // NaN -> 0 like a clamp after max(0, .)
    }

    private static void check(int n, int bits, int groupSize, float clip) {
        if (bits != 2 && bits != 4 && bits != 8) {
            throw invalid("bits must be 2, 4 or 8, got " + bits);
        }
        if (groupSize <= 0 || n % groupSize != 0) {
            throw invalid("group size " + groupSize + " must divide the vector length " + n);
        }
        if (!(clip > 0f && clip <= 1f)) {
            throw invalid("clip ratio must be in (0, 1], got " + clip);
        }
    }

    /** x <- x H / sqrt(n) in place: orthonormal Walsh-Hadamard, Sylvester order; n a power of 2. */
    public static void hadamard(double[] x) {
        int n = x.length;
        requirePowerOfTwo(n);
        for (int h = 1; h < n; h <<= 1) {
            for (int i = 0; i < n; i += h << 1) {
                for (int j = i; j < i + h; j++) {
                    double a = x[j], b = x[j + h];
                    x[j] = a + b;
                    x[j + h] = a - b;
                }
            }
        }
        double s = 1.0 / Math.sqrt(n);
        for (int i = 0; i < n; i++) {
            x[i] *= s;
        }
    }

    /** Float version of {@link #hadamard(double[])} on {@code x[off .. off+n)}. */
    public static void hadamard(float[] x, int off, int n) {
        requirePowerOfTwo(n);
        for (int h = 1; h < n; h <<= 1) {
            for (int i = off; i < off + n; i += h << 1) {
                for (int j = i; j < i + h; j++) {
                    float a = x[j], b = x[j + h];
                    x[j] = a + b;
                    x[j + h] = a - b;
                }
            }
        }
        float s = (float) (1.0 / Math.sqrt(n));
        for (int i = off; i < off + n; i++) {
            x[i] *= s;
        }
    }

    static void requirePowerOfTwo(int n) {
        if (n <= 0 || (n & (n - 1)) != 0) {
            throw invalid("Hadamard rotation needs a power-of-2 length, got " + n);
        }
    }

    static Attn4jException invalid(String message) {
        return new Attn4jException(Status.INVALID_ARGUMENT, message);
    }
}
