package org.attn4j.cli;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.LocalDateTime;
import java.time.OffsetDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.Callable;
import java.util.regex.Pattern;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.Device;
import org.attn4j.KvFormat;
import org.attn4j.PageTable;
import org.attn4j.PagedKvCache;
import org.attn4j.PrefillPlan;
import org.attn4j.Rotation;
import org.attn4j.Tensor;
import org.attn4j.quant.QuantReference;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;

import me.tongfei.progressbar.ProgressBar;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code attn4j bench}: decode and prefill workloads on the CPU, against the memory read bandwidth
 * measured in the same run and, when its results file exists, llama.cpp's CPU flash attention.
 */
@Command(name = "bench", mixinStandardHelpOptions = true,
        description = {"Benchmark paged decode (BF16/F16/F32 and INT8/INT4/INT2 KV, 16k and 64k tokens) and causal prefill "
                + "(512 new tokens over 4k/16k) on the CPU; shapes 32 q / 8 kv heads, head_dim 128, batch 1.",
                "Decode is judged against the STREAM-like read bandwidth measured in the same run; prefill in "
                + "GFLOP/s = 4 * q_heads * head_dim * (sum over queries of visible keys) / time.",
                "--device cuda:N: BF16 paged decode (1x4k, 1x32k, 1x128k, 64x4k) and causal prefill (16k, 32k) on that "
                + "GPU, with PyTorch SDPA (cuDNN, flash) timed on the same shapes in the same run (--peer).",
                "Table on stdout, progress on stderr, JSON results and a PNG chart in --out."})
final class BenchCommand implements Callable<Integer> {
    @Option(names = "--device", paramLabel = "DEVICE",
            description = "cpu (default), or cuda:N (cuda = cuda:0): the GPU workloads on CUDA device N, timed from Java "
                    + "(median of wall-clock batches ending in one stream synchronize; decode also as a CUDA graph), "
                    + "with the PyTorch SDPA peer.")
    String device = "cpu";

    @Option(names = "--peer", paramLabel = "auto|torch|none",
            description = "CUDA only: time PyTorch SDPA (cuDNN and flash backends) on the same shapes through "
                    + "benchmarks/peers/torch_sdpa_{decode,prefill}.py (default auto: when the scripts exist and "
                    + "'python -c \"import torch\"' works).")
    String peer = "auto";

    @Option(names = "--peer-scripts", paramLabel = "DIR",
            description = "CUDA only: folder of the PyTorch peer scripts (default: benchmarks/peers in the working directory).")
    Path peerScripts;

    @Option(names = "--python", paramLabel = "PYTHON", description = "CUDA only: the python running the peer (default: python3).")
    String python = "python3";

    @Option(names = "--threads", description = "CPU threads (default: all available cores).")
    int threads = 0;

    @Option(names = "--quick", description = "A short run: fewer cases and repetitions (about a minute).")
    boolean quick;

    @Option(names = "--out", paramLabel = "DIR",
            description = "Results directory (default: benchmarks/results/<date>/ in the attn4j checkout, "
                    + "else ./attn4j-results/<date>/).")
    Path out;

    // defaultValue: without it picocli ignored --no-json (the field's initializer is not a negatable default)
    @Option(names = "--json", negatable = true, defaultValue = "true", fallbackValue = "true",
            description = "Write the JSON results file (default: true).")
    boolean json = true;

    // defaultValue: without it picocli ignored --no-png (the field's initializer is not a negatable default)
    @Option(names = "--png", negatable = true, defaultValue = "true", fallbackValue = "true",
            description = "Write the PNG chart (default: true).")
    boolean png = true;

    @Option(names = "--llamacpp", paramLabel = "FILE",
            description = "llama.cpp peer results (default: benchmarks/results/llamacpp-cpu.json when present).")
    Path llamacpp;

    @Option(names = "--only", paramLabel = "REGEX", description = "Only workloads whose name matches (e.g. 'decode.*bf16').")
    Pattern only;

