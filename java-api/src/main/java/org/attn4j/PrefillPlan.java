package org.attn4j;

import java.lang.foreign.MemorySegment;

import org.attn4j.bindings.Attn4jNative;
import org.attn4j.bindings.attn4j_tensor;
import org.attn4j.internal.Native;

/**
 * Prefill over a ragged batch: {@code q}/{@code out} are [nnzQ, qoHeads, headDim] with sequence i
 * at rows {@code qoIndptr[i] .. qoIndptr[i+1]}; keys and values come either as contiguous ragged
 * rows [nnzKv, kvHeads, headDim] with {@code kvIndptr}, or from a paged cache. A causal plan masks
 * aligned bottom-right: query i of nQ sees keys 0 .. i + nKv - nQ. The optional {@code lse} is F32
 * [nnzQ, qoHeads] (natural log).
 */
public final class PrefillPlan extends Plan {
    private final MemorySegment qDesc;
    private final MemorySegment qoIndptrDesc;
    private final MemorySegment kDesc;
    private final MemorySegment vDesc;
    private final MemorySegment kvIndptrDesc;
    private final MemorySegment outDesc;
    private final MemorySegment lseDesc;

    PrefillPlan(Builder b) {
        super(b.lib, b.config(b.causal, false), Attn4jNative::attn4j_prefill_plan_create, "prefill plan");
        qDesc = attn4j_tensor.allocate(arena);
        qoIndptrDesc = attn4j_tensor.allocate(arena);
        kDesc = attn4j_tensor.allocate(arena);
        vDesc = attn4j_tensor.allocate(arena);
        kvIndptrDesc = attn4j_tensor.allocate(arena);
        outDesc = attn4j_tensor.allocate(arena);
        lseDesc = attn4j_tensor.allocate(arena);
    }

    /** Builder for prefill plans; see {@link Attention#prefill(Attn4j)}. */
    public static final class Builder extends PlanBuilder<Builder> {
        boolean causal;

        Builder(Attn4j lib) {
            super(lib);
        }

        /** Causal mask, aligned bottom-right (default false). */
        public Builder causal(boolean causal) {
            this.causal = causal;
            return this;
        }

        public PrefillPlan build() {
            return new PrefillPlan(this);
        }
    }

    public boolean causal() {
        return config.causal();
    }

    /** Attention of a ragged batch against contiguous K/V. {@code lse} may be null. */
    public void run(Tensor q, Tensor qoIndptr, Tensor k, Tensor v, Tensor kvIndptr, Tensor out, Tensor lse) {
        MemorySegment plan = handle();
        NativeTensor.fill(qDesc, q, "q");
        NativeTensor.fill(qoIndptrDesc, qoIndptr, "qoIndptr");
        NativeTensor.fill(kDesc, k, "k");
        NativeTensor.fill(vDesc, v, "v");
        NativeTensor.fill(kvIndptrDesc, kvIndptr, "kvIndptr");
        NativeTensor.fill(outDesc, out, "out");
        Native.check(Attn4jNative.attn4j_prefill_run(plan, qDesc, qoIndptrDesc, kDesc, vDesc, kvIndptrDesc,
                outDesc, lseOrNull(lse)), "prefill");
    }

    /**
     * Attention of a ragged batch against the sequences' pages in layer {@code layer} of
     * {@code cache} (chunked prefill: append the chunk's K/V first). {@code lse} may be null.
     */
    public void run(Tensor q, Tensor qoIndptr, PagedKvCache cache, int layer, PageTable table, Tensor out,
            Tensor lse) {
        MemorySegment plan = handle();
        if (cache == null) {
            throw Attn4jException.invalid("cache: null");
        }
        if (table == null) {
            throw Attn4jException.invalid("table: null");
        }
        MemorySegment kv = cache.layerStruct(layer);
        NativeTensor.fill(qDesc, q, "q");
        NativeTensor.fill(qoIndptrDesc, qoIndptr, "qoIndptr");
        NativeTensor.fill(outDesc, out, "out");
        Native.check(Attn4jNative.attn4j_prefill_paged_run(plan, qDesc, qoIndptrDesc, kv, table.nativeStruct("table"),
                outDesc, lseOrNull(lse)), "prefill");
    }

    private MemorySegment lseOrNull(Tensor lse) {
        if (lse == null) {
            return MemorySegment.NULL;
        }
        NativeTensor.fill(lseDesc, lse, "lse");
        return lseDesc;
    }
}
