package org.attn4j.tests;

import static org.attn4j.testing.Checks.assertAttn4j;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.lang.foreign.Arena;
import java.util.List;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.CudaGraph;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.Device;
import org.attn4j.DeviceArena;
import org.attn4j.KvFormat;
import org.attn4j.PageTable;
import org.attn4j.PagedKvCache;
import org.attn4j.Rotation;
import org.attn4j.Status;
import org.attn4j.Stream;
import org.attn4j.Tensor;
import org.attn4j.testing.Checks;
import org.attn4j.testing.KvGen;
import org.attn4j.testing.KvMirror;
import org.attn4j.testing.OnDevice;
import org.attn4j.testing.ReferenceAttention;
import org.attn4j.testing.Runners;
import org.attn4j.testing.Runners.DecodeCase;
import org.attn4j.testing.TestDevice;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * Decode on CUDA driven from Java: a PagedKvCache in device memory, device tensors, a graph
 * replayed with new queries. Skipped, with the reason shown, where no device is visible.
 */
class CudaDecodeTest {
    private static final int KV_HEADS = 2;
    private static final int HEADS = 8;
    private static final int D = 128;
    private static final int PAGE = 16;
    private static Attn4j gpu;
    private static Attn4j cpu;

    @BeforeAll
    static void open() {
        cpu = Attn4j.open();
        if (Attn4j.cudaDeviceCount() > 0) {
            gpu = Attn4j.open(Device.cuda(0));
        }
    }

    @AfterAll
    static void close() {
        if (gpu != null) {
            gpu.close();
        }
        cpu.close();
    }

    @BeforeEach
    void needGpu() {
        TestDevice.assumeCuda();
    }

    @Test
    void floatCachesAgainstFp64() throws Throwable {
        long seed = Checks.baseSeed() + 500;
        Runners.decode(gpu, new DecodeCase("cuda", PAGE, KV_HEADS, 4, D, DType.BF16, DType.BF16, DType.BF16,
                DType.F32, new int[] {300, 32, 1}, true, seed));
        Runners.decode(gpu, new DecodeCase("cuda", 1, 1, 8, 64, DType.F16, DType.F32, DType.F32, DType.F16,
                new int[] {77, 1000}, false, seed + 1));
    }

    /** A fork on CUDA shares full pages and copies the partial last one on the device; both decode right. */
    @Test
    void forkCopiesThePartialPageOnTheDevice() {
        long seed = Checks.baseSeed() + 503;
        try (Arena arena = Arena.ofConfined(); OnDevice dev = OnDevice.of(gpu);
                PagedKvCache cache = PagedKvCache.builder(gpu).kvHeads(KV_HEADS).headDim(D).pageSize(PAGE).numPages(32)
                        .dtype(DType.BF16).build()) {
            KvMirror m = new KvMirror(cache, new KvGen(seed, KV_HEADS, D), DType.BF16, dev);
            int a = m.newSequence();
            m.append(arena, new int[] {a}, new int[] {40}, true); // 2 full pages + 1 partial
            int free = cache.freePageCount();
            int b = m.fork(a);
            assertEquals(free - 1, cache.freePageCount(), "fork copies only the partial last page");
            m.append(arena, new int[] {a, b}, new int[] {5, 9}, true);
            Runners.decodeMatchesMirror(gpu, arena, dev, m, 4, 0, new int[] {a, b}, seed);
            m.free(a);
            Runners.decodeMatchesMirror(gpu, arena, dev, m, 4, 0, new int[] {b}, seed + 1);
        }
    }

    /** The same tokens in a CPU and a CUDA cache: one step decoded on each, and the fp64 result. */
    private record Step(float[] out, double[] ref) {}

