package org.attn4j.benchmarks;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;
import java.util.stream.IntStream;

import org.attn4j.Rotation;
import org.attn4j.quant.Calibration;
import org.attn4j.quant.Calibrator;
import org.attn4j.quant.QuantAccuracy;
import org.attn4j.quant.QuantReference;
import org.attn4j.quant.SyntheticKv;

/**
 * Salient tokens (ZipCache-style) for the quantized KV cache, an fp64 simulation: how much of the
 * decode-output error of a {@code TieredKvCache} goes away when a fraction f of its quantized middle
 * tokens is kept in BF16 instead, depending on how those tokens are chosen.
 * <ul>
 *   <li>Layer: {@link SyntheticKv}, 8192 tokens, other knobs default (32 q / 8 KV heads, head_dim
 *       128): the data of {@code attn4j verify --quant} without input files.</li>
 *   <li>Cache, as the tiered cache stores it: the first 64 tokens (sinks) and the last 256 (recent
 *       window) in BF16 (round to nearest even); the middle quantized from its BF16 values (pages
 *       move from the window to the quantized part), G128, F32 meta: each row rotated, encoded and
 *       decoded by {@link QuantReference}, rotated back. Hadamard: the float transform, as natively,
 *       clip 1. Calibrated: {@link Calibrator} on 16 {@code sampleQueries} of another draw (seed ^
 *       0x5eed) with the layer's own K/V, as {@code attn4j verify --quant} calibrates.</li>
 *   <li>Salient tokens: the {@code round(f * 7872)} middle tokens with the highest estimator score are
 *       read from BF16; one set for all KV heads ("/token", what a paged cache can store) or one per
 *       KV head ("/head"). The estimators are listed in the output.</li>
 *   <li>Error: {@code ||out - ref|| / ||ref||} over all query heads, out = fp64 attention over the
 *       stored K/V, ref = fp64 attention over the original F32 K/V ({@link Fp64Attention}).</li>
 * </ul>
 * Output: (1) the G128 rows of the accuracy table (plain = every token quantized from F32; +BF16 =
 * the tiered cache), which the native kernels' table {@code results/quant/accuracy-synthetic.txt}
 * (seed 20251123) should match to about 0.01 points: the kernels' own arithmetic adds nothing
 * visible; (2) the error per estimator and f for INT4 / INT2 with Hadamard and calibrated rotations;
 * (3) the decode attention mass left on quantized tokens (the same for every format); (4) the bytes
 * per middle token that the salient tokens cost. About 40 s on 2 cores.
 *
 * <p>Run: {@code java -cp benchmarks/target/benchmarks.jar org.attn4j.benchmarks.SalientTokenStudy [seed]}
 * (default seed 20251123, the table's). The native library is not used.
 */
public final class SalientTokenStudy {
    static final long DEFAULT_SEED = 20251123L;
    static final int TOKENS = 8192, SINKS = 64, WINDOW = 256, GROUP_SIZE = 128;
    /** Sample queries the calibrated rotation is fitted on (as {@code attn4j verify --quant}). */
    static final int CALIBRATION_QUERIES = 16;
    /** Fractions of the middle tokens kept in BF16. */
    static final double[] FRACTIONS = {0.005, 0.01, 0.02, 0.05, 0.10};
    /** Probe counts of the probe estimators (the larger one also gets the /tokmax and /head variants). */
    static final int[] PROBES = {8, 32};
    /** Stream of the recent-window probes: {@link SyntheticKv#queriesAt} salt {@code RECENT_SALT + P}. */
    static final long RECENT_SALT = 0x7EC3A7L;
    static final long RANDOM_SEED = 99;

    /** A salient-token estimator: a score per (KV head, token) ({@code perHead}) or per token ({@code perToken}). */
    private record Estimator(String name, double[][] perHead, double[] perToken) {}

    /** The (token, KV head) pairs read from BF16 for one estimator and fraction; the decode mass left on the others. */
    private record Selection(Estimator estimator, boolean[] bf16, double quantizedMass) {}

