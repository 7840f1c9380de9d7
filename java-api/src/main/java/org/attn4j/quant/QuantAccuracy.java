package org.attn4j.quant;

import java.lang.foreign.Arena;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.Attn4jException;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.KvFormat;
import org.attn4j.PagedKvCache;
import org.attn4j.Status;
import org.attn4j.Tensor;
import org.attn4j.TieredKvCache;

/**
 * Accuracy of a KV format on one layer of data: the decode output of the query {@code q} over the
 * stored (quantized) K/V, compared with an fp64 attention over the original, unquantized K/V. The
 * figure {@code attn4j verify} and the accuracy tests report: {@code ||out - ref|| / ||ref||} over
 * all query heads.
 */
public final class QuantAccuracy {
    private QuantAccuracy() {}

    /**
     * Relative error of decoding {@code q [qoHeads][d]} over {@code k, v [tokens][kvHeads][d]}
     * stored as {@code format}; {@code sinks} and {@code window} > 0 keep those tokens in BF16
     * (a {@link TieredKvCache}), both 0 store every token in {@code format}. {@code calibration}
     * is needed for a calibrated rotation, null otherwise.
     */
    public static double relativeError(Attn4j lib, float[] q, float[] k, float[] v, int qoHeads, int kvHeads, int headDim,
            int tokens, KvFormat format, Calibration calibration, int sinks, int window, int pageSize) {
        checkSizes(q, k, v, qoHeads, kvHeads, headDim, tokens);
        int pages = (tokens + pageSize - 1) / pageSize + 2;
        float[] out;
        try (Arena arena = Arena.ofConfined()) {
            Tensor kt = Tensor.ofFloats(arena, DType.F32, k, tokens, kvHeads, headDim);
            Tensor vt = Tensor.ofFloats(arena, DType.F32, v, tokens, kvHeads, headDim);
            Tensor qt = Tensor.ofFloats(arena, DType.F32, q, 1, qoHeads, headDim);
            Tensor ot = Tensor.allocate(arena, DType.F32, 1, qoHeads, headDim);
            int[] seqs = {0};
            int[] counts = {tokens};
            if (sinks > 0 || window > 0) {
                try (TieredKvCache cache = TieredKvCache.builder(lib).kvHeads(kvHeads).headDim(headDim)
                        .pageSize(pageSize).numPages((sinks + window) / pageSize + 4, pages).format(format)
                        .calibration(calibration).sinks(sinks).window(window).build();
                        DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(qoHeads).qDType(DType.F32)
                                .outDType(DType.F32).build()) {
                    int seq = cache.newSequence();
                    seqs[0] = seq;
                    // Token by token in page-sized steps, as an engine would: the window moves along.
                    for (int t = 0; t < tokens; t += pageSize) {
                        int n = Math.min(pageSize, tokens - t);
                        counts[0] = n;
                        PagedKvCache.Reservation r = cache.reserve(seqs, counts);
                        cache.write(0, r, rows(arena, k, t, n, kvHeads, headDim), rows(arena, v, t, n, kvHeads, headDim));
                    }
                    cache.compact(seqs);
                    plan.run(qt, cache, 0, cache.tables(seqs), ot, null);
                }
            } else {
                try (PagedKvCache cache = PagedKvCache.builder(lib).kvHeads(kvHeads).headDim(headDim).pageSize(pageSize)
                        .numPages(pages).format(format).calibration(calibration).build();
                        DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(qoHeads).qDType(DType.F32)
                                .outDType(DType.F32).build()) {
                    seqs[0] = cache.newSequence();
                    cache.append(seqs, counts, kt, vt);
                    plan.run(qt, cache, 0, cache.pageTable(seqs), ot);
                }
            }
            out = ot.toFloatArray();
        }
        return relativeError(toDouble(out), referenceDecode(q, k, v, qoHeads, kvHeads, headDim, tokens));
    }

    /**
     * As {@link #relativeError(Attn4j, float[], float[], float[], int, int, int, int, KvFormat,
     * Calibration, int, int, int)} for a tiered cache with salient tokens: at most {@code fraction}
     * of the middle tokens stay BF16, chosen by {@code probes} ({@code [P][qoHeads][headDim]}), the
     * queries of the last P tokens. As for a prompt: every token is written, the probes are given
     * to {@link TieredKvCache#observe} with their causal log-sum-exp over the unquantized K (what a
     * prefill computes), the window's aged pages move, and {@code q} is decoded.
     */
    public static double relativeErrorSalient(Attn4j lib, float[] q, float[] k, float[] v, int qoHeads, int kvHeads,
            int headDim, int tokens, KvFormat format, Calibration calibration, int sinks, int window, int pageSize,
            float[] probes, double fraction) {
        checkSizes(q, k, v, qoHeads, kvHeads, headDim, tokens);
        int row = qoHeads * headDim;
        int p = probes == null ? 0 : probes.length / row;
        if (p == 0 || probes.length != p * row || p > tokens) {
            throw new Attn4jException(Status.INVALID_ARGUMENT, "probes: need [P][qoHeads][headDim] floats, 1 <= P <= "
                    + "tokens, got " + (probes == null ? "null" : probes.length + " floats"));
        }
        double scale = 1.0 / Math.sqrt(headDim);
        float[] lse = new float[p * qoHeads];
        for (int i = 0; i < p; i++) {
            double[] l = referenceLse(probes, i * row, k, qoHeads, kvHeads, headDim, tokens - p + i + 1, scale);
            for (int h = 0; h < qoHeads; h++) {
                lse[i * qoHeads + h] = (float) l[h];
            }
        }
        int pages = (tokens + pageSize - 1) / pageSize + 2;
        float[] out;
        try (Arena arena = Arena.ofConfined();
                TieredKvCache cache = TieredKvCache.builder(lib).kvHeads(kvHeads).headDim(headDim).pageSize(pageSize)
                        .numPages(pages, pages).format(format).calibration(calibration).sinks(sinks).window(window)
                        .salient(fraction, (int) Math.ceil(fraction * tokens / pageSize) + 2).probes(p).build();
                DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(qoHeads).qDType(DType.F32)
                        .outDType(DType.F32).build()) {
            int seq = cache.newSequence();
            int[] seqs = {seq};
            PagedKvCache.Reservation r = cache.reserve(seqs, new int[] {tokens});
            cache.write(0, r, Tensor.ofFloats(arena, DType.F32, k, tokens, kvHeads, headDim),
                    Tensor.ofFloats(arena, DType.F32, v, tokens, kvHeads, headDim));
            cache.observe(seq, 0, Tensor.ofFloats(arena, DType.F32, probes, p, qoHeads, headDim),
                    Tensor.ofFloats(arena, DType.F32, lse, p, qoHeads), (float) scale);
            cache.compact(seqs);
            Tensor ot = Tensor.allocate(arena, DType.F32, 1, qoHeads, headDim);
            plan.run(Tensor.ofFloats(arena, DType.F32, q, 1, qoHeads, headDim), cache, 0, cache.tables(seqs), ot, null);
            out = ot.toFloatArray();
        }
        return relativeError(toDouble(out), referenceDecode(q, k, v, qoHeads, kvHeads, headDim, tokens));
    }

