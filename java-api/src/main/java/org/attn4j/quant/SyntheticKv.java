package org.attn4j.quant;

import java.util.Arrays;
import java.util.SplittableRandom;

import org.attn4j.Attn4jException;
import org.attn4j.Status;

/**
 * Seeded synthetic Q/K/V of one attention layer with the statistics that make KV quantization hard,
 * for accuracy tests and {@code attn4j calibrate --synthetic}. Per KV head:
 * <ul>
 *   <li><b>outlier channels</b>: {@code outlierChannels} channels on the lowest-frequency RoPE pairs
 *       with {@code outlierScale} x the std and a mean of about {@code outlierMean} (random sign);
 *       other channels have std in [0.5, 1.5] and mean 0;</li>
 *   <li><b>RoPE</b> (half-split / NeoX pairing {@code (i, i + d/2)}, base {@code ropeBase}; 0 disables)
 *       applied to keys at their position and to queries at theirs; the decode query sits at
 *       position {@code tokens};</li>
 *   <li><b>queries</b>: N(0, 1) plus a mean of {@code queryMean} on the outlier channels, shared by the
 *       query heads of a KV group;</li>
 *   <li><b>attention sinks</b>: the first {@code sinkTokens} keys get a component along the decode query's
 *       mean direction worth about {@code sinkScore} in scaled logits ({@code q.k / sqrt(d)});</li>
 *   <li><b>relevant tokens</b>: {@code relevantTokens} random later positions get a component along the
 *       group's decode query worth about {@code relevantScore};</li>
 *   <li><b>values</b>: Student-t with {@code valueDof} degrees of freedom (heavy tails; 0 = Gaussian),
 *       per-channel std in [0.5, 1.5].</li>
 * </ul>
 * Layouts: {@code q [qoHeads][d]}, {@code k, v [tokens][kvHeads][d]}, row-major. Same seed, same data.
 */
public final class SyntheticKv {
    private static final long SAMPLE_SALT = 0x5A3C1E7L; // the stream of sampleQueries

    private final Builder cfg;
    private final float[] q, k, v;
    private final int[][] outliers; // [kvHead] channels
    private final int[][] relevant; // [kvHead] positions
    private final float[][] keyMean, queryMean; // [kvHead][d] pre-RoPE
    private final float[][] keyStd; // [kvHead][d]

    private SyntheticKv(Builder b) {
        this.cfg = b.copy();
        int d = b.headDim, kvH = b.kvHeads, n = b.tokens, group = b.qoHeads / b.kvHeads;
        q = new float[b.qoHeads * d];
        k = new float[n * kvH * d];
        v = new float[n * kvH * d];
        outliers = new int[kvH][];
        relevant = new int[kvH][];
        keyMean = new float[kvH][d];
        queryMean = new float[kvH][d];
        keyStd = new float[kvH][d];
        for (int j = 0; j < kvH; j++) {
            SplittableRandom rnd = new SplittableRandom(b.seed * 0x9E3779B97F4A7C15L + j);
            outliers[j] = pickOutliers(d, b.outlierChannels);
            float[] vStd = new float[d];
            for (int c = 0; c < d; c++) {
                keyStd[j][c] = (float) rnd.nextDouble(0.5, 1.5);
                vStd[c] = (float) rnd.nextDouble(0.5, 1.5);
            }
            for (int c : outliers[j]) {
                double sign = rnd.nextBoolean() ? 1 : -1;
                keyStd[j][c] = (float) (b.outlierScale * rnd.nextDouble(0.7, 1.3));
                keyMean[j][c] = (float) (sign * b.outlierMean * rnd.nextDouble(0.7, 1.3));
                queryMean[j][c] = (float) ((rnd.nextBoolean() ? 1 : -1) * b.queryMean);
            }
            // decode queries of the group, at position `tokens`
            float[] qbar = new float[d];
            for (int g = 0; g < group; g++) {
                int off = (j * group + g) * d;
                query(rnd, j, q, off);
                rope(q, off, d, n, b.ropeBase);
                for (int c = 0; c < d; c++) {
                    qbar[c] += q[off + c] / group;
                }
            }
            float[] meanDir = queryMean[j].clone();
            rope(meanDir, 0, d, n, b.ropeBase);
            normalize(meanDir);
            normalize(qbar);
            double qMeanNorm = norm(queryMean[j]);
            double qbarNorm = 0; // |mean decode query|, measured before normalizing
            for (int g = 0; g < group; g++) {
                qbarNorm += dot(q, (j * group + g) * d, qbar, d) / group;
            }
            double sinkAmp = qMeanNorm > 0 ? b.sinkScore * Math.sqrt(d) / qMeanNorm : 0;
            double relAmp = qbarNorm > 0 ? b.relevantScore * Math.sqrt(d) / qbarNorm : 0;
            relevant[j] = pickRelevant(rnd, n, b.sinkTokens, b.relevantTokens);
            float[] row = new float[d];
            for (int t = 0; t < n; t++) {
                for (int c = 0; c < d; c++) {
                    row[c] = (float) (keyMean[j][c] + keyStd[j][c] * rnd.nextGaussian());
                }
                rope(row, 0, d, t, b.ropeBase);
                if (t < b.sinkTokens) {
                    axpy(sinkAmp, meanDir, row);
                }
                if (Arrays.binarySearch(relevant[j], t) >= 0) {
                    axpy(relAmp, qbar, row);
                }
                System.arraycopy(row, 0, k, (t * kvH + j) * d, d);
                for (int c = 0; c < d; c++) {
                    v[(t * kvH + j) * d + c] = (float) (vStd[c] * studentT(rnd, b.valueDof));
                }
            }
        }
    }

