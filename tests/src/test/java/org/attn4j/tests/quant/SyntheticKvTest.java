package org.attn4j.tests.quant;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;

import org.attn4j.Attn4jException;
import org.attn4j.quant.SyntheticKv;
import org.junit.jupiter.api.Test;

/** {@link SyntheticKv} has the statistics it promises. */
class SyntheticKvTest {
    static final int QO = 8, KV = 2, D = 128, N = 2048;

    static SyntheticKv.Builder base() {
        return SyntheticKv.builder().qoHeads(QO).kvHeads(KV).headDim(D).tokens(N).seed(42);
    }

    /** Softmax attention of query head h over the tokens of its KV head. */
    static double[] attention(SyntheticKv s, float[] q, float[] k, int h) {
        int kvH = h / (s.qoHeads() / s.kvHeads());
        double[] p = new double[s.tokens()];
        double max = Double.NEGATIVE_INFINITY;
        for (int t = 0; t < s.tokens(); t++) {
            double dot = 0;
            for (int c = 0; c < D; c++) {
                dot += (double) q[h * D + c] * k[(t * s.kvHeads() + kvH) * D + c];
            }
            p[t] = dot / Math.sqrt(D);
            max = Math.max(max, p[t]);
        }
        double z = 0;
        for (int t = 0; t < p.length; t++) {
            p[t] = Math.exp(p[t] - max);
            z += p[t];
        }
        for (int t = 0; t < p.length; t++) {
            p[t] /= z;
        }
        return p;
    }

    @Test
    void shapesAndDeterminism() {
        SyntheticKv a = base().build(), b = base().build(), c = base().seed(43).build();
        assertEquals(QO * D, a.q().length);
        assertEquals(N * KV * D, a.k().length);
        assertEquals(N * KV * D, a.v().length);
        assertArrayEquals(a.k(), b.k());
        assertArrayEquals(a.v(), b.v());
        assertArrayEquals(a.q(), b.q());
        assertArrayEquals(a.sampleQueries(3), b.sampleQueries(3));
        assertEquals(3 * QO * D, a.sampleQueries(3).length);
        assertFalse(Arrays.equals(a.k(), c.k()));
        for (float x : a.k()) {
            assertTrue(Float.isFinite(x));
        }
    }

    @Test
    void outlierChannelsHaveLargeScaleAndMean() {
        SyntheticKv s = base().build();
        float[] k = s.k();
        for (int j = 0; j < KV; j++) {
            int[] out = s.outlierChannels(j);
            assertEquals(4, out.length);
            double[] rms = new double[D], mean = new double[D];
            for (int t = s.sinkTokens(); t < N; t++) {
                for (int c = 0; c < D; c++) {
                    double x = k[(t * KV + j) * D + c];
                    rms[c] += x * x / N;
                    mean[c] += x / N;
                }
            }
            double[] normal = new double[D - out.length];
            int n = 0;
            for (int c = 0; c < D; c++) {
                if (Arrays.binarySearch(out, c) < 0) {
                    normal[n++] = Math.sqrt(rms[c]);
                }
            }
            Arrays.sort(normal);
            double median = normal[normal.length / 2];
            for (int c : out) {
                assertTrue(Math.sqrt(rms[c]) > 4 * median, "channel " + c + " rms " + Math.sqrt(rms[c]) + " vs " + median);
            }
            // low-frequency RoPE pairs barely rotate: the mean survives on at least one channel of each pair
            double maxOutMean = Arrays.stream(out).mapToDouble(c -> Math.abs(mean[c])).max().orElse(0);
            assertTrue(maxOutMean > 3, "outlier mean " + maxOutMean);
        }
    }