    private final long seed;
    private final SyntheticKv layer;
    private final int qoHeads, kvHeads, headDim, group;
    private final int middleFrom = SINKS, middleTo = TOKENS - WINDOW, middle = middleTo - middleFrom;
    private final Fp64Attention attention;
    private final float[] q, k, v; // the decode query, the original K/V
    private final float[] kBf16, vBf16; // K/V rounded to BF16: sinks, window, salient tokens
    private final double[] ref; // fp64 decode over the original K/V
    private final double[][] refProbs; // [qoHeads][tokens], its attention probabilities
    private final double[][] bf16Logits; // [qoHeads][tokens], logits of the decode query over kBf16

    private SalientTokenStudy(long seed) {
        this.seed = seed;
        layer = SyntheticKv.builder().tokens(TOKENS).seed(seed).build();
        qoHeads = layer.qoHeads();
        kvHeads = layer.kvHeads();
        headDim = layer.headDim();
        group = qoHeads / kvHeads;
        attention = new Fp64Attention(qoHeads, kvHeads, headDim, TOKENS);
        q = layer.q();
        k = layer.k();
        v = layer.v();
        kBf16 = bf16(k);
        vBf16 = bf16(v);
        refProbs = new double[qoHeads][];
        ref = attention.decode(attention.logits(q, k), v, refProbs);
        bf16Logits = attention.logits(q, kBf16);
    }

    public static void main(String[] args) {
        Locale.setDefault(Locale.ROOT);
        if (args.length > 1) {
            System.err.println("usage: SalientTokenStudy [seed]   (default " + DEFAULT_SEED + ")");
            System.exit(2);
        }
        long seed = args.length == 1 ? Long.parseLong(args[0]) : DEFAULT_SEED;
        long t0 = System.nanoTime();
        new SalientTokenStudy(seed).run();
        System.out.printf("%ntotal %.1f s%n", (System.nanoTime() - t0) / 1e9);
    }