    /** The decode query, {@code [qoHeads][headDim]}, at position {@code tokens}. */
    public float[] q() {
        return q.clone();
    }

    /** Keys, {@code [tokens][kvHeads][headDim]} (RoPE applied). */
    public float[] k() {
        return k.clone();
    }

    /** Values, {@code [tokens][kvHeads][headDim]}. */
    public float[] v() {
        return v.clone();
    }

    public int qoHeads() {
        return cfg.qoHeads;
    }

    public int kvHeads() {
        return cfg.kvHeads;
    }

    public int headDim() {
        return cfg.headDim;
    }

    public int tokens() {
        return cfg.tokens;
    }

    public int sinkTokens() {
        return cfg.sinkTokens;
    }

    /** The outlier channels of a KV head, ascending. */
    public int[] outlierChannels(int kvHead) {
        return outliers[kvHead].clone();
    }

    /** Positions of the relevant tokens of a KV head, ascending. */
    public int[] relevantTokens(int kvHead) {
        return relevant[kvHead].clone();
    }

    /**
     * {@code n} further queries with the decode query's statistics at positions spread evenly over
     * {@code (0, tokens]}: calibration samples, {@code [n][qoHeads][headDim]}.
     */
    public float[] sampleQueries(int n) {
        if (n <= 0) {
            throw new Attn4jException(Status.INVALID_ARGUMENT, "sampleQueries: n must be positive, got " + n);
        }
        long[] positions = new long[n];
        for (int i = 0; i < n; i++) {
            positions[i] = Math.max(1, Math.round((i + 1) * (double) cfg.tokens / n));
        }
        return queriesAt(positions, SAMPLE_SALT);
    }

