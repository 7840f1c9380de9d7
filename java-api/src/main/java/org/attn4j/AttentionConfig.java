package org.attn4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

import org.attn4j.bindings.attn4j_attention_desc;

/** The shape and types shared by decode and prefill plans (attn4j_attention_desc). */
record AttentionConfig(int qoHeads, int kvHeads, int headDim, DType qDType, DType kvDType, DType outDType,
        boolean causal, float scale, int pageSize, int maxBatch) {

    AttentionConfig {
        if (qoHeads <= 0) {
            throw Attn4jException.invalid("qoHeads: must be > 0, got " + qoHeads);
        }
        if (kvHeads <= 0) {
            throw Attn4jException.invalid("kvHeads: must be > 0, got " + kvHeads);
        }
        if (qoHeads % kvHeads != 0) {
            throw Attn4jException.invalid("qoHeads: " + qoHeads + " is not a multiple of kvHeads " + kvHeads);
        }
        if (headDim <= 0) {
            throw Attn4jException.invalid("headDim: must be > 0, got " + headDim);
        }
        floatType(qDType, "qDType");
        if (kvDType == null || !(kvDType.isFloat() || kvDType.isQuantized())) {
            throw Attn4jException.invalid("kvDType: must be F32, F16, BF16 (or INT8, INT4, INT2 for decode), got "
                    + kvDType);
        }
        floatType(outDType, "outDType");
        if (!(scale > 0) || Float.isInfinite(scale)) {
            throw Attn4jException.invalid("scale: must be finite and > 0, got " + scale);
        }
        if (pageSize < 0) {
            throw Attn4jException.invalid("pageSize: must be >= 0, got " + pageSize);
        }
        if (maxBatch <= 0) {
            throw Attn4jException.invalid("maxBatch: must be > 0, got " + maxBatch);
        }
    }

    private static void floatType(DType t, String name) {
        if (t == null || !t.isFloat()) {
            throw Attn4jException.invalid(name + ": must be F32, F16 or BF16, got " + t);
        }
    }

    MemorySegment toNative(Arena arena) {
        MemorySegment d = attn4j_attention_desc.allocate(arena);
        attn4j_attention_desc.struct_size(d, (int) attn4j_attention_desc.sizeof());
        attn4j_attention_desc.num_qo_heads(d, qoHeads);
        attn4j_attention_desc.num_kv_heads(d, kvHeads);
        attn4j_attention_desc.head_dim(d, headDim);
        attn4j_attention_desc.q_dtype(d, qDType.code());
        attn4j_attention_desc.kv_dtype(d, kvDType.code());
        attn4j_attention_desc.out_dtype(d, outDType.code());
        attn4j_attention_desc.causal(d, causal ? 1 : 0);
        attn4j_attention_desc.sm_scale(d, scale);
        attn4j_attention_desc.page_size(d, pageSize);
        attn4j_attention_desc.max_batch_size(d, maxBatch);
        return d;
    }
}