    @Option(names = "--min-time", paramLabel = "SECONDS",
            description = "Least time measured per workload (default: 3, or 0.5 with --quick; on CUDA per timing mode: "
                    + "1, or 0.25 with --quick).")
    Double minTime;

    @Option(names = "--bw-bytes", paramLabel = "BYTES", description = "Read-bandwidth buffer (default: 1 GiB).")
    long bwBytes = 1L << 30;

    @Option(names = "--max-rotation-bytes", paramLabel = "BYTES",
            description = "Cap on the KV memory rotated over to defeat the last-level cache (default: 1.5 GiB).")
    long maxRotationBytes = 3L << 29;

    @Option(names = "--progress", negatable = true, description = "Progress bar on stderr (default: when a terminal).")
    Boolean progress;

    static final int Q_HEADS = 32;
    static final int KV_HEADS = 8;
    static final int HEAD_DIM = 128;
    static final int PAGE = 16;

    /** One workload to run. */
    /** {@code format}: how decode stores KV (the quantized formats take BF16 rows on write). */
    record Workload(String name, String kind, DType kv, KvFormat format, long kvLen, long qLen) {
        Workload(String name, String kind, DType kv, long kvLen, long qLen) {
            this(name, kind, kv, KvFormat.of(kv), kvLen, qLen);
        }

        /** Output check tolerance (quantized formats are checked against their own decoded values). */
        double tolerance() {
            return 1e-2;
        }
    }

    /** Times of one workload, in microseconds. */
    record Times(double median, double p10, double p90, double min, int runs) {}

