package org.attn4j.quant;

import org.attn4j.Attn4jException;
import org.attn4j.Status;

/**
 * Java reference of the native INT8 / INT4 / INT2 group quantizer (native/src/cpu/quantize.cpp,
 * attn4j_kv_quant) and of the orthonormal Walsh-Hadamard transform. Per group of {@code groupSize}
 * values: {@code lo = clip * min, hi = clip * max, scale = (hi - lo) / (2^bits - 1), zero = lo}, both
 * first rounded to the meta dtype (F16 or F32), then
 * {@code code = floor(clamp((x - zero) / scale, 0, 2^bits - 1) + 0.5)} (half away from zero), decoded
 * as {@code code * scale + zero}. A constant group ({@code max == min}, or a scale that rounds to 0)
 * gets scale 0, code 0 and {@code zero = min} without the clip. All arithmetic is float, as natively.
 */
public final class QuantReference {
    private QuantReference() {}

    /** Codes (one per value, 0 .. 2^bits - 1) and per group {scale, zero}. */
    public record Quantized(int bits, int groupSize, int[] codes, float[] scale, float[] zero) {}

    /** Quantizes {@code x} (length a multiple of {@code groupSize}) with F32 scale / zero. */
    public static Quantized quantize(float[] x, int bits, int groupSize, float clip) {
        return quantize(x, bits, groupSize, clip, false);
    }

    /** Quantizes {@code x}; {@code f16Meta}: scale and zero stored as F16 (rounded before encoding). */
    public static Quantized quantize(float[] x, int bits, int groupSize, float clip, boolean f16Meta) {
        check(x.length, bits, groupSize, clip);
        int groups = x.length / groupSize;
        int[] codes = new int[x.length];
        float[] scale = new float[groups];
        float[] zero = new float[groups];
        int maxCode = (1 << bits) - 1;
        for (int g = 0; g < groups; g++) {
            int g0 = g * groupSize;
            long sz = meta(x, g0, groupSize, clip, maxCode, f16Meta);
            scale[g] = Float.intBitsToFloat((int) (sz >>> 32));
            zero[g] = Float.intBitsToFloat((int) sz);
            for (int i = g0; scale[g] != 0f && i < g0 + groupSize; i++) {
                codes[i] = code(x[i], zero[g], scale[g], maxCode);
            }
        }
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
     * offset) with F32 meta, without allocating: the inner loop of the calibrator's clip search.
     */
    public static void roundTrip(float[] x, int off, int n, int bits, int groupSize, float clip, float[] out) {
        roundTrip(x, off, n, bits, groupSize, clip, false, out);
    }

    /** {@link #roundTrip(float[], int, int, int, int, float, float[])} with F16 or F32 meta. */
    public static void roundTrip(float[] x, int off, int n, int bits, int groupSize, float clip, boolean f16Meta,
                                 float[] out) {
        check(n, bits, groupSize, clip);
        int maxCode = (1 << bits) - 1;
        for (int g0 = off; g0 < off + n; g0 += groupSize) {
            long sz = meta(x, g0, groupSize, clip, maxCode, f16Meta);
            float scale = Float.intBitsToFloat((int) (sz >>> 32)), zero = Float.intBitsToFloat((int) sz);
            for (int i = g0; i < g0 + groupSize; i++) {
                out[i] = scale == 0f ? zero : code(x[i], zero, scale, maxCode) * scale + zero;
            }
        }
    }

    /** {scale, zero} of one group, as stored (bits of the two floats packed high / low). */
    private static long meta(float[] x, int g0, int groupSize, float clip, int maxCode, boolean f16) {
        float min = x[g0], max = x[g0];
        for (int i = g0 + 1; i < g0 + groupSize; i++) {
            min = Math.min(min, x[i]);
            max = Math.max(max, x[i]);
        }
        float lo = clip * min, hi = clip * max;
        float scale = roundMeta((hi - lo) / maxCode, f16);
        float zero = roundMeta(lo, f16);
        if (!(max > min) || !(scale > 0f)) {
            scale = 0f;
            zero = roundMeta(min, f16);
        }
        return ((long) Float.floatToRawIntBits(scale) << 32) | (Float.floatToRawIntBits(zero) & 0xffffffffL);
    }

    private static float roundMeta(float v, boolean f16) {
        return f16 ? Float.float16ToFloat(Float.floatToFloat16(v)) : v;
    }

    /** Native: v = clamp((x - zero) / scale, 0, max), code = floor(v + 0.5). */
    private static int code(float x, float zero, float scale, int maxCode) {
        float v = (x - zero) / scale;
        v = Math.min(Math.max(v, 0f), (float) maxCode);
        return Math.min((int) Math.floor(v + 0.5f), maxCode);
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
