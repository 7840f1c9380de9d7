// CUDA paged decode (see decode.cuh). Kernel shape, per CTA of 128 threads:
//  - one (sequence, kv head, head tile of up to GT query heads, KV chunk of whole pages);
//  - a token row of D elements is read by D/8 lanes with one 16-byte cp.async each; the CTA's
//    128 threads form 128 / (D/8) token groups that stream interleaved tokens, so a warp reads
//    consecutive tokens (contiguous within a page, HND layout);
//  - kStages-deep cp.async pipeline into shared memory. Every thread reads back only the bytes it
//    copied itself, so the loop needs cp.async.wait_group but no block barrier;
//  - fp32 scores (reduced over the D/8 lanes with xor shuffles), online softmax in base 2, fp32
//    accumulators; the token groups' states are merged through shared memory at the end;
//  - one chunk: the CTA writes out (and LSE); several: normalised partial output + log2 LSE go to
//    the workspace and merge_kernel combines them per (sequence, query head). (A fused
//    "last CTA merges" variant was measured slower on the H100: 26.5 vs 20.8 us at 1 x 4k.)
#include "cuda/decode.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "cuda/attn_io.cuh"
#include "cuda/dependent_launch.cuh"
#include "cuda/mma.cuh"

namespace attn4j::cuda {
namespace {

constexpr int kThreads = 128;
#ifndef ATTN4J_CUDA_DECODE_STAGES
#define ATTN4J_CUDA_DECODE_STAGES 4
#endif
#ifndef ATTN4J_CUDA_DECODE_TOK
#define ATTN4J_CUDA_DECODE_TOK 2
#endif
constexpr int kStages = ATTN4J_CUDA_DECODE_STAGES;  // cp.async pipeline depth
constexpr int kTok = ATTN4J_CUDA_DECODE_TOK;        // tokens per token group per stage
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kLog2e = 1.4426950408889634f;

struct Params : AttnIo {
    const void* k;
    const void* v;
    const int* indptr;
    const int* indices;
    const int* last_page_len;
    float* ws_o;    // [batch * num_chunks * num_qo_heads][D], normalised partial outputs
    float* ws_lse;  // [batch * num_chunks * num_qo_heads], log2 domain
    float scale_log2;
    int batch, num_qo_heads, num_kv_heads, group, num_head_tiles;
    int page_size, page_shift;  // page_shift >= 0 when page_size is a power of two
    int num_chunks, min_chunk_pages;
    int head_dim;  // merge kernel only
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
__device__ __forceinline__ void chunk_geometry(int np, int num_chunks, int min_pages, int& per,
                                               int& used) {
    per = max((np + num_chunks - 1) / num_chunks, min_pages);
    used = (np + per - 1) / per;
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

template <typename KV>
__device__ __forceinline__ void to_float8(const uint4& r, float (&f)[8]) {
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        if constexpr (std::is_same_v<KV, __nv_bfloat16>) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
        } else {
            __half2 h;
            memcpy(&h, &w[i], 4);
            const float2 t = __half22float2(h);
            f[2 * i] = t.x;
            f[2 * i + 1] = t.y;
        }
    }
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    const int n = valid ? 16 : 0;  // 0: zero-fill, nothing read
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <int D, int GT>
constexpr int smem_bytes() {
    constexpr int NG = kThreads / (D / 8);
    constexpr int pipe = kStages * 2 * kTok * kThreads * 16;
    constexpr int red = NG * GT * D * 4 + 2 * NG * GT * 4;
    return pipe > red ? pipe : red;
}

// Chunk c of sequence b: its pages, page count and tokens. False when the CTA has nothing to do:
// an empty sequence or a bad table (chunk 0 writes the fixed rows of query heads h0 .. h0 + gt of
// kv head kvh, zeros or NaN) or a chunk past the sequence's last.
struct DecodeChunk {
    const int* pages;
    int npages, len;
};
template <int D>
__device__ __forceinline__ bool decode_chunk(const Params& p, int b, int c, int kvh, int h0, int gt, DecodeChunk& ch) {
    const int page_beg = p.indptr[b];
    const int page_end = p.indptr[b + 1];
    const int last_len = p.last_page_len[b];
    const bool empty = sequence_empty(p, page_beg, page_end, last_len);
    if (empty || !sequence_table_ok(p, b, page_beg, page_end, last_len)) {
        if (c == 0) write_fixed_rows(p, b, kvh * p.group + h0, min(gt, p.group - h0), D, !empty);
        return false;
    }
    const int np = page_end - page_beg;
    int per, used;
    chunk_geometry(np, p.num_chunks, p.min_chunk_pages, per, used);
    if (c >= used) return false;
    const int pg0 = c * per;
    const int pg1 = min(np, pg0 + per);
    ch.npages = pg1 - pg0;
    ch.len = pg1 == np ? (ch.npages - 1) * p.page_size + last_len : ch.npages * p.page_size;
    ch.pages = p.indices + page_beg + pg0;
    return true;
}

// The CTA's NG partial states (o, m, l of GT query heads h0 + h of kv head kvh, in shared memory
// red_o [NG][GT][D], red_m / red_l [NG][GT], log2 domain) merged and written: the output row and
// LSE when the sequence is one chunk, else chunk c's normalised partial and LSE to the workspace.
template <int D, int NG, int GT>
__device__ __forceinline__ void store_combined(const Params& p, int b, int c, int kvh, int h0, const float* red_o,
                                               const float* red_m, const float* red_l, bool bad) {
    for (int idx = threadIdx.x; idx < GT * D; idx += blockDim.x) {
        const int h = idx / D;
        const int d = idx - h * D;
        const int gh = h0 + h;
        if (gh >= p.group) break;  // idx grows with h
        float M = -INFINITY;
#pragma unroll
        for (int gg = 0; gg < NG; ++gg) M = fmaxf(M, red_m[gg * GT + h]);
        const float Ms = M == -INFINITY ? 0.f : M;
        float L = 0.f, acc = 0.f;
#pragma unroll
        for (int gg = 0; gg < NG; ++gg) {
            const float w = ex2(red_m[gg * GT + h] - Ms);
            L = fmaf(w, red_l[gg * GT + h], L);
            acc = fmaf(w, red_o[(gg * GT + h) * D + d], acc);
        }
        const float val = bad ? NAN : acc / L;  // L >= 1: a chunk holds at least one token
        const float lse2 = bad ? NAN : M + __log2f(L);
        const int qo = kvh * p.group + gh;
        if (p.num_chunks == 1) {
            store_elem(p.out, p.out_dtype, int64_t(b) * p.o_row + int64_t(qo) * p.o_head + d, val);
            if (d == 0 && p.lse) p.lse[int64_t(b) * p.lse_row + int64_t(qo) * p.lse_head] = lse2 * kLn2;
        } else {
            const int64_t row = (int64_t(b) * p.num_chunks + c) * p.num_qo_heads + qo;
            p.ws_o[row * D + d] = val;
            if (d == 0) p.ws_lse[row] = lse2;
        }
    }
}

template <int D, typename KV, int GT>
__global__ void __launch_bounds__(kThreads) decode_kernel(const Params p) {
    constexpr int VEC = 8;
    constexpr int LPT = D / VEC;        // lanes per token row
    constexpr int NG = kThreads / LPT;  // token groups
    constexpr int TILE = NG * kTok;     // tokens per stage
    extern __shared__ __align__(16) unsigned char smem[];
    uint4* buf = reinterpret_cast<uint4*>(smem);

    const int c = blockIdx.x;
    const int kvh = blockIdx.y / p.num_head_tiles;
    const int tile = blockIdx.y - kvh * p.num_head_tiles;
    const int b = blockIdx.z;

    DecodeChunk ch;
    if (!decode_chunk<D>(p, b, c, kvh, tile * GT, GT, ch)) return;
    const int ps = p.page_size;
    const int chunk_len = ch.len;
    const int* pages = ch.pages;

    const int tid = threadIdx.x;
    // The chunk's page ids are checked up front by every warp, so the verdict is CTA-uniform with
    // no barrier and the pipeline reads ids unchecked; a bad one: no page is read, NaN rows.
    bool bad_page = false;
    for (int i = tid & 31; i < ch.npages; i += 32) bad_page |= unsigned(__ldg(pages + i)) >= unsigned(p.num_pages);
    const bool bad = __any_sync(0xffffffffu, bad_page);
    const int g = tid / LPT;
    const int r = tid - g * LPT;
    const int h0 = tile * GT;

    float q[GT][VEC];
#pragma unroll
    for (int h = 0; h < GT; ++h) {
        const int gh = h0 + h;
        if (gh < p.group) {
            const int64_t base = int64_t(b) * p.q_row + int64_t(kvh * p.group + gh) * p.q_head + r * VEC;
#pragma unroll
            for (int e = 0; e < VEC; ++e) q[h][e] = load_elem(p.q, p.q_dtype, base + e) * p.scale_log2;
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e) q[h][e] = 0.f;
        }
    }

