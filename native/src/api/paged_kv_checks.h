// Checks of attn4j_paged_kv_append shared by the CPU path (paged_kv.cpp) and the CUDA path
// (cuda_append.cpp, which runs them on host copies of the device arrays).
#pragma once

#include <cstdint>

#include "attn4j.h"
#include "core/context.h"
#include "core/kernel_args.h"

namespace attn4j::api {

// append_indptr (host contents, n_ap elements) against the checked table: batch + 1 entries,
// CSR offsets, and no sequence appending more tokens than the table gives it. Returns nnz.
int64_t check_append_counts(const int32_t* append_indptr, int64_t n_ap, const PageTableView& table,
                            const PagedKvView& kv);

// k and v: [nnz, num_kv_heads, head_dim], F32/F16/BF16, on the context's device.
void check_append_rows(const attn4j_tensor* k, const attn4j_tensor* v, int64_t nnz, const PagedKvView& kv,
                       const Context& c);

}  // namespace attn4j::api
