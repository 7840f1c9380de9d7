// CUDA paged KV append: writes new K/V rows into their page slots on the device, converting to
// the cache dtype, or quantizing on write for INT8 / INT4 / INT2 caches (rotation, clipping,
// codes and {scale, zero}) with exactly the arithmetic of cpu/quantize.cpp, so a page written on
// the GPU holds the same bytes as one written by the CPU append. Mirrors cpu/append.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/kernel_args.h"

namespace attn4j::cuda {

// Validated: device pointers (the rotations' clip arrays too: the caller copies them to the
// device), the table includes the new tokens, every sequence appends at most its length, k / v
// are [nnz, num_kv_heads, head_dim] F32/F16/BF16 and finite.
struct AppendArgs {
    PagedKvView kv;
    PageTableView table;                     // device pointers
    const int32_t* append_indptr = nullptr;  // device, [batch + 1]
    int64_t nnz = 0;
    RowsHeadsView k;
    RowsHeadsView v;
    float hadamard_scale = 0.f;  // 1 / sqrt(head_dim) as the CPU computes it
    // Geometry precomputed on the host (the views' helpers are host functions).
    int64_t page_stride_bytes = 0;
    int64_t head_stride_bytes = 0;
};

cudaError_t paged_kv_append(const AppendArgs& args, cudaStream_t stream);

// Scans a [rows, heads, dim] tensor for Inf / NaN; *d_first (device, initialised by the caller
// to UINT64_MAX) receives the smallest flat index (row * heads + head) * dim + d of one.
cudaError_t find_nonfinite(const RowsHeadsView& t, int64_t rows, int heads, int dim,
                           unsigned long long* d_first, cudaStream_t stream);

}  // namespace attn4j::cuda
