package org.attn4j;

import java.lang.foreign.MemorySegment;

import org.attn4j.bindings.Attn4jNative;
import org.attn4j.bindings.attn4j_page_table;
import org.attn4j.bindings.attn4j_paged_kv;
import org.attn4j.bindings.attn4j_tensor;
import org.attn4j.internal.Native;

/**
 * Paged decode: one new query token per sequence against the sequence's pages.
 * {@code q} and {@code out} are [batch, qoHeads, headDim]; the optional {@code lse} is F32
 * [batch, qoHeads] and receives natural-log log-sum-exp values (for {@link Attention#mergeStates}).
 * A run allocates nothing on the Java heap. On a CUDA {@link Attn4j} every tensor, the cache and
 * the page table are device memory (a {@link DeviceArena}, a CUDA {@link PagedKvCache}) and the run
 * is enqueued on the current stream.
 */
public final class DecodePlan extends Plan {
    private final MemorySegment qDesc;
    private final MemorySegment outDesc;
    private final MemorySegment lseDesc;
    private final MemorySegment segmentCaches;
    private final MemorySegment segmentTables;
    private final Tensor lseScratch; // LSE of tiered runs given no lse: salient-token probes need it

    DecodePlan(Builder b) {
        super(b.lib, b.config(false, true), Attn4jNative::attn4j_decode_plan_create, "decode plan");
        qDesc = attn4j_tensor.allocate(arena);
        outDesc = attn4j_tensor.allocate(arena);
        lseDesc = attn4j_tensor.allocate(arena);
        segmentCaches = attn4j_paged_kv.allocateArray(3, arena);
        segmentTables = attn4j_page_table.allocateArray(3, arena);
        lseScratch = device.kind() == Device.Kind.CPU
                ? Tensor.allocate(arena, DType.F32, config.maxBatch(), config.qoHeads()) : null;
    }

    /** Builder for decode plans; see {@link Attention#decode(Attn4j)}. */
    public static final class Builder extends PlanBuilder<Builder> {
        Builder(Attn4j lib) {
            super(lib);
        }

        /** Takes kvHeads, headDim, pageSize and the quantized format's dtype from {@code cache}. */
        public Builder forCache(TieredKvCache cache) {
            if (cache == null) {
                throw Attn4jException.invalid("cache: null");
            }
            return forCache(cache.quantized());
        }

        public DecodePlan build() {
            return new DecodePlan(this);
        }
    }

    public int pageSize() {
        return config.pageSize();
    }

    /** Decodes one step of the sequences in {@code table} against layer {@code layer} of {@code cache}. */
    public void run(Tensor q, PagedKvCache cache, int layer, PageTable table, Tensor out) {
        run(q, cache, layer, table, out, null);
    }

    /** As {@link #run(Tensor, PagedKvCache, int, PageTable, Tensor)}, also writing {@code lse} when not null. */
    public void run(Tensor q, PagedKvCache cache, int layer, PageTable table, Tensor out, Tensor lse) {
        MemorySegment plan = handle();
        if (cache == null) {
            throw Attn4jException.invalid("cache: null");
        }
        if (table == null) {
            throw Attn4jException.invalid("table: null");
        }
        if (!cache.device().equals(device)) {
            throw Attn4jException.invalid("cache: pages on " + cache.device() + ", but the plan runs on " + device);
        }
        if (!table.device().equals(device)) {
            throw Attn4jException.invalid("table: a page table on " + table.device() + ", but the plan runs on " + device
                    + "; allocate it with PageTable.allocate(DeviceArena, ...) or PagedKvCache.pageTable");
        }
        MemorySegment kv = cache.layerStruct(layer);
        NativeTensor.fill(qDesc, q, "q", device);
        NativeTensor.fill(outDesc, out, "out", device);
        MemorySegment l = MemorySegment.NULL;
        if (lse != null) {
            NativeTensor.fill(lseDesc, lse, "lse", device);
            l = lseDesc;
        }
        Native.check(Attn4jNative.attn4j_decode_run(plan, qDesc, kv, table.nativeStruct("table"), outDesc, l),
                "decode");
    }

    /**
     * Decodes one step against a mixed-precision cache: each sequence attends to its quantized
     * middle, its BF16 sinks and window and its salient tokens, merged by log-sum-exp in the same
     * native call. The plan is made {@linkplain Builder#forCache(TieredKvCache) for the cache}.
     * {@code lse} may be null. With salient tokens on, the queries and their log-sum-exp are
     * recorded as the cache's probes ({@code q} is then read back from host memory). On CUDA
     * each part is one kernel into plan scratch, then an LSE merge; the first run allocates that
     * scratch (and a BF16 kernel), so run once before capturing the step in a graph.
     */
    public void run(Tensor q, TieredKvCache cache, int layer, TieredKvCache.Tables tables, Tensor out, Tensor lse) {
        MemorySegment plan = handle();
        if (cache == null) {
            throw Attn4jException.invalid("cache: null");
        }
        if (tables == null) {
            throw Attn4jException.invalid("tables: null");
        }
        if (tables.owner != cache) {
            throw Attn4jException.invalid("tables: made by another tiered cache");
        }
        if (!cache.precise().device().equals(device)) {
            throw Attn4jException.invalid("cache: pages on " + cache.precise().device() + ", but the plan runs on "
                    + device);
        }
        long kvSize = attn4j_paged_kv.sizeof();
        long tSize = attn4j_page_table.sizeof();
        int segments = cache.salient() == null ? 2 : 3;
        MemorySegment.copy(cache.quantized().layerStruct(layer), 0, segmentCaches, 0, kvSize);
        MemorySegment.copy(cache.precise().layerStruct(layer), 0, segmentCaches, kvSize, kvSize);
        MemorySegment.copy(tables.quantized.nativeStruct("tables.quantized"), 0, segmentTables, 0, tSize);
        MemorySegment.copy(tables.precise.nativeStruct("tables.precise"), 0, segmentTables, tSize, tSize);
        if (segments == 3) {
            MemorySegment.copy(cache.salient().layerStruct(layer), 0, segmentCaches, 2 * kvSize, kvSize);
            MemorySegment.copy(tables.salient.nativeStruct("tables.salient"), 0, segmentTables, 2 * tSize, tSize);
        }
        NativeTensor.fill(qDesc, q, "q", device);
        NativeTensor.fill(outDesc, out, "out", device);
        Tensor lseOut = lse != null ? lse : segments == 3 ? lseScratch : null;
        MemorySegment l = MemorySegment.NULL;
        if (lseOut != null) {
            NativeTensor.fill(lseDesc, lseOut, lse != null ? "lse" : "lse (plan scratch)", device);
            if (lse == null) {
                attn4j_tensor.shape(lseDesc, 0, q.shape(0)); // the scratch has maxBatch rows
            }
            l = lseDesc;
        }
        Native.check(Attn4jNative.attn4j_decode_run_segments(plan, qDesc, segments, segmentCaches, segmentTables,
                outDesc, l), "decode");
        if (segments == 3) {
            for (int i = 0; i < tables.batch; i++) {
                cache.recordDecode(tables.seqs[i], layer, q, lseOut, i, config.scale());
            }
        }
    }
}
