package org.attn4j.testing;

import java.util.Random;

import org.attn4j.DType;

/**
 * Seeded generators of realistic attention inputs: Gaussian queries with a per-head mean
 * direction, keys and values with a few outlier channels (x10 .. x20 per KV head), and an
 * attention-sink token whose key lines up with the queries' mean direction so its logit is
 * large (about 10 above the rest). Never produces zeros. Values are rounded to the dtype the
 * kernel will read with {@link #round}.
 */
public final class KvGen {
    private final long seed;
    private final Random rnd;
    private final int kvHeads;
    private final int dim;
    private final double[][] kGain;
    private final double[][] vGain;
    private final double[][] kSign; // outlier K channels carry a fixed sign (a bias), as in real models
    private final double[][] mu; // per KV head: the queries' mean direction

    public KvGen(long seed, int kvHeads, int dim) {
        this.seed = seed;
        this.rnd = new Random(seed);
        this.kvHeads = kvHeads;
        this.dim = dim;
        kGain = new double[kvHeads][dim];
        vGain = new double[kvHeads][dim];
        mu = new double[kvHeads][dim];
        kSign = new double[kvHeads][dim];
        for (int h = 0; h < kvHeads; h++) {
            java.util.Arrays.fill(kGain[h], 1.0);
            java.util.Arrays.fill(vGain[h], 1.0);
            int outliers = 2 + rnd.nextInt(2);
            for (int o = 0; o < outliers; o++) {
                int ch = rnd.nextInt(dim);
                kGain[h][ch] = 10 + 10 * rnd.nextDouble();
                kSign[h][ch] = rnd.nextBoolean() ? 1 : -1;
                vGain[h][rnd.nextInt(dim)] = 10 + 10 * rnd.nextDouble();
            }
            double norm = 0;
            for (int d = 0; d < dim; d++) {
                mu[h][d] = rnd.nextGaussian();
                norm += mu[h][d] * mu[h][d];
            }
            norm = Math.sqrt(norm);
            for (int d = 0; d < dim; d++) {
                mu[h][d] *= 0.5 * Math.sqrt(dim) / norm; // |mu| = sqrt(dim) / 2
            }
        }
    }

    public long seed() {
        return seed;
    }

    public Random random() {
        return rnd;
    }

    /** Queries {@code [n][heads][dim]}; head h belongs to KV head {@code h / (heads / kvHeads)}. */
    public float[] queries(int n, int heads) {
        int group = heads / kvHeads;
        float[] q = new float[n * heads * dim];
        for (int i = 0; i < n; i++) {
            for (int h = 0; h < heads; h++) {
                for (int d = 0; d < dim; d++) {
                    q[(i * heads + h) * dim + d] = nonZero(mu[h / group][d] + rnd.nextGaussian());
                }
            }
        }
        return q;
    }

    /**
     * Keys {@code [n][kvHeads][dim]} for positions {@code first .. first + n} of a sequence;
     * position 0 is the attention sink.
     */
    public float[] keys(int first, int n) {
        float[] k = new float[n * kvHeads * dim];
        for (int i = 0; i < n; i++) {
            boolean sink = first + i == 0;
            for (int h = 0; h < kvHeads; h++) {
                // sink: k = c * mu, so scale * q.k ~= scale * c * |mu|^2 = c * sqrt(dim) / 4 = 10
                double c = 40.0 / Math.sqrt(dim);
                for (int d = 0; d < dim; d++) {
                    double z = rnd.nextGaussian();
                    double x = kSign[h][d] != 0 ? kGain[h][d] * (kSign[h][d] + 0.25 * z) : z;
                    if (sink) {
                        x += c * mu[h][d];
                    }
                    k[(i * kvHeads + h) * dim + d] = nonZero(x);
                }
            }
        }
        return k;
    }

    /** Values {@code [n][kvHeads][dim]}. */
    public float[] values(int n) {
        float[] v = new float[n * kvHeads * dim];
        for (int i = 0; i < n; i++) {
            for (int h = 0; h < kvHeads; h++) {
                for (int d = 0; d < dim; d++) {
                    v[(i * kvHeads + h) * dim + d] = nonZero(rnd.nextGaussian() * vGain[h][d]);
                }
            }
        }
        return v;
    }

    /** Gaussian values of any count (e.g. partial states), never zero. */
    public float[] gaussian(int n, double sigma) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = nonZero(rnd.nextGaussian() * sigma);
        }
        return x;
    }

    private static float nonZero(double x) {
        float f = (float) x;
        return f == 0f ? 1e-3f : f;
    }

    // ---- dtype rounding, as the kernels see values ----

    /** {@code x} rounded to {@code t} (round to nearest even) and back to float. */
    public static float round(DType t, float x) {
        return switch (t) {
            case F32 -> x;
            case F16 -> Float.float16ToFloat(Float.floatToFloat16(x));
            case BF16 -> bf16(x);
            case I32 -> (float) (int) x;
            case INT8, INT4, INT2 -> throw new IllegalArgumentException(t + " is not an element type");
        };
    }

    /** A rounded copy of {@code xs}, through each dtype in turn. */
    public static float[] round(float[] xs, DType... types) {
        float[] out = xs.clone();
        for (DType t : types) {
            if (t == DType.F32) {
                continue;
            }
            for (int i = 0; i < out.length; i++) {
                out[i] = round(t, out[i]);
            }
        }
        return out;
    }

    private static float bf16(float f) {
        int bits = Float.floatToRawIntBits(f);
        if (Float.isNaN(f)) {
            return f;
        }
        int rounding = 0x7FFF + ((bits >>> 16) & 1);
        return Float.intBitsToFloat(((bits + rounding) >>> 16) << 16);
    }
}
