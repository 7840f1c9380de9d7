package org.attn4j.tests.quant;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;

import org.attn4j.Attn4jException;
import org.attn4j.Status;
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
            assertRotatedBy(a, b, (t * KV + 1) * D, t, "token " + t);
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
    void queriesAtIsDeterministicAndPerIndex() {
        SyntheticKv a = base().build(), b = base().build();
        long[] pos = {N - 64, N - 32, N};
        float[] qa = a.queriesAt(pos, 7);
        assertEquals(pos.length * QO * D, qa.length);
        assertArrayEquals(qa, b.queriesAt(pos, 7), "same seed, positions and salt");
        assertFalse(Arrays.equals(qa, a.queriesAt(pos, 8)), "another salt, another draw");
        assertFalse(Arrays.equals(qa, base().seed(43).build().queriesAt(pos, 7)), "another seed, another draw");
        // query i is drawn independently of the positions (and of later queries): prefixes agree
        float[] first = a.queriesAt(new long[] {pos[0]}, 7);
        assertArrayEquals(first, Arrays.copyOf(qa, QO * D));
        for (float x : qa) {
            assertTrue(Float.isFinite(x));
        }
    }

    @Test
    void queriesAtMatchesSampleQueriesOnTheirStream() {
        // documented: sampleQueries(n) is queriesAt at its positions, max(1, round((i + 1) * tokens / n)),
        // with salt 0x5A3C1E7
        SyntheticKv s = base().build();
        int n = 5;
        long[] pos = new long[n];
        for (int i = 0; i < n; i++) {
            pos[i] = Math.max(1, Math.round((i + 1) * (double) N / n));
        }
        assertArrayEquals(s.sampleQueries(n), s.queriesAt(pos, 0x5A3C1E7L));
    }

    @Test
    void queriesAtAppliesRopeAtEachPosition() {
        SyntheticKv rope = base().build(), flat = base().ropeBase(0).build();
        long[] pos = {0, 1, 7, 100, 2000, 100_000};
        float[] a = rope.queriesAt(pos, 11), b = flat.queriesAt(pos, 11);
        // without RoPE the position does not matter
        assertArrayEquals(b, flat.queriesAt(new long[] {5, 5, 5, 5, 5, 5}, 11));
        // position 0 is the unrotated query
        assertArrayEquals(Arrays.copyOf(b, QO * D), Arrays.copyOf(a, QO * D));
        for (int i = 0; i < pos.length; i++) {
            for (int h : new int[] {0, QO - 1}) {
                assertRotatedBy(a, b, (i * QO + h) * D, pos[i], "position " + pos[i]);
            }
        }
    }

    @Test
    void queriesAtRejectsBadArguments() {
        SyntheticKv s = base().build();
        for (long[] bad : new long[][] {null, {}, {3, -1}}) {
            Attn4jException e = assertThrows(Attn4jException.class, () -> s.queriesAt(bad, 1));
            assertEquals(Status.INVALID_ARGUMENT, e.status());
            assertTrue(e.getMessage().contains("positions"), e.getMessage());
        }
        assertTrue(assertThrows(Attn4jException.class, () -> s.queriesAt(new long[] {3, -1}, 1)).getMessage()
                .contains("positions[1]"));
    }

    @Test
    void builderRejectsBadKnobs() {
        Attn4jException e = assertThrows(Attn4jException.class, () -> SyntheticKv.builder().qoHeads(6).kvHeads(4).build());
        assertTrue(e.getMessage().contains("qoHeads 6"), e.getMessage());
        assertThrows(Attn4jException.class, () -> SyntheticKv.builder().headDim(7).build());
        assertThrows(Attn4jException.class, () -> SyntheticKv.builder().tokens(0).build());
    }

    /**
     * Row {@code off} of {@code rotated} is row {@code off} of {@code flat} under RoPE at position
     * {@code pos}: same norm, and pair 0 (channels 0 and D/2, frequency 1) turned by {@code pos} radians.
     */
    private static void assertRotatedBy(float[] rotated, float[] flat, int off, long pos, String what) {
        double na = 0, nb = 0;
        for (int c = 0; c < D; c++) {
            na += rotated[off + c] * rotated[off + c];
            nb += flat[off + c] * flat[off + c];
        }
        assertEquals(nb, na, 1e-4 * nb, what + ": RoPE keeps the norm");
        double angle = Math.atan2(rotated[off + D / 2], rotated[off]) - Math.atan2(flat[off + D / 2], flat[off]);
        assertEquals(0, Math.IEEEremainder(angle - pos, 2 * Math.PI), 1e-3, what);
    }
}
