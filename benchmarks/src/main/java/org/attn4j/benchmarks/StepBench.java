package org.attn4j.benchmarks;

import java.lang.foreign.Arena;
import java.util.concurrent.TimeUnit;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.Device;
import org.attn4j.PagedKvCache;
import org.attn4j.Tensor;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * One engine step on a small problem: reserve a token with a reused Reservation, write its K/V,
 * decode, then roll the token back so the sequence length (and the cost) stays constant. Run
 * with {@code -prof gc}: gc.alloc.rate.norm shows whether a step leaves garbage (it should not).
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED"})
@Warmup(iterations = 5, time = 1)
@Measurement(iterations = 5, time = 1)
public class StepBench {
    private static final int D = 64;
    private Attn4j lib;
    private PagedKvCache cache;
    private DecodePlan plan;
    private Arena arena;
    private PagedKvCache.Reservation reservation;
    private final int[] seqs = new int[1];
    private final int[] counts = {1};
    private Tensor q;
    private Tensor k;
    private Tensor v;
    private Tensor out;

    @Setup(Level.Trial)
    public void setUp() {
        lib = Attn4j.open(Device.cpu(), 1);
        cache = PagedKvCache.builder(lib).kvHeads(1).headDim(D).pageSize(16).numPages(8).dtype(DType.BF16).build();
        arena = Arena.ofConfined();
        seqs[0] = cache.newSequence();
        Tensor k0 = BenchData.random(Tensor.allocate(arena, DType.BF16, 20, 1, D), 1);
        Tensor v0 = BenchData.random(Tensor.allocate(arena, DType.BF16, 20, 1, D), 2);
        cache.write(0, cache.reserve(seqs, new int[] {20}), k0, v0);
        reservation = cache.newReservation(1, 8);
        q = BenchData.random(Tensor.allocate(arena, DType.BF16, 1, 1, D), 3);
        k = BenchData.random(Tensor.allocate(arena, DType.BF16, 1, 1, D), 4);
        v = BenchData.random(Tensor.allocate(arena, DType.BF16, 1, 1, D), 5);
        out = Tensor.allocate(arena, DType.BF16, 1, 1, D);
        plan = Attention.decode(lib).forCache(cache).qoHeads(1).qDType(DType.BF16).outDType(DType.BF16).build();
    }

    @Benchmark
    public void reserveWriteDecodeRollback() {
        PagedKvCache.Reservation r = cache.reserve(seqs, counts, reservation);
        cache.write(0, r, k, v);
        plan.run(q, cache, 0, r.pageTable(), out);
        cache.rollback(r);
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        plan.close();
        cache.close();
        arena.close();
        lib.close();
    }
}
