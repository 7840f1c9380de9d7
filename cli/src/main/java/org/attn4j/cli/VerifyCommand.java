package org.attn4j.cli;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.Callable;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.Device;
import org.attn4j.PageTable;
import org.attn4j.PagedKvCache;
import org.attn4j.PrefillPlan;
import org.attn4j.Tensor;

import me.tongfei.progressbar.ProgressBar;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code attn4j verify}: every supported combination against the float64 reference on fresh
 * random data. Exit code 1 when any case fails.
 */
@Command(name = "verify", mixinStandardHelpOptions = true,
        description = {"Check every supported combination (q/kv/out dtypes, head_dim 64/128, GQA 1/4/8, "
                + "page 1/16/64; decode, prefill causal and not, paged prefill; output and LSE) against a "
                + "float64 reference on random data. Exit code 1 on any failure.",
                "Error: ||out - ref|| / ||ref||; tolerance 1e-5 when q, KV and out are all F32, else 1e-2."})
final class VerifyCommand implements Callable<Integer> {
    @Option(names = "--device", paramLabel = "DEVICE", description = "cpu (default); cuda:N once the CUDA backend lands.")
    String device = "cpu";

    @Option(names = "--threads", description = "CPU threads (default: all available cores).")
    int threads = 0;

    @Option(names = "--seed", description = "Base seed (each case derives its own; printed on failure).")
    long seed = 20251123L;

    @Option(names = "--quick", description = "A subset: q and out share one dtype; pages 1 and 16.")
    boolean quick;

    @Option(names = "--all", description = "Print every case, not one row per mode and dtype combination.")
    boolean all;

    @Option(names = "--mode", split = ",",
            description = "Only these modes: ${COMPLETION-CANDIDATES} (default: all).")
    List<Mode> modes;

    @Option(names = "--progress", negatable = true, description = "Progress bar on stderr (default: when a terminal).")
    Boolean progress;

    @Option(names = "--quant", description = "Accuracy of the quantized KV formats (INT8/INT4/INT2 x rotation x group "
            + "size, plain and with BF16 sinks/window) on one layer: synthetic data, or --q/--k/--v.")
    boolean quant;

    @Option(names = "--q", paramLabel = "FILE", description = "--quant input: query .npy [qo_heads, d] or [n, qo_heads, d]: "
            + "the last row is the decode query, the rows before it the queries of the last tokens (salient-token probes).")
    java.nio.file.Path qFile;

    @Option(names = "--k", paramLabel = "FILE", description = "--quant input: keys .npy [tokens, kv_heads, d].")
    java.nio.file.Path kFile;

    @Option(names = "--v", paramLabel = "FILE", description = "--quant input: values .npy [tokens, kv_heads, d].")
    java.nio.file.Path vFile;

    @Option(names = "--tokens", defaultValue = "8192", description = "--quant synthetic data: tokens (default ${DEFAULT-VALUE}).")
    int tokens;

    @Option(names = "--sinks", defaultValue = "64", description = "--quant: BF16 sink tokens (default ${DEFAULT-VALUE}).")
    int sinks;

    @Option(names = "--window", defaultValue = "256", description = "--quant: BF16 recent tokens (default ${DEFAULT-VALUE}).")
    int window;

    @Option(names = "--salient", defaultValue = "0.05", description = "--quant: fraction of the middle tokens kept in "
            + "BF16 as salient tokens in the third column (default ${DEFAULT-VALUE}; 0 leaves the column out).")
    double salient;

    @Option(names = "--calibration", paramLabel = "FILE",
            description = "--quant: a file from `attn4j calibrate` for the calibrated rows of its bits and group size "
                    + "(default: calibrate on the inputs).")
    java.nio.file.Path calibrationFile;

    enum Mode {
        decode("decode (paged)", false, true),
        prefill_causal("prefill causal", true, false),
        prefill("prefill", false, false),
        paged_prefill_causal("paged prefill causal", true, true),
        paged_prefill("paged prefill", false, true);

