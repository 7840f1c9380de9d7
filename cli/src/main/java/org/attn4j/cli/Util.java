package org.attn4j.cli;

import java.io.Console;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;

import org.attn4j.Tensor;

import me.tongfei.progressbar.ConsoleProgressBarConsumer;
import me.tongfei.progressbar.ProgressBar;
import me.tongfei.progressbar.ProgressBarBuilder;
import me.tongfei.progressbar.ProgressBarStyle;

/** Small helpers shared by the commands: random data, statistics, progress. */
final class Util {
    private Util() {}

    /**
     * Fills {@code t} ([rows, heads, d]) with N(0, sigma^2) values; with {@code outliers}, two channels
     * are 6x larger and the first row of every head 3x larger (outlier channels and an attention sink,
     * as real keys have them).
     */
    static void fillRandom(Tensor t, Random rnd, double sigma, boolean outliers) {
        long rows = t.shape(0);
        long heads = t.shape(1);
        int d = (int) t.shape(2);
        long i = 0;
        for (long r = 0; r < rows; r++) {
            for (long h = 0; h < heads; h++) {
                for (int x = 0; x < d; x++, i++) {
                    double g = rnd.nextGaussian() * sigma;
                    if (outliers) {
                        if (x == 3 || x == d - 5) {
                            g *= 6;
                        }
                        if (r == 0) {
                            g *= 3;
                        }
                    }
                    t.setFlat(i, (float) g);
                }
            }
        }
    }

    /** Values of rows [from, to) of a [rows, heads, d] tensor as doubles (as stored, i.e. rounded). */
    static double[] rows(Tensor t, long from, long to) {
        long per = t.shape(1) * t.shape(2);
        double[] out = new double[(int) ((to - from) * per)];
        long base = from * per;
        for (int i = 0; i < out.length; i++) {
            out[i] = t.getFlat(base + i);
        }
        return out;
    }

    /** Percentile (0..100) of sorted values, linear interpolation. */
    /** The JSON record of a timing (CPU and GPU benches): median, p10, p90, min; callers add their counts. */
    static Map<String, Object> timesRecord(double median, double p10, double p90, double min) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("median", median);
        m.put("p10", p10);
        m.put("p90", p90);
        m.put("min", min);
        return m;
    }

    static double percentile(double[] sorted, double p) {
        if (sorted.length == 0) {
            return Double.NaN;
        }
        double pos = p / 100.0 * (sorted.length - 1);
        int lo = (int) Math.floor(pos);
        int hi = Math.min(lo + 1, sorted.length - 1);
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
    }

    static double[] sorted(double[] v) {
        double[] s = v.clone();
        Arrays.sort(s);
        return s;
    }

    /** Parses "cpu" / "cuda:N"; only the CPU runs these workloads (bench --device cuda:N goes to CudaBench). */
    static org.attn4j.Device device(String name) {
        String n = name.strip().toLowerCase(java.util.Locale.ROOT);
        if (n.equals("cpu")) {
            return org.attn4j.Device.cpu();
        }
        if (n.startsWith("cuda")) {
            throw new IllegalArgumentException("--device " + name + ": this command runs on the CPU only; use --device cpu (GPU: attn4j bench --device cuda:N)");
        }
        throw new IllegalArgumentException("--device " + name + ": expected cpu or cuda:N");
    }

    static boolean stderrIsTerminal() {
        Console c = System.console();
        return c != null && c.isTerminal();
    }

    /** A progress bar on stderr, or a silent one when {@code show} is false. */
    static ProgressBar progress(String task, long max, boolean show) {
        ProgressBarBuilder b = new ProgressBarBuilder()
                .setTaskName(task)
                .setInitialMax(max)
                .setUpdateIntervalMillis(250)
                .setStyle(ProgressBarStyle.ASCII)
                .continuousUpdate()
                .setConsumer(show ? new ConsoleProgressBarConsumer(System.err) : new SilentConsumer());
        return b.build();
    }

    private static final class SilentConsumer implements me.tongfei.progressbar.ProgressBarConsumer {
        @Override
        public int getMaxRenderedLength() {
            return 80;
        }

        @Override
        public void accept(String rendered) {}

        @Override
        public void close() {}
    }

    static String fmt(double v, int decimals) {
        if (Double.isNaN(v)) {
            return "-";
        }
        return String.format("%." + decimals + "f", v);
    }

    static String sci(double v) {
        return Double.isNaN(v) ? "NaN" : String.format("%.2e", v);
    }
}