    /**
     * Queries with the decode query's statistics at the given positions (RoPE applied at each),
     * {@code [positions.length][qoHeads][headDim]}: e.g. the probes of a salient-token estimator. They
     * are drawn in order from the stream seeded with {@code seed * 0x9E3779B97F4A7C15 + salt}: query
     * {@code i} is the same draw whatever the positions, rotated to {@code positions[i]}; the same salt
     * gives the same queries, another salt an independent draw. Salts {@code 0 .. kvHeads-1} and
     * {@code 0x5A3C1E7} are the generator's own streams (the layer's heads; {@link #sampleQueries},
     * which is {@code queriesAt} at its positions with salt {@code 0x5A3C1E7}): use another salt for
     * queries independent of them.
     */
    public float[] queriesAt(long[] positions, long salt) {
        if (positions == null || positions.length == 0) {
            throw new Attn4jException(Status.INVALID_ARGUMENT, "queriesAt: positions must be non-empty");
        }
        int d = cfg.headDim, group = cfg.qoHeads / cfg.kvHeads;
        if ((long) positions.length * cfg.qoHeads * d > Integer.MAX_VALUE - 8) {
            throw new Attn4jException(Status.INVALID_ARGUMENT, "queriesAt: " + positions.length
                    + " positions x qoHeads x headDim too large for a float[]");
        }
        for (int i = 0; i < positions.length; i++) {
            if (positions[i] < 0) {
                throw new Attn4jException(Status.INVALID_ARGUMENT,
                        "queriesAt: positions[" + i + "] must be >= 0, got " + positions[i]);
            }
        }
        float[] out = new float[positions.length * cfg.qoHeads * d];
        SplittableRandom rnd = new SplittableRandom(cfg.seed * 0x9E3779B97F4A7C15L + salt);
        for (int i = 0; i < positions.length; i++) {
            for (int h = 0; h < cfg.qoHeads; h++) {
                int off = (i * cfg.qoHeads + h) * d;
                query(rnd, h / group, out, off);
                rope(out, off, d, positions[i], cfg.ropeBase);
            }
        }
        return out;
    }

    private void query(SplittableRandom rnd, int kvHead, float[] out, int off) {
        for (int c = 0; c < cfg.headDim; c++) {
            out[off + c] = (float) (queryMean[kvHead][c] + rnd.nextGaussian());
        }
    }

    /** Outliers on the lowest-frequency RoPE pairs (i, i + d/2), i = d/2 - 1, d/2 - 2, ... */
    private static int[] pickOutliers(int d, int count) {
        int[] ch = new int[Math.min(count, d)];
        for (int x = 0; x < ch.length; x++) {
            int pair = d / 2 - 1 - x / 2;
            ch[x] = (x % 2 == 0) ? pair : pair + d / 2;
        }
        Arrays.sort(ch);
        return ch;
    }

    private static int[] pickRelevant(SplittableRandom rnd, int n, int sinks, int count) {
        int avail = n - sinks;
        int m = Math.max(0, Math.min(count, avail));
        if (m == 0) {
            return new int[0];
        }
        int[] pos = rnd.ints(sinks, n).distinct().limit(m).toArray();
        Arrays.sort(pos);
        return pos;
    }

    /** In place, half-split pairing, angle pos * base^(-2i/d) for pair i. */
    static void rope(float[] x, int off, int d, long pos, double base) {
        if (base <= 0) {
            return;
        }
        int half = d / 2;
        for (int i = 0; i < half; i++) {
            double angle = pos * Math.pow(base, -2.0 * i / d);
            double c = Math.cos(angle), s = Math.sin(angle);
            double a = x[off + i], b = x[off + i + half];
            x[off + i] = (float) (a * c - b * s);
            x[off + i + half] = (float) (a * s + b * c);
        }
    }

    private static double studentT(SplittableRandom rnd, int dof) {
        double z = rnd.nextGaussian();
        if (dof <= 0) {
            return z;
        }
        double chi2 = 0;
        for (int i = 0; i < dof; i++) {
            double g = rnd.nextGaussian();
            chi2 += g * g;
        }
        // unit variance for dof > 2 (var of t_nu is nu / (nu - 2))
        double scale = dof > 2 ? Math.sqrt((dof - 2.0) / dof) : 1;
        return scale * z / Math.sqrt(chi2 / dof);
    }

    private static void axpy(double a, float[] x, float[] y) {
        for (int i = 0; i < y.length; i++) {
            y[i] += (float) (a * x[i]);
        }
    }

    private static double dot(float[] a, int off, float[] b, int d) {
        double s = 0;
        for (int i = 0; i < d; i++) {
            s += (double) a[off + i] * b[i];
        }
        return s;
    }

    private static double norm(float[] x) {
        return Math.sqrt(dot(x, 0, x, x.length));
    }

    private static void normalize(float[] x) {
        double n = norm(x);
        if (n > 0) {
            for (int i = 0; i < x.length; i++) {
                x[i] /= (float) n;
            }
        }
    }

    public static Builder builder() {
        return new Builder();
    }