        final String label;
        final boolean causal;
        final boolean paged;

        Mode(String label, boolean causal, boolean paged) {
            this.label = label;
            this.causal = causal;
            this.paged = paged;
        }
    }

    record Case(Mode mode, DType q, DType kv, DType out, int headDim, int gqa, int pageSize, long seed) {
        String dtypes() {
            return q + "/" + kv + "/" + out;
        }

        double tolerance() {
            return q == DType.F32 && kv == DType.F32 && out == DType.F32 ? 1e-5 : 1e-2;
        }
    }

    record Outcome(Case c, String shape, double outErr, double lseErr, String error) {
        boolean passed() {
            return error == null && outErr <= c.tolerance() && lseErr <= c.tolerance();
        }
    }

    static final DType[] FLOATS = {DType.F32, DType.F16, DType.BF16};
    static final int KV_HEADS = 2;

    @Override
    public Integer call() throws java.io.IOException {
        boolean files = qFile != null || kFile != null || vFile != null;
        if (quant || files) {
            if (files && (qFile == null || kFile == null || vFile == null)) {
                throw new picocli.CommandLine.ParameterException(new picocli.CommandLine(this),
                        "--q, --k and --v go together (got " + (qFile != null ? "--q " : "") + (kFile != null ? "--k " : "")
                                + (vFile != null ? "--v" : "") + ")");
            }
            QuantVerify.Layer layer = files ? QuantVerify.fromNpy(qFile, kFile, vFile) : QuantVerify.synthetic(seed, tokens);
            org.attn4j.quant.Calibration cal = null;
            if (calibrationFile != null) {
                cal = org.attn4j.quant.Calibration.load(calibrationFile);
                cal.requireMatches(1, layer.kvHeads(), layer.headDim(), cal.bits(), cal.groupSize());
            }
            try (Attn4j lib = Attn4j.open(Util.device(device), threads)) {
                return QuantVerify.run(lib, layer, sinks, window, salient,
                        progress != null ? progress : Util.stderrIsTerminal(), cal);
            }
        }
        List<Case> cases = cases();
        List<Outcome> outcomes = new ArrayList<>(cases.size());
        boolean show = progress != null ? progress : Util.stderrIsTerminal();
        long t0 = System.nanoTime();
        try (Attn4j lib = Attn4j.open(Util.device(device), threads);
                ProgressBar pb = Util.progress("verify", cases.size(), show)) {
            System.out.println("attn4j verify: " + cases.size() + " cases, " + lib.threads() + " threads, "
                    + "cpu " + Attn4j.cpuInfo());
            for (Case c : cases) {
                outcomes.add(run(lib, c));
                pb.step();
            }
        }
        double secs = (System.nanoTime() - t0) / 1e9;
        print(outcomes);
        long failed = outcomes.stream().filter(o -> !o.passed()).count();
        System.out.printf("%n%d of %d cases passed, %d failed (%.1f s).%n", outcomes.size() - failed,
                outcomes.size(), failed, secs);
        if (failed > 0) {
            System.out.println("FAILED");
            return 1;
        }
        System.out.println("PASSED");
        return 0;
    }

    List<Case> cases() {
        List<Case> list = new ArrayList<>();
        Random r = new Random(seed);
        for (Mode m : Mode.values()) {
            if (modes != null && !modes.contains(m)) {
                continue;
            }
            int[] pages = m.paged ? (quick ? new int[] {1, 16} : new int[] {1, 16, 64}) : new int[] {0};
            for (DType q : FLOATS) {
                for (DType kv : FLOATS) {
                    for (DType out : FLOATS) {
                        if (quick && out != q) {
                            continue;
                        }
                        for (int d : new int[] {64, 128}) {
                            for (int gqa : new int[] {1, 4, 8}) {
                                for (int page : pages) {
                                    list.add(new Case(m, q, kv, out, d, gqa, page, r.nextLong()));
                                }
                            }
                        }
                    }
                }
            }
        }
        return list;
    }

