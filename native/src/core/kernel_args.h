// Validated views that the api/ layer hands to backend kernels. Everything here has already been
// checked (shapes, dtypes, bounds, page ids, finiteness of inputs), so kernels do no validation,
// with one exception: CUDA decode runs on a non-default stream leave the page table's CONTENTS
// to the kernels (cuda/table_check.cuh), since reading them on the host would synchronize.
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

// Geometry of one token's K (or V) vector in a quantized cache (see attn4j_kv_quant):
// code bytes, then {scale, zero} per group.
struct QuantFormat {
    int bits = 0;            // 8, 4, 2
    int head_dim = 0;
    int group_size = 0;      // divides head_dim
    attn4j_dtype meta_dtype = ATTN4J_DTYPE_F32;  // F32 or F16

    int groups() const { return head_dim / group_size; }
    int code_bytes() const { return head_dim * bits / 8; }
    int group_code_bytes() const { return group_size * bits / 8; }
    int meta_size() const { return meta_dtype == ATTN4J_DTYPE_F32 ? 4 : 2; }
    int meta_bytes() const { return groups() * 2 * meta_size(); }
    int token_bytes() const { return code_bytes() + meta_bytes(); }
    int max_code() const { return (1 << bits) - 1; }
};

// Bits per code of a quantized dtype, 0 for the float ones.
inline int quant_bits(attn4j_dtype dt) {
    return dt == ATTN4J_DTYPE_INT8 ? 8 : dt == ATTN4J_DTYPE_INT4 ? 4 : dt == ATTN4J_DTYPE_INT2 ? 2 : 0;
}

// Rotation of K or V vectors in a quantized cache: stored x R.
struct RotationView {
    attn4j_rotation kind = ATTN4J_ROTATION_NONE;
    const float* matrix = nullptr;  // MATRIX: [num_kv_heads][head_dim][head_dim]
    const float* clip = nullptr;    // [num_kv_heads] or nullptr (1)

    const float* matrix_of(int64_t kv_head, int head_dim) const {
        return matrix ? matrix + kv_head * int64_t(head_dim) * head_dim : nullptr;
    }
    float clip_of(int64_t kv_head) const { return clip ? clip[kv_head] : 1.f; }
};

// One layer's pages, HND layout: [num_pages][num_kv_heads][page_size][head_dim] for float
// dtypes; [num_pages][num_kv_heads] blocks of (codes, meta) for the quantized ones.
struct PagedKvView {
    attn4j_dtype dtype = ATTN4J_DTYPE_BF16;
    int32_t num_kv_heads = 0;
    int32_t head_dim = 0;
    int32_t page_size = 0;
    int32_t num_pages = 0;
    void* k = nullptr;
    void* v = nullptr;
    // quantized dtypes only (quant.bits == 0 otherwise)
    QuantFormat quant;
    RotationView k_rot;
    RotationView v_rot;

    bool quantized() const { return quant.bits != 0; }
    // Float dtypes: in elements.
    int64_t head_stride() const { return int64_t(page_size) * head_dim; }
    int64_t page_stride() const { return head_stride() * num_kv_heads; }
    // Any dtype: in bytes.
    int64_t token_bytes() const {
        return quantized() ? quant.token_bytes() : int64_t(head_dim) * (dtype == ATTN4J_DTYPE_F32 ? 4 : 2);
    }
    int64_t head_stride_bytes() const { return int64_t(page_size) * token_bytes(); }
    int64_t page_stride_bytes() const { return head_stride_bytes() * num_kv_heads; }
};

// CSR page table, host pointers, every page id in range, no empty sequence.
struct PageTableView {
    int32_t batch = 0;
    const int32_t* indptr = nullptr;
    const int32_t* indices = nullptr;
    const int32_t* last_page_len = nullptr;

    // 0 for a sequence without pages (allowed only in the segments of a segmented decode).
    int64_t seq_len(int32_t i, int32_t page_size) const {
        const int32_t np = indptr[i + 1] - indptr[i];
        return np == 0 ? 0 : int64_t(np - 1) * page_size + last_page_len[i];
    }
};

// One part of a sequence's KV (mixed precision: e.g. BF16 sinks + window, quantized middle).
struct KvSegment {
    PagedKvView kv;
    PageTableView table;
};
constexpr int kMaxKvSegments = 4;

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
    PagedKvView kv;       // segment 0
    PageTableView table;  // segment 0
    // Further segments (attn4j_decode_run_segments); same batch, any dtype. CPU only.
    int32_t num_extra_segments = 0;
    KvSegment extra[kMaxKvSegments - 1];
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
