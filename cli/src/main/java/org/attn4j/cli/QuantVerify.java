package org.attn4j.cli;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

import org.attn4j.Attn4j;
import org.attn4j.DType;
import org.attn4j.KvFormat;
import org.attn4j.Rotation;
import org.attn4j.quant.Calibration;
import org.attn4j.quant.Calibrator;
import org.attn4j.quant.Npy;
import org.attn4j.quant.QuantAccuracy;
import org.attn4j.quant.SyntheticKv;

import me.tongfei.progressbar.ProgressBar;

/**
 * {@code attn4j verify --quant}: for every format x rotation x group size, the relative error of the
 * decode output over the quantized cache against fp64 attention over the unquantized K/V, stored
 * plainly, with BF16 sinks and recent window, and with salient tokens on top (a fraction of the
 * middle tokens kept in BF16, chosen by the queries of the last tokens as a prompt would give them).
 * Data: one layer from .npy files or the synthetic generator. The budgets are checked where
 * they apply.
 */
final class QuantVerify {
    /**
     * One layer: q [qoHeads][d] (one decode query), k and v [tokens][kvHeads][d]; probes
     * [P][qoHeads][d], the queries of the last P tokens (null: none, no salient column).
     */
    record Layer(String source, float[] q, float[] k, float[] v, int qoHeads, int kvHeads, int headDim, int tokens,
                 float[] calibrationQueries, int calibrationQueryCount, float[] probes) {}

    /** Errors of one format: every token quantized, BF16 sinks/window, and those plus salient tokens (NaN: not run). */
    record Row(DType dtype, int group, Rotation rotation, double bits, double plain, double mixed, double salient) {}

    /** Salient-token probes of the synthetic layer: the queries of its last tokens. */
    static final int SYNTHETIC_PROBES = 16;
    private static final long PROBE_SALT = 0x7EC3A7L;

    private QuantVerify() {}

    static Layer synthetic(long seed, int tokens) {
        SyntheticKv s = SyntheticKv.builder().tokens(tokens).seed(seed).build();
        // Calibration samples come from another draw of the same distribution (offline data).
        SyntheticKv sample = SyntheticKv.builder().tokens(tokens).seed(seed ^ 0x5eedL).build();
        int nq = 16;
        long[] positions = new long[Math.min(SYNTHETIC_PROBES, tokens)];
        for (int i = 0; i < positions.length; i++) {
            positions[i] = tokens - positions.length + i + 1;
        }
        return new Layer("synthetic (seed " + seed + ", " + tokens + " tokens)", s.q(), s.k(), s.v(), s.qoHeads(),
                s.kvHeads(), s.headDim(), tokens, sample.sampleQueries(nq), nq, s.queriesAt(positions, PROBE_SALT));
    }

    /**
     * q: [qo_heads, d] or [n, qo_heads, d] (the last row is the decode query, the rows before it the
     * queries of the last n - 1 tokens, the salient-token probes; all rows calibrate), k, v:
     * [tokens, kv_heads, d].
     */
    static Layer fromNpy(Path qf, Path kf, Path vf) throws IOException {
        Npy.NpyArray q = Npy.read(qf);
        Npy.NpyArray k = Npy.read(kf);
        Npy.NpyArray v = Npy.read(vf);
        if (q.rank() == 3) {
            Npy.requireShape(q, qf + " (q)", -1, -1, -1);
        } else {
            Npy.requireShape(q, qf + " (q)", -1, -1);
        }
        Npy.requireShape(k, kf + " (k)", -1, -1, q.dim(q.rank() - 1));
        Npy.requireShape(v, vf + " (v)", k.dim(0), k.dim(1), k.dim(2));
        int qoHeads = q.dim(q.rank() - 2);
        int kvHeads = k.dim(1);
        if (qoHeads % kvHeads != 0) {
            throw new IllegalArgumentException(qf + " (q): " + qoHeads + " query heads are not a multiple of the "
                    + kvHeads + " KV heads of " + kf);
        }
        int rows = q.rank() == 3 ? q.dim(0) : 1;
        int row = qoHeads * k.dim(2);
        if (rows - 1 > k.dim(0)) {
            throw new IllegalArgumentException(qf + " (q): " + (rows - 1) + " probe rows, more than the " + k.dim(0)
                    + " tokens of " + kf);
        }
        float[] all = q.data();
        float[] decode = java.util.Arrays.copyOfRange(all, (rows - 1) * row, rows * row);
        float[] probes = rows > 1 ? java.util.Arrays.copyOf(all, (rows - 1) * row) : null;
        return new Layer(qf.getFileName() + ", " + kf.getFileName() + ", " + vf.getFileName(), decode, k.data(),
                v.data(), qoHeads, kvHeads, k.dim(2), k.dim(0), all, rows, probes);
    }

