// The sequence a prefill CTA serves, shared by the mma.sync and wgmma kernels: its query rows in
// q (q_begin, nq), its key count nk and where its K/V start (kv_begin: contiguous rows;
// page_begin: paged).
#pragma once

#include "cuda/prefill.cuh"

namespace attn4j::cuda {

struct PrefillSeq {
    int q_begin, nq, nk, kv_begin, page_begin;
};

template <bool PAGED>
__device__ __forceinline__ PrefillSeq prefill_seq(const PrefillParams& p, int b) {
    PrefillSeq s{};
    s.q_begin = p.qo_indptr[b];
    s.nq = p.qo_indptr[b + 1] - s.q_begin;
    if constexpr (PAGED) {
        s.page_begin = p.page_indptr[b];
        const int np = p.page_indptr[b + 1] - s.page_begin;
        s.nk = np == 0 ? 0 : (np - 1) * p.page_size + p.last_page_len[b];
    } else {
        s.kv_begin = p.kv_indptr[b];
        s.nk = p.kv_indptr[b + 1] - s.kv_begin;
    }
    return s;
}

}  // namespace attn4j::cuda