    const int64_t head_off = int64_t(kvh) * ps * D + r * VEC;  // elements, within a page
    const int64_t page_stride = int64_t(p.num_kv_heads) * ps * D;
    const KV* kbase = static_cast<const KV*>(p.k) + head_off;
    const KV* vbase = static_cast<const KV*>(p.v) + head_off;

    // Page ids of the next stage to issue are fetched one stage ahead, so the cp.async of a stage
    // never waits on the latency of its page-table load.
    int pid[kTok];
    auto fetch = [&](int it) {
#pragma unroll
        for (int u = 0; u < kTok; ++u) {
            const int j = it * TILE + u * NG + g;
            pid[u] = j < chunk_len ? __ldg(pages + (p.page_shift >= 0 ? j >> p.page_shift : j / ps)) : 0;
        }
    };
    auto issue = [&](int it, int s) {
#pragma unroll
        for (int u = 0; u < kTok; ++u) {
            const int j = it * TILE + u * NG + g;
            const bool valid = j < chunk_len;
            const int slot = p.page_shift >= 0 ? (j & (ps - 1)) : j % ps;
            const int64_t off = valid ? int64_t(pid[u]) * page_stride + int64_t(slot) * D : 0;
            cp_async16(&buf[((s * 2 + 0) * kTok + u) * kThreads + tid], kbase + off, valid);
            cp_async16(&buf[((s * 2 + 1) * kTok + u) * kThreads + tid], vbase + off, valid);
        }
    };

