package org.attn4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;

import org.attn4j.DType;
import org.attn4j.testing.Checks;
import org.attn4j.testing.KvGen;
import org.attn4j.testing.ReferenceAttention;
import org.attn4j.testing.ReferenceAttention.Result;
import org.junit.jupiter.api.Test;

/** The fp64 reference and the generators checked on their own (no native library needed). */
class ReferenceSelfTest {
    private static final double EPS = 1e-12;

    @Test
    void singleKeyGivesItsValue() {
        float[] q = {1, 2, 3, 4};
        float[] k = {0.5f, -1, 2, 0.25f};
        float[] v = {9, 8, 7, 6};
        Result r = ReferenceAttention.attend(q, 0, k, v, 0, 1, 1, 1, 1, 4, 0.5, false);
        for (int d = 0; d < 4; d++) {
            assertEquals(v[d], r.out()[d], EPS);
        }
        assertEquals(0.5 * (0.5 - 2 + 6 + 1), r.lse()[0], EPS);
    }

    @Test
    void causalIsBottomRightAligned() {
        KvGen g = new KvGen(1, 1, 16);
        int nq = 3;
        int nkv = 7;
        float[] q = g.queries(nq, 2);
        float[] k = g.keys(0, nkv);
        float[] v = g.values(nkv);
        Result causal = ReferenceAttention.attend(q, 0, k, v, 0, nq, nkv, 2, 1, 16, 0.25, true);
        for (int i = 0; i < nq; i++) {
            // query i sees keys 0 .. i + nkv - nq
            int visible = i + nkv - nq + 1;
            Result alone = ReferenceAttention.attend(q, i * 2 * 16, k, v, 0, 1, visible, 2, 1, 16, 0.25, false);
            for (int j = 0; j < 2 * 16; j++) {
                assertEquals(alone.out()[j], causal.out()[i * 2 * 16 + j], EPS);
            }
            assertEquals(alone.lse()[0], causal.lse()[i * 2], EPS);
        }
        // last query sees everything: equals non-causal
        Result full = ReferenceAttention.attend(q, 0, k, v, 0, nq, nkv, 2, 1, 16, 0.25, false);
        assertEquals(full.out()[(nq - 1) * 32 + 5], causal.out()[(nq - 1) * 32 + 5], EPS);
    }

    @Test
    void gqaHeadsShareKvHeads() {
        KvGen g = new KvGen(2, 2, 16);
        float[] q = g.queries(1, 8); // group 4
        float[] k = g.keys(0, 5);
        float[] v = g.values(5);
        Result r = ReferenceAttention.attend(q, 0, k, v, 0, 1, 5, 8, 2, 16, 0.25, false);
        // head 5 (kv head 1) equals MHA on kv head 1 alone
        float[] k1 = new float[5 * 16];
        float[] v1 = new float[5 * 16];
        for (int t = 0; t < 5; t++) {
            System.arraycopy(k, (t * 2 + 1) * 16, k1, t * 16, 16);
            System.arraycopy(v, (t * 2 + 1) * 16, v1, t * 16, 16);
        }
        Result h5 = ReferenceAttention.attend(q, 5 * 16, k1, v1, 0, 1, 5, 1, 1, 16, 0.25, false);
        for (int d = 0; d < 16; d++) {
            assertEquals(h5.out()[d], r.out()[5 * 16 + d], EPS);
        }
    }

    @Test
    void mergeOfPartsEqualsWholeAndIgnoresEmptyParts() {
        KvGen g = new KvGen(3, 1, 32);
        float[] q = g.queries(2, 2);
        float[] k = g.keys(0, 50);
        float[] v = g.values(50);
        Result whole = ReferenceAttention.attend(q, 0, k, v, 0, 2, 50, 2, 1, 32, 0.2, false);
        Result a = ReferenceAttention.attend(q, 0, k, v, 0, 2, 20, 2, 1, 32, 0.2, false);
        Result b = ReferenceAttention.attend(q, 0, k, v, 20 * 32, 2, 30, 2, 1, 32, 0.2, false);
        int states = 3;
        float[] vs = new float[2 * states * 2 * 32];
        float[] ss = new float[2 * states * 2];
        for (int i = 0; i < 2; i++) {
            for (int h = 0; h < 2; h++) {
                ss[(i * states) * 2 + h] = (float) a.lse()[i * 2 + h];
                ss[(i * states + 1) * 2 + h] = Float.NEGATIVE_INFINITY;
                ss[(i * states + 2) * 2 + h] = (float) b.lse()[i * 2 + h];
                for (int d = 0; d < 32; d++) {
                    vs[((i * states) * 2 + h) * 32 + d] = (float) a.out()[(i * 2 + h) * 32 + d];
                    vs[((i * states + 1) * 2 + h) * 32 + d] = 12345f;
                    vs[((i * states + 2) * 2 + h) * 32 + d] = (float) b.out()[(i * 2 + h) * 32 + d];
                }
            }
        }
        Result m = ReferenceAttention.merge(vs, ss, 2, states, 2, 32);
        assertTrue(Checks.relErr(toFloat(m.out()), whole.out()) < 1e-6);
        assertTrue(Checks.relErr(toFloat(m.lse()), whole.lse()) < 1e-6);
    }