    static Outcome run(Attn4j lib, Case c) {
        Random rnd = new Random(c.seed());
        int qHeads = KV_HEADS * c.gqa();
        int d = c.headDim();
        boolean decode = c.mode() == Mode.decode;
        int batch = 1 + rnd.nextInt(3);
        int[] nQ = new int[batch];
        int[] nKv = new int[batch];
        int[] qoIndptr = new int[batch + 1];
        int[] kvIndptr = new int[batch + 1];
        for (int b = 0; b < batch; b++) {
            if (decode) {
                nQ[b] = 1;
                // the first sequence is long enough for split-KV paths
                nKv[b] = b == 0 ? 1 + rnd.nextInt(2000) : 1 + rnd.nextInt(300);
            } else {
                nQ[b] = 1 + rnd.nextInt(64);
                nKv[b] = c.mode().causal ? nQ[b] + rnd.nextInt(300) : 1 + rnd.nextInt(300);
            }
            qoIndptr[b + 1] = qoIndptr[b] + nQ[b];
            kvIndptr[b + 1] = kvIndptr[b] + nKv[b];
        }
        int totQ = qoIndptr[batch];
        int totKv = kvIndptr[batch];
        String shape = "d=" + d + " heads=" + qHeads + "/" + KV_HEADS + (c.pageSize() > 0 ? " page=" + c.pageSize() : "")
                + " q=" + java.util.Arrays.toString(nQ) + " kv=" + java.util.Arrays.toString(nKv);
        double scale = 1.0 / Math.sqrt(d);
        try (Arena arena = Arena.ofConfined()) {
            Tensor q = Tensor.allocate(arena, c.q(), totQ, qHeads, d);
            Tensor k = Tensor.allocate(arena, c.kv(), totKv, KV_HEADS, d);
            Tensor v = Tensor.allocate(arena, c.kv(), totKv, KV_HEADS, d);
            Util.fillRandom(q, rnd, 1.0, false);
            Util.fillRandom(k, rnd, 1.0, true);
            Util.fillRandom(v, rnd, 1.0, false);
            Tensor out = Tensor.allocate(arena, c.out(), totQ, qHeads, d);
            Tensor lse = Tensor.allocate(arena, DType.F32, totQ, qHeads);
            out.fill(Float.NaN);
            lse.fill(Float.NaN);
            Tensor qoInd = Tensor.ofInts(arena, qoIndptr);
            Tensor kvInd = Tensor.ofInts(arena, kvIndptr);
            if (c.mode().paged) {
                int pagesNeeded = 1;
                for (int n : nKv) {
                    pagesNeeded += (n + c.pageSize() - 1) / c.pageSize();
                }
                try (PagedKvCache cache = PagedKvCache.builder(lib).kvHeads(KV_HEADS).headDim(d)
                        .pageSize(c.pageSize()).numPages(pagesNeeded).dtype(c.kv()).build()) {
                    int[] seqs = new int[batch];
                    for (int b = 0; b < batch; b++) {
                        seqs[b] = cache.newSequence();
                    }
                    cache.append(seqs, nKv, k, v);
                    PageTable table = cache.pageTable(seqs);
                    if (decode) {
                        try (DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(qHeads).qDType(c.q())
                                .outDType(c.out()).maxBatch(batch).build()) {
                            plan.run(q, cache, 0, table, out, lse);
                        }
                    } else {
                        try (PrefillPlan plan = Attention.prefill(lib).forCache(cache).qoHeads(qHeads)
                                .qDType(c.q()).outDType(c.out()).causal(c.mode().causal).maxBatch(batch).build()) {
                            plan.run(q, qoInd, cache, 0, table, out, lse);
                        }
                    }
                }
            } else {
                try (PrefillPlan plan = Attention.prefill(lib).qoHeads(qHeads).kvHeads(KV_HEADS).headDim(d)
                        .qDType(c.q()).kvDType(c.kv()).outDType(c.out()).causal(c.mode().causal).maxBatch(batch)
                        .build()) {
                    plan.run(q, qoInd, k, v, kvInd, out, lse);
                }
            }
            // float64 reference on the inputs as stored (already rounded to their dtypes)
            double[] refOut = new double[totQ * qHeads * d];
            double[] refLse = new double[totQ * qHeads];
            for (int b = 0; b < batch; b++) {
                Reference.Result r = Reference.attention(Util.rows(q, qoIndptr[b], qoIndptr[b + 1]), nQ[b],
                        Util.rows(k, kvIndptr[b], kvIndptr[b + 1]), Util.rows(v, kvIndptr[b], kvIndptr[b + 1]),
                        nKv[b], qHeads, KV_HEADS, d, scale, c.mode().causal);
                System.arraycopy(r.out(), 0, refOut, qoIndptr[b] * qHeads * d, r.out().length);
                System.arraycopy(r.lse(), 0, refLse, qoIndptr[b] * qHeads, r.lse().length);
            }
            return new Outcome(c, shape, Reference.relError(out.toFloatArray(), refOut),
                    Reference.relError(lse.toFloatArray(), refLse), null);
        } catch (RuntimeException e) {
            return new Outcome(c, shape, Double.NaN, Double.NaN, e.getClass().getSimpleName() + ": " + e.getMessage());
        }
    }