    @Test
    void sinksAndRelevantTokensDrawAttention() {
        SyntheticKv s = base().build();
        float[] q = s.q(), k = s.k();
        double sinkSum = 0;
        for (int h = 0; h < QO; h++) {
            double[] p = attention(s, q, k, h);
            double sink = 0;
            for (int t = 0; t < s.sinkTokens(); t++) {
                sink += p[t];
            }
            assertTrue(sink > 10.0 * s.sinkTokens() / N, "head " + h + " sink mass " + sink); // 10x their share
            sinkSum += sink / QO;
            int[] relevant = s.relevantTokens(h / (QO / KV));
            assertEquals(8, relevant.length);
            double[] ordinary = p.clone();
            double rel = 0;
            for (int t : relevant) {
                assertTrue(t >= s.sinkTokens());
                rel += p[t] / relevant.length;
                ordinary[t] = Double.NaN;
            }
            double[] rest = Arrays.stream(ordinary).skip(s.sinkTokens()).filter(x -> !Double.isNaN(x)).sorted().toArray();
            double median = rest[rest.length / 2];
            assertTrue(rel > 100 * median, "head " + h + ": relevant " + rel + ", median token " + median);
        }
        assertTrue(sinkSum > 0.2, "mean sink mass " + sinkSum);
    }

    @Test
    void ropeRotatesPairsByPosition() {
        SyntheticKv rope = base().sinkTokens(0).relevantTokens(0).build();
        SyntheticKv flat = base().sinkTokens(0).relevantTokens(0).ropeBase(0).build();
        float[] a = rope.k(), b = flat.k();
        for (int t : new int[] {1, 7, 100, 2000}) {
            int off = (t * KV + 1) * D;
            double na = 0, nb = 0;
            for (int c = 0; c < D; c++) {
                na += a[off + c] * a[off + c];
                nb += b[off + c] * b[off + c];
            }
            assertEquals(nb, na, 1e-4 * nb, "RoPE keeps the norm");
            // pair 0 (channels 0 and D/2) turns by t radians
            double angle = Math.atan2(a[off + D / 2], a[off]) - Math.atan2(b[off + D / 2], b[off]);
            double diff = Math.IEEEremainder(angle - t, 2 * Math.PI);
            assertEquals(0, diff, 1e-3, "token " + t);
        }
    }

    @Test
    void valuesAreHeavyTailed() {
        assertTrue(kurtosis(base().build().v()) > 5, "Student-t(3) values");
        assertEquals(3, kurtosis(base().valueDof(0).build().v()), 0.3, "Gaussian values");
    }

    /** Mean over the channels of KV head 0 of the per-channel kurtosis across tokens. */
    static double kurtosis(float[] v) {
        double sum = 0;
        for (int c = 0; c < D; c++) {
            double m = 0, m2 = 0, m4 = 0;
            for (int t = 0; t < N; t++) {
                m += v[t * KV * D + c];
            }
            m /= N;
            for (int t = 0; t < N; t++) {
                double d = v[t * KV * D + c] - m;
                m2 += d * d;
                m4 += d * d * d * d;
            }
            sum += (m4 / N) / ((m2 / N) * (m2 / N)) / D;
        }
        return sum;
    }

    @Test
    void sampleQueriesShareTheOutlierMean() {
        SyntheticKv s = base().build();
        float[] sq = s.sampleQueries(64);
        int c = s.outlierChannels(0)[0];
        double mean = 0;
        for (int i = 0; i < 64; i++) {
            mean += sq[(i * QO) * D + c] / 64; // head 0 belongs to KV head 0
        }
        assertTrue(Math.abs(mean) > 0.7, "query mean on outlier channel " + mean);
        assertThrows(Attn4jException.class, () -> s.sampleQueries(0));
    }

    @Test
    void builderRejectsBadKnobs() {
        Attn4jException e = assertThrows(Attn4jException.class, () -> SyntheticKv.builder().qoHeads(6).kvHeads(4).build());
        assertTrue(e.getMessage().contains("qoHeads 6"), e.getMessage());
        assertThrows(Attn4jException.class, () -> SyntheticKv.builder().headDim(7).build());
        assertThrows(Attn4jException.class, () -> SyntheticKv.builder().tokens(0).build());
    }
}
