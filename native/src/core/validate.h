// Argument validation shared by the api/ entry points. Every check throws attn4j::Error
// (ATTN4J_ERR_INVALID_ARGUMENT unless noted) with a message that starts with the argument's name,
// e.g. "q: shape[1] is 16, expected num_qo_heads 32".
#pragma once

#include <cstdint>
#include <string>

#include "attn4j.h"
#include "core/kernel_args.h"

namespace attn4j {

// Throws "<name>: is NULL" when p is null.
void require_non_null(const void* p, const char* name);

// struct_size of a parameter struct: at least `expected` (sizeof of this library's version).
void check_struct_size(uint32_t struct_size, uint64_t expected, const char* name,
                       const char* struct_name);

// Structural checks of a tensor descriptor: known dtype and device, rank 1..4, non-negative shape,
// positive strides, last stride 1, data non-null and aligned for its dtype, and every element the
// shape and strides reach inside size_bytes. Returns the tensor.
const attn4j_tensor& check_tensor(const attn4j_tensor* t, const char* name);

void expect_rank(const attn4j_tensor& t, const char* name, int rank);
void expect_dtype(const attn4j_tensor& t, const char* name, attn4j_dtype dtype, const char* what);
void expect_float_dtype(const attn4j_tensor& t, const char* name);
void expect_dim(const attn4j_tensor& t, const char* name, int dim, int64_t value, const char* what);
// Tensor on the device a plan / context runs on.
void expect_device(const attn4j_tensor& t, const char* name, attn4j_device_type type, int32_t id,
                   const char* runner);

// A rank-1 I32 host vector: checked, with at least `min_len` elements. Returns the data.
const int32_t* check_i32_vector(const attn4j_tensor* t, const char* name, int64_t min_len,
                                int64_t* out_len);

// CSR offsets: offsets[0] == 0 and non-decreasing (message names `name`).
void check_indptr(const int32_t* indptr, int64_t batch, const char* name);

// Causal prefill over a paged table: sequence `seq` must own at least as many tokens (n_kv) as it
// has queries (n_q); the same message on every device.
void check_causal_table_fit(int64_t seq, int64_t n_kv, int64_t n_q);

// Rejects Inf / NaN in a float tensor of rank 2..4 ("k: contains a non-finite value (NaN) at
// row 3 head 1 ..."). Uses up to `threads` OpenMP threads for large tensors.
void check_finite(const attn4j_tensor& t, const char* name, int threads);

// The kernel view of a checked rank-3 [rows, heads, dim] tensor.
RowsHeadsView rows_heads_view(const attn4j_tensor& t);
LseView lse_view(const attn4j_tensor* t);

// attn4j_kv_token_bytes: bytes of one token of one KV head, 0 when the format is invalid.
int64_t kv_token_bytes(attn4j_dtype dtype, int32_t head_dim, int32_t group_size,
                       attn4j_dtype meta_dtype);

// A paged KV cache (struct and buffers), as a kernel view; for quantized dtypes also the
// quantization fields (group size, meta dtype, rotations, clip ratios in (0, 1]). Rotation
// matrices are not checked for orthogonality (they may live in device memory).
PagedKvView check_paged_kv(const attn4j_paged_kv* cache, const char* name);
// A page table against a cache's geometry; returns the view (batch >= 1, no empty sequence
// unless allow_empty: then a sequence may own no pages, with last_page_len 0).
// Index arrays must be host (CPU) I32 vectors.
PageTableView check_page_table(const attn4j_page_table* table, const PagedKvView& kv,
                               bool allow_empty = false);

// check_page_table in three steps, for tables whose contents live in device memory:
//  1. the three tensors (struct, rank-1 I32, on `type:id`, lengths consistent); reads no
//     contents. For type CPU the messages are those of check_page_table.
//  2. indptr contents (host copy of [batch + 1]): starts at 0, non-decreasing, within indices.
//  3. pages (host copies of last_page_len [batch] and indices [indptr[batch]]): no empty sequence,
//     last_page_len in [1, page_size], page ids in [0, num_pages).
struct PageTableDims {
    int64_t batch = 0;
    int64_t n_indices = 0;
};
PageTableDims check_page_table_tensors(const attn4j_page_table* table, attn4j_device_type type,
                                       int32_t id, const char* runner);
void check_page_table_indptr(const int32_t* indptr, const PageTableDims& d);
void check_page_table_pages(const int32_t* indptr, const int32_t* indices, const int32_t* last,
                            int64_t batch, const PagedKvView& kv, bool allow_empty = false);

std::string shape_string(const attn4j_tensor& t);

}  // namespace attn4j
