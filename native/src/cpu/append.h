// paged_kv_append: writes new K/V tokens into their page slots, converting to the cache dtype
// (quantize-on-write for INT8 / INT4 / INT2 caches: rotation, clipping, codes and {scale, zero}).
#pragma once

#include <cstdint>

#include "core/kernel_args.h"

namespace attn4j::cpu {

// Validated: the table includes the new tokens, append_indptr[batch] == nnz, every sequence
// appends at most its length, k / v are finite [nnz, num_kv_heads, head_dim] (F32/F16/BF16).
struct AppendArgs {
    PagedKvView kv;
    PageTableView table;
    const int32_t* append_indptr = nullptr;  // [batch + 1]
    int64_t nnz = 0;
    RowsHeadsView k;
    RowsHeadsView v;
};

// Largest head_dim of a quantized cache (append and decode keep one vector on the stack).
constexpr int kMaxQuantHeadDim = 256;

void paged_kv_append(const AppendArgs& args, int num_threads);

// Converts n contiguous elements between float dtypes (F32 / F16 / BF16), round to nearest even.
void convert_row(const void* src, attn4j_dtype src_dtype, void* dst, attn4j_dtype dst_dtype,
                 int64_t n);

}  // namespace attn4j::cpu
