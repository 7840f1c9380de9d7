#include "cpu/append.h"

#include <algorithm>
#include <cstring>

#include "core/dtype.h"
#include "cpu/quantize.h"

namespace attn4j::cpu {

void convert_row(const void* src, attn4j_dtype sd, void* dst, attn4j_dtype dd, int64_t n) {
    if (sd == dd) {
        std::memcpy(dst, src, size_t(n) * size_t(dtype_size(sd)));
        return;
    }
    if (sd == ATTN4J_DTYPE_F32) {
        const float* s = static_cast<const float*>(src);
        uint16_t* d = static_cast<uint16_t*>(dst);
        if (dd == ATTN4J_DTYPE_BF16)
            for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(s[i]);
        else
            for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(s[i]);
        return;
    }
    // 16-bit source: widen, then narrow (exact for F16 <-> F32 and BF16 -> F32).
    for (int64_t i = 0; i < n; ++i) store_f32(dst, dd, i, load_f32(src, sd, i));
}

namespace {

// Quantize-on-write of one token of one KV head: widen, rotate, encode into its page slot.
void quantize_into(const char* src, attn4j_dtype sd, const PagedKvView& kv, const RotationView& rot,
                   char* head_block, int64_t slot, int64_t kv_head) {
    const QuantFormat& f = kv.quant;
    float x[kMaxQuantHeadDim], y[kMaxQuantHeadDim];
    for (int d = 0; d < f.head_dim; ++d) x[d] = load_f32(src, sd, d);
    rotate_row(x, y, f.head_dim, rot.kind, rot.matrix_of(kv_head, f.head_dim));
    uint8_t* codes = reinterpret_cast<uint8_t*>(head_block) + slot * f.code_bytes();
    char* meta = head_block + int64_t(kv.page_size) * f.code_bytes() + slot * f.meta_bytes();
    quantize_row(y, f, rot.clip_of(kv_head), codes, meta);
}

}  // namespace

void paged_kv_append(const AppendArgs& a, int num_threads) {
    const PagedKvView& kv = a.kv;
    const int32_t batch = a.table.batch;
    const int64_t H = kv.num_kv_heads, D = kv.head_dim, ps = kv.page_size;
    const int esize = dtype_size(kv.dtype);  // 0 for quantized caches (not used then)
    const int ksize = dtype_size(a.k.dtype), vsize = dtype_size(a.v.dtype);
    const int32_t* ap = a.append_indptr;
#pragma omp parallel for num_threads(num_threads) schedule(static) if (a.nnz * H * D >= 16384)
    for (int64_t t = 0; t < a.nnz; ++t) {
        // sequence owning token t: the last i with ap[i] <= t (skipping sequences appending 0)
        const int32_t i = int32_t(std::upper_bound(ap, ap + batch + 1, int32_t(t)) - ap) - 1;
        const int64_t len = a.table.seq_len(i, kv.page_size);
        const int64_t pos = len - (ap[i + 1] - ap[i]) + (t - ap[i]);
        const int64_t page = a.table.indices[a.table.indptr[i] + pos / ps];
        const int64_t slot = pos % ps;
        if (kv.quantized()) {
            for (int64_t h = 0; h < H; ++h) {
                const int64_t blk = page * kv.page_stride_bytes() + h * kv.head_stride_bytes();
                const char* ks = static_cast<const char*>(a.k.data) +
                                 (t * a.k.row_stride + h * a.k.head_stride) * ksize;
                const char* vs = static_cast<const char*>(a.v.data) +
                                 (t * a.v.row_stride + h * a.v.head_stride) * vsize;
                quantize_into(ks, a.k.dtype, kv, kv.k_rot, static_cast<char*>(kv.k) + blk, slot, h);
                quantize_into(vs, a.v.dtype, kv, kv.v_rot, static_cast<char*>(kv.v) + blk, slot, h);
            }
            continue;
        }
        for (int64_t h = 0; h < H; ++h) {
            const int64_t dst_off = ((page * H + h) * ps + slot) * D;  // elements
            const char* ks = static_cast<const char*>(a.k.data) +
                             (t * a.k.row_stride + h * a.k.head_stride) * ksize;
            const char* vs = static_cast<const char*>(a.v.data) +
                             (t * a.v.row_stride + h * a.v.head_stride) * vsize;
            convert_row(ks, a.k.dtype, static_cast<char*>(kv.k) + dst_off * esize, kv.dtype, D);
            convert_row(vs, a.v.dtype, static_cast<char*>(kv.v) + dst_off * esize, kv.dtype, D);
        }
    }
}

}  // namespace attn4j::cpu