    /**
     * {@code calibration}: a file from {@code attn4j calibrate} used for the calibrated rows of its
     * own bits and group size (other calibrated rows are left out); null calibrates each (bits,
     * group) on the layer's own samples (in-sample for .npy inputs, a second draw for synthetic).
     */
    static int run(Attn4j lib, Layer layer, int sinks, int window, double salientFraction, boolean showProgress,
            Calibration calibration) {
        if (!(salientFraction >= 0 && salientFraction <= 1)) {
            throw new IllegalArgumentException("--salient: a fraction in [0, 1], got " + salientFraction);
        }
        boolean salient = salientFraction > 0 && layer.probes() != null;
        DType[] types = {DType.INT8, DType.INT4, DType.INT2};
        int[] groups = {32, 64, 128};
        Rotation[] rotations = {Rotation.NONE, Rotation.HADAMARD, Rotation.CALIBRATED};
        boolean pow2 = Integer.bitCount(layer.headDim()) == 1;
        List<Row> rows = new ArrayList<>();
        int total = types.length * groups.length * rotations.length;
        System.out.printf("attn4j verify --quant: %s; %d q / %d kv heads, head_dim %d; BF16 segments: %d sinks + %d "
                + "recent%n", layer.source(), layer.qoHeads(), layer.kvHeads(), layer.headDim(), sinks, window);
        System.out.println("error = ||out - ref|| / ||ref||, ref = fp64 attention over the unquantized K/V");
        if (salient) {
            System.out.printf("+salient: also at most %.1f%% of the middle tokens in BF16, chosen by the queries of the "
                    + "last %d tokens (TieredKvCache.observe)%n", 100 * salientFraction,
                    layer.probes().length / (layer.qoHeads() * layer.headDim()));
        } else if (salientFraction > 0) {
            System.out.println("+salient: left out (give q with more than one row: the rows before the last are the "
                    + "probes)");
        }
        System.out.println(calibration != null ? "calibrated rows: the given calibration file (INT" + calibration.bits()
                + " G" + calibration.groupSize() + " only)" : "calibrated rows: calibrated on " + (layer.calibrationQueryCount() > 1
                ? "a second draw of the generator" : "these inputs (in-sample)"));
        try (ProgressBar pb = Util.progress("verify --quant", total, showProgress)) {
            for (DType t : types) {
                for (int g : groups) {
                    if (layer.headDim() % g != 0) {
                        pb.stepBy(rotations.length);
                        continue;
                    }
                    Calibration cal = null;
                    for (Rotation r : rotations) {
                        if (r != Rotation.NONE && !pow2) {
                            pb.step();
                            continue;
                        }
                        if (r == Rotation.CALIBRATED) {
                            if (calibration != null && (calibration.bits() != t.bits() || calibration.groupSize() != g)) {
                                pb.step();
                                continue;
                            }
                            cal = calibration != null ? calibration : calibrate(layer, t.bits(), g);
                        }
                        KvFormat f = KvFormat.quantized(t, g).withRotation(r);
                        double plain = error(lib, layer, f, cal, 0, 0);
                        double mixed = error(lib, layer, f, cal, sinks, window);
                        double withSalient = salient ? QuantAccuracy.relativeErrorSalient(lib, layer.q(), layer.k(),
                                layer.v(), layer.qoHeads(), layer.kvHeads(), layer.headDim(), layer.tokens(), f, cal,
                                sinks, window, 16, layer.probes(), salientFraction) : Double.NaN;
                        rows.add(new Row(t, g, r, f.effectiveBits(layer.headDim()), plain, mixed, withSalient));
                        pb.step();
                    }
                }
            }
        }
        System.out.println();
        System.out.printf("%-5s %5s %-10s %6s %12s %16s%s%n", "fmt", "G", "rotation", "bits", "plain", "+BF16 sink/win",
                salient ? String.format(" %14s", "+salient") : "");
        for (Row r : rows) {
            System.out.printf("%-5s %5d %-10s %6.2f %11.3f%% %15.3f%%%s%n", r.dtype(), r.group(),
                    r.rotation().toString().toLowerCase(java.util.Locale.ROOT), r.bits(), 100 * r.plain(),
                    100 * r.mixed(), salient ? String.format(" %13.3f%%", 100 * r.salient()) : "");
        }
        return budgets(rows, salient);
    }

    private static Calibration calibrate(Layer layer, int bits, int group) {
        Calibrator.LayerSamples s = new Calibrator.LayerSamples(layer.calibrationQueries(),
                layer.calibrationQueryCount(), layer.qoHeads(), layer.k(), layer.v(), layer.tokens(), layer.kvHeads(),
                layer.headDim());
        return new Calibrator(bits, group).calibrate(List.of(s)).calibration();
    }

    private static double error(Attn4j lib, Layer l, KvFormat f, Calibration cal, int sinks, int window) {
        return QuantAccuracy.relativeError(lib, l.q(), l.k(), l.v(), l.qoHeads(), l.kvHeads(), l.headDim(), l.tokens(),
                f, cal, sinks, window, 16);
    }

