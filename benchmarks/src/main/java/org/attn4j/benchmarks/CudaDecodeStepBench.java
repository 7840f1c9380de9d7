package org.attn4j.benchmarks;

import java.lang.foreign.Arena;
import java.util.concurrent.TimeUnit;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.CudaGraph;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.Device;
import org.attn4j.DeviceArena;
import org.attn4j.PageTable;
import org.attn4j.PagedKvCache;
import org.attn4j.Stream;
import org.attn4j.Tensor;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * A BF16 decode step on a GPU driven from Java (32 q / 8 KV heads, head_dim 128, batch 1, page
 * 16, {@code kvLen} tokens), on a stream of our own, to set against the native harness
 * ({@code bench_cuda_decode}: CUDA events, same shape) in the same sitting:
 * <ul>
 * <li>{@code runAndSync}: {@code DecodePlan.run} then {@code Stream.synchronize}, the latency a Java
 * engine sees for one step (launch, kernel, synchronization);
 * <li>{@code graphOfSteps}: one replay of a CUDA graph holding one step per cache layer, then a
 * synchronize; divide by {@code layers} (printed at set-up) for the time per step.
 * </ul>
 * Each step reads the next layer of a multi-layer cache (>= 256 MB of K/V in all) so the GPU's L2
 * cannot hold the KV, as the native harness rotates its K/V sets. Needs {@code cuda:0}.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED"})
@Warmup(iterations = 5, time = 1)
@Measurement(iterations = 5, time = 1)
public class CudaDecodeStepBench {
    private static final int HEADS = 32;
    private static final int KV_HEADS = 8;
    private static final int D = 128;
    private static final int PAGE = 16;

    @Param({"4096", "32768"})
    public int kvLen;

    private Attn4j gpu;
    private DeviceArena mem;
    private PagedKvCache cache;
    private DecodePlan plan;
    private Stream stream;
    private CudaGraph graph;
    private PageTable table;
    private Tensor q;
    private Tensor out;
    private int layers;
    private int layer;

    @Setup(Level.Trial)
    public void setUp() {
        if (Attn4j.cudaDeviceCount() == 0) {
            throw new IllegalStateException("CudaDecodeStepBench needs a CUDA device (attn4j_device_count(CUDA) = 0)");
        }
        gpu = Attn4j.open(Device.cuda(0));
        mem = gpu.newDeviceArena();
        long bytesPerLayer = 2L * kvLen * KV_HEADS * D * 2;
        layers = (int) Math.max(2, (256L << 20) / bytesPerLayer + 1);
        int pages = (kvLen + PAGE - 1) / PAGE;
        cache = PagedKvCache.builder(gpu).layers(layers).kvHeads(KV_HEADS).headDim(D).pageSize(PAGE).numPages(pages)
                .dtype(DType.BF16).build();
        int[] seqs = {cache.newSequence()};
        PagedKvCache.Reservation r = cache.reserve(seqs, new int[] {kvLen});
        try (Arena arena = Arena.ofConfined()) {
            Tensor kHost = BenchData.random(Tensor.allocate(arena, DType.BF16, kvLen, KV_HEADS, D), 1);
            Tensor vHost = BenchData.random(Tensor.allocate(arena, DType.BF16, kvLen, KV_HEADS, D), 2);
            Tensor k = Tensor.allocate(mem, DType.BF16, kvLen, KV_HEADS, D);
            Tensor v = Tensor.allocate(mem, DType.BF16, kvLen, KV_HEADS, D);
            gpu.copy(kHost, k);
            gpu.copy(vHost, v);
            for (int l = 0; l < layers; l++) {
                cache.write(l, r, k, v);
            }
            Tensor qHost = BenchData.random(Tensor.allocate(arena, DType.BF16, 1, HEADS, D), 3);
            q = Tensor.allocate(mem, DType.BF16, 1, HEADS, D);
            gpu.copy(qHost, q);
        }
        out = Tensor.allocate(mem, DType.BF16, 1, HEADS, D);
        table = PageTable.allocate(mem, 1, pages);
        cache.fillPageTable(table, seqs);
        plan = Attention.decode(gpu).forCache(cache).qoHeads(HEADS).qDType(DType.BF16).outDType(DType.BF16)
                .maxBatch(1).build();
        stream = gpu.newStream();
        gpu.useStream(stream);
        plan.run(q, cache, 0, table, out); // warm-up outside the capture
        stream.synchronize();
        stream.beginCapture();
        for (int l = 0; l < layers; l++) {
            plan.run(q, cache, l, table, out);
        }
        graph = stream.endCapture();
        System.out.println("CudaDecodeStepBench: kvLen " + kvLen + ", " + layers + " layers ("
                + (layers * bytesPerLayer >> 20) + " MiB of K/V); graphOfSteps holds " + layers + " steps");
    }

    @Benchmark
    public void runAndSync() {
        plan.run(q, cache, layer, table, out);
        stream.synchronize();
        layer = layer + 1 == layers ? 0 : layer + 1;
    }

    @Benchmark
    public void graphOfSteps() {
        graph.launch(stream);
        stream.synchronize();
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        graph.close();
        gpu.useDefaultStream();
        stream.close();
        plan.close();
        cache.close();
        mem.close();
        gpu.close();
    }
}