    private void print(List<Outcome> outcomes) {
        String head = String.format("%-22s %-14s %6s %6s %10s %10s %8s  %s", "mode", "q/kv/out", "cases", "pass",
                "max err", "max lse", "tol", "result");
        System.out.println();
        if (all) {
            System.out.printf("%-22s %-14s %-52s %10s %10s %8s  %s%n", "mode", "q/kv/out", "shape", "err", "lse err",
                    "tol", "result");
            for (Outcome o : outcomes) {
                System.out.printf("%-22s %-14s %-52s %10s %10s %8s  %s%n", o.c().mode().label, o.c().dtypes(),
                        o.shape(), Util.sci(o.outErr()), Util.sci(o.lseErr()), Util.sci(o.c().tolerance()),
                        o.passed() ? "PASS" : "FAIL");
            }
            System.out.println();
        }
        System.out.println(head);
        Map<String, List<Outcome>> groups = new LinkedHashMap<>();
        for (Outcome o : outcomes) {
            groups.computeIfAbsent(o.c().mode().label + "|" + o.c().dtypes(), x -> new ArrayList<>()).add(o);
        }
        for (List<Outcome> g : groups.values()) {
            Case c0 = g.get(0).c();
            long pass = g.stream().filter(Outcome::passed).count();
            double maxErr = g.stream().mapToDouble(o -> Double.isNaN(o.outErr()) ? Double.POSITIVE_INFINITY : o.outErr())
                    .max().orElse(Double.NaN);
            double maxLse = g.stream().mapToDouble(o -> Double.isNaN(o.lseErr()) ? Double.POSITIVE_INFINITY : o.lseErr())
                    .max().orElse(Double.NaN);
            System.out.printf("%-22s %-14s %6d %6d %10s %10s %8s  %s%n", c0.mode().label, c0.dtypes(), g.size(), pass,
                    Util.sci(maxErr), Util.sci(maxLse), Util.sci(c0.tolerance()), pass == g.size() ? "PASS" : "FAIL");
        }
        List<Outcome> failures = outcomes.stream().filter(o -> !o.passed()).toList();
        if (!failures.isEmpty()) {
            System.out.println();
            System.out.println("Failures (first 30; reproduce with the seed):");
            for (Outcome o : failures.subList(0, Math.min(30, failures.size()))) {
                System.out.printf("  %s %s gqa=%d %s seed=%d: err %s lse %s tol %s%s%n", o.c().mode().label,
                        o.c().dtypes(), o.c().gqa(), o.shape(), o.c().seed(), Util.sci(o.outErr()),
                        Util.sci(o.lseErr()), Util.sci(o.c().tolerance()), o.error() == null ? "" : " -- " + o.error());
            }
        }
    }
}