    /**
     * The accuracy bars at G = 128; prints each verdict, returns 1 when one is missed. The
     * mixed-precision bars are checked on the BF16 sinks/window column and, when it was run, on the
     * salient column; a bar counts as met when either meets it (both figures are printed).
     */
    private static int budgets(List<Row> rows, boolean salient) {
        System.out.println();
        int missed = calibratedEverywhere(rows, salient);
        Row int8 = find(rows, DType.INT8, Rotation.NONE);
        if (int8 == null) {
            System.out.println("  (the other bars are stated for G = 128; head_dim is not a multiple of 128)");
            return missed == 0 ? 0 : 1;
        }
        Row int8h = find(rows, DType.INT8, Rotation.HADAMARD);
        double best8 = int8h == null ? int8.plain() : Math.min(int8.plain(), int8h.plain());
        missed += verdict("INT8 G128 (best of none/Hadamard), plain <= 1%", best8, Double.NaN, 0.01);
        Row int4 = find(rows, DType.INT4, Rotation.HADAMARD);
        if (int4 != null) {
            missed += verdict("INT4 G128 + Hadamard + BF16 sinks/window <= 2%", int4.mixed(), int4.salient(), 0.02);
        }
        Row h2 = find(rows, DType.INT2, Rotation.HADAMARD);
        Row c2 = find(rows, DType.INT2, Rotation.CALIBRATED);
        Row p2 = find(rows, DType.INT2, Rotation.NONE);
        if (h2 != null && c2 != null) {
            double best = Math.min(h2.mixed(), c2.mixed());
            double bestSalient = salient ? Math.min(h2.salient(), c2.salient()) : Double.NaN;
            missed += verdict("INT2 G128 + rotation + BF16 sinks/window <= 8%", best, bestSalient, 0.08);
            double ratio = p2.plain() / (salient ? Math.min(best, bestSalient) : best);
            System.out.printf("  INT2 plain / best INT2 rotated + BF16: %.1fx (bar >= 10x) %s%n", ratio,
                    ratio >= 10 ? "met" : "MISSED");
            missed += ratio >= 10 ? 0 : 1;
            boolean noWorse = c2.mixed() <= h2.mixed() && (!salient || c2.salient() <= h2.salient());
            System.out.printf("  calibrated vs Hadamard (INT2 G128 + BF16): %.3f%% vs %.3f%%%s %s%n", 100 * c2.mixed(),
                    100 * h2.mixed(), salient ? String.format("; +salient %.3f%% vs %.3f%%", 100 * c2.salient(),
                    100 * h2.salient()) : "", noWorse ? "(no worse: met)" : "(worse: MISSED)");
            missed += noWorse ? 0 : 1;
        }
        System.out.println(missed == 0 ? "all accuracy bars met" : missed + " accuracy bar(s) missed");
        return missed == 0 ? 0 : 1;
    }

    /**
     * The bar's wording, "calibrated no worse than Hadamard on every case": every format x group
     * size x column of the table (not only INT2 G128); prints the cases where calibrated is worse
     * and returns 1 when there is one.
     */
    private static int calibratedEverywhere(List<Row> rows, boolean salient) {
        List<String> worse = new ArrayList<>();
        int cases = 0;
        for (Row c : rows) {
            Row h = c.rotation() == Rotation.CALIBRATED ? find(rows, c.dtype(), Rotation.HADAMARD, c.group()) : null;
            if (h == null) {
                continue;
            }
            double[][] pairs = salient
                    ? new double[][] {{c.plain(), h.plain()}, {c.mixed(), h.mixed()}, {c.salient(), h.salient()}}
                    : new double[][] {{c.plain(), h.plain()}, {c.mixed(), h.mixed()}};
            String[] columns = {"plain", "+BF16", "+salient"};
            for (int i = 0; i < pairs.length; i++) {
                cases++;
                if (pairs[i][0] > pairs[i][1]) {
                    worse.add(String.format("%s G%d %s %.3f%% vs %.3f%%", c.dtype(), c.group(), columns[i],
                            100 * pairs[i][0], 100 * pairs[i][1]));
                }
            }
        }
        if (cases == 0) {
            return 0;
        }
        System.out.printf("  calibrated no worse than Hadamard, every format x G x column: %d of %d cases %s%n",
                cases - worse.size(), cases, worse.isEmpty() ? "met" : "MISSED; worse: " + String.join(", ", worse));
        return worse.isEmpty() ? 0 : 1;
    }

    /** Prints a bar's verdict on {@code err} and, when not NaN, {@code withSalient}; 0 when either meets it. */
    private static int verdict(String what, double err, double withSalient, double bar) {
        boolean ok = err <= bar || withSalient <= bar;
        System.out.printf("  %-50s %7.3f%%%s %s%n", what, 100 * err,
                Double.isNaN(withSalient) ? "" : String.format(" (+salient %.3f%%)", 100 * withSalient),
                ok ? (err <= bar ? "met" : "met with salient tokens") : "MISSED");
        return ok ? 0 : 1;
    }

    private static Row find(List<Row> rows, DType t, Rotation r) {
        return find(rows, t, r, 128);
    }

    private static Row find(List<Row> rows, DType t, Rotation r, int group) {
        for (Row row : rows) {
            if (row.dtype() == t && row.rotation() == r && row.group() == group) {
                return row;
            }
        }
        return null;
    }
}
