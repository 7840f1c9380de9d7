// The query, output and LSE views that every CUDA attention kernel's parameters start with
// (BF16 decode, quantized decode, prefill), filled from the C ABI arguments in one place.
#pragma once

#include <cstdint>

#include "core/kernel_args.h"

namespace attn4j::cuda {

struct AttnIo {
    const void* q;
    int64_t q_row, q_head;  // strides in elements
    void* out;
    int64_t o_row, o_head;
    float* lse;  // nullptr: not requested
    int64_t lse_row, lse_head;
    int q_dtype, out_dtype;
};

inline void fill_io(AttnIo& p, const RowsHeadsView& q, const RowsHeadsView& out, const LseView& lse) {
    p.q = q.data;
    p.q_row = q.row_stride;
    p.q_head = q.head_stride;
    p.q_dtype = q.dtype;
    p.out = out.data;
    p.o_row = out.row_stride;
    p.o_head = out.head_stride;
    p.out_dtype = out.dtype;
    p.lse = lse.data;
    p.lse_row = lse.row_stride;
    p.lse_head = lse.head_stride;
}

}  // namespace attn4j::cuda
