package org.attn4j.tests.quant;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Random;

import org.attn4j.Attn4jException;
import org.attn4j.quant.Calibration;
import org.attn4j.quant.Calibrator;
import org.attn4j.quant.Calibrator.HeadReport;
import org.attn4j.quant.Calibrator.LayerSamples;
import org.attn4j.quant.QuantReference;
import org.attn4j.quant.SyntheticKv;
import org.junit.jupiter.api.Test;

/** {@link Calibrator} and {@link QuantReference}: the math, and that calibration pays off. */
class CalibratorTest {

    static LayerSamples samples(SyntheticKv s, int queries) {
        return new LayerSamples(s.sampleQueries(queries), queries, s.qoHeads(), s.k(), s.v(), s.tokens(), s.kvHeads(),
                s.headDim());
    }

    // ---- Jacobi eigen ----

    @Test
    void eigenOfKnownMatrix() {
        double[] a = {2, 1, 0, 1, 2, 0, 0, 0, 5};
        Calibrator.Eigen e = Calibrator.eigen(a, 3);
        assertArrayEquals(new double[] {5, 3, 1}, e.values(), 1e-12);
        double r = Math.sqrt(0.5);
        double[][] expected = {{0, 0, 1}, {r, r, 0}, {r, -r, 0}}; // column c, sign: largest component positive
        for (int c = 0; c < 3; c++) {
            for (int i = 0; i < 3; i++) {
                assertEquals(expected[c][i], e.vectors()[i * 3 + c], 1e-12, "eigenvector " + c);
            }
        }
    }

    @Test
    void eigenOfRandomSymmetricMatrix() {
        int n = 64;
        Random rnd = new Random(3);
        double[] a = new double[n * n];
        for (int i = 0; i < n; i++) {
            for (int j = 0; j <= i; j++) {
                a[i * n + j] = a[j * n + i] = rnd.nextGaussian();
            }
        }
        Calibrator.Eigen e = Calibrator.eigen(a, n);
        double[] v = e.vectors();
        for (int c = 0; c < n; c++) {
            if (c > 0) {
                assertTrue(e.values()[c] <= e.values()[c - 1], "sorted descending");
            }
            for (int i = 0; i < n; i++) { // A v = lambda v
                double s = 0;
                for (int j = 0; j < n; j++) {
                    s += a[i * n + j] * v[j * n + c];
                }
                assertEquals(e.values()[c] * v[i * n + c], s, 1e-9);
            }
            for (int c2 = 0; c2 <= c; c2++) { // orthonormal
                double s = 0;
                for (int i = 0; i < n; i++) {
                    s += v[i * n + c] * v[i * n + c2];
                }
                assertEquals(c == c2 ? 1 : 0, s, 1e-10);
            }
        }
    }

    @Test
    void eigenRejectsAsymmetric() {
        Attn4jException e = assertThrows(Attn4jException.class, () -> Calibrator.eigen(new double[] {1, 2, 3, 4}, 2));
        assertTrue(e.getMessage().contains("not symmetric"), e.getMessage());
    }

    // ---- Hadamard and rotation ----

    @Test
    void hadamardIsSylvesterOrthonormal() {
        int n = 16;
        for (int i = 0; i < n; i++) {
            double[] x = new double[n];
            x[i] = 1;
            QuantReference.hadamard(x);
            for (int j = 0; j < n; j++) {
                double h = (Integer.bitCount(i & j) % 2 == 0 ? 1 : -1) / Math.sqrt(n);
                assertEquals(h, x[j], 1e-15);
            }
            QuantReference.hadamard(x); // H is symmetric and orthogonal: applying it twice is the identity
            for (int j = 0; j < n; j++) {
                assertEquals(i == j ? 1 : 0, x[j], 1e-15);
            }
        }
        assertTrue(Calibration.orthogonalityError(Calibrator.hadamardMatrix(128), 0, 128) < 1e-6);
        assertThrows(Attn4jException.class, () -> QuantReference.hadamard(new double[12]));
    }

    @Test
    void rotationPutsTopEigenvectorsOnGroupConstantRows() {
        int d = 128, g = 32;
        Random rnd = new Random(5);
        double[] a = new double[d * d];
        for (int i = 0; i < d; i++) {
            for (int j = 0; j <= i; j++) {
                a[i * d + j] = a[j * d + i] = rnd.nextGaussian();
            }
        }
        Calibrator.Eigen e = Calibrator.eigen(a, d);
        float[] r = Calibrator.rotation(e.vectors(), d);
        assertTrue(Calibration.orthogonalityError(r, 0, d) < 1e-5);
        for (int c = 0; c < d / g; c++) { // u_c R is constant within each group of g channels
            float[] y = new float[d];
            for (int j = 0; j < d; j++) {
                double s = 0;
                for (int i = 0; i < d; i++) {
                    s += e.vectors()[i * d + c] * r[i * d + j];
                }
                y[j] = (float) s;
            }
            for (int j = 0; j < d; j++) {
                assertEquals(y[j / g * g], y[j], 1e-5, "eigenvector " + c + " channel " + j);
            }
        }
    }

