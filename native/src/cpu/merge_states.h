// merge_states: combines partial attention states (output, LSE) over disjoint KV parts.
#pragma once

#include <cstdint>

#include "attn4j.h"

namespace attn4j::cpu {

// Validated views. v [n, S, H, D] (F32/F16/BF16), s F32 [n, S, H] (-inf = empty part, never NaN
// or +inf), v_out [n, H, D] (F32/F16/BF16), s_out F32 [n, H] or null. Strides in elements, last
// dimension contiguous.
struct MergeStatesArgs {
    int64_t n = 0, num_states = 0, num_heads = 0, head_dim = 0;
    const void* v = nullptr;
    attn4j_dtype v_dtype = ATTN4J_DTYPE_F32;
    int64_t v_stride[3] = {0, 0, 0};  // n, state, head
    const float* s = nullptr;
    int64_t s_stride[2] = {0, 0};  // n, state
    int64_t s_head_stride = 0;     // head
    void* v_out = nullptr;
    attn4j_dtype v_out_dtype = ATTN4J_DTYPE_F32;
    int64_t v_out_stride[2] = {0, 0};  // n, head
    float* s_out = nullptr;
    int64_t s_out_stride[2] = {0, 0};  // n, head
};

// For each (i, h): m = max_k s[i,k,h]; w_k = exp(s_k - m); v_out = sum w_k v_k / sum w_k;
// s_out = m + log(sum w_k). When every part is empty (all -inf): v_out = 0, s_out = -inf.
void merge_states(const MergeStatesArgs& args, int num_threads);

}  // namespace attn4j::cpu
