// Pieces of the quantized CUDA decode (decode_quant.cu: both INT8/INT4/INT2 kernels): the common
// launch parameters, device helpers (element load/store, cp.async, chunk geometry), the
// per-(sequence, query head) output write, the split-KV LSE merge kernel and the host-side filling
// of the common parameters. The BF16/F16 kernel (decode.cu) keeps its own copies of the merge and
// helpers: moved onto this header it measured 3-14% slower on H100 in split-KV shapes (1 x 4k:
// 27.6 vs 24.2 us; A/B of both builds alternated in one run, benchmarks/results/cuda-decode-ab-h100.txt),
// so the merge is to be unified only with that difference understood.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/kernel_args.h"
#include "cuda/attn_io.cuh"
#include "cuda/dependent_launch.cuh"
#include "cuda/table_check.cuh"

namespace attn4j::cuda::detail {

constexpr float kLn2 = 0.6931471805599453f;
constexpr float kLog2e = 1.4426950408889634f;

// Launch parameters common to the decode kernels and the merge kernel.
struct DecodeParamsBase : AttnIo {
    const int* indptr;
    const int* indices;
    const int* last_page_len;
    float* ws_o;    // [batch * num_chunks * num_qo_heads][D], normalised partial outputs
    float* ws_lse;  // [batch * num_chunks * num_qo_heads], log2 domain
    float scale_log2;
    int batch, num_qo_heads, num_kv_heads, group, num_head_tiles;
    int page_size, page_shift;  // page_shift >= 0 when page_size is a power of two
    int num_chunks, min_chunk_pages;
    int head_dim;
    int num_pages;  // page ids are checked against these (cuda/table_check.cuh)
    int64_t num_indices;
    TableErrorRecord* table_errors;
    int allow_empty;  // TableCheck::allow_empty
};

__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Chunk geometry of a sequence of np pages: pages per chunk and chunks actually used.
__device__ __forceinline__ void chunk_geometry(int np, int num_chunks, int min_pages, int& per, int& used) {
    per = max((np + num_chunks - 1) / num_chunks, min_pages);
    used = (np + per - 1) / per;
}

// Page range of chunk c of sequence b (pages indptr[b] = beg .. end, last_page_len[b] = last, as
// checked by sequence_table_ok): false when the sequence uses fewer chunks.
struct ChunkSpan {
    int len;           // tokens
    int npages;        // pages
    const int* pages;  // page ids of the chunk
};
__device__ __forceinline__ bool chunk_span(const DecodeParamsBase& p, int c, int beg, int end, int last,
                                           ChunkSpan& s) {
    const int page_beg = beg;
    const int np = end - beg;
    int per, used;
    chunk_geometry(np, p.num_chunks, p.min_chunk_pages, per, used);
    if (c >= used) return false;
    const int pg0 = c * per;
    const int pg1 = min(np, pg0 + per);
    const int ps = p.page_size;
    s.len = pg1 == np ? (pg1 - pg0 - 1) * ps + last : (pg1 - pg0) * ps;
    s.npages = pg1 - pg0;
    s.pages = p.indices + page_beg + pg0;
    return true;
}

__device__ __forceinline__ float load_elem(const void* p, int dt, int64_t i) {
    if (dt == ATTN4J_DTYPE_F32) return static_cast<const float*>(p)[i];
    if (dt == ATTN4J_DTYPE_F16) return __half2float(static_cast<const __half*>(p)[i]);
    return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

__device__ __forceinline__ void store_elem(void* p, int dt, int64_t i, float v) {
    if (dt == ATTN4J_DTYPE_F32) static_cast<float*>(p)[i] = v;
    else if (dt == ATTN4J_DTYPE_F16) static_cast<__half*>(p)[i] = __float2half_rn(v);
    else static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
}

// Element d of query head qo's result of chunk c (log2-domain LSE lse2): the output (and LSE)
// when the run is not split, else the workspace row for the merge kernel.
__device__ __forceinline__ void emit_result(const DecodeParamsBase& p, int b, int c, int qo, int d, float val,
                                            float lse2, bool with_lse) {
    if (p.num_chunks == 1) {
        store_elem(p.out, p.out_dtype, int64_t(b) * p.o_row + int64_t(qo) * p.o_head + d, val);
        if (with_lse && p.lse) p.lse[int64_t(b) * p.lse_row + int64_t(qo) * p.lse_head] = lse2 * kLn2;
    } else {
        const int64_t row = (int64_t(b) * p.num_chunks + c) * p.num_qo_heads + qo;
        p.ws_o[row * p.head_dim + d] = val;
        if (with_lse) p.ws_lse[row] = lse2;
    }
}

// cp.async of 16 / 8 / 4 bytes; !valid: zero-fill, nothing read.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem, bool valid) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 8 : 0));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Split-KV merge: HPB query heads per CTA, WPH warps per (sequence, query head). The LSE-weighted
// sum of the sequence's chunk partials; with WPH > 1 the warps take interleaved chunks
// (independent loads in flight) and are summed through shared memory. D <= 128.
template <int HPB, int WPH>
__global__ void __launch_bounds__(HPB * WPH * 32) merge_kernel(const DecodeParamsBase p) {
    static_assert(HPB == 1 || WPH == 1, "several heads per CTA with several warps per head");
    __shared__ float4 part[WPH][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = warp % WPH;
    const int w = blockIdx.x * HPB + warp / WPH;
    if (w >= p.batch * p.num_qo_heads) return;  // CTA-uniform when WPH > 1 (HPB == 1)
    const int b = w / p.num_qo_heads;
    const int qo = w - b * p.num_qo_heads;
    const int beg = p.indptr[b], end = p.indptr[b + 1];
    const int last = p.last_page_len[b];
    if (sequence_empty(p, beg, end, last) || !sequence_table_ok(p, b, beg, end, last)) return;  // rows written already
    int per, used;
    chunk_geometry(end - beg, p.num_chunks, p.min_chunk_pages, per, used);
    const int64_t row0 = int64_t(b) * p.num_chunks * p.num_qo_heads + qo;
    const int64_t rs = p.num_qo_heads;
    wait_for_prior_grid();  // the partials of the decode kernel (a dependent launch)
    float M = -INFINITY;
    for (int c = lane; c < used; c += 32) M = fmaxf(M, p.ws_lse[row0 + c * rs]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
    float L = 0.f;
    for (int c = lane; c < used; c += 32) L += ex2(p.ws_lse[row0 + c * rs] - M);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) L += __shfl_xor_sync(0xffffffffu, L, off);
    const float inv = 1.f / L;
    const int D = p.head_dim;
    const int d = lane * 4;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (d < D) {
#pragma unroll 4
        for (int c = sub; c < used; c += WPH) {
            const float wgt = ex2(p.ws_lse[row0 + c * rs] - M);
            const float4 v = *reinterpret_cast<const float4*>(p.ws_o + (row0 + c * rs) * D + d);
            acc.x = fmaf(wgt, v.x, acc.x);
            acc.y = fmaf(wgt, v.y, acc.y);
            acc.z = fmaf(wgt, v.z, acc.z);
            acc.w = fmaf(wgt, v.w, acc.w);
        }
    }
    if constexpr (WPH > 1) {
        part[sub][lane] = acc;
        __syncthreads();
        if (sub != 0) return;
#pragma unroll
        for (int s = 1; s < WPH; ++s) {
            const float4 v = part[s][lane];
            acc.x += v.x;
            acc.y += v.y;
            acc.z += v.z;
            acc.w += v.w;
        }
    }
    if (d < D) {
        const int64_t o = int64_t(b) * p.o_row + int64_t(qo) * p.o_head + d;
        store_elem(p.out, p.out_dtype, o + 0, acc.x * inv);
        store_elem(p.out, p.out_dtype, o + 1, acc.y * inv);
        store_elem(p.out, p.out_dtype, o + 2, acc.z * inv);
        store_elem(p.out, p.out_dtype, o + 3, acc.w * inv);
    }
    if (lane == 0 && p.lse) p.lse[int64_t(b) * p.lse_row + int64_t(qo) * p.lse_head] = (M + __log2f(L)) * kLn2;
}

// ---- host side

[[noreturn]] inline void cuda_fail(cudaError_t e, const char* plan, const char* what) {
    (void)cudaGetLastError();
    fail(e == cudaErrorMemoryAllocation ? ATTN4J_ERR_OUT_OF_MEMORY : ATTN4J_ERR_DEVICE,
         std::string(plan) + ": " + what + ": " + cudaGetErrorString(e));
}

// Makes `device` current for the scope (the previous device is restored).
struct DeviceScope {
    int prev = 0;
    DeviceScope(int device, const char* plan) {
        cudaError_t e = cudaGetDevice(&prev);
        if (e != cudaSuccess) cuda_fail(e, plan, "cudaGetDevice");
        if ((e = cudaSetDevice(device)) != cudaSuccess) cuda_fail(e, plan, "cudaSetDevice");
    }
    ~DeviceScope() { cudaSetDevice(prev); }
};

// Split count: about `target` CTAs from `units` CTAs per chunk (force > 0: exactly force).
inline int split_chunks(int64_t units, int64_t target, int force) {
    if (force > 0) return force;
    const int64_t nc = (target + units / 2) / units;
    return int(std::clamp<int64_t>(nc, 1, 65535));
}

// The common fields of a run (min_chunk_pages from min_chunk_tokens unless chunks are forced).
inline void fill_common(DecodeParamsBase& p, const DecodeArgs& a, const TableCheck& check, int num_head_tiles,
                        int num_chunks, int min_chunk_tokens, bool forced, float* ws, size_t ws_lse_offset,
                        int head_dim) {
    fill_io(p, a.q, a.out, a.lse);
    p.indptr = a.table.indptr;
    p.indices = a.table.indices;
    p.last_page_len = a.table.last_page_len;
    p.scale_log2 = a.shape.sm_scale * kLog2e;
    p.batch = a.table.batch;
    p.num_qo_heads = a.shape.num_qo_heads;
    p.num_kv_heads = a.shape.num_kv_heads;
    p.group = a.shape.group();
    p.num_head_tiles = num_head_tiles;
    p.page_size = a.kv.page_size;
    p.page_shift = (a.kv.page_size & (a.kv.page_size - 1)) == 0 ? __builtin_ctz(unsigned(a.kv.page_size)) : -1;
    p.num_chunks = num_chunks;
    p.min_chunk_pages = forced ? 1 : std::max(1, (min_chunk_tokens + a.kv.page_size - 1) / a.kv.page_size);
    p.ws_o = ws;
    p.ws_lse = ws ? ws + ws_lse_offset : nullptr;
    p.head_dim = head_dim;
    p.num_pages = a.kv.num_pages;
    p.num_indices = check.num_indices;
    p.table_errors = check.record;
    p.allow_empty = check.allow_empty ? 1 : 0;
}

}  // namespace attn4j::cuda::detail
