package org.attn4j.benchmarks;

import java.lang.foreign.Arena;
import java.util.concurrent.TimeUnit;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.Device;
import org.attn4j.PageTable;
import org.attn4j.PagedKvCache;
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
 * Paged decode through the Java API: 32 query / 8 KV heads, head_dim 128, batch 1, page size 16,
 * one step per call. Each call uses the next of several layers so the KV (2 x kvLen x 8 x 128 x
 * element bytes per layer) comes from DRAM, not the last-level cache. KV GB/s = that byte count /
 * the reported time.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED"})
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
public class DecodeBench {
    @Param({"16384", "65536"})
    public int kvLen;

    /** KV storage type: BF16, F16 or F32. */
    @Param({"BF16"})
    public String kvDtype;

    /** CPU threads; 0 = all available cores. */
    @Param({"0"})
    public int threads;

    private Attn4j lib;
    private PagedKvCache cache;
    private DecodePlan plan;
    private PageTable table;
    private Arena arena;
    private Tensor q;
    private Tensor out;
    private int layers;
    private int layer;

    @Setup(Level.Trial)
    public void setUp() {
        DType kv = DType.valueOf(kvDtype);
        long bytesPerLayer = 2L * kvLen * 8 * 128 * kv.byteSize();
        layers = BenchData.rotationLayers(bytesPerLayer, 3L << 29);
        lib = Attn4j.open(Device.cpu(), threads);
        cache = PagedKvCache.builder(lib).layers(layers).kvHeads(8).headDim(128).pageSize(16)
                .numPages((kvLen + 15) / 16).dtype(kv).build();
        int seq = BenchData.fillSequence(cache, kvLen, 1);
        table = cache.pageTable(seq);
        arena = Arena.ofConfined();
        q = BenchData.random(Tensor.allocate(arena, DType.BF16, 1, 32, 128), 2);
        out = Tensor.allocate(arena, DType.BF16, 1, 32, 128);
        plan = Attention.decode(lib).forCache(cache).qoHeads(32).qDType(DType.BF16).outDType(DType.BF16).build();
    }

    @Benchmark
    public void decode() {
        plan.run(q, cache, layer, table, out);
        layer = layer + 1 == layers ? 0 : layer + 1;
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        plan.close();
        arena.close();
        cache.close();
        lib.close();
    }
}
