// Internal interface between the decode driver (decode.cpp) and the fused quantized chunk kernels
// (decode_quant_<isa>.cpp): one chunk of consecutive tokens of one sequence for one KV head of an
// INT8 / INT4 / INT2 cache, read straight from the packed pages (no dequantized copy), serving all
// `group` query heads of the GQA group in one pass.
//
// The kernel owns the query preparation (rotation by R_k, any reordering to the planar code order,
// integer quantization of q for integer dot products) and un-rotates its output by R_v, so that
// the driver sees the same contract as for float chunks: normalised output in the original space
// and log2-sum-exp per query head.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/cpu_features.h"
#include "core/kernel_args.h"

namespace attn4j::cpu {

struct QuantDecodeChunk {
    QuantFormat fmt;                 // K and V share the format
    RotationView k_rot;              // clip unused here
    RotationView v_rot;
    int32_t kv_head = 0;             // for the per-head rotation matrices
    int32_t group = 1;               // query heads per KV head
    int32_t page_size = 0;
    const uint8_t* k_base = nullptr; // K pages + kv_head * head block bytes (block of page id 0)
    const uint8_t* v_base = nullptr;
    int64_t page_stride_bytes = 0;   // bytes between pages
    const int32_t* pages = nullptr;  // page ids of the chunk; the chunk starts at slot 0 of pages[0]
    int64_t num_tokens = 0;          // > 0
    // q of the group, F32 [group][head_dim], already multiplied by sm_scale * log2(e), NOT rotated.
    const float* q = nullptr;
    // Results: out[g * head_dim ..] normalised output in the original (un-rotated) space, F32;
    // lse2[g] = log2(sum_j 2^(q_g . k_j)).
    float* out = nullptr;
    float* lse2 = nullptr;
    // Per-thread scratch of quant_chunk_scratch_bytes(...) bytes, 64-byte aligned, owned by the plan.
    void* scratch = nullptr;
};

using QuantChunkFn = void (*)(const QuantDecodeChunk&);

// Scratch one thread needs for chunks of this shape (sized once at plan creation).
size_t quant_chunk_scratch_bytes(int group, int head_dim, int page_size);

// The kernel for a SIMD path (capped at what the CPU supports).
QuantChunkFn quant_chunk_fn(Isa isa);

}  // namespace attn4j::cpu