    @Test
    void pagedReferenceMatchesContiguous() {
        int ps = 4;
        int kvh = 2;
        int d = 16;
        KvGen g = new KvGen(4, kvh, d);
        int len = 10; // pages 2, 0, 1 (last holds 2)
        float[] k = g.keys(0, len);
        float[] v = g.values(len);
        int[] order = {2, 0, 1};
        float[] kp = new float[3 * kvh * ps * d];
        float[] vp = new float[kp.length];
        for (int t = 0; t < len; t++) {
            for (int h = 0; h < kvh; h++) {
                int dst = ((order[t / ps] * kvh + h) * ps + t % ps) * d;
                System.arraycopy(k, (t * kvh + h) * d, kp, dst, d);
                System.arraycopy(v, (t * kvh + h) * d, vp, dst, d);
            }
        }
        float[] q = g.queries(1, 4);
        Result paged = ReferenceAttention.decodePaged(q, kp, vp, new int[] {0, 3}, order, new int[] {2}, ps, 4, kvh, d,
                0.25);
        Result flat = ReferenceAttention.attend(q, 0, k, v, 0, 1, len, 4, kvh, d, 0.25, false);
        assertTrue(Arrays.equals(paged.out(), flat.out()));
        assertTrue(Arrays.equals(paged.lse(), flat.lse()));
    }

    @Test
    void generatorsAreRealisticAndNeverZero() {
        int d = 128;
        KvGen g = new KvGen(5, 2, d);
        float[] k = g.keys(0, 512);
        float[] v = g.values(512);
        float[] q = g.queries(4, 8);
        for (float[] x : new float[][] {k, v, q}) {
            for (float f : x) {
                assertTrue(f != 0 && Float.isFinite(f));
            }
        }
        // outlier channels: some channel's RMS is >= 8x the median channel's
        double[] rms = new double[d];
        for (int t = 1; t < 512; t++) {
            for (int c = 0; c < d; c++) {
                rms[c] += k[(t * 2) * d + c] * (double) k[(t * 2) * d + c];
            }
        }
        double[] sorted = rms.clone();
        Arrays.sort(sorted);
        assertTrue(Math.sqrt(sorted[d - 1] / sorted[d / 2]) >= 8, "no outlier channel");
        // the sink (token 0) gets a logit well above the rest for every query head
        Result r = ReferenceAttention.attend(q, 0, k, v, 0, 4, 512, 8, 2, d, 1 / Math.sqrt(d), false);
        Result noSink = ReferenceAttention.attend(q, 0, k, v, 2 * d, 4, 511, 8, 2, d, 1 / Math.sqrt(d), false);
        for (int i = 0; i < r.lse().length; i++) {
            double sinkWeight = 1 - Math.exp(noSink.lse()[i] - r.lse()[i]);
            assertTrue(sinkWeight > 0.2, "sink weight " + sinkWeight + " at " + i);
        }
        // rounding helpers
        assertEquals(1.0f, KvGen.round(DType.BF16, 1.00390625f)); // tie to even
        assertEquals(65504f, KvGen.round(DType.F16, 65504f));
        assertFalse(KvGen.round(DType.BF16, 1.1f) == 1.1f);
    }

    @Test
    void wordMatchingOfNames() {
        Checks.assertNames("decode: q: shape[2] is 96", java.util.List.of("q"));
        Checks.assertNames("prefill: qo_indptr[2] = 11", java.util.List.of("qo_indptr"));
        org.junit.jupiter.api.Assertions.assertThrows(AssertionError.class,
                () -> Checks.assertNames("prefill: qo_indptr[2] = 11", java.util.List.of("q")));
    }

    private static float[] toFloat(double[] d) {
        float[] f = new float[d.length];
        for (int i = 0; i < d.length; i++) {
            f[i] = (float) d[i];
        }
        return f;
    }
}