    const int ntiles = bad ? 0 : (chunk_len + TILE - 1) / TILE;
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < ntiles) {
            fetch(s);
            issue(s, s);
        }
        cp_async_commit();
    }
    fetch(kStages - 1);

    float m[GT], l[GT], o[GT][VEC];
#pragma unroll
    for (int h = 0; h < GT; ++h) {
        m[h] = -INFINITY;
        l[h] = 0.f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) o[h][e] = 0.f;
    }

    for (int it = 0; it < ntiles; ++it) {
        const int nx = it + kStages - 1;
        if (nx < ntiles) {
            issue(nx, nx % kStages);
            fetch(nx + 1);
        }
        cp_async_commit();
        cp_async_wait<kStages - 1>();
        const int s = it % kStages;

        float sc[GT][kTok];
#pragma unroll
        for (int u = 0; u < kTok; ++u) {
            float kf[VEC];
            to_float8<KV>(buf[((s * 2 + 0) * kTok + u) * kThreads + tid], kf);
#pragma unroll
            for (int h = 0; h < GT; ++h) {
                float a = 0.f;
#pragma unroll
                for (int e = 0; e < VEC; ++e) a = fmaf(q[h][e], kf[e], a);
                sc[h][u] = a;
            }
        }
#pragma unroll
        for (int off = LPT / 2; off > 0; off >>= 1) {
#pragma unroll
            for (int h = 0; h < GT; ++h)
#pragma unroll
                for (int u = 0; u < kTok; ++u) sc[h][u] += __shfl_xor_sync(0xffffffffu, sc[h][u], off);
        }
#pragma unroll
        for (int u = 0; u < kTok; ++u) {
            if (it * TILE + u * NG + g >= chunk_len) {
#pragma unroll
                for (int h = 0; h < GT; ++h) sc[h][u] = -INFINITY;
            }
        }
        float vf[kTok][VEC];
#pragma unroll
        for (int u = 0; u < kTok; ++u) to_float8<KV>(buf[((s * 2 + 1) * kTok + u) * kThreads + tid], vf[u]);
#pragma unroll
        for (int h = 0; h < GT; ++h) {
            float mx = m[h];
#pragma unroll
            for (int u = 0; u < kTok; ++u) mx = fmaxf(mx, sc[h][u]);
            // Rescale the running state only when some lane's max grew (rare after the first
            // tokens): saves the GT * 8 multiplies and an exp per head on most stages.
            if (__any_sync(0xffffffffu, mx > m[h])) {
                const float alpha = ex2(m[h] - (mx == -INFINITY ? 0.f : mx));
                l[h] *= alpha;
#pragma unroll
                for (int e = 0; e < VEC; ++e) o[h][e] *= alpha;
                m[h] = mx;
            }
            const float ms = mx == -INFINITY ? 0.f : mx;
#pragma unroll
            for (int u = 0; u < kTok; ++u) {
                const float pu = ex2(sc[h][u] - ms);
                l[h] += pu;
#pragma unroll
                for (int e = 0; e < VEC; ++e) o[h][e] = fmaf(pu, vf[u][e], o[h][e]);
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // the pipeline buffers become the reduction buffers
    allow_dependent_launch();  // the merge kernel may become resident now (it waits for this grid)

    float* red_o = reinterpret_cast<float*>(smem);  // [NG][GT][D]
    float* red_m = red_o + NG * GT * D;              // [NG][GT]
    float* red_l = red_m + NG * GT;
#pragma unroll
    for (int h = 0; h < GT; ++h) {
        float4* dst = reinterpret_cast<float4*>(red_o + (g * GT + h) * D + r * VEC);
        dst[0] = make_float4(o[h][0], o[h][1], o[h][2], o[h][3]);
        dst[1] = make_float4(o[h][4], o[h][5], o[h][6], o[h][7]);
        if (r == 0) {
            red_m[g * GT + h] = m[h];
            red_l[g * GT + h] = l[h];
        }
    }
    __syncthreads();

    store_combined<D, NG, GT>(p, b, c, kvh, h0, red_o, red_m, red_l, bad);
    if (bad && tid == 0) report_bad_page(p, b, pages, ch.npages);
}

// ---- tensor-core kernel: q in the KV's 16-bit type (exact in the MMA operands) -----------------
// The fp32 kernel above issues about 65 instructions per token and kv head (8 FMAs per lane per
// head, xor-shuffle reductions, conversions): at 1 x 128k on an H200 it issued 0.76 warps per cycle
// per scheduler against 76% of DRAM bandwidth (ncu), so instructions, not bytes, bounded it. Here
// each warp takes 16 tokens of a 64-token stage and computes S^T = K Q^T (M = the 16 tokens, N = 8
// query heads, one mma.m16n8k16 per 16 head-dim values) and O^T += V^T P^T, as the quantized
// kernel does. Every thread reads its own contiguous bytes of a token row from shared memory (16
// bytes at a time; rows padded by 16 bytes so the 8 rows of a read fall in different banks) and
// the head-dim order inside an mma follows those bytes; the query fragment and the output rows use
// the same order. P goes into the values' mma as hi + lo halves (two mmas), so the weights keep
// about 16 bits: what an F32 output asks for. Softmax, LSE and the chunk merge are fp32 as above.
constexpr int kMWarps = 4;
constexpr int kMTok = 16 * kMWarps;  // tokens per stage
constexpr int kMStages = 3;
constexpr int kMHeads = 8;            // query heads per CTA: the mma's N
constexpr int kMPidCache = 512;       // page ids of a chunk kept in shared memory

template <int D>
struct MmaCfg {
    static constexpr int ROW = D * 2 + 16;  // shared-memory bytes per token row (padded)
    static constexpr int STAGE = 2 * kMTok * ROW;
    static constexpr int PIPE = kMStages * STAGE;
    static constexpr int RED = (kMWarps * kMHeads * D + 2 * kMWarps * kMHeads) * 4;
    static constexpr int MAIN = PIPE > RED ? PIPE : RED;
    static constexpr int SMEM = MAIN + kMPidCache * 4;
};

// NW 32-bit words from 16-byte aligned shared memory.
template <int NW>
__device__ __forceinline__ void lds_words(const unsigned char* p, uint32_t (&w)[NW]) {
#pragma unroll
    for (int i = 0; i < NW / 4; ++i) {
        const uint4 t = reinterpret_cast<const uint4*>(p)[i];
        w[4 * i] = t.x;
        w[4 * i + 1] = t.y;
        w[4 * i + 2] = t.z;
        w[4 * i + 3] = t.w;
    }
}

template <int D, typename KV>
__global__ void __launch_bounds__(kThreads, 2) decode_mma_kernel(const Params p) {
    using C = MmaCfg<D>;
    using Op = Mma<KV>;
    constexpr int ROW = C::ROW;
    constexpr int KW = D / 8;   // K words per thread per token row: values tig * D / 4 + [0, D / 4)
    constexpr int VW = D / 16;  // V words per thread per token row: values gid * D / 8 + [0, D / 8)
    constexpr int CPR = D / 8;  // 16-byte copies per token row
    constexpr int RPP = kThreads / CPR;  // token rows per copy pass
    extern __shared__ __align__(16) unsigned char smem[];

    const int c = blockIdx.x;
    const int kvh = blockIdx.y / p.num_head_tiles;
    const int tile = blockIdx.y - kvh * p.num_head_tiles;
    const int b = blockIdx.z;
    const int h0 = tile * kMHeads;
    DecodeChunk ch;
    if (!decode_chunk<D>(p, b, c, kvh, h0, kMHeads, ch)) return;
    const int npages = ch.npages;
    const int ps = p.page_size;
    const int chunk_len = ch.len;
    const int* pages = ch.pages;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
    // Page ids: checked (a bad one: no page is read, NaN rows) and cached in shared memory so that
    // a stage's copies wait on no global load.
    int* pid_s = reinterpret_cast<int*>(smem + C::MAIN);
    const bool pid_cached = npages <= kMPidCache;
    bool bad_page = false;
    for (int i = tid; i < npages; i += kThreads) {
        const int id = __ldg(pages + i);
        bad_page |= unsigned(id) >= unsigned(p.num_pages);
        if (pid_cached) pid_s[i] = id;
    }
    const bool bad = __syncthreads_or(bad_page);

    // Query B fragments: head h0 + gid, values tig * D / 4 + 4 s + {0, 1} and {2, 3} (16-bit, as given).
    uint32_t qb[D / 16][2];
    {
        const int gh = h0 + gid;
        const bool ok = gh < p.group;
        const uint16_t* qr = static_cast<const uint16_t*>(p.q) + int64_t(b) * p.q_row +
                             int64_t(kvh * p.group + (ok ? gh : 0)) * p.q_head + tig * (D / 4);
#pragma unroll
        for (int s = 0; s < D / 16; ++s) {
            qb[s][0] = ok ? uint32_t(qr[4 * s]) | (uint32_t(qr[4 * s + 1]) << 16) : 0u;
            qb[s][1] = ok ? uint32_t(qr[4 * s + 2]) | (uint32_t(qr[4 * s + 3]) << 16) : 0u;
        }
    }

    const int cc = tid % CPR, row0 = tid / CPR;  // this thread's copies: chunk cc of rows row0 + i * RPP
    const int64_t page_stride = int64_t(p.num_kv_heads) * ps * D;  // elements
    const KV* kbase = static_cast<const KV*>(p.k) + int64_t(kvh) * ps * D + cc * 8;
    const KV* vbase = static_cast<const KV*>(p.v) + int64_t(kvh) * ps * D + cc * 8;
    auto issue = [&](int it, int s) {
        unsigned char* kd = smem + s * C::STAGE;
        unsigned char* vd = kd + kMTok * ROW;
#pragma unroll
        for (int i = 0; i < kMTok / RPP; ++i) {
            const int r = row0 + i * RPP;
            const int j = it * kMTok + r;
            const bool valid = j < chunk_len;
            int64_t off = 0;
            if (valid) {
                const int pi = p.page_shift >= 0 ? j >> p.page_shift : j / ps;
                const int pid = pid_cached ? pid_s[pi] : __ldg(pages + pi);
                off = int64_t(pid) * page_stride + int64_t(j - pi * ps) * D;
            }
            cp_async16(kd + r * ROW + cc * 16, kbase + off, valid);
            cp_async16(vd + r * ROW + cc * 16, vbase + off, valid);
        }
    };
    const int ntiles = bad ? 0 : (chunk_len + kMTok - 1) / kMTok;
#pragma unroll 1
    for (int s = 0; s < kMStages - 1; ++s) {
        if (s < ntiles) issue(s, s);
        cp_async_commit();
    }

    // State of heads 2 tig + j: running max m (log2 domain), this lane's share of the sum l;
    // o[mt] = (d0, head 2 tig), (d0, 2 tig + 1), (d0 + 1, 2 tig), (d0 + 1, 2 tig + 1), d0 = gid * D / 8 + 2 mt.
    float o[D / 16][4];
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int mt = 0; mt < D / 16; ++mt) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.f;

    for (int it = 0; it < ntiles; ++it) {
        cp_async_wait<kMStages - 2>();
        __syncthreads();  // stage it landed for every thread; stage it - 1 is free for the prefetch
        {
            const int nx = it + kMStages - 1;
            if (nx < ntiles) issue(nx, nx % kMStages);
            cp_async_commit();
        }
        const int tok0 = it * kMTok + warp * 16;
        if (tok0 >= chunk_len) continue;  // warp-uniform
        const unsigned char* kr = smem + (it % kMStages) * C::STAGE + warp * 16 * ROW;
        const unsigned char* vr = kr + kMTok * ROW;

        // S^T = K Q^T: rows gid, gid + 8 of the slice
        float sacc[4] = {0.f, 0.f, 0.f, 0.f};
        {
            uint32_t k0[KW], k1[KW];
            lds_words<KW>(kr + gid * ROW + tig * (D / 2), k0);
            lds_words<KW>(kr + (gid + 8) * ROW + tig * (D / 2), k1);
#pragma unroll
            for (int s = 0; s < D / 16; ++s) {
                const unsigned a[4] = {k0[2 * s], k1[2 * s], k0[2 * s + 1], k1[2 * s + 1]};
                Op::run(sacc, a, qb[s][0], qb[s][1]);
            }
        }
        float sc[4];
#pragma unroll
        for (int e = 0; e < 4; ++e)
            sc[e] = tok0 + gid + 8 * (e >> 1) < chunk_len ? sacc[e] * p.scale_log2 : -INFINITY;
        // online softmax per head 2 tig + j over the 16 tokens (the 8 lanes of this tig)
        float mnew[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            float mx = fmaxf(sc[j], sc[2 + j]);
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
            mnew[j] = fmaxf(m[j], mx);
        }
        if (__any_sync(0xffffffffu, mnew[0] > m[0] || mnew[1] > m[1])) {
            float alpha[2];
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                alpha[j] = mnew[j] == -INFINITY ? 1.f : ex2(m[j] - mnew[j]);
                l[j] *= alpha[j];
                m[j] = mnew[j];
            }
#pragma unroll
            for (int mt = 0; mt < D / 16; ++mt) {
                o[mt][0] *= alpha[0];
                o[mt][1] *= alpha[1];
                o[mt][2] *= alpha[0];
                o[mt][3] *= alpha[1];
            }
        }
        float pv[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float ms = m[e & 1] == -INFINITY ? 0.f : m[e & 1];
            pv[e] = ex2(sc[e] - ms);
            l[e & 1] += pv[e];
        }
        // P^T as B fragments (tokens 2 tig.. of head gid), high and low parts
        uint32_t pb[2][2];
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const uint32_t hi = Op::pack(pv[2 * rr], pv[2 * rr + 1]);
            const float2 h = Op::unpack(hi);
            pb[0][rr] = movmatrix_t(hi);
            pb[1][rr] = movmatrix_t(Op::pack(pv[2 * rr] - h.x, pv[2 * rr + 1] - h.y));
        }
        // O^T += V^T P^T: A fragments from tokens (2 tig, 2 tig + 1) and (2 tig + 8, 2 tig + 9)
        uint32_t va[VW], vb[VW], vc[VW], vd[VW];
        lds_words<VW>(vr + (2 * tig) * ROW + gid * (D / 4), va);
        lds_words<VW>(vr + (2 * tig + 1) * ROW + gid * (D / 4), vb);
        lds_words<VW>(vr + (2 * tig + 8) * ROW + gid * (D / 4), vc);
        lds_words<VW>(vr + (2 * tig + 9) * ROW + gid * (D / 4), vd);
#pragma unroll
        for (int mt = 0; mt < D / 16; ++mt) {
            const unsigned a[4] = {prmt(va[mt], vb[mt], 0x5410u), prmt(va[mt], vb[mt], 0x7632u),
                                   prmt(vc[mt], vd[mt], 0x5410u), prmt(vc[mt], vd[mt], 0x7632u)};
            Op::run(o[mt], a, pb[0][0], pb[0][1]);
            Op::run(o[mt], a, pb[1][0], pb[1][1]);
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // the pipeline buffers become the reduction buffers
    allow_dependent_launch();  // the merge kernel may become resident now (it waits for this grid)

    float* red_o = reinterpret_cast<float*>(smem);  // [kMWarps][kMHeads][D]
    float* red_m = red_o + kMWarps * kMHeads * D;    // [kMWarps][kMHeads]
    float* red_l = red_m + kMWarps * kMHeads;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) l[j] += __shfl_xor_sync(0xffffffffu, l[j], off);
    }
    float* slot = red_o + warp * kMHeads * D;
