package org.attn4j.benchmarks;

import java.lang.foreign.Arena;
import java.util.concurrent.TimeUnit;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.DType;
import org.attn4j.Device;
import org.attn4j.PrefillPlan;
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
 * Causal prefill through the Java API: {@code qLen} new tokens over a {@code kvLen}-token context
 * (bottom-right aligned), 32 query / 8 KV heads, head_dim 128, contiguous K/V.
 * GFLOP/s = 4 * 32 * 128 * (qLen * (kvLen - qLen) + qLen * (qLen + 1) / 2) / time.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED"})
@Warmup(iterations = 2, time = 3)
@Measurement(iterations = 5, time = 3)
public class PrefillBench {
    @Param({"4096"})
    public int kvLen;

    @Param({"512"})
    public int qLen;

    /** KV type: BF16, F16 or F32 (q and out are BF16). */
    @Param({"BF16"})
    public String kvDtype;

    @Param({"0"})
    public int threads;

    private Attn4j lib;
    private PrefillPlan plan;
    private Arena arena;
    private Tensor q;
    private Tensor k;
    private Tensor v;
    private Tensor out;
    private Tensor qoIndptr;
    private Tensor kvIndptr;

    @Setup(Level.Trial)
    public void setUp() {
        DType kv = DType.valueOf(kvDtype);
        lib = Attn4j.open(Device.cpu(), threads);
        arena = Arena.ofConfined();
        q = BenchData.random(Tensor.allocate(arena, DType.BF16, qLen, 32, 128), 1);
        k = BenchData.random(Tensor.allocate(arena, kv, kvLen, 8, 128), 2);
        v = BenchData.random(Tensor.allocate(arena, kv, kvLen, 8, 128), 3);
        out = Tensor.allocate(arena, DType.BF16, qLen, 32, 128);
        qoIndptr = Tensor.ofInts(arena, 0, qLen);
        kvIndptr = Tensor.ofInts(arena, 0, kvLen);
        plan = Attention.prefill(lib).qoHeads(32).kvHeads(8).headDim(128).qDType(DType.BF16).kvDType(kv)
                .outDType(DType.BF16).causal(true).build();
    }

    @Benchmark
    public void prefill() {
        plan.run(q, qoIndptr, k, v, kvIndptr, out, null);
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        plan.close();
        arena.close();
        lib.close();
    }
}
