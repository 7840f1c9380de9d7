package org.attn4j.benchmarks;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.concurrent.TimeUnit;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.Device;
import org.attn4j.PageTable;
import org.attn4j.PagedKvCache;
import org.attn4j.Tensor;
import org.attn4j.bindings.Attn4jNative;
import org.attn4j.bindings.attn4j_attention_desc;
import org.attn4j.bindings.attn4j_context_options;
import org.attn4j.bindings.attn4j_page_table;
import org.attn4j.bindings.attn4j_paged_kv;
import org.attn4j.bindings.attn4j_tensor;
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
 * The Java-side cost of a decode call. A tiny problem (1 query head, 1 KV head, head_dim 64, one
 * token on one page of size 1, one thread, BF16) so the kernel itself costs little, run:
 * <ul>
 * <li>{@code javaApi}: {@link DecodePlan#run} — Java checks, descriptor filling, downcall, status check;</li>
 * <li>{@code directDowncall}: {@code Attn4jNative.attn4j_decode_run} with descriptors filled once in
 * set-up (the native side still validates everything);</li>
 * <li>{@code downcallFloor}: {@code attn4j_abi_version()}, a downcall that does nothing: the FFM
 * transition itself.</li>
 * </ul>
 * javaApi - directDowncall is what the Java API adds per call (target: at most 1 us). Run with
 * {@code -prof gc}: gc.alloc.rate.norm should be ~0 B/op for all three.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED"})
@Warmup(iterations = 5, time = 1)
@Measurement(iterations = 5, time = 1)
public class CallOverheadBench {
    private static final int D = 64;

    // Java API path
    private Attn4j lib;
    private PagedKvCache cache;
    private PageTable table;
    private DecodePlan plan;
    private Arena arena;
    private Tensor q;
    private Tensor out;

    // raw path: our own context, plan, cache memory and descriptors, all built through the bindings
    private MemorySegment rawCtx;
    private MemorySegment rawPlan;
    private MemorySegment rawQ;
    private MemorySegment rawKv;
    private MemorySegment rawTable;
    private MemorySegment rawOut;

    @Setup(Level.Trial)
    public void setUp() {
        lib = Attn4j.open(Device.cpu(), 1);
        cache = PagedKvCache.builder(lib).kvHeads(1).headDim(D).pageSize(1).numPages(1).dtype(DType.BF16).build();
        int seq = cache.newSequence();
        arena = Arena.ofConfined();
        Tensor k = BenchData.random(Tensor.allocate(arena, DType.BF16, 1, 1, D), 1);
        Tensor v = BenchData.random(Tensor.allocate(arena, DType.BF16, 1, 1, D), 2);
        cache.append(new int[] {seq}, new int[] {1}, k, v);
        table = cache.pageTable(seq);
        q = BenchData.random(Tensor.allocate(arena, DType.BF16, 1, 1, D), 3);
        out = Tensor.allocate(arena, DType.BF16, 1, 1, D);
        plan = Attention.decode(lib).forCache(cache).qoHeads(1).qDType(DType.BF16).outDType(DType.BF16).build();

        // the same problem, straight through the bindings
        MemorySegment opts = attn4j_context_options.allocate(arena);
        attn4j_context_options.struct_size(opts, (int) attn4j_context_options.sizeof());
        attn4j_context_options.device_type(opts, Attn4jNative.ATTN4J_DEVICE_CPU());
        attn4j_context_options.device_id(opts, 0);
        attn4j_context_options.num_threads(opts, 1);
        MemorySegment ptr = arena.allocate(ValueLayout.ADDRESS);
        check(Attn4jNative.attn4j_context_create(opts, ptr));
        rawCtx = ptr.get(ValueLayout.ADDRESS, 0);

        MemorySegment desc = attn4j_attention_desc.allocate(arena);
        attn4j_attention_desc.struct_size(desc, (int) attn4j_attention_desc.sizeof());
        attn4j_attention_desc.num_qo_heads(desc, 1);
        attn4j_attention_desc.num_kv_heads(desc, 1);
        attn4j_attention_desc.head_dim(desc, D);
        attn4j_attention_desc.q_dtype(desc, DType.BF16.code());
        attn4j_attention_desc.kv_dtype(desc, DType.BF16.code());
        attn4j_attention_desc.out_dtype(desc, DType.BF16.code());
        attn4j_attention_desc.causal(desc, 0);
        attn4j_attention_desc.sm_scale(desc, (float) (1 / Math.sqrt(D)));
        attn4j_attention_desc.page_size(desc, 1);
        attn4j_attention_desc.max_batch_size(desc, 1);
        check(Attn4jNative.attn4j_decode_plan_create(rawCtx, desc, ptr));
        rawPlan = ptr.get(ValueLayout.ADDRESS, 0);

        MemorySegment kData = arena.allocate(2L * D, 64);
        MemorySegment vData = arena.allocate(2L * D, 64);
        kData.copyFrom(k.segment().asSlice(0, 2L * D));
        vData.copyFrom(v.segment().asSlice(0, 2L * D));
        rawKv = attn4j_paged_kv.allocate(arena);
        attn4j_paged_kv.struct_size(rawKv, (int) attn4j_paged_kv.sizeof());
        attn4j_paged_kv.dtype(rawKv, DType.BF16.code());
        attn4j_paged_kv.num_kv_heads(rawKv, 1);
        attn4j_paged_kv.head_dim(rawKv, D);
        attn4j_paged_kv.page_size(rawKv, 1);
        attn4j_paged_kv.num_pages(rawKv, 1);
        attn4j_paged_kv.device_type(rawKv, Attn4jNative.ATTN4J_DEVICE_CPU());
        attn4j_paged_kv.device_id(rawKv, 0);
        attn4j_paged_kv.k_data(rawKv, kData);
        attn4j_paged_kv.v_data(rawKv, vData);
        attn4j_paged_kv.k_size_bytes(rawKv, kData.byteSize());
        attn4j_paged_kv.v_size_bytes(rawKv, vData.byteSize());

        rawTable = attn4j_page_table.allocate(arena);
        attn4j_page_table.struct_size(rawTable, (int) attn4j_page_table.sizeof());
        ints(attn4j_page_table.indptr(rawTable), 0, 1);
        ints(attn4j_page_table.indices(rawTable), 0);
        ints(attn4j_page_table.last_page_len(rawTable), 1);

        rawQ = tensor(q.segment(), D);
        rawOut = tensor(arena.allocate(2L * D, 64), D);
    }

    private MemorySegment tensor(MemorySegment data, int d) {
        MemorySegment t = attn4j_tensor.allocate(arena);
        attn4j_tensor.data(t, data);
        attn4j_tensor.size_bytes(t, data.byteSize());
        attn4j_tensor.dtype(t, DType.BF16.code());
        attn4j_tensor.device_type(t, Attn4jNative.ATTN4J_DEVICE_CPU());
        attn4j_tensor.device_id(t, 0);
        attn4j_tensor.rank(t, 3);
        long[] shape = {1, 1, d, 0};
        long[] strides = {d, d, 1, 0};
        for (int i = 0; i < 4; i++) {
            attn4j_tensor.shape(t, i, shape[i]);
            attn4j_tensor.strides(t, i, strides[i]);
        }
        return t;
    }

    /** Fills the descriptor {@code t} (a slice of a page table struct) with a new I32 vector. */
    private void ints(MemorySegment t, int... values) {
        MemorySegment data = arena.allocate(ValueLayout.JAVA_INT, values.length);
        MemorySegment.copy(values, 0, data, ValueLayout.JAVA_INT, 0, values.length);
        attn4j_tensor.data(t, data);
        attn4j_tensor.size_bytes(t, data.byteSize());
        attn4j_tensor.dtype(t, DType.I32.code());
        attn4j_tensor.device_type(t, Attn4jNative.ATTN4J_DEVICE_CPU());
        attn4j_tensor.device_id(t, 0);
        attn4j_tensor.rank(t, 1);
        for (int i = 0; i < 4; i++) {
            attn4j_tensor.shape(t, i, i == 0 ? values.length : 0);
            attn4j_tensor.strides(t, i, i == 0 ? 1 : 0);
        }
    }

    private static void check(int status) {
        if (status != 0) {
            throw new IllegalStateException("attn4j status " + status + ": "
                    + Attn4jNative.attn4j_last_error().reinterpret(4096).getString(0));
        }
    }

    @Benchmark
    public void javaApi() {
        plan.run(q, cache, 0, table, out);
    }

    @Benchmark
    public void directDowncall() {
        int s = Attn4jNative.attn4j_decode_run(rawPlan, rawQ, rawKv, rawTable, rawOut, MemorySegment.NULL);
        if (s != 0) {
            check(s);
        }
    }

    @Benchmark
    public int downcallFloor() {
        return Attn4jNative.attn4j_abi_version();
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        plan.close();
        Attn4jNative.attn4j_plan_destroy(rawPlan);
        Attn4jNative.attn4j_context_destroy(rawCtx);
        cache.close();
        arena.close();
        lib.close();
    }
}