#pragma unroll
    for (int mt = 0; mt < D / 16; ++mt) {
        const int d0 = gid * (D / 8) + 2 * mt;
        slot[(2 * tig) * D + d0] = o[mt][0];
        slot[(2 * tig + 1) * D + d0] = o[mt][1];
        slot[(2 * tig) * D + d0 + 1] = o[mt][2];
        slot[(2 * tig + 1) * D + d0 + 1] = o[mt][3];
    }
    if (gid == 0) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            red_m[warp * kMHeads + 2 * tig + j] = m[j];
            red_l[warp * kMHeads + 2 * tig + j] = l[j];
        }
    }
    __syncthreads();
    store_combined<D, kMWarps, kMHeads>(p, b, c, kvh, h0, red_o, red_m, red_l, bad);
    if (bad && tid == 0) report_bad_page(p, b, pages, npages);
}

// One warp per (sequence, query head): LSE-weighted sum of the sequence's chunk partials.
__global__ void __launch_bounds__(128) merge_kernel(const Params p) {
    const int lane = threadIdx.x & 31;
    const int w = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (w >= p.batch * p.num_qo_heads) return;
    const int b = w / p.num_qo_heads;
    const int qo = w - b * p.num_qo_heads;
    const int beg = p.indptr[b], end = p.indptr[b + 1];
    const int last = p.last_page_len[b];
    if (sequence_empty(p, beg, end, last) || !sequence_table_ok(p, b, beg, end, last)) return;  // rows written already
    int per, used;
    chunk_geometry(end - beg, p.num_chunks, p.min_chunk_pages, per, used);
    const int64_t row0 = int64_t(b) * p.num_chunks * p.num_qo_heads + qo;
    const int64_t rs = p.num_qo_heads;
    wait_for_prior_grid();  // the partials of the decode kernel

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
    for (int d = lane * 4; d < D; d += 128) {
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int c = 0; c < used; ++c) {
            const float wgt = ex2(p.ws_lse[row0 + c * rs] - M);
            const float4 v = *reinterpret_cast<const float4*>(p.ws_o + (row0 + c * rs) * D + d);
            acc.x = fmaf(wgt, v.x, acc.x);
            acc.y = fmaf(wgt, v.y, acc.y);
            acc.z = fmaf(wgt, v.z, acc.z);
            acc.w = fmaf(wgt, v.w, acc.w);
        }
        const int64_t o = int64_t(b) * p.o_row + int64_t(qo) * p.o_head + d;
        store_elem(p.out, p.out_dtype, o + 0, acc.x * inv);
        store_elem(p.out, p.out_dtype, o + 1, acc.y * inv);
        store_elem(p.out, p.out_dtype, o + 2, acc.z * inv);
        store_elem(p.out, p.out_dtype, o + 3, acc.w * inv);
    }
    if (lane == 0 && p.lse)
        p.lse[int64_t(b) * p.lse_row + int64_t(qo) * p.lse_head] = (M + __log2f(L)) * kLn2;
}

