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
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Random;
import java.util.function.IntConsumer;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.Attn4jException;
import org.attn4j.CudaGraph;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.Device;
import org.attn4j.DeviceArena;
import org.attn4j.PageTable;
import org.attn4j.PagedKvCache;
import org.attn4j.PrefillPlan;
import org.attn4j.Stream;
import org.attn4j.Tensor;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;

import me.tongfei.progressbar.ProgressBar;

/**
 * {@code attn4j bench --device cuda:N}: BF16 paged decode and causal prefill on one GPU, timed
 * from Java, and PyTorch SDPA (cuDNN and FlashAttention backends) on the same shapes in the same
 * run through the peer scripts of {@code benchmarks/peers/}.
 *
 * <p>The Java API has no CUDA events, so times are wall clock: {@code System.nanoTime} around k
 * back-to-back enqueues on one stream followed by one {@link Stream#synchronize()}, divided by the
 * runs (k is chosen so a sample lasts a few milliseconds and the synchronize costs little); median
 * over samples. Decode is timed two ways: {@code graph}, a {@link CudaGraph} of
 * {@value #GRAPH_RUNS} decode runs replayed (no host launch gaps, like the native harness's graph
 * column), and {@code stream}, {@code plan.run} calls enqueued back to back (host launch cost
 * included where it exceeds the kernel). K/V rotate over several layers / sets so the L2 cache
 * cannot hold them.
 */
final class CudaBench {
    static final int Q_HEADS = BenchCommand.Q_HEADS;
    static final int KV_HEADS = BenchCommand.KV_HEADS;
    static final int HEAD_DIM = BenchCommand.HEAD_DIM;
    static final int PAGE = BenchCommand.PAGE;
    static final int GRAPH_RUNS = 20;
    /** Rows of the random K/V chunks written into the decode cache. */
    static final int CHUNK_ROWS = 4096;
    static final long DECODE_ROTATION_BYTES = 256_000_000L;
    static final long PREFILL_ROTATION_BYTES = 512_000_000L;
    /** Least K/V bytes rotated over (smaller only in tests, which run these paths on a CPU Attn4j). */
    long decodeRotationBytes = DECODE_ROTATION_BYTES;
    long prefillRotationBytes = PREFILL_ROTATION_BYTES;
    /** Wall time a sample should last, so one synchronize (~10-30 us) costs about 1%. */
    static final double SAMPLE_SECONDS = 0.003;
    static final double TOLERANCE = 1e-2;

    /** A GPU workload: decode of {@code batch} sequences of {@code tokens}, or prefill of one sequence of {@code tokens}. */
    record Workload(String name, String kind, int batch, int tokens) {}

