package org.attn4j.benchmarks;

import java.lang.foreign.Arena;
import java.util.concurrent.TimeUnit;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.Device;
import org.attn4j.KvFormat;
import org.attn4j.PagedKvCache;
import org.attn4j.Rotation;
import org.attn4j.Tensor;
import org.attn4j.TieredKvCache;
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
 * One engine step on a mixed-precision cache (INT4 + Hadamard middle, BF16 sinks 16 and window
 * 32, page 16): reserve a token (every 16th step first quantizes an aged window page into the
 * INT4 part), write its K/V, refill the page tables, decode every part in one call. The sequence
 * restarts every {@value #RESTART} steps so the cost stays bounded (one small allocation per
 * restart). {@code heads}: query heads x KV heads x head_dim. {@code salient}: with salient tokens
 * (5%, 16 probes), the step also records its query as a probe and each move scores the page's
 * tokens against the probes (Java) and splits them between the BF16 and INT4 parts. Run with
 * {@code -prof gc}: gc.alloc.rate.norm shows what a step leaves behind.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED"})
@Warmup(iterations = 5, time = 1)
@Measurement(iterations = 5, time = 1)
public class TieredStepBench {
    private static final int RESTART = 512;
    @Param({"1x1x64", "32x8x128"})
    public String heads;
    @Param({"false", "true"})
    public boolean salient;
    private Attn4j lib;
    private TieredKvCache cache;
    private DecodePlan plan;
    private Arena arena;
    private PagedKvCache.Reservation reservation;
    private TieredKvCache.Tables tables;
    private final int[] seqs = new int[1];
    private final int[] counts = {1};
    private int steps;
    private Tensor q;
    private Tensor k;
    private Tensor v;
    private Tensor out;

    @Setup(Level.Trial)
    public void setUp() {
        String[] h = heads.split("x");
        int qoHeads = Integer.parseInt(h[0]);
        int kvHeads = Integer.parseInt(h[1]);
        int d = Integer.parseInt(h[2]);
        lib = Attn4j.open(Device.cpu(), 1);
        TieredKvCache.Builder b = TieredKvCache.builder(lib).kvHeads(kvHeads).headDim(d).pageSize(16)
                .numPages(8, RESTART / 16 + 2).format(KvFormat.quantized(DType.INT4, 64).withRotation(Rotation.HADAMARD))
                .sinks(16).window(32);
        cache = (salient ? b.salient(0.05, RESTART / 16 + 2) : b).build();
        arena = Arena.ofConfined();
        seqs[0] = cache.newSequence();
        reservation = cache.newReservation(1, 8);
        tables = cache.newTables(1, RESTART / 16 + 2);
        q = BenchData.random(Tensor.allocate(arena, DType.BF16, 1, qoHeads, d), 3);
        k = BenchData.random(Tensor.allocate(arena, DType.BF16, 1, kvHeads, d), 4);
        v = BenchData.random(Tensor.allocate(arena, DType.BF16, 1, kvHeads, d), 5);
        out = Tensor.allocate(arena, DType.BF16, 1, qoHeads, d);
        plan = Attention.decode(lib).forCache(cache).qoHeads(qoHeads).qDType(DType.BF16).outDType(DType.BF16).build();
    }

    @Benchmark
    public void reserveWriteDecode() {
        if (++steps == RESTART) {
            cache.free(seqs[0]);
            seqs[0] = cache.newSequence();
            steps = 1;
        }
        PagedKvCache.Reservation r = cache.reserve(seqs, counts, reservation);
        cache.write(0, r, k, v);
        cache.fillTables(tables, seqs);
        plan.run(q, cache, 0, tables, out, null);
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        plan.close();
        cache.close();
        arena.close();
        lib.close();
    }
}