using KernelFn = void (*)(Params);

template <int D, int GT>
KernelFn pick_kv(attn4j_dtype kv) {
    return kv == ATTN4J_DTYPE_BF16 ? decode_kernel<D, __nv_bfloat16, GT> : decode_kernel<D, __half, GT>;
}

// Tensor-core kernel when q has the KV's 16-bit type (ATTN4J_CUDA_DECODE=simt forces the fp32 one).
bool use_mma_kernel(const attn4j_attention_desc& d) {
    static const char* const env = std::getenv("ATTN4J_CUDA_DECODE");
    if (env && !std::strcmp(env, "simt")) return false;
    return d.q_dtype == d.kv_dtype;
}

KernelFn pick_mma_kernel(int head_dim, attn4j_dtype kv, int& smem) {
    if (head_dim == 128) {
        smem = MmaCfg<128>::SMEM;
        return kv == ATTN4J_DTYPE_BF16 ? decode_mma_kernel<128, __nv_bfloat16> : decode_mma_kernel<128, __half>;
    }
    smem = MmaCfg<64>::SMEM;
    return kv == ATTN4J_DTYPE_BF16 ? decode_mma_kernel<64, __nv_bfloat16> : decode_mma_kernel<64, __half>;
}

KernelFn pick_kernel(int head_dim, attn4j_dtype kv, int gt, int& smem) {
    if (head_dim == 128) {
        smem = gt == 4 ? smem_bytes<128, 4>() : smem_bytes<128, 8>();
        return gt == 4 ? pick_kv<128, 4>(kv) : pick_kv<128, 8>(kv);
    }
    smem = gt == 4 ? smem_bytes<64, 4>() : smem_bytes<64, 8>();
    return gt == 4 ? pick_kv<64, 4>(kv) : pick_kv<64, 8>(kv);
}