    private final BenchCommand o;
    private final ObjectMapper json = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);

    CudaBench(BenchCommand options) {
        this.o = options;
    }

    /** "cuda" or "cuda:N" to N; -1 when {@code name} is not a CUDA device name. */
    static int cudaOrdinal(String name) {
        String n = name.strip().toLowerCase(Locale.ROOT);
        if (n.equals("cuda")) {
            return 0;
        }
        if (!n.startsWith("cuda:")) {
            return -1;
        }
        try {
            int i = Integer.parseInt(n.substring(5));
            if (i < 0) {
                throw new NumberFormatException();
            }
            return i;
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("--device " + name + ": expected cpu, cuda or cuda:N (N = 0, 1, ...)");
        }
    }

    /** Why {@code cuda:ordinal} cannot run here, as one line, or null when it can. */
    static String unavailable(int ordinal) {
        int count;
        try {
            count = Attn4j.cudaDeviceCount();
        } catch (Attn4jException e) {
            return "cuda:" + ordinal + ": attn4j_device_count(CUDA) failed: " + e.getMessage();
        }
        String cuda = SystemInfo.buildInfo().get("cuda");
        String build = cuda == null ? "this libattn4j was built WITHOUT CUDA (build with nvcc on PATH, "
                + "-Dattn4j.cuda=ON)" : "libattn4j built with CUDA " + cuda;
        if (count == 0) {
            return "cuda:" + ordinal + ": no CUDA device visible (attn4j_device_count(CUDA)=0; " + build
                    + "); run on a machine with an NVIDIA GPU and driver (CUDA_VISIBLE_DEVICES must not hide it), "
                    + "or use --device cpu";
        }
        if (ordinal >= count) {
            return "cuda:" + ordinal + ": only " + count + " CUDA device" + (count == 1 ? "" : "s") + " visible (cuda:0"
                    + (count > 1 ? " .. cuda:" + (count - 1) : "") + "); pick one of those";
        }
        return null;
    }

    List<Workload> workloads() {
        List<Workload> all = new ArrayList<>();
        int[][] decode = {{1, 4096}, {1, 32768}, {1, 131072}, {64, 4096}};
        for (int[] s : decode) {
            all.add(new Workload("decode " + s[0] + "x" + (s[1] / 1024) + "k bf16", "decode", s[0], s[1]));
        }
        all.add(new Workload("prefill 16k causal bf16", "prefill", 1, 16384));
        if (!o.quick) {
            all.add(new Workload("prefill 32k causal bf16", "prefill", 1, 32768));
        }
        return all.stream().filter(w -> o.only == null || o.only.matcher(w.name()).find()).toList();
    }

    int run() throws IOException {
        int ordinal = cudaOrdinal(o.device);
        String why = unavailable(ordinal);
        if (why != null) {
            System.err.println("attn4j bench: " + why);
            return 2;
        }
        Path home = Path.of(System.getProperty("attn4j.home", "."));
        List<Workload> workloads = workloads();
        if (workloads.isEmpty()) {
            System.err.println("attn4j bench: --only " + o.only + " matches none of the CUDA workloads");
            return 2;
        }
        double least = o.minTime != null ? o.minTime : o.quick ? 0.25 : 1.0;
        boolean show = o.progress != null ? o.progress : Util.stderrIsTerminal();
        TorchPeer peer = TorchPeer.resolve(o, ordinal);
        String gpu = gpuName(ordinal);
        Path dir = o.out != null ? o.out : defaultOut(home);
        String stamp = LocalDateTime.now().format(DateTimeFormatter.ofPattern("HHmmss"));
        String base = "bench-cuda-" + (o.quick ? "quick-" : "") + stamp;

        List<Map<String, Object>> rows = new ArrayList<>();
        double copyTbs;
        String table;
        Map<String, String> peerTables = new LinkedHashMap<>();
        int steps = workloads.size() + 1 + (peer.enabled() ? 2 : 0);
        try (ProgressBar pb = Util.progress("bench", steps, show)) {
            try (Attn4j lib = Attn4j.open(Device.cuda(ordinal)); Stream stream = lib.newStream()) {
                System.out.println("attn4j bench: cuda:" + ordinal + " " + gpu + "; host " + SystemInfo.cpuModel()
                        + "; load " + SystemInfo.loadAvg());
                lib.useStream(stream);
                try {
                    pb.setExtraMessage("D2D copy");
                    copyTbs = copyBandwidth(lib, stream);
                    pb.step();
                    for (Workload w : workloads) {
                        pb.setExtraMessage(w.name());
                        rows.add(w.kind().equals("decode") ? decode(lib, stream, w, least) : prefill(lib, stream, w,
                                least));
                        pb.step();
                    }
                } finally {
                    lib.useDefaultStream();
                }
            }
            table = table(rows, copyTbs, gpu, ordinal);
            System.out.print(table);

            if (peer.enabled()) {
                Files.createDirectories(dir);
                List<Map<String, Object>> dec = rows.stream().filter(r -> "decode".equals(r.get("kind"))).toList();
                List<Map<String, Object>> pre = rows.stream().filter(r -> "prefill".equals(r.get("kind"))).toList();
                pb.setExtraMessage("PyTorch decode");
                if (!dec.isEmpty()) {
                    Path in = dir.resolve(base + "-attn4j-decode.json");
                    json.writeValue(in.toFile(), decodePeerInput(dec, gpu, copyTbs));
                    List<String> shapes = dec.stream().map(r -> r.get("batch") + ":" + r.get("kv_len")).toList();
                    peer.decode(in, dir.resolve(base + "-torch-decode"), String.join(",", shapes))
                            .ifPresent(res -> {
                                peerTables.put("decode", res.markdown());
                                mergeDecode(dec, res.json());
                            });
                }
                pb.step();
                pb.setExtraMessage("PyTorch prefill");
                if (!pre.isEmpty()) {
                    Path in = dir.resolve(base + "-attn4j-prefill.json");
                    json.writeValue(in.toFile(), prefillPeerInput(pre, gpu));
                    peer.prefill(in, dir.resolve(base + "-torch-prefill")).ifPresent(res -> {
                        peerTables.put("prefill", res.markdown());
                        mergePrefill(pre, res.json());
                    });
                }
                pb.step();
            }
        }
        String summary = peerTables.isEmpty() ? "" : peerSummary(rows);
        for (String md : peerTables.values()) {
            System.out.println(md.strip());
            System.out.println();
        }
        System.out.print(summary);

        Map<String, Object> doc = new LinkedHashMap<>();
        doc.put("tool", "attn4j bench");
        doc.put("date", OffsetDateTime.now().toString());
        doc.put("device", "cuda:" + ordinal);
        doc.put("gpu", gpu);
        doc.put("machine", SystemInfo.machine(Runtime.getRuntime().availableProcessors()));
        Map<String, Object> settings = new LinkedHashMap<>();
        settings.put("quick", o.quick);
        settings.put("min_time_s", least);
        settings.put("shape", "q_heads=" + Q_HEADS + " kv_heads=" + KV_HEADS + " head_dim=" + HEAD_DIM
                + " BF16 q/KV/out; decode page_size=" + PAGE + " (page ids shuffled); prefill causal, one sequence");
        settings.put("conditions", conditions());
        settings.put("decode_tb_s", "K+V bytes of all tokens (batch * kv_len * kv_heads * head_dim * 2 B * 2) / time");
        settings.put("prefill_tflops", "4 * L * L * head_dim * q_heads / 2 (causal; FlashAttention convention, as "
                + "bench_cuda_prefill and torch_sdpa_prefill.py) / time");
        settings.put("d2d_copy", "Attn4j.copyAsync of 1 GiB device to device, (read + write bytes) / time");
        settings.put("peer", peer.describe());
        doc.put("settings", settings);
        doc.put("d2d_copy_tb_s", copyTbs);
        doc.put("workloads", rows);
        if (!peerTables.isEmpty()) {
            doc.put("peer_markdown", peerTables);
        }
        if (o.json || o.png || !peerTables.isEmpty()) {
            Files.createDirectories(dir);
            if (o.json) {
                Path f = dir.resolve(base + ".json");
                json.writeValue(f.toFile(), doc);
                System.out.println("JSON:  " + f);
            }
            Path md = dir.resolve(base + ".md");
            StringBuilder text = new StringBuilder("# attn4j bench --device cuda:" + ordinal + " (" + gpu + ")\n\n```\n"
                    + table.strip() + "\n```\n");
            for (String t : peerTables.values()) {
                text.append('\n').append(t.strip()).append('\n');
            }
            if (!summary.isEmpty()) {
                text.append('\n').append(summary.strip()).append('\n');
            }
            Files.writeString(md, text);
            System.out.println("table: " + md);
            if (o.png) {
                Path f = dir.resolve(base + ".png");
                try {
                    Charts.writeCuda(f, rows, copyTbs, gpu);
                    System.out.println("chart: " + f);
                } catch (IOException | RuntimeException | LinkageError e) {
                    System.err.println("warning: could not draw the chart: " + e);
                }
            }
        }
        boolean bad = rows.stream().anyMatch(r -> !(((Number) r.get("check_rel_err")).doubleValue() <= TOLERANCE));
        return bad ? 1 : 0;
    }

    static Path defaultOut(Path home) {
        String date = LocalDateTime.now().format(DateTimeFormatter.ISO_LOCAL_DATE);
        if (Files.isDirectory(home.resolve("benchmarks"))) {
            return home.resolve("benchmarks/results").resolve(date);
        }
        return Path.of("attn4j-results", date);
    }

    static String conditions() {
        return "wall clock (System.nanoTime) around k back-to-back enqueues on one stream + one Stream.synchronize, / runs"
                + " (k: a sample lasts >= " + (int) (SAMPLE_SECONDS * 1e3) + " ms); median (p10, p90) over samples after"
                + " warm-up; decode 'graph' = a CUDA graph of " + GRAPH_RUNS + " runs replayed, 'stream' = plan.run"
                + " enqueued back to back (host launch cost included where larger than the kernel); decode KV rotates over"
                + " >= 2 cache layers and >= " + DECODE_ROTATION_BYTES / 1_000_000 + " MB, prefill over >= 2 K/V sets and"
                + " >= " + PREFILL_ROTATION_BYTES / 1_000_000 + " MB, so L2 cannot hold them; prefill includes host"
                + " planning (indptr arrays on the host, tile list staged per run)";
    }

    // ---- D2D copy (the decode roofline) ----

    private double copyBandwidth(Attn4j lib, Stream stream) {
        long elems = 1L << 29; // 1 GiB of BF16
        try (DeviceArena mem = lib.newDeviceArena()) {
            Tensor a = Tensor.allocate(mem, DType.BF16, elems);
            Tensor b = Tensor.allocate(mem, DType.BF16, elems);
            Times t = measure(stream, k -> {
                for (int i = 0; i < k; i++) {
                    lib.copyAsync((i & 1) == 0 ? a : b, (i & 1) == 0 ? b : a);
                }
            }, 1, 4, o.quick ? 5 : 10, 0.1);
            return 2.0 * elems * 2 / (t.median() * 1e-6) / 1e12;
        }
    }

    // ---- decode ----

    /**
     * One decode workload. On a CPU {@code Attn4j} (tests only) the same path runs without the
     * graph timing (CUDA graphs are CUDA only).
     */
    Map<String, Object> decode(Attn4j lib, Stream stream, Workload w, double least) {
        int batch = w.batch();
        int tokens = w.tokens();
        long kvBytes = (long) batch * tokens * KV_HEADS * HEAD_DIM * 2 * 2;
        int layers = (int) Math.max(2, ceilDiv(decodeRotationBytes, kvBytes));
        int pages = (int) (batch * ceilDiv(tokens, PAGE));
        int perSeq = Math.min(tokens, Math.max(PAGE, CHUNK_ROWS / batch));
        int chunkRows = Math.max(CHUNK_ROWS, batch * perSeq);
        Random rnd = new Random(42);
        Times stepT;
        Times graphT = null;
        double checkErr;
        try (Arena host = Arena.ofConfined(); DeviceArena mem = lib.newDeviceArena();
                PagedKvCache cache = PagedKvCache.builder(lib).layers(layers).kvHeads(KV_HEADS).headDim(HEAD_DIM)
                        .pageSize(PAGE).numPages(pages).dtype(DType.BF16).build();
                DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(Q_HEADS).qDType(DType.BF16)
                        .outDType(DType.BF16).maxBatch(batch).build()) {
            shufflePages(cache, pages, rnd);
            int[] seqs = new int[batch];
            for (int b = 0; b < batch; b++) {
                seqs[b] = cache.newSequence();
            }
            // K/V from two random chunks: round r of layer l writes chunk (r + l) & 1, sequence b's
            // n new tokens from rows b * n .. b * n + n.
            Tensor[] ks = {randomRows(host, chunkRows, rnd, true), randomRows(host, chunkRows, rnd, true)};
            Tensor[] vs = {randomRows(host, chunkRows, rnd, false), randomRows(host, chunkRows, rnd, false)};
            Map<Long, Tensor> onDevice = new HashMap<>();
            PagedKvCache.Reservation r = cache.newReservation(batch, pages);
            int[] counts = new int[batch];
            for (int pos = 0, round = 0; pos < tokens; pos += perSeq, round++) {
                int n = Math.min(perSeq, tokens - pos);
                Arrays.fill(counts, n);
                cache.reserve(seqs, counts, r);
                for (int l = 0; l < layers; l++) {
                    int c = (round + l) & 1;
                    cache.write(l, r, deviceRows(lib, mem, onDevice, ks, c, batch * n, 0),
                            deviceRows(lib, mem, onDevice, vs, c, batch * n, 1));
                }
            }
            PageTable table = PageTable.allocate(mem, batch, pages);
            cache.fillPageTable(table, seqs);
            Tensor qHost = Tensor.allocate(host, DType.BF16, batch, Q_HEADS, HEAD_DIM);
            Util.fillRandom(qHost, rnd, 1.0, false);
            Tensor q = Tensor.allocate(mem, DType.BF16, batch, Q_HEADS, HEAD_DIM);
            Tensor out = Tensor.allocate(mem, DType.BF16, batch, Q_HEADS, HEAD_DIM);
            lib.copy(qHost, q);
            stream.synchronize();

            int[] layer = {0};
            stepT = measure(stream, k -> {
                for (int i = 0; i < k; i++) {
                    plan.run(q, cache, layer[0], table, out);
                    layer[0] = layer[0] + 1 == layers ? 0 : layer[0] + 1;
                }
            }, 1, 2 * layers, o.quick ? 10 : 30, least);

            boolean cuda = lib.device().kind() == Device.Kind.CUDA;
            if (cuda) {
                graphT = graphTimes(stream, plan, q, cache, layers, table, out, least);
            }

            plan.run(q, cache, 0, table, out);
            Tensor outHost = Tensor.allocate(host, DType.BF16, batch, Q_HEADS, HEAD_DIM);
            lib.copy(out, outHost);
            stream.synchronize(); // reports a page table the GPU found invalid
            checkErr = checkDecode(qHost, ks, vs, outHost, batch, tokens, perSeq, plan.scale());
        }
        Map<String, Object> row = base(w);
        row.put("batch", batch);
        row.put("kv_len", tokens);
        row.put("q_len", 1);
        row.put("page_size", PAGE);
        row.put("kv_bytes", kvBytes);
        row.put("rotation_layers", layers);
        row.put("rotation_bytes", layers * kvBytes);
        if (graphT != null) {
            row.put("time_us_graph", times(graphT));
        }
        row.put("time_us_stream", times(stepT));
        if (graphT != null) {
            row.put("tb_s_graph", kvBytes / (graphT.median() * 1e-6) / 1e12);
        }
        row.put("tb_s_stream", kvBytes / (stepT.median() * 1e-6) / 1e12);
        row.put("check_rel_err", checkErr);
        row.put("check_tolerance", TOLERANCE);
        return row;
    }

    /** Per-run times of a CUDA graph of {@value #GRAPH_RUNS} decode runs over the rotating layers. */
    private Times graphTimes(Stream stream, DecodePlan plan, Tensor q, PagedKvCache cache, int layers, PageTable table,
            Tensor out, double least) {
        stream.beginCapture();
        try {
            for (int i = 0; i < GRAPH_RUNS; i++) {
                plan.run(q, cache, i % layers, table, out);
            }
        } catch (RuntimeException e) {
            try {
                stream.endCapture().close();
            } catch (RuntimeException suppressed) {
                e.addSuppressed(suppressed);
            }
            throw e;
        }
        try (CudaGraph graph = stream.endCapture()) {
            Times g = measure(stream, k -> {
                for (int i = 0; i < k; i++) {
                    graph.launch(stream);
                }
            }, 1, 3, o.quick ? 10 : 30, least);
            return g.scaled(1.0 / GRAPH_RUNS);
        }
    }

    /**
     * Makes the cache hand out its pages in a random order (as bench_cuda_decode's shuffled page
     * ids): one-page sequences take every page in order, then are freed in a random order.
     */
    private static void shufflePages(PagedKvCache cache, int pages, Random rnd) {
        int[] dummies = new int[pages];
        int step = Math.min(pages, 1024);
        PagedKvCache.Reservation r = cache.newReservation(step, step);
        int[] ones = new int[step];
        Arrays.fill(ones, 1);
        for (int from = 0; from < pages; from += step) {
            int n = Math.min(step, pages - from);
            int[] seqs = new int[n];
            for (int i = 0; i < n; i++) {
                seqs[i] = cache.newSequence();
                dummies[from + i] = seqs[i];
            }
            cache.reserve(seqs, n == step ? ones : Arrays.copyOf(ones, n), r);
        }
        for (int i = pages - 1; i > 0; i--) {
            int j = rnd.nextInt(i + 1);
            int t = dummies[i];
            dummies[i] = dummies[j];
            dummies[j] = t;
        }
        for (int s : dummies) {
            cache.free(s);
        }
    }

    /** The first {@code rows} rows of {@code chunks[c]} on the device (uploaded once per size). */
    private static Tensor deviceRows(Attn4j lib, DeviceArena mem, Map<Long, Tensor> cache, Tensor[] chunks, int c,
            int rows, int kv) {
        long key = ((long) rows << 2) | (c << 1) | kv;
        return cache.computeIfAbsent(key, x -> {
            Tensor d = Tensor.allocate(mem, DType.BF16, rows, KV_HEADS, HEAD_DIM);
            lib.copy(head(chunks[c], rows), d);
            return d;
        });
    }

    /**
     * Relative error of layer 0's decode output against float64 attention over the same tokens,
     * for sequences 0, batch / 2 and batch - 1 (all heads).
     */
    static double checkDecode(Tensor q, Tensor[] ks, Tensor[] vs, Tensor out, int batch, int tokens, int perSeq,
            double scale) {
        double[][] kd = {Util.rows(ks[0], 0, ks[0].shape(0)), Util.rows(ks[1], 0, ks[1].shape(0))};
        double[][] vd = {Util.rows(vs[0], 0, vs[0].shape(0)), Util.rows(vs[1], 0, vs[1].shape(0))};
        double[] qd = Util.rows(q, 0, batch);
        float[] got = out.toFloatArray();
        int group = Q_HEADS / KV_HEADS;
        int row = KV_HEADS * HEAD_DIM;
        double num = 0;
        double den = 0;
        double[] s = new double[tokens];
        int[] offsets = new int[tokens];
        int[] chunk = new int[tokens];
        for (int b : new java.util.TreeSet<>(List.of(0, batch / 2, batch - 1))) {
            for (int pos = 0; pos < tokens; pos++) {
                int round = pos / perSeq;
                int n = Math.min(perSeq, tokens - round * perSeq);
                chunk[pos] = round & 1; // layer 0
                offsets[pos] = (b * n + pos % perSeq) * row;
            }
            for (int h = 0; h < Q_HEADS; h++) {
                int kh = h / group;
                int qo = (b * Q_HEADS + h) * HEAD_DIM;
                double max = Double.NEGATIVE_INFINITY;
                for (int t = 0; t < tokens; t++) {
                    double[] k = kd[chunk[t]];
                    int ko = offsets[t] + kh * HEAD_DIM;
                    double dot = 0;
                    for (int x = 0; x < HEAD_DIM; x++) {
                        dot += qd[qo + x] * k[ko + x];
                    }
                    s[t] = dot * scale;
                    max = Math.max(max, s[t]);
                }
                double sum = 0;
                double[] acc = new double[HEAD_DIM];
                for (int t = 0; t < tokens; t++) {
                    double p = Math.exp(s[t] - max);
                    sum += p;
                    double[] v = vd[chunk[t]];
                    int vo = offsets[t] + kh * HEAD_DIM;
                    for (int x = 0; x < HEAD_DIM; x++) {
                        acc[x] += p * v[vo + x];
                    }
                }
                for (int x = 0; x < HEAD_DIM; x++) {
                    double ref = acc[x] / sum;
                    double g = got[qo + x];
                    if (!Double.isFinite(g)) {
                        return Double.NaN;
                    }
                    num += (g - ref) * (g - ref);
                    den += ref * ref;
                }
            }
        }
        return Math.sqrt(num / den);
    }

    // ---- prefill ----

    /** One prefill workload (also runs on a CPU {@code Attn4j}, for tests). */
    Map<String, Object> prefill(Attn4j lib, Stream stream, Workload w, double least) {
        int n = w.tokens();
        long setBytes = 2L * n * KV_HEADS * HEAD_DIM * 2;
        int sets = (int) Math.max(2, ceilDiv(prefillRotationBytes, setBytes));
        double flops = 4.0 * n * (double) n * HEAD_DIM * Q_HEADS * 0.5;
        Random rnd = new Random(7);
        Times t;
        double checkErr;
        try (Arena host = Arena.ofConfined(); DeviceArena mem = lib.newDeviceArena();
                PrefillPlan plan = Attention.prefill(lib).qoHeads(Q_HEADS).kvHeads(KV_HEADS).headDim(HEAD_DIM)
                        .qDType(DType.BF16).kvDType(DType.BF16).outDType(DType.BF16).causal(true).maxBatch(1)
                        .build()) {
            Tensor qh = tiledRandom(host, n, Q_HEADS, rnd, false);
            Tensor kh = tiledRandom(host, n, KV_HEADS, rnd, true);
            Tensor vh = tiledRandom(host, n, KV_HEADS, rnd, false);
            Tensor q = Tensor.allocate(mem, DType.BF16, n, Q_HEADS, HEAD_DIM);
            Tensor out = Tensor.allocate(mem, DType.BF16, n, Q_HEADS, HEAD_DIM);
            lib.copy(qh, q);
            Tensor[] ks = new Tensor[sets];
            Tensor[] vs = new Tensor[sets];
            for (int i = 0; i < sets; i++) {
                ks[i] = Tensor.allocate(mem, DType.BF16, n, KV_HEADS, HEAD_DIM);
                vs[i] = Tensor.allocate(mem, DType.BF16, n, KV_HEADS, HEAD_DIM);
                lib.copy(kh, ks[i]);
                lib.copy(vh, vs[i]);
            }
            Tensor indptr = Tensor.ofInts(host, 0, n);
            int[] next = {0};
            t = measure(stream, k -> {
                for (int i = 0; i < k; i++) {
                    int s = next[0];
                    plan.run(q, indptr, ks[s], vs[s], indptr, out, null);
                    next[0] = s + 1 == sets ? 0 : s + 1;
                }
            }, 1, 3, o.quick ? 5 : 10, least);
            plan.run(q, indptr, ks[0], vs[0], indptr, out, null);
            Tensor outHost = Tensor.allocate(host, DType.BF16, n, Q_HEADS, HEAD_DIM);
            lib.copy(out, outHost);
            checkErr = BenchCommand.checkPrefill(qh, kh, vh, outHost, n, n, 6, rnd, plan.scale());
        }
        Map<String, Object> row = base(w);
        row.put("batch", 1);
        row.put("kv_len", n);
        row.put("q_len", n);
        row.put("causal", true);
        row.put("flops", flops);
        row.put("rotation_sets", sets);
        row.put("rotation_bytes", sets * setBytes);
        row.put("time_us", times(t));
        row.put("tflops", flops / (t.median() * 1e-6) / 1e12);
        row.put("check_rel_err", checkErr);
        row.put("check_tolerance", TOLERANCE);
        return row;
    }

    // ---- data ----

    private static Tensor randomRows(Arena arena, int rows, Random rnd, boolean outliers) {
        Tensor t = Tensor.allocate(arena, DType.BF16, rows, KV_HEADS, HEAD_DIM);
        Util.fillRandom(t, rnd, 1.0, outliers);
        return t;
    }

    /** [rows, heads, d] BF16: 2048 random rows repeated (filling hundreds of MB one value at a time is slow). */
    static Tensor tiledRandom(Arena arena, int rows, int heads, Random rnd, boolean outliers) {
        Tensor t = Tensor.allocate(arena, DType.BF16, rows, heads, HEAD_DIM);
        int tile = Math.min(rows, 2048);
        Util.fillRandom(head(t, tile), rnd, 1.0, outliers);
        long tileBytes = (long) tile * heads * HEAD_DIM * 2;
        MemorySegment seg = t.segment();
        for (long off = tileBytes; off < seg.byteSize(); off += tileBytes) {
            MemorySegment.copy(seg, 0, seg, off, Math.min(tileBytes, seg.byteSize() - off));
        }
        return t;
    }

    /** The first {@code n} rows of a contiguous host [rows, heads, d] tensor. */
    static Tensor head(Tensor t, long n) {
        if (n == t.shape(0)) {
            return t;
        }
        long bytes = n * t.shape(1) * t.shape(2) * t.dtype().byteSize();
        return Tensor.of(t.segment().asSlice(0, bytes), t.dtype(), n, t.shape(1), t.shape(2));
    }

    // ---- measuring ----

    /** Per-run times in microseconds. */
    record Times(double median, double p10, double p90, double min, int samples, int runsPerSample) {
        Times scaled(double f) {
            return new Times(median * f, p10 * f, p90 * f, min * f, samples, runsPerSample);
        }
    }

    /**
     * {@code enqueue.accept(k)} enqueues k runs on {@code stream}. Warm-up: {@code warmup} runs;
     * a probe sizes k so a sample lasts about {@link #SAMPLE_SECONDS}; then samples of k runs +
     * one synchronize, at least {@code minSamples} and {@code least} seconds (at most 2000
     * samples). Returns the time per run.
     */
    static Times measure(Stream stream, IntConsumer enqueue, int unit, int warmup, int minSamples, double least) {
        enqueue.accept(warmup);
        stream.synchronize();
        long t0 = System.nanoTime();
        enqueue.accept(unit);
        stream.synchronize();
        double probe = Math.max(1e-7, (System.nanoTime() - t0) * 1e-9);
        int k = (int) Math.max(unit, Math.min(10_000, Math.ceil(SAMPLE_SECONDS / probe) * unit));
        k = (k + unit - 1) / unit * unit;
        double[] samples = new double[64];
        int n = 0;
        long start = System.nanoTime();
        long leastNs = (long) (least * 1e9);
        while (true) {
            long a = System.nanoTime();
            enqueue.accept(k);
            stream.synchronize();
            long b = System.nanoTime();
            if (n == samples.length) {
                samples = Arrays.copyOf(samples, n * 2);
            }
            samples[n++] = (b - a) / 1e3 / k;
            if (n >= minSamples && (b - start >= leastNs || n >= 2000)) {
                break;
            }
        }
        double[] s = Util.sorted(Arrays.copyOf(samples, n));
        return new Times(Util.percentile(s, 50), Util.percentile(s, 10), Util.percentile(s, 90), s[0], n, k);
    }

    private static Map<String, Object> times(Times t) {
        Map<String, Object> m = Util.timesRecord(t.median(), t.p10(), t.p90(), t.min());
        m.put("samples", t.samples());
        m.put("runs_per_sample", t.runsPerSample());
        return m;
    }

    private static Map<String, Object> base(Workload w) {
        Map<String, Object> r = new LinkedHashMap<>();
        r.put("name", w.name());
        r.put("kind", w.kind());
        r.put("q_dtype", "bf16");
        r.put("kv_dtype", "bf16");
        r.put("out_dtype", "bf16");
        r.put("q_heads", Q_HEADS);
        r.put("kv_heads", KV_HEADS);
        r.put("head_dim", HEAD_DIM);
        return r;
    }

    @SuppressWarnings("unchecked")
    static double num(Map<String, Object> r, String key, String sub) {
        Object v = r.get(key);
        if (v != null && sub != null) {
            v = v instanceof Map<?, ?> m ? ((Map<String, Object>) m).get(sub) : null;
        }
        return v instanceof Number x ? x.doubleValue() : Double.NaN;
    }

    // ---- the peer scripts' input (the native harnesses' JSON formats) ----

    /** bench_cuda_decode --json's format, read by torch_sdpa_decode.py --attn4j. */
    static Map<String, Object> decodePeerInput(List<Map<String, Object>> rows, String gpu, double copyTbs) {
        Map<String, Object> d = new LinkedHashMap<>();
        d.put("device", gpu);
        d.put("copy_tb_s", copyTbs);
        d.put("page_size", PAGE);
        d.put("shuffled_pages", true);
        d.put("source", "attn4j bench --device cuda (Java API): median_us = plan.run enqueued back to back on a stream, "
                + "graph_us = CUDA graph of " + GRAPH_RUNS + " runs; wall clock around k runs + one synchronize");
        List<Map<String, Object>> res = new ArrayList<>();
        for (Map<String, Object> r : rows) {
            Map<String, Object> x = new LinkedHashMap<>();
            x.put("batch", r.get("batch"));
            x.put("seq_len", r.get("kv_len"));
            x.put("kv_bytes", r.get("kv_bytes"));
            x.put("median_us", num(r, "time_us_stream", "median"));
            x.put("min_us", num(r, "time_us_stream", "min"));
            x.put("tb_s", r.get("tb_s_stream"));
            x.put("graph_us", num(r, "time_us_graph", "median"));
            x.put("graph_tb_s", r.get("tb_s_graph"));
            x.put("rotating_buffers", r.get("rotation_layers"));
            res.add(x);
        }
        d.put("results", res);
        return d;
    }

    /** bench_cuda_prefill --json's format, read by torch_sdpa_prefill.py --attn4j. */
    static Map<String, Object> prefillPeerInput(List<Map<String, Object>> rows, String gpu) {
        Map<String, Object> d = new LinkedHashMap<>();
        d.put("device", gpu);
        List<Map<String, Object>> res = new ArrayList<>();
        for (Map<String, Object> r : rows) {
            Map<String, Object> x = new LinkedHashMap<>();
            x.put("name", r.get("name"));
            x.put("hq", Q_HEADS);
            x.put("hkv", KV_HEADS);
            x.put("d", HEAD_DIM);
            x.put("causal", true);
            x.put("paged", false);
            x.put("dtype", "bf16");
            x.put("lens", List.of(r.get("kv_len")));
            x.put("flops", r.get("flops"));
            x.put("ms_median", num(r, "time_us", "median") / 1e3);
            x.put("ms_min", num(r, "time_us", "min") / 1e3);
            x.put("tflops", r.get("tflops"));
            res.add(x);
        }
        d.put("rows", res);
        return d;
    }

    /** Attaches torch_sdpa_decode.py's per-backend results (its "peers" rows) to our rows. */
    @SuppressWarnings("unchecked")
    static void mergeDecode(List<Map<String, Object>> rows, Map<String, Object> peer) {
        Object list = peer == null ? null : peer.get("peers");
        if (!(list instanceof List<?> ps)) {
            return;
        }
        for (Object p : ps) {
            Map<String, Object> m = (Map<String, Object>) p;
            for (Map<String, Object> r : rows) {
                if (num(r, "batch", null) == num(m, "batch", null) && num(r, "kv_len", null) == num(m, "seq_len", null)) {
                    r.put("torch_cudnn", m.get("cudnn"));
                    r.put("torch_flash", m.get("flash"));
                }
            }
        }
    }

    /** Attaches torch_sdpa_prefill.py's per-backend results (its "rows") to our rows. */
    @SuppressWarnings("unchecked")
    static void mergePrefill(List<Map<String, Object>> rows, Map<String, Object> peer) {
        Object list = peer == null ? null : peer.get("rows");
        if (!(list instanceof List<?> ps)) {
            return;
        }
        for (Object p : ps) {
            Map<String, Object> m = (Map<String, Object>) p;
            Object name = m.get("attn4j") instanceof Map<?, ?> a ? a.get("name") : null;
            Object torch = m.get("torch");
            for (Map<String, Object> r : rows) {
                if (r.get("name").equals(name) && torch instanceof Map<?, ?> t) {
                    r.put("torch_flash", t.get("flash"));
                    r.put("torch_cudnn", t.get("cudnn"));
                }
            }
        }
    }

    // ---- output ----

    static String table(List<Map<String, Object>> rows, double copyTbs, String gpu, int ordinal) {
        StringBuilder sb = new StringBuilder("\n");
        sb.append(String.format(Locale.ROOT, "cuda:%d %s; D2D copy (read+write) %.2f TB/s.%n", ordinal, gpu, copyTbs));
        sb.append("Shapes: 32 q heads / 8 kv heads, head_dim 128, BF16 q/KV/out; decode page size 16, page ids shuffled.\n");
        sb.append("Timing: ").append(conditions()).append(".\n");
        sb.append("Decode TB/s = K+V bytes / median time.  Prefill TFLOP/s = 4*L*L*D*q_heads/2 (causal) / median time.\n");
        List<Map<String, Object>> dec = rows.stream().filter(r -> "decode".equals(r.get("kind"))).toList();
        List<Map<String, Object>> pre = rows.stream().filter(r -> "prefill".equals(r.get("kind"))).toList();
        if (!dec.isEmpty()) {
            String fmt = "%-22s %9s %9s %9s %9s %9s %9s %8s %6s %9s%n";
            sb.append('\n');
            sb.append(String.format(Locale.ROOT, fmt, "decode", "graph", "graph", "graph", "graph", "stream", "stream",
                    "% D2D", "rot.", "check"));
            sb.append(String.format(Locale.ROOT, fmt, "", "us", "p10 us", "p90 us", "TB/s", "us", "TB/s", "(graph)",
                    "layers", "rel err"));
            for (Map<String, Object> r : dec) {
                double g = num(r, "tb_s_graph", null);
                sb.append(String.format(Locale.ROOT, fmt, r.get("name"), f(num(r, "time_us_graph", "median"), 1),
                        f(num(r, "time_us_graph", "p10"), 1), f(num(r, "time_us_graph", "p90"), 1), f(g, 3),
                        f(num(r, "time_us_stream", "median"), 1), f(num(r, "tb_s_stream", null), 3),
                        f(100 * g / copyTbs, 1) + "%", r.get("rotation_layers"), Util.sci(num(r, "check_rel_err", null))));
            }
        }
        if (!pre.isEmpty()) {
            String fmt = "%-26s %9s %9s %9s %9s %5s %9s%n";
            sb.append('\n');
            sb.append(String.format(Locale.ROOT, fmt, "prefill", "median", "p10", "p90", "TFLOP/s", "sets", "check"));
            sb.append(String.format(Locale.ROOT, fmt, "", "ms", "ms", "ms", "", "", "rel err"));
            for (Map<String, Object> r : pre) {
                sb.append(String.format(Locale.ROOT, fmt, r.get("name"), f(num(r, "time_us", "median") / 1e3, 3),
                        f(num(r, "time_us", "p10") / 1e3, 3), f(num(r, "time_us", "p90") / 1e3, 3),
                        f(num(r, "tflops", null), 1), r.get("rotation_sets"), Util.sci(num(r, "check_rel_err", null))));
            }
        }
        sb.append("check: ||out - ref|| / ||ref|| against float64 attention over the same tokens (decode: 3 sequences, "
                + "all heads; prefill: 6 sampled query rows); tolerance " + TOLERANCE + ".\n");
        for (Map<String, Object> r : rows) {
            if (!(num(r, "check_rel_err", null) <= TOLERANCE)) {
                sb.append("WARNING: ").append(r.get("name")).append(": output check FAILED (rel err ")
                        .append(Util.sci(num(r, "check_rel_err", null))).append(")\n");
            }
        }
        sb.append('\n');
        return sb.toString();
    }

    /**
     * attn4j against PyTorch like for like: decode as CUDA graphs on both sides (the peer script's
     * own ratio column compares its per-call CUDA-event times with our back-to-back runs), prefill
     * per call with host planning on both sides.
     */
    static String peerSummary(List<Map<String, Object>> rows) {
        StringBuilder sb = new StringBuilder("## attn4j vs PyTorch SDPA, same run\n\n"
                + "| workload | attn4j | cuDNN | flash | cuDNN time / attn4j time | flash time / attn4j time |\n"
                + "|---|---|---|---|---|---|\n");
        int n = 0;
        for (Map<String, Object> r : rows) {
            boolean decode = "decode".equals(r.get("kind"));
            String us = decode ? "graph_us" : "ms_median";
            double ours = decode ? num(r, "time_us_graph", "median") : num(r, "time_us", "median") / 1e3;
            double c = num(r, "torch_cudnn", us);
            double fl = num(r, "torch_flash", us);
            if (!r.containsKey("torch_cudnn") && !r.containsKey("torch_flash")) {
                continue;
            }
            String unit = decode ? " us" : " ms";
            sb.append("| ").append(r.get("name")).append(decode ? " (CUDA graphs)" : "").append(" | ")
                    .append(f(ours, decode ? 1 : 3)).append(unit).append(" | ")
                    .append(Double.isNaN(c) ? "n/a" : f(c, decode ? 1 : 3) + unit).append(" | ")
                    .append(Double.isNaN(fl) ? "n/a" : f(fl, decode ? 1 : 3) + unit).append(" | ")
                    .append(Double.isNaN(c) ? "n/a" : f(c / ours, 2) + "x").append(" | ")
                    .append(Double.isNaN(fl) ? "n/a" : f(fl / ours, 2) + "x").append(" |\n");
            n++;
        }
        return n == 0 ? "" : sb.append("\n(> 1x: attn4j faster.)\n\n").toString();
    }

    private static String f(double v, int decimals) {
        return Double.isNaN(v) ? "-" : String.format(Locale.ROOT, "%." + decimals + "f", v);
    }

    /** The GPU's name from nvidia-smi when it is unambiguous; else a note why not. */
    static String gpuName(int ordinal) {
        List<String> names;
        try {
            Process p = new ProcessBuilder("nvidia-smi", "--query-gpu=name", "--format=csv,noheader")
                    .redirectErrorStream(true).start();
            String text = new String(p.getInputStream().readAllBytes()).strip();
            if (!p.waitFor(10, java.util.concurrent.TimeUnit.SECONDS) || p.exitValue() != 0) {
                return "(GPU name unknown: nvidia-smi failed)";
            }
            names = text.lines().map(String::strip).filter(s -> !s.isEmpty()).toList();
        } catch (IOException e) {
            return "(GPU name unknown: no nvidia-smi)";
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return "(GPU name unknown)";
        }
        if (names.isEmpty()) {
            return "(GPU name unknown)";
        }
        if (names.stream().distinct().count() == 1) {
            return names.get(0);
        }
        String visible = System.getenv("CUDA_VISIBLE_DEVICES");
        if ((visible == null || visible.isBlank()) && "PCI_BUS_ID".equals(System.getenv("CUDA_DEVICE_ORDER"))
                && ordinal < names.size()) {
            return names.get(ordinal);
        }
        return "(one of: " + String.join(", ", names) + ")";
    }

    static long ceilDiv(long a, long b) {
        return (a + b - 1) / b;
    }
}