    private void run() {
        System.out.printf("SalientTokenStudy: SyntheticKv seed %d, %d tokens, %d q / %d kv heads, head_dim %d; G%d, "
                + "F32 meta; BF16 %d sinks + %d recent; %d middle tokens%n", seed, TOKENS, qoHeads, kvHeads, headDim,
                GROUP_SIZE, SINKS, WINDOW, middle);
        System.out.println("fp64 simulation with QuantReference (not the kernels); error = ||out - ref|| / ||ref||, "
                + "ref = fp64 attention over the F32 K/V");
        System.out.printf("floor (every token BF16, nothing quantized): %.3f%%%n",
                100 * error(attention.decode(bf16Logits, vBf16, null)));
        double middleMass = quantizedMass(tieredMask());
        System.out.printf("decode attention mass: %.2f%% on sinks + window, %.2f%% on the middle, %.2f%% on the "
                + "generator's relevant tokens%n", 100 * (1 - middleMass), 100 * middleMass, 100 * relevantMass());

        List<Selection> selections = new ArrayList<>(); // by estimator, then by fraction: the tables' order
        for (Estimator e : estimators()) {
            for (double f : FRACTIONS) {
                boolean[] bf16 = keptInBf16(e, salientCount(f));
                selections.add(new Selection(e, bf16, quantizedMass(bf16)));
            }
        }
        List<FormatResult> results = measure(selections);

        System.out.println();
        System.out.println("== (1) reproduction of the accuracy table, G128 (plain: every token quantized; "
                + "+BF16 s/w: the tiered cache)");
        System.out.printf("%-5s %-10s %10s %10s%n", "fmt", "rotation", "plain", "+BF16 s/w");
        for (FormatResult r : results) {
            System.out.printf("%-5s %-10s %9.3f%% %9.3f%%%n", r.format(), r.rotation(), 100 * r.plain(),
                    100 * r.tiered());
        }
        System.out.println();
        printEstimatorLegend();
        System.out.println();
        System.out.print("== (2) error with salient tokens: f = fraction of the " + middle
                + " middle tokens kept in BF16 (");
        for (int i = 0; i < FRACTIONS.length; i++) {
            System.out.print((i > 0 ? ", " : "") + salientCount(FRACTIONS[i]));
        }
        System.out.println(" tokens); f = 0 is the tiered cache");
        System.out.printf("%-5s %-10s %-15s %8s%s%n", "fmt", "rotation", "estimator", "f=0", fractionHeader());
        for (FormatResult r : results) {
            for (int i = 0; r.salient() != null && i < selections.size(); i++) {
                if (i % FRACTIONS.length == 0) {
                    System.out.printf("%-5s %-10s %-15s %7.2f%%", r.format(), r.rotation(),
                            selections.get(i).estimator().name(), 100 * r.tiered());
                }
                System.out.printf(" %7.2f%%", 100 * r.salient()[i]);
                if (i % FRACTIONS.length == FRACTIONS.length - 1) {
                    System.out.println();
                }
            }
        }
        System.out.println();
        System.out.println("== (3) decode attention mass on quantized tokens (original K, mean over the " + qoHeads
                + " q heads; the same for every format)");
        System.out.printf("%-15s %8s%s%n", "estimator", "f=0", fractionHeader());
        for (int i = 0; i < selections.size(); i++) {
            if (i % FRACTIONS.length == 0) {
                System.out.printf("%-15s %7.1f%%", selections.get(i).estimator().name(), 100 * middleMass);
            }
            System.out.printf(" %7.1f%%", 100 * selections.get(i).quantizedMass());
            if (i % FRACTIONS.length == FRACTIONS.length - 1) {
                System.out.println();
            }
        }
        System.out.println();
        System.out.println("== (4) bytes per middle token per KV head, K (the same again for V), if the salient tokens "
                + "replace quantized slots (BF16 " + 2 * headDim + ")");
        System.out.printf("%-15s %8s%s%n", "format", "f=0", fractionHeader());
        for (int bits : new int[] {4, 2}) {
            // codes + an F32 scale and zero per group
            double quant = headDim * bits / 8.0 + (double) headDim / GROUP_SIZE * 2 * Float.BYTES;
            System.out.printf("%-15s %8.1f", "INT" + bits + " G" + GROUP_SIZE, quant);
            for (double f : FRACTIONS) {
                System.out.printf(" %8.1f", (1 - f) * quant + f * 2 * headDim);
            }
            System.out.println();
        }
        System.out.println("(plus an index of the salient positions; a per-head selection needs storage per (token, "
                + "KV head))");
    }

    /** Errors of one format and rotation: plain, tiered, with each selection ({@code salient}, null if not studied). */
    private record FormatResult(String format, String rotation, double plain, double tiered, double[] salient) {}

    /**
     * For INT8 / INT4 / INT2 x no / Hadamard / calibrated rotation: the plain and tiered errors; for
     * INT4 and INT2 with a rotation also the error with each selection.
     */
    private List<FormatResult> measure(List<Selection> selections) {
        float[] calibrationQueries = SyntheticKv.builder().tokens(TOKENS).seed(seed ^ 0x5eedL).build()
                .sampleQueries(CALIBRATION_QUERIES);
        List<FormatResult> results = new ArrayList<>();
        for (int bits : new int[] {8, 4, 2}) {
            for (Rotation rotation : Rotation.values()) {
                Calibration cal = rotation == Rotation.CALIBRATED ? calibrate(bits, calibrationQueries) : null;
                // plain: every token quantized from its F32 values
                float[] kq = quantized(k, bits, rotation, cal, true), vq = quantized(v, bits, rotation, cal, false);
                double plain = error(attention.decode(attention.logits(q, kq), vq, null));
                // tiered: the middle quantized from the BF16 values
                kq = quantized(kBf16, bits, rotation, cal, true);
                vq = quantized(vBf16, bits, rotation, cal, false);
                double[][] quantLogits = attention.logits(q, kq);
                double tiered = error(attention.decode(bf16Logits, vBf16, quantLogits, vq, tieredMask()));
                double[] salient = null;
                if (bits != 8 && rotation != Rotation.NONE) {
                    salient = new double[selections.size()];
                    for (int i = 0; i < salient.length; i++) {
                        boolean[] bf16 = selections.get(i).bf16();
                        salient[i] = error(attention.decode(bf16Logits, vBf16, quantLogits, vq, bf16));
                    }
                }
                results.add(new FormatResult("INT" + bits, rotation.name().toLowerCase(Locale.ROOT), plain, tiered,
                        salient));
            }
        }
        return results;
    }