[[noreturn]] void cuda_fail(cudaError_t e, const char* what) {
    (void)cudaGetLastError();
    fail(e == cudaErrorMemoryAllocation ? ATTN4J_ERR_OUT_OF_MEMORY : ATTN4J_ERR_DEVICE,
         std::string("CUDA decode plan: ") + what + ": " + cudaGetErrorString(e));
}

class CudaDecode final : public DecodeKernel {
public:
    CudaDecode(const attn4j_attention_desc& desc, int device, const DecodeTuning& tuning)
        : desc_(desc), device_(device), tuning_(tuning) {
        const int group = desc.num_qo_heads / desc.num_kv_heads;
        mma_ = use_mma_kernel(desc);
        gt_ = mma_ ? kMHeads : group <= 4 ? 4 : 8;
        head_tiles_ = (group + gt_ - 1) / gt_;
        kernel_ = mma_ ? pick_mma_kernel(desc.head_dim, desc.kv_dtype, smem_)
                       : pick_kernel(desc.head_dim, desc.kv_dtype, gt_, smem_);
        if (desc.max_batch_size > 65535) fail(ATTN4J_ERR_UNSUPPORTED, "CUDA decode: max_batch_size > 65535");

        int prev = 0;
        cudaError_t e = cudaGetDevice(&prev);
        if (e != cudaSuccess) cuda_fail(e, "cudaGetDevice");
        e = cudaSetDevice(device);
        if (e != cudaSuccess) cuda_fail(e, "cudaSetDevice");
        struct Restore {
            int d;
            ~Restore() { cudaSetDevice(d); }
        } restore{prev};
        cudaDeviceProp prop{};
        if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) cuda_fail(e, "properties");
        sms_ = prop.multiProcessorCount;
        sm_major_ = prop.major;
        dependent_merge_ = tuning.dependent_merge && dependent_launch_enabled(sm_major_);
        if (smem_ > 48 * 1024 &&
            (e = cudaFuncSetAttribute(kernel_, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_)) != cudaSuccess)
            cuda_fail(e, "shared memory attribute");
        occ_ = tuning.ctas_per_sm;
        if (occ_ <= 0) {
            e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ_, kernel_, kThreads, size_t(smem_));
            if (e != cudaSuccess) cuda_fail(e, "occupancy");
            occ_ = std::max(occ_, 1);
        }
        int64_t rows = 0;
        for (int b = 1; b <= desc.max_batch_size; ++b) {
            const int nc = num_chunks(b);
            if (nc > 1) rows = std::max<int64_t>(rows, int64_t(b) * nc);
        }
        rows *= desc.num_qo_heads;
        ws_bytes_ = size_t(rows) * (size_t(desc.head_dim) + 1) * sizeof(float);
        if (ws_bytes_) {
            if ((e = cudaMalloc(&ws_, ws_bytes_)) != cudaSuccess) cuda_fail(e, "workspace cudaMalloc");
            ws_lse_offset_ = size_t(rows) * desc.head_dim;
        }
        snprintf(name_, sizeof name_, "cuda-sm%d%s", sm_major_ * 10 + prop.minor, mma_ ? "-mma" : "");
    }
    ~CudaDecode() override {
        if (ws_) {
            int prev = 0;
            cudaGetDevice(&prev);
            cudaSetDevice(device_);
            cudaFree(ws_);
            cudaSetDevice(prev);
        }
    }

    int num_chunks(int batch) const override {
        if (tuning_.force_chunks > 0) return tuning_.force_chunks;
        const int64_t units = int64_t(batch) * desc_.num_kv_heads * head_tiles_;
        const int64_t target = int64_t(sms_) * occ_;
        const int64_t nc = (target + units / 2) / units;
        return int(std::clamp<int64_t>(nc, 1, 65535));
    }
    size_t workspace_bytes() const override { return ws_bytes_; }
    const char* path_name() const override { return name_; }

    cudaError_t run(const DecodeArgs& a, cudaStream_t stream, const TableCheck& check) override {
        const int batch = a.table.batch;
        if (batch <= 0 || batch > desc_.max_batch_size) return cudaErrorInvalidValue;
        if ((reinterpret_cast<uintptr_t>(a.kv.k) | reinterpret_cast<uintptr_t>(a.kv.v)) & 15)
            return cudaErrorMisalignedAddress;
        Params p{};
        fill_io(p, a.q, a.out, a.lse);
        p.k = a.kv.k;
        p.v = a.kv.v;
        p.indptr = a.table.indptr;
        p.indices = a.table.indices;
        p.last_page_len = a.table.last_page_len;
        p.scale_log2 = a.shape.sm_scale * kLog2e;
        p.batch = batch;
        p.num_qo_heads = a.shape.num_qo_heads;
        p.num_kv_heads = a.shape.num_kv_heads;
        p.group = a.shape.group();
        p.num_head_tiles = head_tiles_;
        p.page_size = a.kv.page_size;
        p.page_shift = (a.kv.page_size & (a.kv.page_size - 1)) == 0 ? __builtin_ctz(unsigned(a.kv.page_size)) : -1;
        p.num_chunks = num_chunks(batch);
        p.min_chunk_pages = tuning_.force_chunks > 0
                                ? 1
                                : std::max(1, (tuning_.min_chunk_tokens + a.kv.page_size - 1) / a.kv.page_size);
        p.ws_o = static_cast<float*>(ws_);
        p.ws_lse = ws_ ? static_cast<float*>(ws_) + ws_lse_offset_ : nullptr;
        p.head_dim = desc_.head_dim;
        p.num_pages = a.kv.num_pages;
        p.num_indices = check.num_indices;
        p.table_errors = check.record;
        p.allow_empty = check.allow_empty ? 1 : 0;

        const dim3 grid(unsigned(p.num_chunks), unsigned(desc_.num_kv_heads * head_tiles_), unsigned(batch));
        kernel_<<<grid, kThreads, size_t(smem_), stream>>>(p);
        if (p.num_chunks > 1) {
            const unsigned warps = unsigned(batch * desc_.num_qo_heads);
            const cudaError_t e = launch_dependent(dependent_merge_, merge_kernel, dim3((warps + 3) / 4), dim3(128), 0,
                                                   stream, p);
            if (e != cudaSuccess) return e;
        }
        return cudaGetLastError();
    }

