package org.attn4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.List;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.Attn4jException;
import org.attn4j.Device;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.DeviceArena;
import org.attn4j.KvFormat;
import org.attn4j.PagedKvCache;
import org.attn4j.Rotation;
import org.attn4j.Status;
import org.attn4j.Tensor;
import org.attn4j.TieredKvCache;
import org.attn4j.quant.SyntheticKv;
import org.attn4j.testing.Checks;
import org.attn4j.testing.TestDevice;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** CUDA: skipped, with the reason shown, where no device is visible. */
class GpuTest {
    @BeforeEach
    void needGpu() {
        TestDevice.assumeCuda();
    }

    @Test
    void openEveryDevice() {
        int n = Attn4j.cudaDeviceCount();
        for (int i = 0; i < n; i++) {
            try (Attn4j lib = Attn4j.open(Device.cuda(i))) {
                assertEquals(Device.cuda(i), lib.device());
            }
        }
        Attn4jException e = assertThrows(Attn4jException.class, () -> Attn4j.open(Device.cuda(n)).close());
        Checks.assertNames(e.getMessage(), List.of("device", "device_id", "cuda"));
    }

    @Test
    void salientTokensOnGpuSayUnsupported() {
        try (Attn4j lib = Attn4j.open(Device.cuda(0))) {
            Attn4jException e = assertThrows(Attn4jException.class, () -> TieredKvCache.builder(lib).kvHeads(1)
                    .headDim(64).numPages(4, 4).format(KvFormat.quantized(DType.INT8, 64)).salient(0.05, 4).build());
            assertEquals(Status.UNSUPPORTED, e.status());
            Checks.assertNames(e.getMessage(), List.of("salient"));
        }
    }

    /**
     * A tiered INT4 + Hadamard cache on the GPU (moves quantize on the device, decode is one kernel
     * per part plus an LSE merge) against the same token stream on the CPU: a long sequence (all
     * parts used) and a short one whose quantized part is empty, decoded in one batch, plus a fork.
     */
    @Test
    void tieredCacheOnGpuDecodesAsOnCpu() {
        long seed = Checks.baseSeed() + 601;
        int[] lengths = {700, 40};
        float[] cpu;
        try (Attn4j lib = Attn4j.open(Device.cpu(), 2)) {
            cpu = tieredDecode(lib, lengths, seed);
        }
        float[] gpu;
        try (Attn4j lib = Attn4j.open(Device.cuda(0))) {
            gpu = tieredDecode(lib, lengths, seed);
        }
        double num = 0;
        double den = 0;
        for (int i = 0; i < cpu.length; i++) {
            num += (gpu[i] - cpu[i]) * (double) (gpu[i] - cpu[i]);
            den += cpu[i] * (double) cpu[i];
        }
        double rel = Math.sqrt(num / den);
        assertTrue(rel <= 1e-2, "tiered decode, CUDA vs CPU: rel " + rel + " (seed " + seed + ")");
    }

    /** Grows each sequence in page-sized steps, forks the first, decodes [seq0, seq1, fork] once; the output, F32. */
    private static float[] tieredDecode(Attn4j lib, int[] lengths, long seed) {
        int heads = 8;
        int kvh = 2;
        int d = 128;
        int ps = 16;
        boolean gpu = lib.device().kind() != Device.Kind.CPU;
        try (Arena arena = Arena.ofConfined();
                DeviceArena mem = gpu ? lib.newDeviceArena() : null;
                TieredKvCache cache = TieredKvCache.builder(lib).kvHeads(kvh).headDim(d).pageSize(ps).numPages(64, 64)
                        .format(KvFormat.quantized(DType.INT4, 128).withRotation(Rotation.HADAMARD))
                        .sinks(32).window(64).build();
                DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(heads)
                        .qDType(DType.F32).outDType(DType.F32).maxBatch(3).build()) {
            int[] seqs = new int[3];
            for (int i = 0; i < lengths.length; i++) {
                SyntheticKv s = SyntheticKv.builder().qoHeads(heads).kvHeads(kvh)
                        .headDim(d).tokens(lengths[i]).seed(seed + i).build();
                seqs[i] = cache.newSequence();
                writeTokens(lib, mem, arena, cache, seqs[i], s);
            }
            cache.compact(new int[] {seqs[0], seqs[1]});
            assertTrue(cache.quantizedLength(seqs[0]) > 0 && cache.quantizedLength(seqs[1]) == 0,
                    "the long sequence has a quantized middle, the short one none");
            seqs[2] = cache.fork(seqs[0]);
            float[] q = SyntheticKv.builder().qoHeads(heads).kvHeads(kvh).headDim(d).tokens(16)
                    .seed(seed + 9).build().sampleQueries(3);
            Tensor out = gpu ? Tensor.allocate(mem, DType.F32, 3, heads, d)
                    : Tensor.allocate(arena, DType.F32, 3, heads, d);
            TieredKvCache.Tables tables = cache.newTables(3, 256); // page ids of the whole batch
            cache.fillTables(tables, seqs);
            plan.run(onDevice(lib, mem, arena, q, 3, heads, d), cache, 0, tables, out, null);
            if (!gpu) {
                return out.toFloatArray();
            }
            Tensor host = Tensor.allocate(arena, DType.F32, 3, heads, d);
            lib.copy(out, host);
            return host.toFloatArray();
        }
    }

