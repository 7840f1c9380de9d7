// CUDA paged decode over quantized KV pages (see decode_quant.cuh). Two kernels share the math:
// qdecode_pages_kernel (default; page-major, 8 warps, described at its definition) and
// qdecode_kernel (group > 8 or non-power-of-two pages, or ATTN4J_CUDA_QDECODE=old).
// Per CTA of 4 warps of qdecode_kernel:
//  - one (sequence, kv head, tile of up to 8 query heads, chunk of whole pages);
//  - a stage of 64 tokens (K codes, V codes, K meta, V meta of each token) is copied into shared
//    memory with cp.async (16-byte copies for codes when the page geometry allows, else 4-byte);
//    the pipeline is STAGES deep with one block barrier per stage;
//  - each warp takes 16 tokens of the stage. Scores S = Q K^T are mma.m16n8k16 with M = query
//    heads (8 used rows), N = 8 tokens, K = 16 head-dim values; P.V is O^T = V^T P^T with M = 16
//    head-dim values, N = 8 heads, K = 16 tokens, so the C fragment of S is the B fragment of P^T
//    without any shuffle;
//  - codes become f16 with the exponent trick: (word & plane mask) | magic gives 2^e + code in
//    each half (planar packing: plane k of a byte holds value j + k n), then (h - 2^e) * s + z.
//    The head-dim order inside an mma is permuted to follow the bytes a thread holds (the query
//    fragment and the output rows are permuted to match), and every thread's bytes of a token lie
//    in one quantization group, so each half2 needs one {scale, zero};
//  - online softmax in base 2 in f32, warps merged through shared memory; the output of the
//    chunk is rotated back (o = õ R_v^T: in-block FWHT or matrix) before it is written, so the
//    LSE merge of chunks stays the plain one (rotation is linear and merge weights sum to 1);
//  - q is rotated (q R_k) and scaled in the prologue, converted to f16 mma fragments once.
#include "cuda/decode_quant.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"

namespace attn4j::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = 4;
constexpr int kTT = 64;  // tokens per stage (16 per warp)
constexpr int kGT = 8;   // query heads per CTA
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kLog2e = 1.4426950408889634f;

struct QParams {
    const void* q;
    int64_t q_row, q_head;
    void* out;
    int64_t o_row, o_head;
    float* lse;
    int64_t lse_row, lse_head;
    const uint8_t* k;
    const uint8_t* v;
    const int* indptr;
    const int* indices;
    const int* last_page_len;
    float* ws_o;
    float* ws_lse;
    float scale_log2;
    int q_dtype, out_dtype;
    int batch, num_qo_heads, num_kv_heads, group, num_head_tiles;
    int page_size, page_shift;
    int num_chunks, min_chunk_pages;
    int head_dim;
    // quantized page geometry
    int G, n;           // group size, code bytes per group
    int meta_f16;       // 1: F16 meta
    int MB, mb_shift;   // meta bytes per token, log2(MB / 4)
    int vec16;          // code rows are 16-byte aligned
    int meta8;          // meta rows are 8-byte aligned, MB a multiple of 8
    int64_t page_stride, head_stride, meta_off;  // bytes
    int k_rot, v_rot;
    const float* k_mat;
    const float* v_mat;
    int copy_only;  // diagnostics: stream the pages, skip the math (output meaningless)
};

template <int D, int BITS, bool FAST>
struct Cfg {
    static constexpr int CB = D * BITS / 8;  // code bytes per token
    static constexpr int P = 8 / BITS;       // bit planes per byte
    static constexpr int KR = CB / 4;        // K bytes per thread per token
    static constexpr int VR = CB / 8;        // V bytes per thread per token
    // meta bytes per token at most: one group (FAST) or G 32, F32
    static constexpr int MBMAX = FAST ? 8 : D / 4;
    static constexpr int STAGES = FAST ? (BITS == 2 ? 9 : BITS == 4 ? 5 : 3) : (BITS == 2 ? 6 : BITS == 4 ? 5 : 3);
    static constexpr int STAGE_BYTES = kTT * 2 * (CB + MBMAX);
    static constexpr int PIPE = STAGES * STAGE_BYTES;
    static constexpr int EPI = (kWarps * kGT * D + 2 * kWarps * kGT + 2 * kGT * D + kGT) * 4;
    static constexpr int SMEM = PIPE > EPI ? PIPE : EPI;
};