private:
    attn4j_attention_desc desc_;
    int device_;
    DecodeTuning tuning_;
    int gt_ = 4, head_tiles_ = 1, smem_ = 0, sms_ = 1, occ_ = 1, sm_major_ = 0;
    bool mma_ = false;              // tensor-core kernel (decode_mma_kernel)
    bool dependent_merge_ = false;  // merge kernel as a dependent launch (cuda/dependent_launch.cuh)
    KernelFn kernel_ = nullptr;
    void* ws_ = nullptr;
    size_t ws_bytes_ = 0, ws_lse_offset_ = 0;
    char name_[32] = "cuda";
};

}  // namespace

bool decode_supported(const attn4j_attention_desc& d) {
    const auto fl = [](attn4j_dtype t) {
        return t == ATTN4J_DTYPE_F32 || t == ATTN4J_DTYPE_F16 || t == ATTN4J_DTYPE_BF16;
    };
    return (d.head_dim == 64 || d.head_dim == 128) &&
           (d.kv_dtype == ATTN4J_DTYPE_BF16 || d.kv_dtype == ATTN4J_DTYPE_F16) && fl(d.q_dtype) &&
           fl(d.out_dtype) && d.num_kv_heads > 0 && d.num_qo_heads % d.num_kv_heads == 0;
}

std::unique_ptr<DecodeKernel> make_decode_kernel(const attn4j_attention_desc& desc, int device_id,
                                                 const DecodeTuning& tuning) {
    if (!decode_supported(desc))
        fail(ATTN4J_ERR_UNSUPPORTED,
             "CUDA decode: needs head_dim 64 or 128 and BF16/F16 KV (got head_dim " +
                 std::to_string(desc.head_dim) + ")");
    return std::make_unique<CudaDecode>(desc, device_id, tuning);
}

}  // namespace attn4j::cuda