    // ---- reference quantizer ----

    @Test
    void quantizerDefinition() {
        QuantReference.Quantized q = QuantReference.quantize(new float[] {0, 1, 2, 3, 5, 5, 5, 5}, 2, 4, 1f);
        assertArrayEquals(new int[] {0, 1, 2, 3, 0, 0, 0, 0}, q.codes());
        assertArrayEquals(new float[] {1, 0}, q.scale());
        assertArrayEquals(new float[] {0, 5}, q.zero()); // constant group: scale 0, zero = min exactly
        assertArrayEquals(new float[] {0, 1, 2, 3, 5, 5, 5, 5}, QuantReference.dequantize(q));
        // clip: lo = 0.5 * -4, hi = 0.5 * 4, scale 4/3; 4 -> code 3 (clamped), -4 -> 0
        QuantReference.Quantized c = QuantReference.quantize(new float[] {-4, 4, 0, 1}, 2, 4, 0.5f);
        assertEquals(4f / 3, c.scale()[0], 1e-7);
        assertEquals(-2f, c.zero()[0]);
        assertArrayEquals(new int[] {0, 3, 2, 2}, c.codes());
        // round half away from zero, as natively (floor(v + 0.5)): 0.5 -> 1, 1.5 -> 2, 2.5 -> 3
        QuantReference.Quantized h = QuantReference.quantize(new float[] {0, 0.5f, 1.5f, 2.5f, 3}, 2, 5, 1f);
        assertArrayEquals(new int[] {0, 1, 2, 3, 3}, h.codes());
        // F16 meta: scale and zero rounded to half before the codes are computed
        float[] x = {0.1f, 0.2f, 0.3f, 1.7f};
        QuantReference.Quantized f = QuantReference.quantize(x, 2, 4, 1f, true);
        assertEquals(Float.float16ToFloat(Float.floatToFloat16((1.7f - 0.1f) / 3)), f.scale()[0]);
        assertEquals(Float.float16ToFloat(Float.floatToFloat16(0.1f)), f.zero()[0]);
        float[] rt = new float[4];
        QuantReference.roundTrip(x, 0, 4, 2, 4, 1f, true, rt);
        assertArrayEquals(QuantReference.dequantize(f), rt);
    }

    @Test
    void quantizerErrorBoundAndRoundTripAgree() {
        Random rnd = new Random(1);
        for (int bits : new int[] {2, 4, 8}) {
            float[] x = new float[128];
            for (int i = 0; i < x.length; i++) {
                x[i] = (float) (rnd.nextGaussian() * 3);
            }
            QuantReference.Quantized q = QuantReference.quantize(x, bits, 32, 1f);
            float[] y = QuantReference.dequantize(q);
            float[] z = new float[128];
            QuantReference.roundTrip(x, 0, 128, bits, 32, 1f, z);
            assertArrayEquals(y, z);
            for (int i = 0; i < x.length; i++) {
                assertTrue(Math.abs(x[i] - y[i]) <= q.scale()[i / 32] * 0.5f * 1.0001f + 1e-6f);
                assertTrue(q.codes()[i] >= 0 && q.codes()[i] < 1 << bits);
            }
        }
        assertThrows(Attn4jException.class, () -> QuantReference.quantize(new float[8], 3, 4, 1f));
        assertThrows(Attn4jException.class, () -> QuantReference.quantize(new float[8], 2, 3, 1f));
        assertThrows(Attn4jException.class, () -> QuantReference.quantize(new float[8], 2, 4, 1.1f));
    }

    // ---- calibration quality ----

    @Test
    void calibratedBeatsHadamardOnOutlierKeys() {
        SyntheticKv s = SyntheticKv.builder().qoHeads(8).kvHeads(2).headDim(128).tokens(2048).seed(11).build();
        for (int group : new int[] {32, 128}) {
            Calibrator.Result r = new Calibrator(2, group).withMaxEvalTokens(1024).calibrate(List.of(samples(s, 8)));
            for (HeadReport h : r.reports()) {
                String ctx = "G " + group + ": " + h;
                if (group == 128) { // with G 32 the outliers spoil only their own groups without rotation
                    assertTrue(h.kHadamard() < h.kIdentity(), ctx);
                }
                assertTrue(h.kCalibrated() <= h.kHadamardBestClip(), ctx);
                assertTrue(h.kCalibrated() < 0.7 * h.kHadamard(), "clearly better than Hadamard: " + ctx);
                assertTrue(h.vCalibrated() <= h.vHadamardBestClip() * 1.02, ctx);
            }
        }
    }