__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ void chunk_geometry(int np, int num_chunks, int min_pages, int& per, int& used) {
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

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem, bool valid) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 8 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ uint32_t pack_h2(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ uint32_t hsub2(uint32_t a, uint32_t b) {
    uint32_t r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
__device__ __forceinline__ uint32_t hfma2(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t r;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

// Codes of plane K in bytes 0 and 2 of x -> f16x2 (code * s + z).
template <int BITS, int K>
__device__ __forceinline__ uint32_t dq(uint32_t x, uint32_t s2, uint32_t z2) {
    constexpr uint32_t mask = ((1u << BITS) - 1u) << (K * BITS);
    constexpr uint32_t m2 = mask | (mask << 16);
    constexpr uint32_t magic = uint32_t(25 - K * BITS) << 10;  // f16 2^(10 - K*BITS)
    constexpr uint32_t mg2 = magic | (magic << 16);
    const uint32_t h = (x & m2) | mg2;
    return hfma2(hsub2(h, mg2), s2, z2);
}
// Codes of plane K in bytes 0 and 2 of x -> f16x2 (exact code values).
template <int BITS, int K>
__device__ __forceinline__ uint32_t dqc(uint32_t x) {
    constexpr uint32_t mask = ((1u << BITS) - 1u) << (K * BITS);
    constexpr uint32_t m2 = mask | (mask << 16);
    constexpr uint32_t magic = uint32_t(25 - K * BITS) << 10;
    constexpr uint32_t mg2 = magic | (magic << 16);
    return hsub2((x & m2) | mg2, mg2);
}
template <int BITS, int K, bool FAST>
__device__ __forceinline__ uint32_t dqx(uint32_t x, uint32_t s2, uint32_t z2) {
    if constexpr (FAST) return dqc<BITS, K>(x);
    else return dq<BITS, K>(x, s2, z2);
}

__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// NB bytes (2, 4, 8, 16 or 32) of shared memory as words (NB == 2: one zero-extended word).
template <int NB>
__device__ __forceinline__ void load_words(const uint8_t* p, uint32_t* w) {
    if constexpr (NB == 2) {
        w[0] = *reinterpret_cast<const uint16_t*>(p);
    } else if constexpr (NB == 4) {
        w[0] = *reinterpret_cast<const uint32_t*>(p);
    } else if constexpr (NB == 8) {
        const uint2 t = *reinterpret_cast<const uint2*>(p);
        w[0] = t.x;
        w[1] = t.y;
    } else {
#pragma unroll
        for (int i = 0; i < NB / 16; ++i) {
            const uint4 t = reinterpret_cast<const uint4*>(p)[i];
            w[4 * i] = t.x;
            w[4 * i + 1] = t.y;
            w[4 * i + 2] = t.z;
            w[4 * i + 3] = t.w;
        }
    }
}

__device__ __forceinline__ void load_meta(const uint8_t* row, int g, int f16, float& s, float& z) {
    if (f16) {
        const __half2 h = *reinterpret_cast<const __half2*>(row + g * 4);
        s = __low2float(h);
        z = __high2float(h);
    } else {
        const float2 f = *reinterpret_cast<const float2*>(row + g * 8);
        s = f.x;
        z = f.y;
    }
}

// Head-dim index of plane k of code byte `beta` of a token (planar packing, n bytes per group).
__device__ __forceinline__ int dmap(int beta, int k, int n, int G) { return (beta / n) * G + beta % n + k * n; }

// Rows x[kGT][D] in shared memory times R (inverse: times R^T); block-wide, ends with a barrier.
// Returns where the result is (x itself for NONE / HADAMARD, whose 1/sqrt(D) the caller applies).
template <int D>
__device__ float* rotate_rows(float* x, float* tmp, int kind, const float* R, bool inverse) {
    if (kind == ATTN4J_ROTATION_HADAMARD) {
        for (int len = 1; len < D; len <<= 1) {
            for (int idx = threadIdx.x; idx < kGT * D / 2; idx += kThreads) {
                const int h = idx / (D / 2), kk = idx % (D / 2);
                const int i = (kk / len) * 2 * len + kk % len;
                float* r = x + h * D;
                const float a = r[i], b = r[i + len];
                r[i] = a + b;
                r[i + len] = a - b;
            }
            __syncthreads();
        }
        return x;
    }
    if (kind == ATTN4J_ROTATION_MATRIX) {
        for (int idx = threadIdx.x; idx < kGT * D; idx += kThreads) {
            const int h = idx / D, j = idx % D;
            const float* r = x + h * D;
            float acc = 0.f;
            if (inverse) {
                for (int i = 0; i < D; ++i) acc = fmaf(r[i], __ldg(R + j * D + i), acc);
            } else {
                for (int i = 0; i < D; ++i) acc = fmaf(r[i], __ldg(R + i * D + j), acc);
            }
            tmp[idx] = acc;
        }
        __syncthreads();
        return tmp;
    }
    return x;
}

// FAST (one quantization group per token, G == head_dim): the mma operands are the exact codes;
// K's {scale, zero} are applied to the f32 scores (s * (q.c) + z * sum(q)), V's scale multiplies
// P (relative to a per-CTA reference scale, to keep P * s in the f16 normal range) and V's zero
// adds z * sum(p) to the output, so the per-element dequantize FMA disappears.
template <int D, int BITS, bool FAST>
__global__ void __launch_bounds__(kThreads) qdecode_kernel(const QParams p) {
    using C = Cfg<D, BITS, FAST>;
    constexpr int CB = C::CB, P = C::P, KR = C::KR, VR = C::VR, STAGES = C::STAGES;
    constexpr int NKS = D / 16;  // k-slices of the score mma = m-tiles of the P.V mma
    extern __shared__ __align__(16) unsigned char smem[];

    const int c = blockIdx.x;
    const int kvh = blockIdx.y / p.num_head_tiles;
    const int tile = blockIdx.y - kvh * p.num_head_tiles;
    const int b = blockIdx.z;

    const int page_beg = p.indptr[b];
    const int np = p.indptr[b + 1] - page_beg;
    int per, used;
    chunk_geometry(np, p.num_chunks, p.min_chunk_pages, per, used);
    if (c >= used) return;
    const int pg0 = c * per;
    const int pg1 = min(np, pg0 + per);
    const int ps = p.page_size;
    const int chunk_len = pg1 == np ? (pg1 - pg0 - 1) * ps + p.last_page_len[b] : (pg1 - pg0) * ps;
    const int* pages = p.indices + page_beg + pg0;

    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
    const int h0 = tile * kGT;
    const int n = p.n, G = p.G;

    // ---- query: load, rotate by R_k, scale, build f16 A fragments (rows 8..15 are zero).
    uint32_t qa[NKS][2];
    float qsum = 0.f;  // FAST: sum of head gid's f16 query
    float s_ref = 1.f, inv_sref = 1.f;
    if constexpr (FAST) {
        const uint8_t* m0 = p.v + int64_t(kvh) * p.head_stride + int64_t(pages[0]) * p.page_stride + p.meta_off;
        const float sr = p.meta_f16 ? __half2float(*reinterpret_cast<const __half*>(m0)) : *reinterpret_cast<const float*>(m0);
        if (sr > 0.f && sr < 3.0e38f) {
            s_ref = sr;
            inv_sref = 1.f / sr;
        }
    }
    {
        float* qs = reinterpret_cast<float*>(smem);
        float* qt = qs + kGT * D;
        for (int idx = tid; idx < kGT * D; idx += kThreads) {
            const int h = idx / D, d = idx % D;
            const int gh = h0 + h;
            qs[idx] = gh < p.group
                          ? load_elem(p.q, p.q_dtype, int64_t(b) * p.q_row + int64_t(kvh * p.group + gh) * p.q_head + d)
                          : 0.f;
        }
        __syncthreads();
        const float* qr = rotate_rows<D>(qs, qt, p.k_rot, p.k_mat ? p.k_mat + int64_t(kvh) * D * D : nullptr, false);
        const float sc = p.scale_log2 * (p.k_rot == ATTN4J_ROTATION_HADAMARD ? rsqrtf(float(D)) : 1.f);
#pragma unroll
        for (int s = 0; s < NKS; ++s) {
            const int i = s / P, k = s % P;
            const int B = tig * KR + 4 * i;
            const float* row = qr + gid * D;
            qa[s][0] = pack_h2(row[dmap(B + 0, k, n, G)] * sc, row[dmap(B + 2, k, n, G)] * sc);
            qa[s][1] = pack_h2(row[dmap(B + 1, k, n, G)] * sc, row[dmap(B + 3, k, n, G)] * sc);
        }
        if constexpr (FAST) {
            for (int d = 0; d < D; ++d) qsum += __half2float(__float2half_rn(qr[gid * D + d] * sc));
        }
        __syncthreads();  // smem becomes the pipeline
    }

    const uint8_t* kb = p.k + int64_t(kvh) * p.head_stride;
    const uint8_t* vb = p.v + int64_t(kvh) * p.head_stride;
    const int MB = p.MB;

    auto token_off = [&](int j, int64_t& blk, int& slot) {
        const int pi = p.page_shift >= 0 ? j >> p.page_shift : j / ps;
        slot = j - pi * ps;
        blk = int64_t(__ldg(pages + pi)) * p.page_stride;
    };
    auto issue = [&](int it, int s) {
        unsigned char* sb = smem + s * C::STAGE_BYTES;
        uint8_t* kc = sb;
        uint8_t* vc = sb + kTT * CB;
        uint8_t* km = vc + kTT * CB;
        uint8_t* vm = km + kTT * C::MBMAX;
        const int j0 = it * kTT;
        if (p.vec16) {
            constexpr int UPT = CB / 16;
#pragma unroll
            for (int u = tid; u < kTT * UPT; u += kThreads) {
                const int t = u / UPT, piece = u % UPT;
                const int j = j0 + t;
                const bool valid = j < chunk_len;
                int64_t off = 0;
                if (valid) {
                    int slot;
                    token_off(j, off, slot);
                    off += int64_t(slot) * CB + piece * 16;
                }
                cp_async16(kc + t * CB + piece * 16, kb + off, valid);
                cp_async16(vc + t * CB + piece * 16, vb + off, valid);
            }
        } else {
            constexpr int UPT = CB / 4;
            for (int u = tid; u < kTT * UPT; u += kThreads) {
                const int t = u / UPT, piece = u % UPT;
                const int j = j0 + t;
                const bool valid = j < chunk_len;
                int64_t off = 0;
                if (valid) {
                    int slot;
                    token_off(j, off, slot);
                    off += int64_t(slot) * CB + piece * 4;
                }
                cp_async4(kc + t * CB + piece * 4, kb + off, valid);
                cp_async4(vc + t * CB + piece * 4, vb + off, valid);
            }
        }
        if (p.meta8) {
            const int nu = kTT * MB / 8;
            for (int u = tid; u < nu; u += kThreads) {
                const int t = u >> (p.mb_shift - 1), piece = u & ((MB >> 3) - 1);
                const int j = j0 + t;
                const bool valid = j < chunk_len;
                int64_t off = 0;
                if (valid) {
                    int slot;
                    token_off(j, off, slot);
                    off += p.meta_off + int64_t(slot) * MB + piece * 8;
                }
                cp_async8(km + t * MB + piece * 8, kb + off, valid);
                cp_async8(vm + t * MB + piece * 8, vb + off, valid);
            }
            return;
        }
        const int nu = kTT * MB / 4;
        for (int u = tid; u < nu; u += kThreads) {
            const int t = u >> p.mb_shift, piece = u & ((MB >> 2) - 1);
            const int j = j0 + t;
            const bool valid = j < chunk_len;
            int64_t off = 0;
            if (valid) {
                int slot;
                token_off(j, off, slot);
                off += p.meta_off + int64_t(slot) * MB + piece * 4;
            }
            cp_async4(km + t * MB + piece * 4, kb + off, valid);
            cp_async4(vm + t * MB + piece * 4, vb + off, valid);
        }
    };

    const int ntiles = (chunk_len + kTT - 1) / kTT;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ntiles) issue(s, s);
        cp_async_commit();
    }

    float o[NKS][4];
#pragma unroll
    for (int mt = 0; mt < NKS; ++mt) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.f;
    float m = -INFINITY, l = 0.f, pz = 0.f;
    const int gk = (tig * KR) / n;  // group of this thread's K bytes
    const int gv = (gid * VR) / n;  // group of this thread's V bytes

    for (int it = 0; it < ntiles; ++it) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {
            const int nx = it + STAGES - 1;
            if (nx < ntiles) issue(nx, nx % STAGES);
            cp_async_commit();
        }
        const int tok0 = it * kTT + warp * 16;
        if (tok0 >= chunk_len || p.copy_only) continue;  // warp-uniform
        const unsigned char* sb = smem + (it % STAGES) * C::STAGE_BYTES;
        const uint8_t* kc = sb + warp * 16 * CB;
        const uint8_t* vc = sb + kTT * CB + warp * 16 * CB;
        const uint8_t* km = sb + 2 * kTT * CB + warp * 16 * MB;
        const uint8_t* vm = sb + 2 * kTT * CB + kTT * C::MBMAX + warp * 16 * MB;

        // ---- scores: S[head gid][tokens 8 nt + 2 tig + {0, 1}]
        float sacc[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const int row = gid + 8 * nt;
            uint32_t s2 = 0, z2 = 0;
            if constexpr (!FAST) {
                float s, z;
                load_meta(km + row * MB, gk, p.meta_f16, s, z);
                s2 = pack_h2(s, s);
                z2 = pack_h2(z, z);
            }
            uint32_t w[KR / 4];
            load_words<KR>(kc + row * CB + tig * KR, w);
            sacc[nt][0] = sacc[nt][1] = sacc[nt][2] = sacc[nt][3] = 0.f;
#pragma unroll
            for (int i = 0; i < KR / 4; ++i) {
                const uint32_t x0 = w[i], x1 = w[i] >> 8;
#pragma unroll
                for (int k = 0; k < P; ++k) {
                    uint32_t lo, hi;
                    if (k == 0) { lo = dqx<BITS, 0, FAST>(x0, s2, z2); hi = dqx<BITS, 0, FAST>(x1, s2, z2); }
                    else if (k == 1) { lo = dqx<BITS, (P > 1 ? 1 : 0), FAST>(x0, s2, z2); hi = dqx<BITS, (P > 1 ? 1 : 0), FAST>(x1, s2, z2); }
                    else if (k == 2) { lo = dqx<BITS, (P > 2 ? 2 : 0), FAST>(x0, s2, z2); hi = dqx<BITS, (P > 2 ? 2 : 0), FAST>(x1, s2, z2); }
                    else { lo = dqx<BITS, (P > 3 ? 3 : 0), FAST>(x0, s2, z2); hi = dqx<BITS, (P > 3 ? 3 : 0), FAST>(x1, s2, z2); }
                    mma16816(sacc[nt], qa[i * P + k][0], 0u, qa[i * P + k][1], 0u, lo, hi);
                }
            }
        }
        float sv[4] = {sacc[0][0], sacc[0][1], sacc[1][0], sacc[1][1]};
        float vs_t[4], vz_t[4];  // FAST: V {scale, zero} of this thread's 4 tokens
        if constexpr (FAST) {
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const int r = (u >> 1) * 8 + 2 * tig + (u & 1);
                float s, z;
                load_meta(km + r * MB, 0, p.meta_f16, s, z);
                sv[u] = fmaf(s, sv[u], z * qsum);
                load_meta(vm + r * MB, 0, p.meta_f16, vs_t[u], vz_t[u]);
            }
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int j = tok0 + (u >> 1) * 8 + 2 * tig + (u & 1);
            if (j >= chunk_len) sv[u] = -INFINITY;
        }
        float mx = fmaxf(fmaxf(sv[0], sv[1]), fmaxf(sv[2], sv[3]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mnew = fmaxf(m, mx);
        if (__any_sync(0xffffffffu, mnew > m)) {
            const float alpha = mnew == -INFINITY ? 1.f : ex2(m - mnew);
            l *= alpha;
            pz *= alpha;
            const float a0 = __shfl_sync(0xffffffffu, alpha, (2 * tig) * 4);
            const float a1 = __shfl_sync(0xffffffffu, alpha, (2 * tig + 1) * 4);
#pragma unroll
            for (int mt = 0; mt < NKS; ++mt) {
                o[mt][0] *= a0;
                o[mt][1] *= a1;
                o[mt][2] *= a0;
                o[mt][3] *= a1;
            }
            m = mnew;
        }
        const float ms = m == -INFINITY ? 0.f : m;
        float pv[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            pv[u] = ex2(sv[u] - ms);
            l += pv[u];
        }
        uint32_t pb0, pb1;
        if constexpr (FAST) {
#pragma unroll
            for (int u = 0; u < 4; ++u) pz = fmaf(pv[u], vz_t[u], pz);
            pb0 = pack_h2(pv[0] * (vs_t[0] * inv_sref), pv[1] * (vs_t[1] * inv_sref));
            pb1 = pack_h2(pv[2] * (vs_t[2] * inv_sref), pv[3] * (vs_t[3] * inv_sref));
        } else {
            pb0 = pack_h2(pv[0], pv[1]);
            pb1 = pack_h2(pv[2], pv[3]);
        }

        // ---- values: A fragments of V^T from token pairs (2 tig, 2 tig + 1), (+8, +9)
        uint32_t vh[2][D / 8];
#pragma unroll
        for (int qq = 0; qq < 2; ++qq) {
            const int ra = 2 * tig + 8 * qq;
            uint32_t s2 = 0, z2 = 0;
            if constexpr (!FAST) {
                float sa, za, sbb, zb;
                load_meta(vm + ra * MB, gv, p.meta_f16, sa, za);
                load_meta(vm + (ra + 1) * MB, gv, p.meta_f16, sbb, zb);
                s2 = pack_h2(sa, sbb);
                z2 = pack_h2(za, zb);
            }
            constexpr int NWV = VR >= 4 ? VR / 4 : 1;
            uint32_t wa[NWV], wb[NWV];
            load_words<VR>(vc + ra * CB + gid * VR, wa);
            load_words<VR>(vc + (ra + 1) * CB + gid * VR, wb);
#pragma unroll
            for (int i = 0; i < NWV; ++i) {
#pragma unroll
                for (int hp = 0; hp < (VR >= 4 ? 2 : 1); ++hp) {
                    const uint32_t r = prmt(wa[i], wb[i], hp ? 0x7632u : 0x5410u);
#pragma unroll
                    for (int bb = 0; bb < 2; ++bb) {
                        const uint32_t x = bb ? r >> 8 : r;
                        const int e0 = (4 * i + 2 * hp + bb) * P;
                        vh[qq][e0] = dqx<BITS, 0, FAST>(x, s2, z2);
                        if constexpr (P > 1) vh[qq][e0 + 1] = dqx<BITS, (P > 1 ? 1 : 0), FAST>(x, s2, z2);
                        if constexpr (P > 2) vh[qq][e0 + 2] = dqx<BITS, (P > 2 ? 2 : 0), FAST>(x, s2, z2);
                        if constexpr (P > 3) vh[qq][e0 + 3] = dqx<BITS, (P > 3 ? 3 : 0), FAST>(x, s2, z2);
                    }
                }
            }
        }
#pragma unroll
        for (int mt = 0; mt < NKS; ++mt)
            mma16816(o[mt], vh[0][2 * mt], vh[0][2 * mt + 1], vh[1][2 * mt], vh[1][2 * mt + 1], pb0, pb1);
    }
    cp_async_wait<0>();
    __syncthreads();

    // ---- merge the warps: o[mt][0..1] = (d of e = 2 mt, heads 2 tig, 2 tig + 1), [2..3]: e = 2 mt + 1
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    pz += __shfl_xor_sync(0xffffffffu, pz, 1);
    pz += __shfl_xor_sync(0xffffffffu, pz, 2);
    // FAST: o = s_ref * (sum P' c) + sum p z, per column head 2 tig + {0, 1}
    const float pz0 = __shfl_sync(0xffffffffu, pz, (2 * tig) * 4);
    const float pz1 = __shfl_sync(0xffffffffu, pz, (2 * tig + 1) * 4);
    float* red_o = reinterpret_cast<float*>(smem);  // [kWarps][kGT][D]
    float* red_m = red_o + kWarps * kGT * D;         // [kWarps][kGT]
    float* red_l = red_m + kWarps * kGT;
    float* fin = red_l + kWarps * kGT;  // [kGT][D]
    float* tmp = fin + kGT * D;         // [kGT][D]
    float* lse_s = tmp + kGT * D;       // [kGT]
#pragma unroll
    for (int mt = 0; mt < NKS; ++mt) {
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int e = 2 * mt + rr;
            const int d = dmap(gid * VR + e / P, e % P, n, G);
            if constexpr (FAST) {
                red_o[(warp * kGT + 2 * tig) * D + d] = fmaf(s_ref, o[mt][2 * rr], pz0);
                red_o[(warp * kGT + 2 * tig + 1) * D + d] = fmaf(s_ref, o[mt][2 * rr + 1], pz1);
            } else {
                red_o[(warp * kGT + 2 * tig) * D + d] = o[mt][2 * rr];
                red_o[(warp * kGT + 2 * tig + 1) * D + d] = o[mt][2 * rr + 1];
            }
        }
    }
    if (tig == 0) {
        red_m[warp * kGT + gid] = m;
        red_l[warp * kGT + gid] = l;
    }
    __syncthreads();
    for (int idx = tid; idx < kGT * D; idx += kThreads) {
        const int h = idx / D, d = idx % D;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) M = fmaxf(M, red_m[w * kGT + h]);
        const float Ms = M == -INFINITY ? 0.f : M;
        float L = 0.f, acc = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
            const float wt = ex2(red_m[w * kGT + h] - Ms);
            L = fmaf(wt, red_l[w * kGT + h], L);
            acc = fmaf(wt, red_o[(w * kGT + h) * D + d], acc);
        }
        fin[idx] = L > 0.f ? acc / L : 0.f;
        if (d == 0) lse_s[h] = M + __log2f(L);
    }
    __syncthreads();
    const float* res = rotate_rows<D>(fin, tmp, p.v_rot, p.v_mat ? p.v_mat + int64_t(kvh) * D * D : nullptr, true);
    const float vsc = p.v_rot == ATTN4J_ROTATION_HADAMARD ? rsqrtf(float(D)) : 1.f;
    for (int idx = tid; idx < kGT * D; idx += kThreads) {
        const int h = idx / D, d = idx % D;
        const int gh = h0 + h;
        if (gh >= p.group) break;  // idx grows with h
        const int qo = kvh * p.group + gh;
        const float val = res[idx] * vsc;
        if (p.num_chunks == 1) {
            store_elem(p.out, p.out_dtype, int64_t(b) * p.o_row + int64_t(qo) * p.o_head + d, val);
            if (d == 0 && p.lse) p.lse[int64_t(b) * p.lse_row + int64_t(qo) * p.lse_head] = lse_s[h] * kLn2;
        } else {
            const int64_t row = (int64_t(b) * p.num_chunks + c) * p.num_qo_heads + qo;
            p.ws_o[row * D + d] = val;
            if (d == 0) p.ws_lse[row] = lse_s[h];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Page-major kernel: one CTA of 8 warps = (sequence, tile of up to 8 kv heads, chunk of pages).
// A stage holds TT tokens of ALL the tile's kv heads: for each sub-block of q = min(page_size, TT)
// tokens and each head, the q code rows then the q meta rows, copied verbatim from the page (so
// one page of the tile is one contiguous region of kh blocks in global memory, read at once).
// Warp w serves head w % khp (khp = kh rounded up to a power of two; warps of heads >= kh idle
// in the math) and the 16-token slices w / khp + i * (8 / khp) of the stage, i < SPW; warps of
// one head are merged through shared memory at the end. The per-slice math is the one above.
constexpr int kPThreads = 256;
constexpr int kPWarps = 8;
constexpr int kPipeBudget = 108 * 1024;  // pipeline bytes per CTA (2 CTAs per SM)
constexpr int kPidCache = 1024;          // page ids of a chunk kept in shared memory (else read per copy)

template <int D, int BITS, bool FAST>
struct PCfg {
    static constexpr int CB = D * BITS / 8;
    static constexpr int P = 8 / BITS;
    static constexpr int KR = CB / 4;
    static constexpr int VR = CB / 8;
    static constexpr int MBMAX = FAST ? 8 : D / 4;
    static constexpr int SPW = (BITS == 8 || (!FAST && BITS == 4)) ? 1 : 2;  // slices per warp per stage
    static constexpr int SLOTS = kPWarps * 16 * SPW;                     // TT * khp (token x head slots)
    static constexpr int HALF = SLOTS * (CB + MBMAX);                    // K (or V) bytes of a stage
    static constexpr int STAGE_BYTES = 2 * HALF;
    static constexpr int STAGES_RAW = kPipeBudget / STAGE_BYTES;
    static constexpr int STAGES = STAGES_RAW > 6 ? 6 : STAGES_RAW < 2 ? 2 : STAGES_RAW;
    static constexpr int PIPE = STAGES * STAGE_BYTES;
    static constexpr int EPI = (2 * kPWarps * kGT * D + 3 * kPWarps * kGT) * 4;
    static constexpr int MAIN = PIPE > EPI ? PIPE : EPI;
    static constexpr int SMEM = MAIN + kPidCache * 4;  // + the chunk's page ids
};

// rows x[nrows][D] (row r belongs to kv head hb + r / kGT) times R (inverse: R^T); block-wide.
template <int D>
__device__ float* rotate_rows_h(float* x, float* tmp, int nrows, int kind, const float* R, int hb, bool inverse) {
    if (kind == ATTN4J_ROTATION_HADAMARD) {
        for (int len = 1; len < D; len <<= 1) {
            for (int idx = threadIdx.x; idx < nrows * D / 2; idx += blockDim.x) {
                const int h = idx / (D / 2), kk = idx % (D / 2);
                const int i = (kk / len) * 2 * len + kk % len;
                float* r = x + h * D;
                const float a = r[i], b = r[i + len];
                r[i] = a + b;
                r[i + len] = a - b;
            }
            __syncthreads();
        }
        return x;
    }
    if (kind == ATTN4J_ROTATION_MATRIX) {
        for (int idx = threadIdx.x; idx < nrows * D; idx += blockDim.x) {
            const int h = idx / D, j = idx % D;
            const float* r = x + h * D;
            const float* Rh = R + int64_t(hb + h / kGT) * D * D;
            float acc = 0.f;
            if (inverse) {
                for (int i = 0; i < D; ++i) acc = fmaf(r[i], __ldg(Rh + j * D + i), acc);
            } else {
                for (int i = 0; i < D; ++i) acc = fmaf(r[i], __ldg(Rh + i * D + j), acc);
            }
            tmp[idx] = acc;
        }
        __syncthreads();
        return tmp;
    }
    return x;
}

template <int D, int BITS, bool FAST>
__global__ void __launch_bounds__(kPThreads, 2) qdecode_pages_kernel(const QParams p) {
    using C = PCfg<D, BITS, FAST>;
    constexpr int CB = C::CB, P = C::P, KR = C::KR, VR = C::VR, STAGES = C::STAGES, SPW = C::SPW;
    constexpr int NKS = D / 16;
    extern __shared__ __align__(16) unsigned char smem[];

    const int c = blockIdx.x;
    const int hb = blockIdx.y * kPWarps;
    const int b = blockIdx.z;
    const int kh = min(kPWarps, p.num_kv_heads - hb);
    const int khp = kh > 4 ? 8 : kh > 2 ? 4 : kh;  // 1, 2, 4, 8
    const int wph = kPWarps / khp;                 // warps per head
    const int TT = 16 * SPW * wph;                 // tokens per stage

    const int page_beg = p.indptr[b];
    const int np = p.indptr[b + 1] - page_beg;
    int per, used;
    chunk_geometry(np, p.num_chunks, p.min_chunk_pages, per, used);
    if (c >= used) return;
    const int pg0 = c * per;
    const int pg1 = min(np, pg0 + per);
    const int ps = p.page_size;
    const int chunk_len = pg1 == np ? (pg1 - pg0 - 1) * ps + p.last_page_len[b] : (pg1 - pg0) * ps;
    const int* pages = p.indices + page_beg + pg0;

    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
    const int hl = warp % khp, wr = warp / khp;
    // the chunk's page ids, read once (visible after the query prologue's barrier): the copies of a
    // stage then wait on no global load
    int* pid_s = reinterpret_cast<int*>(smem + C::MAIN);
    const bool pid_cached = pg1 - pg0 <= kPidCache;
    if (pid_cached)
        for (int i = tid; i < pg1 - pg0; i += kPThreads) pid_s[i] = __ldg(pages + i);
    const bool active = hl < kh;
    const int kvh = hb + (active ? hl : 0);
    const int n = p.n, G = p.G, MB = p.MB;
    // sub-blocks: q tokens of one head (q a power of two)
    const int q = min(ps, TT);
    const int qs = p.page_shift < 0 ? 0 : min(p.page_shift, 31 - __clz(TT));
    const int qcb = q * CB;
    const int PB = q * (CB + MB);

    uint32_t qa[NKS][2];
    float qsum = 0.f;
    float s_ref = 1.f, inv_sref = 1.f;
    if constexpr (FAST) {
        const uint8_t* m0 = p.v + int64_t(kvh) * p.head_stride + int64_t(pages[0]) * p.page_stride + p.meta_off;
        const float sr = p.meta_f16 ? __half2float(*reinterpret_cast<const __half*>(m0)) : *reinterpret_cast<const float*>(m0);
        if (sr > 0.f && sr < 3.0e38f) {
            s_ref = sr;
            inv_sref = 1.f / sr;
        }
    }
    {
        const int nrows = kh * kGT;
        float* qsm = reinterpret_cast<float*>(smem);
        float* qt = qsm + kPWarps * kGT * D;
        for (int idx = tid; idx < nrows * D; idx += kPThreads) {
            const int r = idx / D, d = idx % D;
            const int h = r / kGT, gh = r % kGT;
            qsm[idx] = gh < p.group
                           ? load_elem(p.q, p.q_dtype, int64_t(b) * p.q_row + int64_t((hb + h) * p.group + gh) * p.q_head + d)
                           : 0.f;
        }
        __syncthreads();
        const float* qr = rotate_rows_h<D>(qsm, qt, nrows, p.k_rot, p.k_mat, hb, false);
        const float sc = p.scale_log2 * (p.k_rot == ATTN4J_ROTATION_HADAMARD ? rsqrtf(float(D)) : 1.f);
        const float* row = qr + (hl * kGT + gid) * D;
#pragma unroll
        for (int s = 0; s < NKS; ++s) {
            const int i = s / P, k = s % P;
            const int B = tig * KR + 4 * i;
            if (active) {
                qa[s][0] = pack_h2(row[dmap(B + 0, k, n, G)] * sc, row[dmap(B + 2, k, n, G)] * sc);
                qa[s][1] = pack_h2(row[dmap(B + 1, k, n, G)] * sc, row[dmap(B + 3, k, n, G)] * sc);
            } else {
                qa[s][0] = qa[s][1] = 0u;
            }
        }
        if constexpr (FAST) {
            if (active)
                for (int d = 0; d < D; ++d) qsum += __half2float(__float2half_rn(row[d] * sc));
        }
        __syncthreads();  // smem becomes the pipeline
    }

    const uint8_t* kb = p.k + int64_t(hb) * p.head_stride;
    const uint8_t* vb = p.v + int64_t(hb) * p.head_stride;
    const bool vec = p.vec16 && ((q * MB) & 15) == 0;
    const int nsub = TT >> qs;
    // stage layout (each of K, V): codes [nsub][kh][q][CB], then meta [nsub][kh][q][MB]
    const int qmb = q * MB;
    const int codes_total = nsub * kh * qcb;

    auto issue = [&](int it, int s) {
        unsigned char* sk = smem + s * C::STAGE_BYTES;
        unsigned char* sv = sk + C::HALF;
        const int j0 = it * TT;
        const int ush = vec ? 4 : 2;
        const int upp = PB >> ush;  // units per piece
        const int nu = nsub * kh * upp;
        for (int u = tid; u < nu; u += kPThreads) {
            const int piece = u / upp;
            const int x = (u - piece * upp) << ush;
            const int sb = piece / kh;
            const int h = piece - sb * kh;
            const int j = j0 + (sb << qs);
            const bool valid = j < chunk_len;
            int64_t off = 0;
            if (valid) {
                const int pi = j >> p.page_shift;
                const int slot = j & (ps - 1);
                const int pid = pid_cached ? pid_s[pi] : __ldg(pages + pi);
                off = int64_t(pid) * p.page_stride + int64_t(h) * p.head_stride +
                      (x < qcb ? slot * CB + x : p.meta_off + slot * MB + (x - qcb));
            }
            const int so = x < qcb ? piece * qcb + x : codes_total + piece * qmb + (x - qcb);
            if (vec) {
                cp_async16(sk + so, kb + off, valid);
                cp_async16(sv + so, vb + off, valid);
            } else {
                cp_async4(sk + so, kb + off, valid);
                cp_async4(sv + so, vb + off, valid);
            }
        }
    };

    const int ntiles = (chunk_len + TT - 1) / TT;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ntiles) issue(s, s);
        cp_async_commit();
    }

    float o[NKS][4];
#pragma unroll
    for (int mt = 0; mt < NKS; ++mt) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.f;
    float m = -INFINITY, l = 0.f, pz = 0.f;
    const int gk = (tig * KR) / n;
    const int gv = (gid * VR) / n;
    const int qmask = q - 1;

    for (int it = 0; it < ntiles; ++it) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {
            const int nx = it + STAGES - 1;
            if (nx < ntiles) issue(nx, nx % STAGES);
            cp_async_commit();
        }
        if (!active || p.copy_only) continue;  // warp-uniform
        const unsigned char* sk = smem + (it % STAGES) * C::STAGE_BYTES;
        const unsigned char* svb = sk + C::HALF;
#pragma unroll
        for (int si = 0; si < SPW; ++si) {
            const int t0 = (wr + si * wph) * 16;  // slice start within the stage
            const int tok0 = it * TT + t0;
            if (tok0 >= chunk_len) break;  // warp-uniform
            // byte offset (within a K/V half) of token t's codes; meta at + qcb + slot * (MB - CB)
            auto code_off = [&](int t) { return ((t >> qs) * kh + hl) * qcb + (t & qmask) * CB; };
            auto meta_off = [&](int t) { return codes_total + ((t >> qs) * kh + hl) * qmb + (t & qmask) * MB; };

            float sacc[2][4];
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                const int row = gid + 8 * nt;
                uint32_t s2 = 0, z2 = 0;
                if constexpr (!FAST) {
                    float s, z;
                    load_meta(sk + meta_off(t0 + row), gk, p.meta_f16, s, z);
                    s2 = pack_h2(s, s);
                    z2 = pack_h2(z, z);
                }
                uint32_t w[KR / 4];
                load_words<KR>(sk + code_off(t0 + row) + tig * KR, w);
                sacc[nt][0] = sacc[nt][1] = sacc[nt][2] = sacc[nt][3] = 0.f;
#pragma unroll
                for (int i = 0; i < KR / 4; ++i) {
                    const uint32_t x0 = w[i], x1 = w[i] >> 8;
#pragma unroll
                    for (int k = 0; k < P; ++k) {
                        uint32_t lo, hi;
                        if (k == 0) { lo = dqx<BITS, 0, FAST>(x0, s2, z2); hi = dqx<BITS, 0, FAST>(x1, s2, z2); }
                        else if (k == 1) { lo = dqx<BITS, (P > 1 ? 1 : 0), FAST>(x0, s2, z2); hi = dqx<BITS, (P > 1 ? 1 : 0), FAST>(x1, s2, z2); }
                        else if (k == 2) { lo = dqx<BITS, (P > 2 ? 2 : 0), FAST>(x0, s2, z2); hi = dqx<BITS, (P > 2 ? 2 : 0), FAST>(x1, s2, z2); }
                        else { lo = dqx<BITS, (P > 3 ? 3 : 0), FAST>(x0, s2, z2); hi = dqx<BITS, (P > 3 ? 3 : 0), FAST>(x1, s2, z2); }
                        mma16816(sacc[nt], qa[i * P + k][0], 0u, qa[i * P + k][1], 0u, lo, hi);
                    }
                }
            }
            float sv[4] = {sacc[0][0], sacc[0][1], sacc[1][0], sacc[1][1]};
            bool inval[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) inval[u] = tok0 + (u >> 1) * 8 + 2 * tig + (u & 1) >= chunk_len;
            float vs_t[4], vz_t[4];
            if constexpr (FAST) {
#pragma unroll
                for (int u = 0; u < 4; ++u) {
                    const int r = t0 + (u >> 1) * 8 + 2 * tig + (u & 1);
                    float s, z;
                    load_meta(sk + meta_off(r), 0, p.meta_f16, s, z);
                    sv[u] = fmaf(s, sv[u], z * qsum);
                    load_meta(svb + meta_off(r), 0, p.meta_f16, vs_t[u], vz_t[u]);
                    if (inval[u]) vs_t[u] = vz_t[u] = 0.f;
                }
            }
#pragma unroll
            for (int u = 0; u < 4; ++u)
                if (inval[u]) sv[u] = -INFINITY;
            float mx = fmaxf(fmaxf(sv[0], sv[1]), fmaxf(sv[2], sv[3]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mnew = fmaxf(m, mx);
            if (__any_sync(0xffffffffu, mnew > m)) {
                const float alpha = mnew == -INFINITY ? 1.f : ex2(m - mnew);
                l *= alpha;
                pz *= alpha;
                const float a0 = __shfl_sync(0xffffffffu, alpha, (2 * tig) * 4);
                const float a1 = __shfl_sync(0xffffffffu, alpha, (2 * tig + 1) * 4);
#pragma unroll
                for (int mt = 0; mt < NKS; ++mt) {
                    o[mt][0] *= a0;
                    o[mt][1] *= a1;
                    o[mt][2] *= a0;
                    o[mt][3] *= a1;
                }
                m = mnew;
            }
            const float ms = m == -INFINITY ? 0.f : m;
            float pv[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                pv[u] = ex2(sv[u] - ms);
                l += pv[u];
            }
            uint32_t pb0, pb1;
            if constexpr (FAST) {
#pragma unroll
                for (int u = 0; u < 4; ++u) pz = fmaf(pv[u], vz_t[u], pz);
                pb0 = pack_h2(pv[0] * (vs_t[0] * inv_sref), pv[1] * (vs_t[1] * inv_sref));
                pb1 = pack_h2(pv[2] * (vs_t[2] * inv_sref), pv[3] * (vs_t[3] * inv_sref));
            } else {
                pb0 = pack_h2(pv[0], pv[1]);
                pb1 = pack_h2(pv[2], pv[3]);
            }

            uint32_t vh[2][D / 8];
#pragma unroll
            for (int qq = 0; qq < 2; ++qq) {
                const int ra = t0 + 2 * tig + 8 * qq;
                uint32_t s2 = 0, z2 = 0;
                if constexpr (!FAST) {
                    float sa, za, sbb, zb;
                    load_meta(svb + meta_off(ra), gv, p.meta_f16, sa, za);
                    load_meta(svb + meta_off(ra + 1), gv, p.meta_f16, sbb, zb);
                    if (inval[2 * qq]) sa = za = 0.f;
                    if (inval[2 * qq + 1]) sbb = zb = 0.f;
                    s2 = pack_h2(sa, sbb);
                    z2 = pack_h2(za, zb);
                }
                constexpr int NWV = VR >= 4 ? VR / 4 : 1;
                uint32_t wa[NWV], wb[NWV];
                load_words<VR>(svb + code_off(ra) + gid * VR, wa);
                load_words<VR>(svb + code_off(ra + 1) + gid * VR, wb);
#pragma unroll
                for (int i = 0; i < NWV; ++i) {
#pragma unroll
                    for (int hp = 0; hp < (VR >= 4 ? 2 : 1); ++hp) {
                        const uint32_t r = prmt(wa[i], wb[i], hp ? 0x7632u : 0x5410u);
#pragma unroll
                        for (int bb = 0; bb < 2; ++bb) {
                            const uint32_t x = bb ? r >> 8 : r;
                            const int e0 = (4 * i + 2 * hp + bb) * P;
                            vh[qq][e0] = dqx<BITS, 0, FAST>(x, s2, z2);
                            if constexpr (P > 1) vh[qq][e0 + 1] = dqx<BITS, (P > 1 ? 1 : 0), FAST>(x, s2, z2);
                            if constexpr (P > 2) vh[qq][e0 + 2] = dqx<BITS, (P > 2 ? 2 : 0), FAST>(x, s2, z2);
                            if constexpr (P > 3) vh[qq][e0 + 3] = dqx<BITS, (P > 3 ? 3 : 0), FAST>(x, s2, z2);
                        }
                    }
                }
            }
#pragma unroll
            for (int mt = 0; mt < NKS; ++mt)
                mma16816(o[mt], vh[0][2 * mt], vh[0][2 * mt + 1], vh[1][2 * mt], vh[1][2 * mt + 1], pb0, pb1);
        }
    }
    cp_async_wait<0>();
    __syncthreads();

    // ---- per-warp partials to shared memory, then merge the warps of each head (rows of warp hl)
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    pz += __shfl_xor_sync(0xffffffffu, pz, 1);
    pz += __shfl_xor_sync(0xffffffffu, pz, 2);
    const float pz0 = __shfl_sync(0xffffffffu, pz, (2 * tig) * 4);
    const float pz1 = __shfl_sync(0xffffffffu, pz, (2 * tig + 1) * 4);
    float* red_o = reinterpret_cast<float*>(smem);  // [kPWarps][kGT][D]
    float* tmp = red_o + kPWarps * kGT * D;         // [kPWarps * kGT][D]
    float* red_m = tmp + kPWarps * kGT * D;          // [kPWarps][kGT]
    float* red_l = red_m + kPWarps * kGT;
    float* lse_s = red_l + kPWarps * kGT;
    if (active) {
#pragma unroll
        for (int mt = 0; mt < NKS; ++mt) {
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
                const int e = 2 * mt + rr;
                const int d = dmap(gid * VR + e / P, e % P, n, G);
                if constexpr (FAST) {
                    red_o[(warp * kGT + 2 * tig) * D + d] = fmaf(s_ref, o[mt][2 * rr], pz0);
                    red_o[(warp * kGT + 2 * tig + 1) * D + d] = fmaf(s_ref, o[mt][2 * rr + 1], pz1);
                } else {
                    red_o[(warp * kGT + 2 * tig) * D + d] = o[mt][2 * rr];
                    red_o[(warp * kGT + 2 * tig + 1) * D + d] = o[mt][2 * rr + 1];
                }
            }
        }
        if (tig == 0) {
            red_m[warp * kGT + gid] = m;
            red_l[warp * kGT + gid] = l;
        }
    }
    __syncthreads();
    const int nrows = kh * kGT;
    for (int idx = tid; idx < nrows * D; idx += kPThreads) {
        const int r = idx / D, d = idx % D;  // row r = head r / kGT (warp slot r / kGT, r % kGT)
        const int h = r / kGT, g = r % kGT;
        float M = -INFINITY;
        for (int w = h; w < kPWarps; w += khp) M = fmaxf(M, red_m[w * kGT + g]);
        const float Ms = M == -INFINITY ? 0.f : M;
        float L = 0.f, acc = 0.f;
        for (int w = h; w < kPWarps; w += khp) {
            const float wt = ex2(red_m[w * kGT + g] - Ms);
            L = fmaf(wt, red_l[w * kGT + g], L);
            acc = fmaf(wt, red_o[(w * kGT + g) * D + d], acc);
        }
        red_o[idx] = L > 0.f ? acc / L : 0.f;  // row r of warp slot h == idx (same element, same thread)
        if (d == 0) lse_s[r] = M + __log2f(L);
    }
    __syncthreads();
    const float* res = rotate_rows_h<D>(red_o, tmp, nrows, p.v_rot, p.v_mat, hb, true);
    const float vsc = p.v_rot == ATTN4J_ROTATION_HADAMARD ? rsqrtf(float(D)) : 1.f;
    for (int idx = tid; idx < nrows * D; idx += kPThreads) {
        const int r = idx / D, d = idx % D;
        const int h = r / kGT, g = r % kGT;
        if (g >= p.group) continue;
        const int qo = (hb + h) * p.group + g;
        const float val = res[idx] * vsc;
        if (p.num_chunks == 1) {
            store_elem(p.out, p.out_dtype, int64_t(b) * p.o_row + int64_t(qo) * p.o_head + d, val);
            if (d == 0 && p.lse) p.lse[int64_t(b) * p.lse_row + int64_t(qo) * p.lse_head] = lse_s[r] * kLn2;
        } else {
            const int64_t row = (int64_t(b) * p.num_chunks + c) * p.num_qo_heads + qo;
            p.ws_o[row * D + d] = val;
            if (d == 0) p.ws_lse[row] = lse_s[r];
        }
    }
}