    private static String fractionHeader() {
        StringBuilder sb = new StringBuilder();
        for (double f : FRACTIONS) {
            sb.append(String.format(" %8s", percent(f)));
        }
        return sb.toString();
    }

    private void printEstimatorLegend() {
        System.out.println("estimators: the score of a middle token; /token = one set for all KV heads (scores summed "
                + "over KV heads), /tokmax = the same with the max over KV heads, /head = a set per KV head");
        System.out.println("  oracle   the decode query's own attention probabilities, summed over the query heads "
                + "(upper bound)");
        System.out.println("  probeP   ZipCache normalized score from P sampleQueries at positions (i+1)*" + TOKENS
                + "/P: probability summed over the probes that see the token (causal) and the query heads, / their "
                + "number");
        System.out.println("  recentP  the same from P queriesAt the recent window, positions " + middleTo + " + (i+1)*"
                + WINDOW + "/P (independent draws)");
        System.out.println("  random   control");
    }

    // ---- Estimators ----

    /** The estimators in table order. */
    private List<Estimator> estimators() {
        List<Estimator> out = new ArrayList<>();
        double[][] oracleHead = new double[kvHeads][TOKENS];
        double[] oracleToken = new double[TOKENS];
        for (int h = 0; h < qoHeads; h++) {
            for (int t = 0; t < TOKENS; t++) {
                oracleHead[h / group][t] += refProbs[h][t];
                oracleToken[t] += refProbs[h][t];
            }
        }
        out.add(new Estimator("oracle/head", oracleHead, null));
        out.add(new Estimator("oracle/token", null, oracleToken));
        out.add(new Estimator("oracle/tokmax", null, maxOverHeads(oracleHead)));
        for (int p : PROBES) {
            // the positions of sampleQueries(p)
            long[] positions = new long[p];
            for (int i = 0; i < p; i++) {
                positions[i] = Math.max(1, Math.round((i + 1) * (double) TOKENS / p));
            }
            addProbeEstimators(out, "probe" + p, probeScores(layer.sampleQueries(p), positions), p);
        }
        for (int p : PROBES) {
            long[] positions = new long[p];
            for (int i = 0; i < p; i++) {
                positions[i] = middleTo + Math.round((i + 1) * (double) WINDOW / p);
            }
            float[] probes = layer.queriesAt(positions, RECENT_SALT + p);
            addProbeEstimators(out, "recent" + p, probeScores(probes, positions), p);
        }
        double[] random = new double[TOKENS];
        SplittableRandom rnd = new SplittableRandom(RANDOM_SEED);
        for (int t = 0; t < TOKENS; t++) {
            random[t] = rnd.nextDouble();
        }
        out.add(new Estimator("random/token", null, random));
        return out;
    }

    private void addProbeEstimators(List<Estimator> out, String name, double[][] scores, int probes) {
        double[] perToken = new double[TOKENS];
        for (double[] head : scores) {
            for (int t = 0; t < TOKENS; t++) {
                perToken[t] += head[t];
            }
        }
        out.add(new Estimator(name + "/token", null, perToken));
        if (probes == PROBES[PROBES.length - 1]) {
            out.add(new Estimator(name + "/tokmax", null, maxOverHeads(scores)));
            out.add(new Estimator(name + "/head", scores, null));
        }
    }

