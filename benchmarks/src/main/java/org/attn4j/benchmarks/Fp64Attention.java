package org.attn4j.benchmarks;

import java.util.stream.IntStream;

/**
 * fp64 decode attention over one layer, {@code softmax(q k^T / sqrt(d)) v} per query head with
 * grouped KV heads (query head {@code h} reads KV head {@code h / (qoHeads / kvHeads)}); the
 * arithmetic of {@code QuantAccuracy}'s reference. Layouts: queries {@code [qoHeads][d]} (or
 * {@code [n][qoHeads][d]}), keys and values {@code [tokens][kvHeads][d]}, row-major. Logits are
 * computed once and reused, so one layer can be decoded over many stores of its K/V. Query heads
 * run in parallel; every sum runs in a fixed order, so results do not depend on the thread count.
 */
final class Fp64Attention {
    private final int qoHeads, kvHeads, headDim, tokens, group;
    private final double scale;

    Fp64Attention(int qoHeads, int kvHeads, int headDim, int tokens) {
        this.qoHeads = qoHeads;
        this.kvHeads = kvHeads;
        this.headDim = headDim;
        this.tokens = tokens;
        this.group = qoHeads / kvHeads;
        this.scale = 1.0 / Math.sqrt(headDim);
    }

    /** Scaled logits {@code q.k / sqrt(d)} of the decode query {@code q} over all keys: {@code [qoHeads][tokens]}. */
    double[][] logits(float[] q, float[] k) {
        double[][] s = new double[qoHeads][tokens];
        IntStream.range(0, qoHeads).parallel().forEach(h -> logits(q, h * headDim, k, h / group, tokens, s[h]));
        return s;
    }

    /**
     * Softmax probabilities of one query head ({@code queries[qOff .. qOff + d)}) over the keys of
     * {@code kvHead} at positions {@code [0, visible)} (a causal query at position {@code visible}),
     * written to {@code p[0 .. visible)}.
     */
    void probabilities(float[] queries, int qOff, float[] k, int kvHead, int visible, double[] p) {
        logits(queries, qOff, k, kvHead, visible, p);
        softmax(p, visible);
    }

    /** Decode output {@code [qoHeads][d]} from logits; {@code probs}, if not null, gets the probabilities. */
    double[] decode(double[][] logits, float[] v, double[][] probs) {
        return decode(logits, v, null, null, null, probs);
    }

    /**
     * Decode output {@code [qoHeads][d]} over two stores of the same tokens: the pair (token
     * {@code t}, KV head {@code j}) is read from store A ({@code logitsA}, {@code vA}) where
     * {@code fromA[t * kvHeads + j]}, from store B otherwise.
     */
    double[] decode(double[][] logitsA, float[] vA, double[][] logitsB, float[] vB, boolean[] fromA) {
        return decode(logitsA, vA, logitsB, vB, fromA, null);
    }

    private double[] decode(double[][] logitsA, float[] vA, double[][] logitsB, float[] vB, boolean[] fromA,
            double[][] probs) {
        double[] out = new double[qoHeads * headDim];
        IntStream.range(0, qoHeads).parallel().forEach(h -> {
            int kvHead = h / group;
            double[] p = new double[tokens];
            for (int t = 0; t < tokens; t++) {
                p[t] = inA(fromA, t, kvHead) ? logitsA[h][t] : logitsB[h][t];
            }
            softmax(p, tokens);
            if (probs != null) {
                probs[h] = p.clone();
            }
            int o = h * headDim;
            for (int t = 0; t < tokens; t++) {
                float[] v = inA(fromA, t, kvHead) ? vA : vB;
                int off = (t * kvHeads + kvHead) * headDim;
                for (int c = 0; c < headDim; c++) {
                    out[o + c] += p[t] * v[off + c];
                }
            }
        });
        return out;
    }

    private boolean inA(boolean[] fromA, int t, int kvHead) {
        return fromA == null || fromA[t * kvHeads + kvHead];
    }

    private void logits(float[] q, int qOff, float[] k, int kvHead, int n, double[] s) {
        for (int t = 0; t < n; t++) {
            int off = (t * kvHeads + kvHead) * headDim;
            double dot = 0;
            for (int c = 0; c < headDim; c++) {
                dot += (double) q[qOff + c] * k[off + c];
            }
            s[t] = dot * scale;
        }
    }

    /** In place: {@code s[0 .. n) <- softmax(s[0 .. n))}. */
    private static void softmax(double[] s, int n) {
        double max = Double.NEGATIVE_INFINITY;
        for (int t = 0; t < n; t++) {
            max = Math.max(max, s[t]);
        }
        double sum = 0;
        for (int t = 0; t < n; t++) {
            s[t] = Math.exp(s[t] - max);
            sum += s[t];
        }
        for (int t = 0; t < n; t++) {
            s[t] /= sum;
        }
    }
}
