// Validated views that the api/ layer hands to backend kernels. Everything here has already been
// checked (shapes, dtypes, bounds, page ids, finiteness of inputs), so kernels do no validation.
#pragma once

#include <cstdint>

#include "attn4j.h"

namespace attn4j {

// Rows x heads x head_dim, head_dim contiguous; strides in elements.
struct RowsHeadsView {
    void* data = nullptr;
    attn4j_dtype dtype = ATTN4J_DTYPE_F32;
    int64_t row_stride = 0;
    int64_t head_stride = 0;
};

// Optional F32 [rows, heads] log-sum-exp output; data == nullptr when not requested.
struct LseView {
    float* data = nullptr;
    int64_t row_stride = 0;
    int64_t head_stride = 0;
};

// One layer's pages, HND layout: [num_pages][num_kv_heads][page_size][head_dim].
struct PagedKvView {
    attn4j_dtype dtype = ATTN4J_DTYPE_BF16;
    int32_t num_kv_heads = 0;
    int32_t head_dim = 0;
    int32_t page_size = 0;
    int32_t num_pages = 0;
    void* k = nullptr;
    void* v = nullptr;

    int64_t head_stride() const { return int64_t(page_size) * head_dim; }
    int64_t page_stride() const { return head_stride() * num_kv_heads; }
};

// CSR page table, host pointers, every page id in range, no empty sequence.
struct PageTableView {
    int32_t batch = 0;
    const int32_t* indptr = nullptr;
    const int32_t* indices = nullptr;
    const int32_t* last_page_len = nullptr;

    int64_t seq_len(int32_t i, int32_t page_size) const {
        return int64_t(indptr[i + 1] - indptr[i] - 1) * page_size + last_page_len[i];
    }
};

struct AttentionShape {
    int32_t num_qo_heads = 0;
    int32_t num_kv_heads = 0;
    int32_t head_dim = 0;
    float sm_scale = 0.f;
    bool causal = false;
    int32_t group() const { return num_qo_heads / num_kv_heads; }
};

// Decode: q / out [batch, num_qo_heads, head_dim] over paged KV.
struct DecodeArgs {
    AttentionShape shape;
    RowsHeadsView q;
    RowsHeadsView out;
    LseView lse;
    PagedKvView kv;
    PageTableView table;
};

// Prefill: ragged q / out [nnz_q, num_qo_heads, head_dim]; K/V either contiguous ragged rows
// (paged == false) or pages (paged == true).
struct PrefillArgs {
    AttentionShape shape;
    int32_t batch = 0;
    const int32_t* qo_indptr = nullptr;
    RowsHeadsView q;
    RowsHeadsView out;
    LseView lse;
    bool paged = false;
    // contiguous K/V
    RowsHeadsView k;
    RowsHeadsView v;
    const int32_t* kv_indptr = nullptr;
    // paged K/V
    PagedKvView kv;
    PageTableView table;
};

}  // namespace attn4j