    @Override
    public Integer call() throws IOException {
        if (CudaBench.cudaOrdinal(device) >= 0) {
            return new CudaBench(this).run();
        }
        Path home = Path.of(System.getProperty("attn4j.home", "."));
        Path peerFile = llamacpp != null ? llamacpp : home.resolve("benchmarks/results/llamacpp-cpu.json");
        LlamaCppBaseline peer = null;
        if (Files.isRegularFile(peerFile)) {
            try {
                peer = LlamaCppBaseline.load(peerFile);
            } catch (IOException | RuntimeException e) {
                System.err.println("warning: could not read " + peerFile + ": " + e.getMessage());
            }
        } else if (llamacpp != null) {
            throw new IOException("--llamacpp: no such file " + llamacpp);
        }
        // Ratios against a peer are only meaningful on the same CPU model.
        if (peer != null && !peer.cpuModel().equals(SystemInfo.cpuModel())) {
            System.err.println("note: " + peerFile + " was measured on '" + peer.cpuModel() + "', this CPU is '"
                    + SystemInfo.cpuModel() + "': llama.cpp ratios left out (benchmarks/peers/llamacpp-cpu.sh "
                    + "re-measures the peer here)");
            peer = null;
        }
        List<Workload> workloads = workloads();
        double least = minTime != null ? minTime : quick ? 0.5 : 3.0;
        boolean show = progress != null ? progress : Util.stderrIsTerminal();
        long llc = SystemInfo.lastLevelCacheBytes();

        List<Map<String, Object>> rows = new ArrayList<>();
        double bwStart;
        double bwEnd;
        int bwRepeats = quick ? 3 : 10;
        try (Attn4j lib = Attn4j.open(Util.device(device), threads);
                ProgressBar pb = Util.progress("bench", workloads.size() + 2, show)) {
            System.out.println("attn4j bench: cpu " + SystemInfo.cpuModel() + ", " + lib.threads() + " threads, "
                    + Attn4j.cpuInfo() + ", LLC " + InfoCommand.mib(llc) + ", load " + SystemInfo.loadAvg());
            pb.setExtraMessage("read bandwidth");
            bwStart = lib.measureReadBandwidth(bwBytes, bwRepeats);
            pb.step();
            for (Workload w : workloads) {
                pb.setExtraMessage(w.name());
                rows.add(w.kind().equals("decode") ? decode(lib, w, least, llc) : prefill(lib, w, least));
                pb.step();
            }
            pb.setExtraMessage("read bandwidth");
            bwEnd = lib.measureReadBandwidth(bwBytes, bwRepeats);
            pb.step();
        }
        double readBw = Math.max(bwStart, bwEnd);
        for (Map<String, Object> r : rows) {
            addComparisons(r, readBw, peer);
        }
        printTable(rows, readBw, bwStart, bwEnd, peer);

        Map<String, Object> doc = new LinkedHashMap<>();
        doc.put("tool", "attn4j bench");
        doc.put("date", OffsetDateTime.now().toString());
        doc.put("machine", SystemInfo.machine(threads == 0 ? Runtime.getRuntime().availableProcessors() : threads));
        Map<String, Object> settings = new LinkedHashMap<>();
        settings.put("quick", quick);
        settings.put("min_time_s", least);
        settings.put("shape", "q_heads=" + Q_HEADS + " kv_heads=" + KV_HEADS + " head_dim=" + HEAD_DIM
                + " batch=1 page_size=" + PAGE + " (decode)");
        settings.put("q_out_dtype", "BF16");
        settings.put("timing", "System.nanoTime around each Java API run() call; warm-up first; median/p10/p90 over runs;"
                + " decode rotates over several layers of KV so the last-level cache cannot hold it");
        settings.put("kv_bytes", "2 * kv_len * kv_heads * head_dim * bytes_per_element (K and V)");
        settings.put("gflops", "4 * q_heads * head_dim * sum over queries of visible keys / time; causal bottom-right:"
                + " q_len*(kv_len-q_len) + q_len*(q_len+1)/2 visible pairs");
        settings.put("ratio_llamacpp", "llama.cpp time / attn4j time (> 1: attn4j faster), same shape");
        doc.put("settings", settings);
        Map<String, Object> bw = new LinkedHashMap<>();
        bw.put("gbps", readBw);
        bw.put("gbps_start", bwStart);
        bw.put("gbps_end", bwEnd);
        bw.put("buffer_bytes", bwBytes);
        bw.put("repeats", bwRepeats);
        bw.put("method", "attn4j_measure_read_bandwidth: STREAM-like read kernel on the context's threads, best of repeats;"
                + " the larger of the runs at start and end is the roofline");
        doc.put("read_bandwidth", bw);
        if (peer != null) {
            Map<String, Object> p = new LinkedHashMap<>();
            p.put("file", peer.file().toString());
            p.put("ggml_commit", peer.commit());
            p.put("date", peer.date());
            p.put("threads", peer.threads());
            doc.put("llamacpp", p);
        }
        doc.put("workloads", rows);

        if (json || png) {
            Path dir = out != null ? out : defaultOut(home);
            Files.createDirectories(dir);
            String stamp = LocalDateTime.now().format(DateTimeFormatter.ofPattern("HHmmss"));
            String base = "bench-cpu-" + (quick ? "quick-" : "") + stamp;
            if (json) {
                Path f = dir.resolve(base + ".json");
                new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT).writeValue(f.toFile(), doc);
                System.out.println("JSON:  " + f);
            }
            if (png) {
                Path f = dir.resolve(base + ".png");
                try {
                    Charts.write(f, rows, readBw, peer != null);
                    System.out.println("chart: " + f);
                } catch (IOException | RuntimeException | LinkageError e) {
                    System.err.println("warning: could not draw the chart: " + e);
                }
            }
        }
        boolean bad = rows.stream().anyMatch(r -> !(((Number) r.get("check_rel_err")).doubleValue()
                <= ((Number) r.get("check_tolerance")).doubleValue()));
        return bad ? 1 : 0;
    }

    private static Path defaultOut(Path home) {
        String date = LocalDateTime.now().format(DateTimeFormatter.ISO_LOCAL_DATE);
        if (Files.isDirectory(home.resolve("benchmarks"))) {
            return home.resolve("benchmarks/results").resolve(date);
        }
        return Path.of("attn4j-results", date);
    }

    List<Workload> workloads() {
        List<Workload> all = new ArrayList<>();
        DType[] kvTypes = {DType.BF16, DType.F16, DType.F32};
        for (DType kv : kvTypes) {
            for (long len : new long[] {16384, 65536}) {
                if (quick && kv != DType.BF16 && len > 16384) {
                    continue;
                }
                all.add(new Workload("decode " + (len / 1024) + "k " + name(kv), "decode", kv, len, 1));
            }
        }
        for (DType kv : new DType[] {DType.INT8, DType.INT4, DType.INT2}) {
            for (long len : new long[] {16384, 65536}) {
                if (quick && len > 16384) {
                    continue;
                }
                KvFormat f = KvFormat.quantized(kv, 128).withRotation(Rotation.HADAMARD);
                all.add(new Workload("decode " + (len / 1024) + "k " + name(kv) + " g128 had", "decode", kv, f, len, 1));
            }
        }
        all.add(new Workload("prefill 512/4k causal bf16", "prefill", DType.BF16, 4096, 512));
        if (!quick) {
            all.add(new Workload("prefill 512/4k causal f16", "prefill", DType.F16, 4096, 512));
            all.add(new Workload("prefill 512/16k causal bf16", "prefill", DType.BF16, 16384, 512));
        }
        return all.stream().filter(w -> only == null || only.matcher(w.name()).find()).toList();
    }

    static String name(DType t) {
        return t.name().toLowerCase(Locale.ROOT);
    }

    // ---- decode ----

    private Map<String, Object> decode(Attn4j lib, Workload w, double least, long llc) {
        long kvBytes = 2L * w.kvLen() * KV_HEADS * w.format().tokenBytes(HEAD_DIM);
        DType rows = w.kv().isQuantized() ? DType.BF16 : w.kv();
        long target = llc > 0 ? 2 * llc : 512L << 20;
        int layers = (int) Math.max(2, Math.min(ceilDiv(target, kvBytes), Math.max(2, maxRotationBytes / kvBytes)));
        int pages = (int) ceilDiv(w.kvLen(), PAGE);
        Random rnd = new Random(42);
        Times t;
        double checkErr;
        try (PagedKvCache cache = PagedKvCache.builder(lib).layers(layers).kvHeads(KV_HEADS).headDim(HEAD_DIM)
                .pageSize(PAGE).numPages(pages).format(w.format()).build();
                Arena arena = Arena.ofConfined()) {
            int seq = cache.newSequence();
            int chunk = 4096;
            Tensor[] ks = {randomRows(arena, rows, chunk, rnd, true), randomRows(arena, rows, chunk, rnd, true)};
            Tensor[] vs = {randomRows(arena, rows, chunk, rnd, false), randomRows(arena, rows, chunk, rnd, false)};
            int c = 0;
            for (long pos = 0; pos < w.kvLen(); pos += chunk, c++) {
                int n = (int) Math.min(chunk, w.kvLen() - pos);
                PagedKvCache.Reservation r = cache.reserve(new int[] {seq}, new int[] {n});
                for (int l = 0; l < layers; l++) {
                    cache.write(l, r, head(ks[(c + l) & 1], n), head(vs[(c + l) & 1], n));
                }
            }
            PageTable table = cache.pageTable(seq);
            Tensor q = Tensor.allocate(arena, DType.BF16, 1, Q_HEADS, HEAD_DIM);
            Util.fillRandom(q, rnd, 1.0, false);
            Tensor o = Tensor.allocate(arena, DType.BF16, 1, Q_HEADS, HEAD_DIM);
            try (DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(Q_HEADS).qDType(DType.BF16)
                    .outDType(DType.BF16).maxBatch(1).build()) {
                int[] layer = {0};
                t = measure(() -> {
                    plan.run(q, cache, layer[0], table, o);
                    layer[0] = (layer[0] + 1) % layers;
                }, 2 * layers, quick ? 10 : 30, least);
                plan.run(q, cache, 0, table, o);
                KvFormat f = w.format();
                checkErr = checkDecode(q, decoded(ks, f, f.keyClip()), decoded(vs, f, f.valueClip()), chunk,
                        w.kvLen(), o);
            }
        }
        double secs = t.median() * 1e-6;
        Map<String, Object> r = base(w);
        r.put("page_size", PAGE);
        r.put("rotation_layers", layers);
        r.put("rotation_bytes", layers * kvBytes);
        r.put("rotation_exceeds_2x_llc", llc <= 0 ? null : layers * kvBytes >= 2 * llc);
        r.put("time_us", times(t));
        r.put("kv_bytes", kvBytes);
        r.put("kv_gbps", kvBytes / secs / 1e9);
        r.put("check_rel_err", checkErr);
        r.put("check_tolerance", w.tolerance());
        return r;
    }

    /**
     * The rows as a quantized cache stores them (rotated, quantized, decoded, rotated back) for a
     * quantized format, so the check measures the kernel rather than the format; float formats
     * unchanged.
     */
    private static Tensor[] decoded(Tensor[] rows, KvFormat f, float clip) {
        if (!f.isQuantized()) {
            return rows;
        }
        Tensor[] out = new Tensor[rows.length];
        Arena arena = Arena.ofAuto();
        for (int c = 0; c < rows.length; c++) {
            float[] x = rows[c].toFloatArray();
            float[] y = new float[x.length];
            for (int off = 0; off < x.length; off += HEAD_DIM) {
                if (f.rotation() == Rotation.HADAMARD) {
                    QuantReference.hadamard(x, off, HEAD_DIM);
                }
                QuantReference.roundTrip(x, off, HEAD_DIM, f.dtype().bits(), f.groupSize(), clip, y);
                if (f.rotation() == Rotation.HADAMARD) {
                    QuantReference.hadamard(y, off, HEAD_DIM);
                }
            }
            out[c] = Tensor.ofFloats(arena, DType.F32, y, rows[c].shape());
        }
        return out;
    }

    /**
     * Relative error of the decode output of layer 0 against float64 attention over the same tokens:
     * token t is row t % chunk of chunk tensor (t / chunk) & 1, as written by {@link #decode}.
     */
    private static double checkDecode(Tensor q, Tensor[] ks, Tensor[] vs, int chunk, long kvLen, Tensor out) {
        double[][] kd = {Util.rows(ks[0], 0, chunk), Util.rows(ks[1], 0, chunk)};
        double[][] vd = {Util.rows(vs[0], 0, chunk), Util.rows(vs[1], 0, chunk)};
        double[] qd = Util.rows(q, 0, 1);
        double scale = 1.0 / Math.sqrt(HEAD_DIM);
        int group = Q_HEADS / KV_HEADS;
        double[] ref = new double[Q_HEADS * HEAD_DIM];
        double[] s = new double[(int) kvLen];
        for (int h = 0; h < Q_HEADS; h++) {
            int kh = h / group;
            double max = Double.NEGATIVE_INFINITY;
            for (int tok = 0; tok < kvLen; tok++) {
                double[] k = kd[(tok / chunk) & 1];
                int ko = ((tok % chunk) * KV_HEADS + kh) * HEAD_DIM;
                double dot = 0;
                for (int x = 0; x < HEAD_DIM; x++) {
                    dot += qd[h * HEAD_DIM + x] * k[ko + x];
                }
                s[tok] = dot * scale;
                max = Math.max(max, s[tok]);
            }
            double sum = 0;
            for (int tok = 0; tok < kvLen; tok++) {
                double p = Math.exp(s[tok] - max);
                sum += p;
                double[] v = vd[(tok / chunk) & 1];
                int vo = ((tok % chunk) * KV_HEADS + kh) * HEAD_DIM;
                for (int x = 0; x < HEAD_DIM; x++) {
                    ref[h * HEAD_DIM + x] += p * v[vo + x];
                }
            }
            for (int x = 0; x < HEAD_DIM; x++) {
                ref[h * HEAD_DIM + x] /= sum;
            }
        }
        return Reference.relError(out.toFloatArray(), ref);
    }

    private static Tensor randomRows(Arena arena, DType dtype, int rows, Random rnd, boolean outliers) {
        Tensor t = Tensor.allocate(arena, dtype, rows, KV_HEADS, HEAD_DIM);
        Util.fillRandom(t, rnd, 1.0, outliers);
        return t;
    }

    /** The first {@code n} rows of a contiguous [rows, heads, d] tensor. */
    private static Tensor head(Tensor t, int n) {
        if (n == t.shape(0)) {
            return t;
        }
        long bytes = (long) n * t.shape(1) * t.shape(2) * t.dtype().byteSize();
        MemorySegment s = t.segment().asSlice(0, bytes);
        return Tensor.of(s, t.dtype(), n, t.shape(1), t.shape(2));
    }

    // ---- prefill ----

    private Map<String, Object> prefill(Attn4j lib, Workload w, double least) {
        int nQ = (int) w.qLen();
        int nKv = (int) w.kvLen();
        Random rnd = new Random(7);
        Times t;
        double checkErr;
        try (Arena arena = Arena.ofConfined();
                PrefillPlan plan = Attention.prefill(lib).qoHeads(Q_HEADS).kvHeads(KV_HEADS).headDim(HEAD_DIM)
                        .qDType(DType.BF16).kvDType(w.kv()).outDType(DType.BF16).causal(true).maxBatch(1).build()) {
            Tensor q = Tensor.allocate(arena, DType.BF16, nQ, Q_HEADS, HEAD_DIM);
            Tensor k = Tensor.allocate(arena, w.kv(), nKv, KV_HEADS, HEAD_DIM);
            Tensor v = Tensor.allocate(arena, w.kv(), nKv, KV_HEADS, HEAD_DIM);
            Util.fillRandom(q, rnd, 1.0, false);
            Util.fillRandom(k, rnd, 1.0, true);
            Util.fillRandom(v, rnd, 1.0, false);
            Tensor o = Tensor.allocate(arena, DType.BF16, nQ, Q_HEADS, HEAD_DIM);
            Tensor qo = Tensor.ofInts(arena, 0, nQ);
            Tensor kvi = Tensor.ofInts(arena, 0, nKv);
            t = measure(() -> plan.run(q, qo, k, v, kvi, o, null), 1, quick ? 3 : 5, least);
            checkErr = checkPrefill(q, k, v, o, nQ, nKv, 16, rnd, 1.0 / Math.sqrt(HEAD_DIM));
        }
        long pairs = visiblePairs(nQ, nKv);
        double flops = 4.0 * Q_HEADS * HEAD_DIM * pairs;
        Map<String, Object> r = base(w);
        r.put("causal", true);
        r.put("visible_pairs", pairs);
        r.put("flops", flops);
        r.put("time_us", times(t));
        r.put("gflops", flops / (t.median() * 1e-6) / 1e9);
        r.put("check_rel_err", checkErr);
        r.put("check_tolerance", w.tolerance());
        return r;
    }

    /**
     * Relative error over {@code samples} query rows (first, last, random) of a causal
     * (bottom-right) prefill against float64 attention; NaN when an output is not finite.
     */
    static double checkPrefill(Tensor q, Tensor k, Tensor v, Tensor out, int nQ, int nKv, int samples, Random rnd,
            double scale) {
        double[] kd = Util.rows(k, 0, nKv);
        double[] vd = Util.rows(v, 0, nKv);
        double num = 0;
        double den = 0;
        for (int n = 0; n < samples; n++) {
            int i = n == 0 ? 0 : n == 1 ? nQ - 1 : rnd.nextInt(nQ);
            int visible = i + nKv - nQ + 1;
            Reference.Result r = Reference.attention(Util.rows(q, i, i + 1), 1, kd, vd, visible, Q_HEADS, KV_HEADS,
                    HEAD_DIM, scale, false);
            long base = (long) i * Q_HEADS * HEAD_DIM;
            for (int x = 0; x < r.out().length; x++) {
                double g = out.getFlat(base + x);
                if (!Double.isFinite(g)) {
                    return Double.NaN;
                }
                num += (g - r.out()[x]) * (g - r.out()[x]);
                den += r.out()[x] * r.out()[x];
            }
        }
        return Math.sqrt(num / den);
    }

    /** Query/key pairs a bottom-right causal mask leaves visible. */
    static long visiblePairs(long nQ, long nKv) {
        return nQ * (nKv - nQ) + nQ * (nQ + 1) / 2;
    }

    // ---- measuring ----

    /**
     * Runs {@code body} {@code warmup} times, then times single calls until at least {@code minRuns}
     * calls and {@code least} seconds (at most 10000 calls or 10 x least seconds past minRuns).
     */
    private static Times measure(Runnable body, int warmup, int minRuns, double least) {
        for (int i = 0; i < warmup; i++) {
            body.run();
        }
        double[] samples = new double[1024];
        int n = 0;
        long start = System.nanoTime();
        long leastNs = (long) (least * 1e9);
        while (true) {
            long t0 = System.nanoTime();
            body.run();
            long t1 = System.nanoTime();
            if (n == samples.length) {
                samples = java.util.Arrays.copyOf(samples, n * 2);
            }
            samples[n++] = (t1 - t0) / 1e3;
            long elapsed = t1 - start;
            if (n >= minRuns && (elapsed >= leastNs || n >= 10000)) {
                break;
            }
        }
        double[] s = Util.sorted(java.util.Arrays.copyOf(samples, n));
        return new Times(Util.percentile(s, 50), Util.percentile(s, 10), Util.percentile(s, 90), s[0], n);
    }

    private static Map<String, Object> base(Workload w) {
        Map<String, Object> r = new LinkedHashMap<>();
        r.put("name", w.name());
        r.put("kind", w.kind());
        r.put("q_dtype", "bf16");
        r.put("kv_dtype", name(w.kv()));
        r.put("kv_format", w.format().toString());
        r.put("kv_bytes_per_token", 2L * KV_HEADS * w.format().tokenBytes(HEAD_DIM));
        r.put("out_dtype", "bf16");
        r.put("q_heads", Q_HEADS);
        r.put("kv_heads", KV_HEADS);
        r.put("head_dim", HEAD_DIM);
        r.put("batch", 1);
        r.put("kv_len", w.kvLen());
        r.put("q_len", w.qLen());
        return r;
    }

    private static Map<String, Object> times(Times t) {
        Map<String, Object> m = Util.timesRecord(t.median(), t.p10(), t.p90(), t.min());
        m.put("runs", t.runs());
        return m;
    }

    @SuppressWarnings("unchecked")
    static double medianUs(Map<String, Object> r) {
        return ((Number) ((Map<String, Object>) r.get("time_us")).get("median")).doubleValue();
    }

    private static void addComparisons(Map<String, Object> r, double readBw, LlamaCppBaseline peer) {
        boolean decode = "decode".equals(r.get("kind"));
        if (decode) {
            r.put("read_bw_gbps", readBw);
            r.put("fraction_of_read_bw", ((Number) r.get("kv_gbps")).doubleValue() / readBw);
        }
        if (peer == null) {
            return;
        }
        long kvLen = ((Number) r.get("kv_len")).longValue();
        long qLen = ((Number) r.get("q_len")).longValue();
        String kind = (String) r.get("kind");
        double ours = medianUs(r);
        LlamaCppBaseline.Entry same = peer.find(kind, (String) r.get("kv_dtype"), Q_HEADS, KV_HEADS, HEAD_DIM, kvLen, qLen);
        LlamaCppBaseline.Entry f16 = peer.find(kind, "f16", Q_HEADS, KV_HEADS, HEAD_DIM, kvLen, qLen);
        if (same != null) {
            r.put("llamacpp_same_kv", peerEntry(same, ours));
        }
        if (f16 != null) {
            r.put("llamacpp_f16", peerEntry(f16, ours));
        }
    }

    private static Map<String, Object> peerEntry(LlamaCppBaseline.Entry e, double oursUs) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("kv_type", e.kvType());
        m.put("time_us", e.timeUs());
        if (!Double.isNaN(e.kvGbps())) {
            m.put("kv_gbps", e.kvGbps());
        }
        if (!Double.isNaN(e.gflops())) {
            m.put("gflops", e.gflops());
        }
        m.put("speedup", e.timeUs() / oursUs);
        return m;
    }

    @SuppressWarnings("unchecked")
    static Double speedup(Map<String, Object> r, String key) {
        Object o = r.get(key);
        return o == null ? null : ((Number) ((Map<String, Object>) o).get("speedup")).doubleValue();
    }

    @SuppressWarnings("unchecked")
    private static void printTable(List<Map<String, Object>> rows, double readBw, double bwStart, double bwEnd,
            LlamaCppBaseline peer) {
        System.out.println();
        System.out.printf(Locale.ROOT, "Memory read bandwidth (STREAM-like, best of runs): %.1f GB/s (start %.1f, end %.1f)%n",
                readBw, bwStart, bwEnd);
        System.out.println("Shapes: 32 q heads / 8 kv heads, head_dim 128, batch 1; q and out BF16; decode page size 16.");
        System.out.println("Decode GB/s = K+V bytes / median time.  Prefill GFLOP/s = 4*q_heads*head_dim*(visible q-k pairs)"
                + " / median time,");
        System.out.println("  causal bottom-right visible pairs = q_len*(kv_len-q_len) + q_len*(q_len+1)/2.");
        if (peer != null) {
            System.out.println("vs llama.cpp = llama.cpp time / attn4j time on the same shape (" + peer.file() + ", ggml "
                    + (peer.commit() == null ? "?" : peer.commit().substring(0, Math.min(10, peer.commit().length())))
                    + ", " + peer.date() + "); 'same' = same KV type, 'f16' = llama.cpp with f16 KV.");
        }
        System.out.println();
        String fmt = "%-28s %10s %10s %10s %5s %14s %9s %10s %10s %9s%n";
        System.out.printf(fmt, "workload", "median", "p10", "p90", "runs", "result", "% read BW", "vs llama", "vs llama",
                "check");
        System.out.printf(fmt, "", "ms", "ms", "ms", "", "", "", "(same)", "(f16)", "rel err");
        for (Map<String, Object> r : rows) {
            Map<String, Object> t = (Map<String, Object>) r.get("time_us");
            boolean decode = "decode".equals(r.get("kind"));
            String result = decode ? Util.fmt(((Number) r.get("kv_gbps")).doubleValue(), 2) + " GB/s"
                    : Util.fmt(((Number) r.get("gflops")).doubleValue(), 1) + " GFLOP/s";
            String pct = decode ? Util.fmt(100 * ((Number) r.get("fraction_of_read_bw")).doubleValue(), 1) + "%" : "";
            Double s1 = speedup(r, "llamacpp_same_kv");
            Double s2 = speedup(r, "llamacpp_f16");
            System.out.printf(Locale.ROOT, fmt, r.get("name"), ms(t.get("median")), ms(t.get("p10")), ms(t.get("p90")),
                    t.get("runs"), result, pct, s1 == null ? "-" : String.format(Locale.ROOT, "%.2fx", s1),
                    s2 == null ? "-" : String.format(Locale.ROOT, "%.2fx", s2),
                    Util.sci(((Number) r.get("check_rel_err")).doubleValue()));
        }
        System.out.println("check: ||out - ref|| / ||ref|| of the benchmarked output against float64 attention over the "
                + "same tokens (decode: the whole step; prefill: 16 sampled query rows; quantized formats: over the "
                + "values their codes decode to, so the check measures the kernel); tolerance 1e-2. Format accuracy: "
                + "attn4j verify --quant.");
        for (Map<String, Object> r : rows) {
            double e = ((Number) r.get("check_rel_err")).doubleValue();
            Object tol = r.get("check_tolerance");
            if (!(e <= (tol == null ? 1e-2 : ((Number) tol).doubleValue()))) {
                System.out.println("WARNING: " + r.get("name") + ": output check FAILED (rel err " + Util.sci(e) + ")");
            }
        }
        System.out.println();
    }

    private static String ms(Object us) {
        return String.format(Locale.ROOT, "%.3f", ((Number) us).doubleValue() / 1e3);
    }

    private static long ceilDiv(long a, long b) {
        return (a + b - 1) / b;
    }
}