    private static Step decodeStep(Attn4j lib, KvFormat format, long seed, int[] lengths) {
        KvGen gen = new KvGen(seed, KV_HEADS, D);
        int batch = lengths.length;
        int row = KV_HEADS * D;
        int total = java.util.Arrays.stream(lengths).sum();
        float[][] keys = new float[batch][];
        float[][] values = new float[batch][];
        float[] k = new float[total * row];
        float[] v = new float[total * row];
        for (int b = 0, off = 0; b < batch; off += lengths[b] * row, b++) {
            keys[b] = gen.keys(0, lengths[b]);
            values[b] = gen.values(lengths[b]);
            System.arraycopy(keys[b], 0, k, off, keys[b].length);
            System.arraycopy(values[b], 0, v, off, values[b].length);
        }
        try (Arena arena = Arena.ofConfined(); OnDevice dev = OnDevice.of(lib);
                PagedKvCache cache = PagedKvCache.builder(lib).kvHeads(KV_HEADS).headDim(D).pageSize(PAGE)
                        .numPages(256).format(format).build();
                DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(HEADS).qDType(DType.F32)
                        .outDType(DType.F32).maxBatch(batch).build()) {
            int[] seqs = new int[batch];
            for (int i = 0; i < batch; i++) {
                seqs[i] = cache.newSequence();
            }
            cache.append(seqs, lengths, dev.put(Tensor.ofFloats(arena, DType.F32, k, total, KV_HEADS, D)),
                    dev.put(Tensor.ofFloats(arena, DType.F32, v, total, KV_HEADS, D)));
            float[] q = gen.queries(batch, HEADS);
            Tensor out = Tensor.allocate(arena, DType.F32, batch, HEADS, D);
            Tensor outD = dev.put(out);
            plan.run(dev.put(Tensor.ofFloats(arena, DType.F32, q, batch, HEADS, D)), cache, 0, cache.pageTable(seqs),
                    outD);
            dev.get(outD, out);
            double[] ref = new double[batch * HEADS * D];
            for (int b = 0; b < batch; b++) {
                ReferenceAttention.Result r = ReferenceAttention.attend(q, b * HEADS * D, keys[b], values[b], 0, 1,
                        lengths[b], HEADS, KV_HEADS, D, plan.scale(), false);
                System.arraycopy(r.out(), 0, ref, b * HEADS * D, HEADS * D);
            }
            return new Step(out.toFloatArray(), ref);
        }
    }

    @Test
    void quantizedCacheMatchesCpu() {
        long seed = Checks.baseSeed() + 501;
        int[] lengths = {700, 33, 1};
        KvFormat int8 = KvFormat.quantized(DType.INT8, 64).withRotation(Rotation.HADAMARD);
        Step onGpu = decodeStep(gpu, int8, seed, lengths);
        Step onCpu = decodeStep(cpu, int8, seed, lengths);
        double[] cpuOut = new double[onCpu.out.length];
        for (int i = 0; i < cpuOut.length; i++) {
            cpuOut[i] = onCpu.out[i];
        }
        Checks.assertClose(onGpu.out, cpuOut, 1e-2, "INT8 cache: CUDA vs CPU decode (seed " + seed + ")");
        Checks.assertClose(onGpu.out, onGpu.ref, 0.03, "INT8 cache: CUDA vs fp64 on unquantized K/V (seed " + seed + ")");
    }