// One CTA of 8 warps per (sequence, query head): LSE-weighted sum of the sequence's chunk
// partials; the warps take interleaved chunks (independent loads in flight) and are summed
// through shared memory.
__global__ void __launch_bounds__(256) qmerge_kernel(const QParams p) {
    __shared__ float4 part[8][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int b = blockIdx.x / p.num_qo_heads;
    const int qo = blockIdx.x - b * p.num_qo_heads;
    int per, used;
    chunk_geometry(p.indptr[b + 1] - p.indptr[b], p.num_chunks, p.min_chunk_pages, per, used);
    const int64_t row0 = int64_t(b) * p.num_chunks * p.num_qo_heads + qo;
    const int64_t rs = p.num_qo_heads;
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
    const int d = lane * 4;  // D <= 128
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (d < D) {
#pragma unroll 4
        for (int c = warp; c < used; c += 8) {
            const float wgt = ex2(p.ws_lse[row0 + c * rs] - M);
            const float4 v = *reinterpret_cast<const float4*>(p.ws_o + (row0 + c * rs) * D + d);
            acc.x = fmaf(wgt, v.x, acc.x);
            acc.y = fmaf(wgt, v.y, acc.y);
            acc.z = fmaf(wgt, v.z, acc.z);
            acc.w = fmaf(wgt, v.w, acc.w);
        }
    }
    part[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && d < D) {
#pragma unroll
        for (int w = 1; w < 8; ++w) {
            const float4 v = part[w][lane];
            acc.x += v.x;
            acc.y += v.y;
            acc.z += v.z;
            acc.w += v.w;
        }
        const int64_t o = int64_t(b) * p.o_row + int64_t(qo) * p.o_head + d;
        store_elem(p.out, p.out_dtype, o + 0, acc.x * inv);
        store_elem(p.out, p.out_dtype, o + 1, acc.y * inv);
        store_elem(p.out, p.out_dtype, o + 2, acc.z * inv);
        store_elem(p.out, p.out_dtype, o + 3, acc.w * inv);
    }
    if (threadIdx.x == 0 && p.lse) p.lse[int64_t(b) * p.lse_row + int64_t(qo) * p.lse_head] = (M + __log2f(L)) * kLn2;
}

using KernelFn = void (*)(QParams);

template <int D, bool FAST>
KernelFn pick_bits(int bits, int& smem) {
    if (bits == 8) {
        smem = Cfg<D, 8, FAST>::SMEM;
        return qdecode_kernel<D, 8, FAST>;
    }
    if (bits == 4) {
        smem = Cfg<D, 4, FAST>::SMEM;
        return qdecode_kernel<D, 4, FAST>;
    }
    smem = Cfg<D, 2, FAST>::SMEM;
    return qdecode_kernel<D, 2, FAST>;
}

template <int D, bool FAST>
KernelFn pick_pages(int bits, int& smem) {
    if (bits == 8) {
        smem = PCfg<D, 8, FAST>::SMEM;
        return qdecode_pages_kernel<D, 8, FAST>;
    }
    if (bits == 4) {
        smem = PCfg<D, 4, FAST>::SMEM;
        return qdecode_pages_kernel<D, 4, FAST>;
    }
    smem = PCfg<D, 2, FAST>::SMEM;
    return qdecode_pages_kernel<D, 2, FAST>;
}

[[noreturn]] void cuda_fail(cudaError_t e, const char* what) {
    (void)cudaGetLastError();
    fail(e == cudaErrorMemoryAllocation ? ATTN4J_ERR_OUT_OF_MEMORY : ATTN4J_ERR_DEVICE,
         std::string("CUDA quantized decode plan: ") + what + ": " + cudaGetErrorString(e));
}

int ilog2(int x) { return 31 - __builtin_clz(unsigned(x)); }

class CudaQuantDecode final : public DecodeKernel {
public:
    CudaQuantDecode(const attn4j_attention_desc& desc, int device, const DecodeTuning& tuning)
        : desc_(desc), device_(device), tuning_(tuning) {
        bits_ = quant_bits(desc.kv_dtype);
        const int group = desc.num_qo_heads / desc.num_kv_heads;
        head_tiles_ = (group + kGT - 1) / kGT;
        kernel_ = desc.head_dim == 128 ? pick_bits<128, false>(bits_, smem_) : pick_bits<64, false>(bits_, smem_);
        fast_ = desc.head_dim == 128 ? pick_bits<128, true>(bits_, fast_smem_) : pick_bits<64, true>(bits_, fast_smem_);
        pkernel_ = desc.head_dim == 128 ? pick_pages<128, false>(bits_, psmem_) : pick_pages<64, false>(bits_, psmem_);
        pfast_ = desc.head_dim == 128 ? pick_pages<128, true>(bits_, pfast_smem_) : pick_pages<64, true>(bits_, pfast_smem_);
        // ATTN4J_CUDA_QDECODE (comma-separated words, for benchmarks and tests): generic: always
        // the generic kernel (any group size); copy_only: stream pages only (bandwidth
        // diagnostics, wrong output); old: the previous per-kv-head layout only.
        if (const char* env = std::getenv("ATTN4J_CUDA_QDECODE")) {
            generic_only_ = std::strstr(env, "generic") != nullptr;
            copy_only_ = std::strstr(env, "copy_only") != nullptr;
            old_only_ = std::strstr(env, "old") != nullptr;
        }
        // page-major kernel: up to 8 query heads per kv head (one warp per kv head) and a
        // power-of-two page size (checked per run); else the per-kv-head kernel.
        pages_ok_ = !old_only_ && group <= kGT;
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
        if ((e = cudaFuncSetAttribute(kernel_, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_)) != cudaSuccess ||
            (e = cudaFuncSetAttribute(fast_, cudaFuncAttributeMaxDynamicSharedMemorySize, fast_smem_)) != cudaSuccess ||
            (e = cudaFuncSetAttribute(pkernel_, cudaFuncAttributeMaxDynamicSharedMemorySize, psmem_)) != cudaSuccess ||
            (e = cudaFuncSetAttribute(pfast_, cudaFuncAttributeMaxDynamicSharedMemorySize, pfast_smem_)) != cudaSuccess)
            cuda_fail(e, "cudaFuncSetAttribute");
        occ_ = tuning.ctas_per_sm;
        if (occ_ <= 0) {  // split planning follows the kernel of the common case (one group per token)
            e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ_, generic_only_ ? kernel_ : fast_, kThreads,
                                                              size_t(generic_only_ ? smem_ : fast_smem_));
            if (e != cudaSuccess) cuda_fail(e, "occupancy");
            occ_ = std::max(occ_, 1);
        }
        pocc_ = tuning.ctas_per_sm;
        if (pocc_ <= 0) {
            e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&pocc_, generic_only_ ? pkernel_ : pfast_, kPThreads,
                                                              size_t(generic_only_ ? psmem_ : pfast_smem_));
            if (e != cudaSuccess) cuda_fail(e, "occupancy");
            pocc_ = std::max(pocc_, 1);
        }
        int64_t rows = 0;
        for (int b = 1; b <= desc.max_batch_size; ++b) {
            for (const bool pg : {false, true}) {
                if (pg && !pages_ok_) continue;
                const int nc = chunks_for(b, pg);
                if (nc > 1) rows = std::max<int64_t>(rows, int64_t(b) * nc);
            }
        }
        rows *= desc.num_qo_heads;
        ws_bytes_ = size_t(rows) * (size_t(desc.head_dim) + 1) * sizeof(float);
        if (ws_bytes_) {
            if ((e = cudaMalloc(&ws_, ws_bytes_)) != cudaSuccess) cuda_fail(e, "workspace cudaMalloc");
            ws_lse_offset_ = size_t(rows) * desc.head_dim;
        }
        snprintf(name_, sizeof name_, "cuda-sm%d-int%d", prop.major * 10 + prop.minor, bits_);
    }
    ~CudaQuantDecode() override {
        if (ws_) {
            int prev = 0;
            cudaGetDevice(&prev);
            cudaSetDevice(device_);
            cudaFree(ws_);
            cudaSetDevice(prev);
        }
    }

    // Split count of the kernel runs take for a power-of-two page size (the page-major one when
    // pages_ok_).
    int num_chunks(int batch) const override { return chunks_for(batch, pages_ok_); }
    int chunks_for(int batch, bool pages) const {
        if (tuning_.force_chunks > 0) return tuning_.force_chunks;
        const int64_t units = pages ? int64_t(batch) * ((desc_.num_kv_heads + kPWarps - 1) / kPWarps)
                                    : int64_t(batch) * desc_.num_kv_heads * head_tiles_;
        const int64_t target = int64_t(sms_) * (pages ? pocc_ : occ_);
        const int64_t nc = (target + units / 2) / units;
        return int(std::clamp<int64_t>(nc, 1, 65535));
    }
    size_t workspace_bytes() const override { return ws_bytes_; }
    const char* path_name() const override { return name_; }

    cudaError_t run(const DecodeArgs& a, cudaStream_t stream) override {
        const int batch = a.table.batch;
        const QuantFormat& f = a.kv.quant;
        const int D = desc_.head_dim;
        if (batch <= 0 || batch > desc_.max_batch_size) return cudaErrorInvalidValue;
        if (f.bits != bits_ || f.head_dim != D || a.kv.head_dim != D) return cudaErrorInvalidValue;
        if ((f.group_size != 32 && f.group_size != 64 && f.group_size != 128) || D % f.group_size != 0)
            return cudaErrorInvalidValue;
        if (f.meta_dtype != ATTN4J_DTYPE_F32 && f.meta_dtype != ATTN4J_DTYPE_F16) return cudaErrorInvalidValue;
        const auto rot_ok = [](const RotationView& r) {
            return r.kind == ATTN4J_ROTATION_NONE || r.kind == ATTN4J_ROTATION_HADAMARD ||
                   (r.kind == ATTN4J_ROTATION_MATRIX && r.matrix != nullptr);
        };
        if (!rot_ok(a.kv.k_rot) || !rot_ok(a.kv.v_rot)) return cudaErrorInvalidValue;
        const uintptr_t kv_or = reinterpret_cast<uintptr_t>(a.kv.k) | reinterpret_cast<uintptr_t>(a.kv.v);
        if (kv_or & 3) return cudaErrorMisalignedAddress;

        QParams p{};
        p.q = a.q.data;
        p.q_row = a.q.row_stride;
        p.q_head = a.q.head_stride;
        p.q_dtype = a.q.dtype;
        p.out = a.out.data;
        p.o_row = a.out.row_stride;
        p.o_head = a.out.head_stride;
        p.out_dtype = a.out.dtype;
        p.lse = a.lse.data;
        p.lse_row = a.lse.row_stride;
        p.lse_head = a.lse.head_stride;
        p.k = static_cast<const uint8_t*>(a.kv.k);
        p.v = static_cast<const uint8_t*>(a.kv.v);
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
        const bool pow2 = (a.kv.page_size & (a.kv.page_size - 1)) == 0;
        const bool use_pages = pages_ok_ && pow2;
        p.num_chunks = chunks_for(batch, use_pages);
        p.min_chunk_pages = tuning_.force_chunks > 0
                                ? 1
                                : std::max(1, ((use_pages ? tuning_.min_chunk_tokens / 4 : tuning_.min_chunk_tokens) +
                                               a.kv.page_size - 1) / a.kv.page_size);
        p.ws_o = static_cast<float*>(ws_);
        p.ws_lse = ws_ ? static_cast<float*>(ws_) + ws_lse_offset_ : nullptr;
        p.head_dim = D;
        p.G = f.group_size;
        p.n = f.group_code_bytes();
        p.meta_f16 = f.meta_dtype == ATTN4J_DTYPE_F16;
        p.MB = f.meta_bytes();
        p.mb_shift = ilog2(p.MB / 4);
        p.page_stride = a.kv.page_stride_bytes();
        p.head_stride = a.kv.head_stride_bytes();
        p.meta_off = int64_t(a.kv.page_size) * f.code_bytes();
        p.vec16 = (kv_or & 15) == 0 && p.head_stride % 16 == 0;
        p.meta8 = (kv_or & 7) == 0 && p.head_stride % 8 == 0 && p.meta_off % 8 == 0 && p.MB % 8 == 0;
        p.k_rot = a.kv.k_rot.kind;
        p.v_rot = a.kv.v_rot.kind;
        p.k_mat = a.kv.k_rot.kind == ATTN4J_ROTATION_MATRIX ? a.kv.k_rot.matrix : nullptr;
        p.v_mat = a.kv.v_rot.kind == ATTN4J_ROTATION_MATRIX ? a.kv.v_rot.matrix : nullptr;
        p.copy_only = copy_only_;
        const bool fast = f.group_size == D && !generic_only_;

        if (use_pages) {
            const dim3 grid(unsigned(p.num_chunks), unsigned((desc_.num_kv_heads + kPWarps - 1) / kPWarps),
                            unsigned(batch));
            if (fast) pfast_<<<grid, kPThreads, size_t(pfast_smem_), stream>>>(p);
            else pkernel_<<<grid, kPThreads, size_t(psmem_), stream>>>(p);
        } else {
            const dim3 grid(unsigned(p.num_chunks), unsigned(desc_.num_kv_heads * head_tiles_), unsigned(batch));
            if (fast) fast_<<<grid, kThreads, size_t(fast_smem_), stream>>>(p);
            else kernel_<<<grid, kThreads, size_t(smem_), stream>>>(p);
        }
        if (p.num_chunks > 1) {
            qmerge_kernel<<<unsigned(batch * desc_.num_qo_heads), 256, 0, stream>>>(p);
        }
        return cudaGetLastError();
    }