    @Test
    void calibratedNoWorseThanHadamardWithoutOutliers() {
        SyntheticKv s = SyntheticKv.builder().qoHeads(4).kvHeads(2).headDim(64).tokens(2048).seed(12)
                .outlierChannels(0).sinkTokens(0).relevantTokens(0).valueDof(0).build();
        Calibrator.Result r = new Calibrator(4, 32).withMaxEvalTokens(1024).calibrate(List.of(samples(s, 8)));
        for (HeadReport h : r.reports()) {
            assertTrue(h.kCalibrated() <= h.kHadamardBestClip() * 1.05, h.toString());
            assertTrue(h.vCalibrated() <= h.vHadamardBestClip() * 1.05, h.toString());
        }
    }

    @Test
    void calibrationIsValidDeterministicAndUsesTheGrid() {
        SyntheticKv s0 = SyntheticKv.builder().qoHeads(4).kvHeads(2).headDim(64).tokens(512).seed(1).build();
        SyntheticKv s1 = SyntheticKv.builder().qoHeads(4).kvHeads(2).headDim(64).tokens(512).seed(2).build();
        List<LayerSamples> layers = List.of(samples(s0, 4), samples(s1, 4));
        Calibrator c = new Calibrator(4, 64).withMaxEvalTokens(256);
        Calibration a = c.calibrate(layers).calibration(), b = c.calibrate(layers).calibration();
        assertEquals(2, a.layers());
        assertEquals(4, a.bits());
        assertEquals(64, a.groupSize());
        List<Float> grid = new java.util.ArrayList<>();
        for (float f : Calibrator.defaultClipGrid()) {
            grid.add(f);
        }
        assertEquals(11, grid.size());
        assertTrue(grid.contains(0.96f) && grid.contains(0.92f));
        for (int l = 0; l < 2; l++) {
            assertArrayEquals(a.kRotations(l), b.kRotations(l));
            assertArrayEquals(a.vClips(l), b.vClips(l));
            for (int h = 0; h < 2; h++) {
                assertTrue(grid.contains(a.kClip(l, h)) && grid.contains(a.vClip(l, h)));
                assertTrue(Calibration.orthogonalityError(a.kRotation(l, h), 0, 64) < 1e-4);
            }
        }
        Calibration fixed = c.withClipGrid(0.9f).calibrate(layers).calibration();
        assertEquals(0.9f, fixed.kClip(1, 1));
        assertEquals(0.9f, fixed.vClip(0, 0));
    }

    @Test
    void rejectsBadSamples() {
        Attn4jException gqa = assertThrows(Attn4jException.class,
                () -> new LayerSamples(new float[6 * 8], 1, 6, new float[4 * 8], new float[4 * 8], 1, 4, 8));
        assertTrue(gqa.getMessage().contains("qoHeads 6") && gqa.getMessage().contains("kvHeads 4"), gqa.getMessage());
        Attn4jException len = assertThrows(Attn4jException.class,
                () -> new LayerSamples(new float[10], 1, 2, new float[16], new float[16], 2, 1, 8));
        assertTrue(len.getMessage().contains("q has 10"), len.getMessage());
        LayerSamples odd = new LayerSamples(new float[2 * 48], 1, 2, new float[48], new float[48], 1, 1, 48);
        Attn4jException pow = assertThrows(Attn4jException.class, () -> new Calibrator(2, 32).calibrate(List.of(odd)));
        assertTrue(pow.getMessage().contains("power-of-2"), pow.getMessage());
        float[] k = new float[64];
        k[3] = Float.NaN;
        LayerSamples nan = new LayerSamples(new float[64], 1, 1, k, new float[64], 1, 1, 64);
        Attn4jException fin = assertThrows(Attn4jException.class, () -> new Calibrator(2, 32).calibrate(List.of(nan)));
        assertTrue(fin.getMessage().contains("k has a non-finite value"), fin.getMessage());
        assertThrows(Attn4jException.class, () -> new Calibrator(3, 32));
        assertThrows(Attn4jException.class, () -> new Calibrator(2, 48));
        assertThrows(Attn4jException.class, () -> new Calibrator(2, 32).withClipGrid(1.2f));
    }
}