    /**
     * One decode step (q upload, run, out download) captured on a stream, then replayed with new
     * query contents in the same pinned buffer: each replay matches fp64 for its queries.
     */
    @Test
    void graphReplaysWithNewQueries() {
        long seed = Checks.baseSeed() + 502;
        int[] lengths = {200, 17};
        int batch = lengths.length;
        KvGen gen = new KvGen(seed, KV_HEADS, D);
        try (Arena arena = Arena.ofConfined(); OnDevice dev = OnDevice.of(gpu); DeviceArena mem = gpu.newDeviceArena();
                PagedKvCache cache = PagedKvCache.builder(gpu).kvHeads(KV_HEADS).headDim(D).pageSize(PAGE)
                        .numPages(64).dtype(DType.BF16).build();
                DecodePlan plan = Attention.decode(gpu).forCache(cache).qoHeads(HEADS).qDType(DType.F32)
                        .outDType(DType.F32).maxBatch(batch).build();
                Stream stream = gpu.newStream()) {
            KvMirror m = new KvMirror(cache, gen, DType.F32, dev);
            int[] seqs = {m.newSequence(), m.newSequence()};
            m.append(arena, seqs, lengths, false);
            PageTable table = PageTable.allocate(mem, batch, 64);
            Tensor qHost = mem.allocatePinned(DType.F32, batch, HEADS, D);
            Tensor outHost = mem.allocatePinned(DType.F32, batch, HEADS, D);
            Tensor q = Tensor.allocate(mem, DType.F32, batch, HEADS, D);
            Tensor out = Tensor.allocate(mem, DType.F32, batch, HEADS, D);
            gpu.useStream(stream);
            cache.fillPageTable(table, seqs);
            qHost.fill(0.5f);
            gpu.copyAsync(qHost, q);
            plan.run(q, cache, 0, table, out); // warm-up outside the capture
            stream.synchronize();
            stream.beginCapture();
            gpu.copyAsync(qHost, q);
            plan.run(q, cache, 0, table, out);
            gpu.copyAsync(out, outHost);
            try (CudaGraph graph = stream.endCapture()) {
                for (int replay = 0; replay < 3; replay++) {
                    float[] qs = gen.queries(batch, HEADS);
                    for (int i = 0; i < qs.length; i++) {
                        qHost.setFlat(i, qs[i]);
                    }
                    outHost.fill(Float.NaN);
                    graph.launch(stream);
                    stream.synchronize();
                    double[] ref = new double[batch * HEADS * D];
                    for (int b = 0; b < batch; b++) {
                        ReferenceAttention.Result r = ReferenceAttention.attend(qs, b * HEADS * D, m.keys(0, seqs[b]),
                                m.values(0, seqs[b]), 0, 1, lengths[b], HEADS, KV_HEADS, D, plan.scale(), false);
                        System.arraycopy(r.out(), 0, ref, b * HEADS * D, HEADS * D);
                    }
                    Checks.assertClose(outHost.toFloatArray(), ref, 1e-2, "graph replay " + replay + " (seed " + seed
                            + ")");
                }
            }
        } finally {
            gpu.useDefaultStream();
        }
    }

    /**
     * One device page table refilled between two runs on a busy stream, with no synchronize in
     * between: the refill must wait for the first upload (else the first run would read the second
     * table). Both outputs must equal the same runs made one at a time.
     */
    @Test
    void refillingATableOnABusyStreamKeepsEachRunsTable() {
        long seed = Checks.baseSeed() + 504;
        KvGen gen = new KvGen(seed, KV_HEADS, D);
        try (Arena arena = Arena.ofConfined(); OnDevice dev = OnDevice.of(gpu); DeviceArena mem = gpu.newDeviceArena();
                PagedKvCache cache = PagedKvCache.builder(gpu).kvHeads(KV_HEADS).headDim(D).pageSize(PAGE)
                        .numPages(1200).dtype(DType.BF16).build();
                DecodePlan plan = Attention.decode(gpu).forCache(cache).qoHeads(HEADS).qDType(DType.F32)
                        .outDType(DType.F32).maxBatch(1).build();
                Stream stream = gpu.newStream()) {
            KvMirror m = new KvMirror(cache, gen, DType.F32, dev);
            int[] seqs = {m.newSequence(), m.newSequence(), m.newSequence()};
            m.append(arena, seqs, new int[] {300, 17, 16000}, false);
            Tensor qHost = Tensor.ofFloats(arena, DType.F32, gen.queries(1, HEADS), 1, HEADS, D);
            Tensor q = Tensor.allocate(mem, DType.F32, 1, HEADS, D);
            Tensor[] outs = {Tensor.allocate(mem, DType.F32, 1, HEADS, D), Tensor.allocate(mem, DType.F32, 1, HEADS, D)};
            Tensor busy = Tensor.allocate(mem, DType.F32, 1, HEADS, D);
            PageTable table = PageTable.allocate(mem, 1, 1100);
            PageTable busyTable = PageTable.allocate(mem, 1, 1100);
            gpu.copy(qHost, q);
            float[][] expected = new float[2][];
            for (int i = 0; i < 2; i++) {  // one at a time, default stream
                cache.fillPageTable(table, new int[] {seqs[i]});
                plan.run(q, cache, 0, table, outs[i]);
                Tensor host = Tensor.allocate(arena, DType.F32, 1, HEADS, D);
                gpu.copy(outs[i], host);
                expected[i] = host.toFloatArray();
            }
            gpu.useStream(stream);
            cache.fillPageTable(busyTable, new int[] {seqs[2]});
            stream.synchronize();
            for (int rep = 0; rep < 5; rep++) {
                for (int k = 0; k < 20; k++) {  // keep the stream busy so the next upload waits in line
                    plan.run(q, cache, 0, busyTable, busy);
                }
                for (int i = 0; i < 2; i++) {
                    cache.fillPageTable(table, new int[] {seqs[i]});
                    plan.run(q, cache, 0, table, outs[i]);
                }
                stream.synchronize();
                for (int i = 0; i < 2; i++) {
                    Tensor host = Tensor.allocate(arena, DType.F32, 1, HEADS, D);
                    gpu.copy(outs[i], host);
                    float[] got = host.toFloatArray();
                    for (int j = 0; j < got.length; j++) {
                        assertEquals(expected[i][j], got[j], 0f, "run " + i + " of round " + rep + ", element " + j
                                + ": it must read its own table (seed " + seed + ")");
                    }
                }
            }
        } finally {
            gpu.useDefaultStream();
        }
    }