    /**
     * ZipCache's normalized attention score, per KV head, from probe queries {@code [P][qoHeads][d]}
     * at {@code positions} (a probe at position p sees tokens {@code [0, p)}): the probability a token
     * gets, summed over the probes and the group's query heads, divided by the number of probes that
     * see it.
     */
    private double[][] probeScores(float[] probes, long[] positions) {
        int[] seenBy = new int[TOKENS];
        for (long pos : positions) {
            for (int t = 0; t < Math.min(TOKENS, pos); t++) {
                seenBy[t]++;
            }
        }
        double[][] score = new double[kvHeads][TOKENS];
        IntStream.range(0, kvHeads).parallel().forEach(j -> {
            double[] p = new double[TOKENS];
            for (int i = 0; i < positions.length; i++) {
                int visible = (int) Math.min(TOKENS, positions[i]);
                for (int h = j * group; h < (j + 1) * group; h++) {
                    attention.probabilities(probes, (i * qoHeads + h) * headDim, k, j, visible, p);
                    for (int t = 0; t < visible; t++) {
                        score[j][t] += p[t];
                    }
                }
            }
            for (int t = 0; t < TOKENS; t++) {
                score[j][t] = seenBy[t] == 0 ? 0 : score[j][t] / seenBy[t];
            }
        });
        return score;
    }

    private static double[] maxOverHeads(double[][] perHead) {
        double[] out = new double[TOKENS];
        for (double[] head : perHead) {
            for (int t = 0; t < TOKENS; t++) {
                out[t] = Math.max(out[t], head[t]);
            }
        }
        return out;
    }

    // ---- Selections ----

    private int salientCount(double fraction) {
        return (int) Math.round(fraction * middle);
    }

    /** {@code [tokens][kvHeads]}: true for the pairs the tiered cache keeps in BF16 (sinks, window). */
    private boolean[] tieredMask() {
        boolean[] mask = new boolean[TOKENS * kvHeads];
        Arrays.fill(mask, 0, middleFrom * kvHeads, true);
        Arrays.fill(mask, middleTo * kvHeads, TOKENS * kvHeads, true);
        return mask;
    }

    /** The tiered cache's BF16 pairs plus the {@code n} top-scored middle tokens of the estimator. */
    private boolean[] keptInBf16(Estimator e, int n) {
        boolean[] mask = tieredMask();
        for (int j = 0; j < kvHeads; j++) {
            for (int t : topMiddle(e.perToken() != null ? e.perToken() : e.perHead()[j], n)) {
                mask[t * kvHeads + j] = true;
            }
        }
        return mask;
    }

    /** The middle positions with the {@code n} highest scores (ties: lower position first). */
    private int[] topMiddle(double[] score, int n) {
        Integer[] idx = new Integer[middle];
        for (int i = 0; i < middle; i++) {
            idx[i] = middleFrom + i;
        }
        Arrays.sort(idx, (a, b) -> Double.compare(score[b], score[a])); // stable
        int[] out = new int[n];
        for (int i = 0; i < n; i++) {
            out[i] = idx[i];
        }
        return out;
    }

    /** Decode attention mass (mean over the query heads, original K) on middle pairs not in {@code bf16}. */
    private double quantizedMass(boolean[] bf16) {
        double mass = 0;
        for (int h = 0; h < qoHeads; h++) {
            for (int t = middleFrom; t < middleTo; t++) {
                if (!bf16[t * kvHeads + h / group]) {
                    mass += refProbs[h][t] / qoHeads;
                }
            }
        }
        return mass;
    }

    private double relevantMass() {
        double mass = 0;
        for (int h = 0; h < qoHeads; h++) {
            for (int t : layer.relevantTokens(h / group)) {
                mass += refProbs[h][t] / qoHeads;
            }
        }
        return mass;
    }

    // ---- The cache model ----