private:
    attn4j_attention_desc desc_;
    int device_;
    DecodeTuning tuning_;
    int bits_ = 0, head_tiles_ = 1, smem_ = 0, fast_smem_ = 0, sms_ = 1, occ_ = 1;
    bool generic_only_ = false, old_only_ = false, pages_ok_ = false;
    int copy_only_ = 0;
    int psmem_ = 0, pfast_smem_ = 0, pocc_ = 1;
    KernelFn pkernel_ = nullptr;  // page-major, any group size
    KernelFn pfast_ = nullptr;    // page-major, one group per token
    KernelFn kernel_ = nullptr;  // any group size
    KernelFn fast_ = nullptr;    // one group per token
    void* ws_ = nullptr;
    size_t ws_bytes_ = 0, ws_lse_offset_ = 0;
    char name_[40] = "cuda";
};

}  // namespace

bool quant_decode_supported(const attn4j_attention_desc& d) {
    const auto fl = [](attn4j_dtype t) {
        return t == ATTN4J_DTYPE_F32 || t == ATTN4J_DTYPE_F16 || t == ATTN4J_DTYPE_BF16;
    };
    return (d.head_dim == 64 || d.head_dim == 128) && quant_bits(d.kv_dtype) != 0 && fl(d.q_dtype) &&
           fl(d.out_dtype) && d.num_kv_heads > 0 && d.num_qo_heads % d.num_kv_heads == 0;
}

std::unique_ptr<DecodeKernel> make_quant_decode_kernel(const attn4j_attention_desc& desc, int device_id,
                                                       const DecodeTuning& tuning) {
    if (!quant_decode_supported(desc))
        fail(ATTN4J_ERR_UNSUPPORTED, "CUDA quantized decode: needs head_dim 64 or 128 and INT8/INT4/INT2 KV (got head_dim " +
                                         std::to_string(desc.head_dim) + ")");
    return std::make_unique<CudaQuantDecode>(desc, device_id, tuning);
}

}  // namespace attn4j::cuda