    /** A host tensor or host page table handed to a CUDA plan is named, and the context keeps working. */
    @Test
    void hostArgumentsToACudaPlanAreNamed() {
        try (Arena arena = Arena.ofConfined(); DeviceArena mem = gpu.newDeviceArena();
                PagedKvCache cache = PagedKvCache.builder(gpu).kvHeads(KV_HEADS).headDim(D).pageSize(PAGE).numPages(8)
                        .dtype(DType.BF16).build();
                DecodePlan plan = Attention.decode(gpu).forCache(cache).qoHeads(HEADS).qDType(DType.BF16).build()) {
            int s = cache.newSequence();
            Tensor k = Tensor.allocate(mem, DType.BF16, 20, KV_HEADS, D);
            Tensor kHost = Tensor.allocate(arena, DType.BF16, 20, KV_HEADS, D);
            kHost.fill(0.25f);
            gpu.copy(kHost, k);
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("k"), () -> cache.append(new int[] {s}, new int[] {20},
                    kHost, k));
            cache.append(new int[] {s}, new int[] {20}, k, k);
            Tensor q = Tensor.allocate(mem, DType.BF16, 1, HEADS, D);
            Tensor out = Tensor.allocate(mem, DType.BF16, 1, HEADS, D);
            Tensor hostQ = Tensor.allocate(arena, DType.BF16, 1, HEADS, D);
            hostQ.fill(1f);
            PageTable table = cache.pageTable(s);
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("q"), () -> plan.run(hostQ, cache, 0, table, out));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("out"), () -> plan.run(q, cache, 0, table, hostQ));
            PageTable hostTable = PageTable.of(arena, new int[] {0, 2}, table.indices(), table.lastPageLen());
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("table"), () -> plan.run(q, cache, 0, hostTable, out));
            try (PagedKvCache cpuCache = PagedKvCache.builder(cpu).kvHeads(KV_HEADS).headDim(D).pageSize(PAGE)
                    .numPages(8).dtype(DType.BF16).build()) {
                assertAttn4j(Status.INVALID_ARGUMENT, List.of("cache"), () -> plan.run(q, cpuCache, 0, table, out));
            }
            gpu.copy(hostQ, q);
            plan.run(q, cache, 0, table, out); // the context is still usable
            gpu.copy(out, hostQ);
            float[] o = hostQ.toFloatArray();
            for (float x : o) {
                assertEquals(0.25f, x, 1e-3f, "attention over identical values returns that value");
            }
        }
    }
}
