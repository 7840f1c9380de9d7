// Page-table checks inside the decode kernels, for runs whose table was not validated on the host
// (a non-default stream: no copy back, no synchronization, so the run can be captured in a CUDA
// graph). A sequence whose table is invalid gets NaN output and LSE, and the first violation of a
// run is recorded (atomicCAS) in a TableErrorRecord in mapped pinned memory, which
// attn4j_stream_synchronize reads (api/cuda_table_errors.cpp). Each CTA checks its sequence (a few
// compares) and its chunk's page ids once, before its pipeline starts (not per page load); a CTA
// that finds a bad one reads no page at all, so a bad table never leaves the cache's memory. The
// host part of this header compiles without nvcc.
#pragma once

#include <cstdint>

#include "attn4j.h"

namespace attn4j::cuda {

enum TableErrorKind : int32_t {
    kTableEmptySequence = 1,  // value = indptr[b], bound = indptr[b + 1]: no page
    kTableIndptrRange = 2,    // value = indptr[b] or indptr[b + 1], bound = elements of indices
    kTableLastPageLen = 3,    // value = last_page_len[b], bound = page_size
    kTablePageId = 4,         // value = the page id, bound = num_pages
};

struct TableErrorRecord {
    unsigned long long claimed;  // 0 until the first error; its writer fills the fields below
    int32_t kind;                // TableErrorKind
    int32_t sequence;
    int64_t value;
    int64_t bound;
};

// What a decode run checks its table against. The defaults (host-checked tables) still keep
// every page load in range but report nothing.
struct TableCheck {
    int64_t num_indices = INT64_MAX;     // elements of table.indices
    TableErrorRecord* record = nullptr;  // device pointer of the record; nullptr: do not report
    // A segment of attn4j_decode_run_segments: a sequence may own no tokens here (indptr[b] ==
    // indptr[b + 1], last_page_len[b] == 0); its rows get output 0 and LSE -inf.
    bool allow_empty = false;
};

#ifdef __CUDACC__

__device__ __forceinline__ void record_table_error(TableErrorRecord* r, int kind, int b, int64_t value,
                                                   int64_t bound) {
    if (!r || atomicCAS(&r->claimed, 0ull, 1ull) != 0ull) return;
    r->kind = kind;
    r->sequence = b;
    r->value = value;
    r->bound = bound;
    __threadfence_system();
}

// 0 <= indptr[b] < indptr[b + 1] <= num_indices and 1 <= last_page_len[b] <= page_size. The first
// thread of the CTA (chunk 0, blockIdx.y 0) reports a violation, so each bad sequence is
// reported by one thread only.
template <class P>
__device__ __forceinline__ bool sequence_table_ok(const P& p, int b, int beg, int end, int last) {
    const bool ok = beg >= 0 && end > beg && end <= p.num_indices && last >= 1 && last <= p.page_size;
    if (!ok && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) {
        if (end <= beg) record_table_error(p.table_errors, kTableEmptySequence, b, beg, end);
        else if (beg < 0) record_table_error(p.table_errors, kTableIndptrRange, b, beg, p.num_indices);
        else if (end > p.num_indices) record_table_error(p.table_errors, kTableIndptrRange, b, end, p.num_indices);
        else record_table_error(p.table_errors, kTableLastPageLen, b, last, p.page_size);
    }
    return ok;
}

// A page id from the table, or page 0 (and bad = true) when it is not in [0, num_pages).
__device__ __forceinline__ int checked_page_id(int id, int num_pages, bool& bad) {
    if (unsigned(id) >= unsigned(num_pages)) {
        bad = true;
        return 0;
    }
    return id;
}

// After a CTA saw a bad page id among pages[0 .. npages): reports the first one (one thread).
// Inlined: a call in a kernel costs registers and a stack frame even where it is not taken.
template <class P>
__device__ __forceinline__ void report_bad_page(const P& p, int b, const int* pages, int npages) {
    for (int i = 0; i < npages; ++i) {
        const int id = pages[i];
        if (unsigned(id) >= unsigned(p.num_pages)) {
            record_table_error(p.table_errors, kTablePageId, b, id, p.num_pages);
            return;
        }
    }
}

// True for a sequence with no tokens in this segment, when the run allows them (TableCheck::allow_empty).
template <class P>
__device__ __forceinline__ bool sequence_empty(const P& p, int beg, int end, int last) {
    return p.allow_empty && end == beg && last == 0;
}

// Output rows (and LSE) of query heads qo0 .. qo0 + n of sequence b, every thread of the CTA: NaN
// for an invalid table (`nan`), else those of an empty segment (output 0, LSE -inf).
template <class P>
__device__ __forceinline__ void write_fixed_rows(const P& p, int b, int qo0, int n, int head_dim, bool nan) {
    const float lse = nan ? __int_as_float(0x7FC00000) : -INFINITY;
    for (int i = threadIdx.x; i < n * head_dim; i += blockDim.x) {
        const int qo = qo0 + i / head_dim, d = i % head_dim;
        const int64_t o = int64_t(b) * p.o_row + int64_t(qo) * p.o_head + d;
        if (p.out_dtype == ATTN4J_DTYPE_F32) static_cast<float*>(p.out)[o] = nan ? __int_as_float(0x7FC00000) : 0.f;
        else static_cast<uint16_t*>(p.out)[o] = !nan ? 0 : p.out_dtype == ATTN4J_DTYPE_F16 ? 0x7E00 : 0x7FC0;
        if (d == 0 && p.lse) p.lse[int64_t(b) * p.lse_row + int64_t(qo) * p.lse_head] = lse;
    }
}

#endif  // __CUDACC__

}  // namespace attn4j::cuda
