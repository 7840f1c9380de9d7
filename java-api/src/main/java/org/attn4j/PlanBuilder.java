package org.attn4j;

/**
 * Settings shared by decode and prefill plans. Heads, head dimension and types are required
 * unless taken from a cache ({@code forCache}); the softmax scale defaults to 1/sqrt(headDim).
 */
public abstract sealed class PlanBuilder<B extends PlanBuilder<B>> permits DecodePlan.Builder, PrefillPlan.Builder {
    final Attn4j lib;
    int qoHeads;
    int kvHeads;
    int headDim;
    DType qDType = DType.BF16;
    DType kvDType = DType.BF16;
    DType outDType;
    float scale = Float.NaN;
    int pageSize;
    int maxBatch = 1;

    PlanBuilder(Attn4j lib) {
        if (lib == null) {
            throw Attn4jException.invalid("lib: null");
        }
        this.lib = lib;
    }

    @SuppressWarnings("unchecked")
    private B self() {
        return (B) this;
    }

    /** Query (and output) heads; a multiple of {@link #kvHeads}. */
    public B qoHeads(int qoHeads) {
        this.qoHeads = qoHeads;
        return self();
    }

    /** Key/value heads: equal to qoHeads for MHA, fewer for GQA, 1 for MQA. */
    public B kvHeads(int kvHeads) {
        this.kvHeads = kvHeads;
        return self();
    }

    public B headDim(int headDim) {
        this.headDim = headDim;
        return self();
    }

    /** Query type (default BF16); the output type defaults to it. */
    public B qDType(DType qDType) {
        this.qDType = qDType;
        return self();
    }

    /** Key/value type (default BF16). */
    public B kvDType(DType kvDType) {
        this.kvDType = kvDType;
        return self();
    }

    /** Output type (default: the query type). */
    public B outDType(DType outDType) {
        this.outDType = outDType;
        return self();
    }

    /** Softmax scale applied to q.k (default 1/sqrt(headDim)). */
    public B scale(float scale) {
        this.scale = scale;
        return self();
    }

    /** Largest batch the plan runs; sizes its workspace once (default 1). */
    public B maxBatch(int maxBatch) {
        this.maxBatch = maxBatch;
        return self();
    }

    /** Takes kvHeads, headDim, kvDType and pageSize from {@code cache}. */
    public B forCache(PagedKvCache cache) {
        if (cache == null) {
            throw Attn4jException.invalid("cache: null");
        }
        this.kvHeads = cache.kvHeads();
        this.headDim = cache.headDim();
        this.kvDType = cache.dtype();
        this.pageSize = cache.pageSize();
        return self();
    }

    AttentionConfig config(boolean causal, boolean needsPages) {
        if (!lib.isOpen()) {
            throw new IllegalStateException("lib: this Attn4j instance is closed");
        }
        if (needsPages && pageSize <= 0) {
            throw Attn4jException.invalid("pageSize: a decode plan needs the cache's page size (call forCache)");
        }
        float s = Float.isNaN(scale) ? (float) (1.0 / Math.sqrt(Math.max(headDim, 1))) : scale;
        return new AttentionConfig(qoHeads, kvHeads, headDim, qDType, kvDType, outDType == null ? qDType : outDType,
                causal, s, pageSize, maxBatch);
    }
}