    private static void checkSizes(float[] q, float[] k, float[] v, int qoHeads, int kvHeads, int headDim, int tokens) {
        if (q.length != qoHeads * headDim || k.length != (long) tokens * kvHeads * headDim || v.length != k.length) {
            throw new Attn4jException(Status.INVALID_ARGUMENT, "q, k, v: sizes " + q.length + ", " + k.length + ", " + v.length
                    + " do not match qoHeads " + qoHeads + ", tokens " + tokens + ", kvHeads " + kvHeads + ", headDim "
                    + headDim);
        }
    }

    private static double[] toDouble(float[] x) {
        double[] d = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            d[i] = x[i];
        }
        return d;
    }

    /** fp64 natural-log log-sum-exp per query head of {@code q[off ..]} over the first {@code n} keys. */
    static double[] referenceLse(float[] q, int off, float[] k, int qoHeads, int kvHeads, int d, int n, double scale) {
        double[] lse = new double[qoHeads];
        double[] s = new double[n];
        for (int h = 0; h < qoHeads; h++) {
            double mx = logits(q, off + h * d, k, h / (qoHeads / kvHeads), kvHeads, d, n, scale, s);
            double sum = 0;
            for (int t = 0; t < n; t++) {
                sum += Math.exp(s[t] - mx);
            }
            lse[h] = mx + Math.log(sum);
        }
        return lse;
    }

    /** s[t] = scale * q[qo ..] . k[t, kh] for the first n tokens, in fp64; returns their maximum. */
    private static double logits(float[] q, int qo, float[] k, int kh, int kvHeads, int d, int n, double scale,
            double[] s) {
        double mx = Double.NEGATIVE_INFINITY;
        for (int t = 0; t < n; t++) {
            double dot = 0;
            int ko = (t * kvHeads + kh) * d;
            for (int i = 0; i < d; i++) {
                dot += (double) q[qo + i] * k[ko + i];
            }
            s[t] = dot * scale;
            mx = Math.max(mx, s[t]);
        }
        return mx;
    }

    /** {@code ||out - ref|| / ||ref||}: the figure this class and {@code attn4j verify} report. */
    public static double relativeError(double[] out, double[] ref) {
        if (out == null || ref == null || out.length != ref.length) {
            throw new Attn4jException(Status.INVALID_ARGUMENT, "out, ref: must be non-null and of the same length");
        }
        double num = 0;
        double den = 0;
        for (int i = 0; i < ref.length; i++) {
            double e = out[i] - ref[i];
            num += e * e;
            den += ref[i] * ref[i];
        }
        return Math.sqrt(num / den);
    }

    private static Tensor rows(Arena arena, float[] x, int from, int n, int kvHeads, int headDim) {
        int stride = kvHeads * headDim;
        float[] part = java.util.Arrays.copyOfRange(x, from * stride, (from + n) * stride);
        return Tensor.ofFloats(arena, DType.F32, part, n, kvHeads, headDim);
    }

    /** fp64 softmax(q k^T / sqrt(d)) v per query head; returns [qoHeads][d]. */
    static double[] referenceDecode(float[] q, float[] k, float[] v, int qoHeads, int kvHeads, int d, int tokens) {
        double[] out = new double[qoHeads * d];
        double scale = 1.0 / Math.sqrt(d);
        int group = qoHeads / kvHeads;
        double[] s = new double[tokens];
        for (int h = 0; h < qoHeads; h++) {
            int kh = h / group;
            double mx = logits(q, h * d, k, kh, kvHeads, d, tokens, scale, s);
            double sum = 0;
            for (int t = 0; t < tokens; t++) {
                s[t] = Math.exp(s[t] - mx);
                sum += s[t];
            }
            for (int t = 0; t < tokens; t++) {
                double p = s[t] / sum;
                int off = (t * kvHeads + kh) * d;
                for (int i = 0; i < d; i++) {
                    out[h * d + i] += p * v[off + i];
                }
            }
        }
        return out;
    }
}
