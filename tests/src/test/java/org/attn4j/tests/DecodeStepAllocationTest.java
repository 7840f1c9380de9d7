package org.attn4j.tests;

import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.management.ManagementFactory;
import java.util.Random;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.Device;
import org.attn4j.DeviceArena;
import org.attn4j.PageTable;
import org.attn4j.PagedKvCache;
import org.attn4j.Stream;
import org.attn4j.Tensor;
import org.attn4j.testing.Checks;
import org.attn4j.testing.TestDevice;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * A steady-state decode step through DeviceArena tensors (reserve, write, query upload, page
 * table refresh, run, synchronize) allocates nothing on the Java heap: on CPU, and on CUDA where
 * a device is visible.
 */
class DecodeStepAllocationTest {
    private static final int BATCH = 2;
    private static final int KV_HEADS = 2;
    private static final int HEADS = 8;
    private static final int D = 64;
    private static final int WARMUP = 3000;
    private static final int MEASURED = 1000;

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"cpu", "cuda:0"})
    void decodeStepAllocatesNothing(String where) {
        Device device = where.equals("cpu") ? Device.cpu() : Device.cuda(0);
        if (device.kind() == Device.Kind.CUDA) {
            TestDevice.assumeCuda();
        }
        int pages = BATCH * ((WARMUP + MEASURED) / 16 + 2);
        Random rnd = new Random(Checks.baseSeed() + 600);
        // one CPU thread: the steps are tiny, and the measurement is of this thread only
        try (Attn4j lib = Attn4j.open(device, 1); Arena arena = Arena.ofConfined(); DeviceArena mem = lib.newDeviceArena();
                PagedKvCache cache = PagedKvCache.builder(lib).kvHeads(KV_HEADS).headDim(D).pageSize(16)
                        .numPages(pages).dtype(DType.BF16).build();
                DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(HEADS).qDType(DType.BF16)
                        .maxBatch(BATCH).build();
                Stream stream = lib.newStream()) {
            lib.useStream(stream);
            Tensor kvHost = Tensor.allocate(arena, DType.BF16, BATCH, KV_HEADS, D);
            Tensor qHost = mem.allocatePinned(DType.BF16, BATCH, HEADS, D);
            for (long i = 0; i < kvHost.elementCount(); i++) {
                kvHost.setFlat(i, (float) rnd.nextGaussian());
            }
            for (long i = 0; i < qHost.elementCount(); i++) {
                qHost.setFlat(i, (float) rnd.nextGaussian());
            }
            Tensor kv = Tensor.allocate(mem, DType.BF16, BATCH, KV_HEADS, D);
            Tensor q = Tensor.allocate(mem, DType.BF16, BATCH, HEADS, D);
            Tensor out = Tensor.allocate(mem, DType.BF16, BATCH, HEADS, D);
            lib.copy(kvHost, kv);
            int[] seqs = {cache.newSequence(), cache.newSequence()};
            int[] ones = {1, 1};
            PagedKvCache.Reservation into = cache.newReservation(BATCH, pages);
            PageTable table = PageTable.allocate(mem, BATCH, pages);
            Runnable step = () -> {
                cache.reserve(seqs, ones, into);
                cache.write(0, into, kv, kv);
                lib.copyAsync(qHost, q);
                cache.fillPageTable(table, seqs);
                plan.run(q, cache, 0, table, out);
                stream.synchronize();
            };
            for (int i = 0; i < WARMUP; i++) {
                step.run();
            }
            com.sun.management.ThreadMXBean threads = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
            long before = threads.getCurrentThreadAllocatedBytes();
            for (int i = 0; i < MEASURED; i++) {
                step.run();
            }
            long bytes = threads.getCurrentThreadAllocatedBytes() - before;
            // The smallest object is 16 bytes, so anything a step allocates shows up as >= 16 per
            // step; a one-off (a JIT recompilation, ~1 KB, seen on CPU) stays far below that.
            assertTrue(bytes < 16L * MEASURED, device + ": " + bytes + " bytes allocated in " + MEASURED
                    + " decode steps");
        }
    }
}