    /** Knobs; defaults in brackets. */
    public static final class Builder {
        private int qoHeads = 32, kvHeads = 8, headDim = 128, tokens = 4096;
        private long seed = 0;
        private int outlierChannels = 4;
        private double outlierScale = 4, outlierMean = 8, queryMean = 3;
        private double ropeBase = 10000;
        private int valueDof = 3;
        private int sinkTokens = 4, relevantTokens = 8;
        private double sinkScore = 10, relevantScore = 8;

        private Builder() {}

        /** Query heads [32]; a multiple of kvHeads. */
        public Builder qoHeads(int n) { qoHeads = n; return this; }

        /** KV heads [8]. */
        public Builder kvHeads(int n) { kvHeads = n; return this; }

        /** head_dim [128], even. */
        public Builder headDim(int n) { headDim = n; return this; }

        /** Cached tokens [4096]; the decode query sits at this position. */
        public Builder tokens(int n) { tokens = n; return this; }

        public Builder seed(long s) { seed = s; return this; }

        /** Outlier channels per KV head [4]. */
        public Builder outlierChannels(int n) { outlierChannels = n; return this; }

        /** Std multiplier of the outlier channels [4]. */
        public Builder outlierScale(double x) { outlierScale = x; return this; }

        /** Mean magnitude of the key outlier channels [8]. */
        public Builder outlierMean(double x) { outlierMean = x; return this; }

        /** Mean magnitude of the query on the outlier channels [3]. */
        public Builder queryMean(double x) { queryMean = x; return this; }

        /** RoPE base [10000]; 0 = no RoPE. */
        public Builder ropeBase(double x) { ropeBase = x; return this; }

        /** Student-t degrees of freedom of the values [3]; 0 = Gaussian. */
        public Builder valueDof(int n) { valueDof = n; return this; }

        /** Attention-sink tokens at the start [4]. */
        public Builder sinkTokens(int n) { sinkTokens = n; return this; }

        /** Extra scaled logit of a sink for the decode query [10]. */
        public Builder sinkScore(double x) { sinkScore = x; return this; }

        /** Relevant tokens per KV head [8]. */
        public Builder relevantTokens(int n) { relevantTokens = n; return this; }

        /** Extra scaled logit of a relevant token [8]. */
        public Builder relevantScore(double x) { relevantScore = x; return this; }

        public SyntheticKv build() {
            check(qoHeads > 0 && kvHeads > 0 && qoHeads % kvHeads == 0,
                    "qoHeads " + qoHeads + " must be a positive multiple of kvHeads " + kvHeads);
            check(headDim > 0 && headDim % 2 == 0, "headDim must be positive and even, got " + headDim);
            check(tokens > 0, "tokens must be positive, got " + tokens);
            check((long) tokens * kvHeads * headDim <= Integer.MAX_VALUE - 8,
                    "tokens x kvHeads x headDim too large for a float[]");
            check(outlierChannels >= 0 && outlierChannels <= headDim, "outlierChannels must be in 0.." + headDim);
            check(sinkTokens >= 0 && sinkTokens <= tokens, "sinkTokens must be in 0..tokens");
            check(relevantTokens >= 0, "relevantTokens must be >= 0");
            check(valueDof >= 0, "valueDof must be >= 0");
            check(Double.isFinite(outlierScale) && Double.isFinite(outlierMean) && Double.isFinite(queryMean)
                    && Double.isFinite(ropeBase) && Double.isFinite(sinkScore) && Double.isFinite(relevantScore),
                    "knobs must be finite");
            return new SyntheticKv(this);
        }

        private Builder copy() {
            Builder b = new Builder();
            b.qoHeads = qoHeads; b.kvHeads = kvHeads; b.headDim = headDim; b.tokens = tokens; b.seed = seed;
            b.outlierChannels = outlierChannels; b.outlierScale = outlierScale; b.outlierMean = outlierMean;
            b.queryMean = queryMean; b.ropeBase = ropeBase; b.valueDof = valueDof; b.sinkTokens = sinkTokens;
            b.relevantTokens = relevantTokens; b.sinkScore = sinkScore; b.relevantScore = relevantScore;
            return b;
        }

        private static void check(boolean ok, String message) {
            if (!ok) {
                throw new Attn4jException(Status.INVALID_ARGUMENT, "SyntheticKv: " + message);
            }
        }
    }
}