    private Calibration calibrate(int bits, float[] sampleQueries) {
        long t0 = System.nanoTime();
        Calibrator.LayerSamples samples = new Calibrator.LayerSamples(sampleQueries, CALIBRATION_QUERIES, qoHeads, k, v,
                TOKENS, kvHeads, headDim);
        Calibration cal = new Calibrator(bits, GROUP_SIZE).calibrate(List.of(samples)).calibration();
        StringBuilder clips = new StringBuilder();
        for (int j = 0; j < kvHeads; j++) {
            clips.append(String.format(" %.2f", cal.kClip(0, j)));
        }
        clips.append(" V");
        for (int j = 0; j < kvHeads; j++) {
            clips.append(String.format(" %.2f", cal.vClip(0, j)));
        }
        System.out.printf("calibrated INT%d G%d in %.1f s; clips K%s%n", bits, GROUP_SIZE,
                (System.nanoTime() - t0) / 1e9, clips);
        return cal;
    }

    /**
     * {@code x [tokens][kvHeads][d]} stored quantized and read back: each row rotated, quantized with
     * F32 meta and decoded ({@link QuantReference#roundTrip}), rotated back to the original basis.
     */
    private float[] quantized(float[] x, int bits, Rotation rotation, Calibration cal, boolean keys) {
        float[][] matrix = new float[kvHeads][]; // calibrated: [kvHead][d][d]
        float[] clip = new float[kvHeads];
        for (int j = 0; j < kvHeads; j++) {
            matrix[j] = cal == null ? null : keys ? cal.kRotation(0, j) : cal.vRotation(0, j);
            clip[j] = cal == null ? 1f : keys ? cal.kClip(0, j) : cal.vClip(0, j);
        }
        float[] out = new float[x.length];
        IntStream.range(0, TOKENS).parallel().forEach(t -> {
            float[] row = new float[headDim], decoded = new float[headDim];
            double[] acc = new double[headDim];
            for (int j = 0; j < kvHeads; j++) {
                int off = (t * kvHeads + j) * headDim;
                switch (rotation) {
                    case NONE -> QuantReference.roundTrip(x, off, headDim, bits, GROUP_SIZE, clip[j], out);
                    case HADAMARD -> {
                        System.arraycopy(x, off, row, 0, headDim);
                        QuantReference.hadamard(row, 0, headDim);
                        QuantReference.roundTrip(row, 0, headDim, bits, GROUP_SIZE, clip[j], decoded);
                        for (int c = 0; c < headDim; c++) {
                            acc[c] = decoded[c];
                        }
                        QuantReference.hadamard(acc); // orthonormal and symmetric: its own inverse
                        for (int c = 0; c < headDim; c++) {
                            out[off + c] = (float) acc[c];
                        }
                    }
                    case CALIBRATED -> {
                        float[] r = matrix[j];
                        // y = x R (double accumulation, as the native rotate_row)
                        Arrays.fill(acc, 0);
                        for (int i = 0; i < headDim; i++) {
                            double xi = x[off + i];
                            for (int c = 0; c < headDim; c++) {
                                acc[c] += xi * r[i * headDim + c];
                            }
                        }
                        for (int c = 0; c < headDim; c++) {
                            row[c] = (float) acc[c];
                        }
                        QuantReference.roundTrip(row, 0, headDim, bits, GROUP_SIZE, clip[j], decoded);
                        // x = y R^T
                        for (int i = 0; i < headDim; i++) {
                            double sum = 0;
                            for (int c = 0; c < headDim; c++) {
                                sum += (double) decoded[c] * r[i * headDim + c];
                            }
                            out[off + i] = (float) sum;
                        }
                    }
                }
            }
        });
        return out;
    }

    private double error(double[] out) {
        return QuantAccuracy.relativeError(out, ref);
    }

    /** 0.005 -> "0.5%", 0.05 -> "5%". */
    private static String percent(double f) {
        return String.format("%.1f", 100 * f).replaceAll("\\.0$", "") + "%";
    }

    /** Round to nearest even BF16, kept as float (NaN unchanged). */
    private static float[] bf16(float[] x) {
        float[] y = new float[x.length];
        for (int i = 0; i < x.length; i++) {
            int u = Float.floatToRawIntBits(x[i]);
            y[i] = Float.isNaN(x[i]) ? x[i] : Float.intBitsToFloat((u + 0x7fff + ((u >>> 16) & 1)) & 0xffff0000);
        }
        return y;
    }
}
