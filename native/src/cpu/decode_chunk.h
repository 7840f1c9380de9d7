// Internal interface between the decode driver (decode.cpp: planning, threading, split-KV merge,
// q / output dtype conversion) and the per-ISA chunk kernels (decode_avx512.cpp, decode_avx2.cpp,
// decode_scalar.cpp, all instantiating decode_kernel_impl.h).
//
// A chunk is a run of consecutive tokens of one sequence for one KV head, starting at slot 0 of
// pages[0]. The chunk kernel streams its K and V rows once and serves all `group` query heads.
#pragma once

#include <cstdint>

#include "attn4j.h"

namespace attn4j::cpu {

// Widest vector (in floats) of any path: sizes the scratch the driver hands out.
constexpr int kDecodeMaxLanes = 16;
// Query heads handled together per pass over a block of keys.
constexpr int kDecodeMaxGroupTile = 8;

// Per-thread scratch, owned by the plan (sized at creation), reused by every chunk.
struct DecodeScratch {
    float* q = nullptr;      // [group][head_dim]: q * sm_scale * log2(e), F32
    float* o = nullptr;      // [group][head_dim]: accumulator, normalised on return
    float* m = nullptr;      // [group] running max (log2 domain)
    double* l = nullptr;     // [group] running sum (double: one add per block, 8k+ blocks on W=1)
    float* alpha = nullptr;  // [group] rescale factor of the current block
    float* p = nullptr;      // [group][kDecodeMaxLanes] probabilities of the current block
    float* sacc = nullptr;   // [kDecodeMaxGroupTile][lanes][lanes] per-key partial dot products
    int64_t* off = nullptr;  // [2][kDecodeMaxLanes] byte offsets of the rows of the block, and of the prefetched block
};

struct DecodeChunk {
    attn4j_dtype kv_dtype = ATTN4J_DTYPE_BF16;
    int32_t group = 1;
    int32_t head_dim = 0;
    int32_t page_size = 0;
    const char* k_base = nullptr;   // cache K + kv_head * head_stride (bytes)
    const char* v_base = nullptr;   // cache V + kv_head * head_stride (bytes)
    int64_t page_stride_bytes = 0;  // bytes between pages
    const int32_t* pages = nullptr; // page ids of the chunk
    int64_t num_tokens = 0;         // > 0
    DecodeScratch* scratch = nullptr;
    // Results: scratch->o[g * head_dim ..] normalised output; lse2[g] = log2(sum 2^s).
    float* lse2 = nullptr;
};

using DecodeChunkFn = void (*)(const DecodeChunk&);

void decode_chunk_scalar(const DecodeChunk& c);
void decode_chunk_avx2(const DecodeChunk& c);
void decode_chunk_avx512(const DecodeChunk& c);

}  // namespace attn4j::cpu