    /** Appends every token of {@code s} to {@code seq} in page-sized steps (moves happen on the way). */
    private static void writeTokens(Attn4j lib, DeviceArena mem, Arena arena, TieredKvCache cache, int seq,
            SyntheticKv s) {
        int kvh = s.kvHeads();
        int d = s.headDim();
        int ps = cache.precise().pageSize();
        for (int t = 0; t < s.tokens(); t += ps) {
            int n = Math.min(ps, s.tokens() - t);
            PagedKvCache.Reservation r = cache.reserve(new int[] {seq}, new int[] {n});
            cache.write(0, r, onDevice(lib, mem, arena, Arrays.copyOfRange(s.k(), t * kvh * d, (t + n) * kvh * d), n,
                    kvh, d), onDevice(lib, mem, arena, Arrays.copyOfRange(s.v(), t * kvh * d, (t + n) * kvh * d), n,
                    kvh, d));
        }
    }

    /**
     * A tiered decode (three kernels on two streams, then the merge) captured in a CUDA graph after
     * one ordinary run (which allocates the plan's segment scratch) replays to the same output.
     */
    @Test
    void tieredDecodeReplaysFromACudaGraph() {
        long seed = Checks.baseSeed() + 602;
        int heads = 8;
        int kvh = 2;
        int d = 128;
        SyntheticKv s = SyntheticKv.builder().qoHeads(heads).kvHeads(kvh).headDim(d).tokens(900).seed(seed).build();
        try (Attn4j lib = Attn4j.open(Device.cuda(0));
                Arena arena = Arena.ofConfined();
                DeviceArena mem = lib.newDeviceArena();
                org.attn4j.Stream stream = lib.newStream();
                TieredKvCache cache = TieredKvCache.builder(lib).kvHeads(kvh).headDim(d).pageSize(16).numPages(64, 64)
                        .format(KvFormat.quantized(DType.INT2, 128).withRotation(Rotation.HADAMARD)).sinks(32)
                        .window(64).build();
                DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(heads).qDType(DType.F32)
                        .outDType(DType.F32).build()) {
            int[] seqs = {cache.newSequence()};
            writeTokens(lib, mem, arena, cache, seqs[0], s);
            cache.compact(seqs);
            TieredKvCache.Tables tables = cache.newTables(1, 128);
            cache.fillTables(tables, seqs);
            Tensor q = onDevice(lib, mem, arena, s.q(), 1, heads, d);
            Tensor out = Tensor.allocate(mem, DType.F32, 1, heads, d);
            Tensor host = Tensor.allocate(arena, DType.F32, 1, heads, d);
            lib.useStream(stream);
            try {
                plan.run(q, cache, 0, tables, out, null);
                stream.synchronize();
                lib.copy(out, host);
                float[] first = host.toFloatArray();
                host.fill(Float.NaN);
                lib.copy(host, out);
                stream.beginCapture();
                plan.run(q, cache, 0, tables, out, null);
                try (org.attn4j.CudaGraph step = stream.endCapture()) {
                    step.launch(stream);
                    stream.synchronize();
                }
                lib.copy(out, host);
                org.junit.jupiter.api.Assertions.assertArrayEquals(first, host.toFloatArray(),
                        "graph replay of a tiered decode (seed " + seed + ")");
            } finally {
                lib.useDefaultStream();
            }
        }
    }

    private static Tensor onDevice(Attn4j lib, DeviceArena mem, Arena arena,
            float[] x, long rows, long heads, long d) {
        Tensor h = Tensor.ofFloats(arena, DType.F32, x, rows, heads, d);
        if (mem == null) {
            return h;
        }
        Tensor t = Tensor.allocate(mem, DType.F32, rows, heads, d);
        lib.copy(h, t);
        return t;
    }
}
