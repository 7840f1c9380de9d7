#include "cpu/append.h"

#include <algorithm>
#include <cstring>

#include "core/dtype.h"

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

void paged_kv_append(const AppendArgs& a, int num_threads) {
    const PagedKvView& kv = a.kv;
    const int32_t batch = a.table.batch;
    const int64_t H = kv.num_kv_heads, D = kv.head_dim, ps = kv.page_size;
    const int esize = dtype_size(kv.dtype);
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
