// CUDA paged decode over quantized KV pages (see decode_quant.cuh). Two kernels share the math:
// qdecode_kernel (the default: one CTA per kv head) and qdecode_pages_kernel (page-major, 8 warps,
// described at its definition; ATTN4J_CUDA_QDECODE=pages). The per-kv-head kernel measured as
// fast or faster for every format on an H200 (INT8 129.9 vs 164.0 us, INT4 106.7 vs 117.5, INT2
// 101.3 vs 100.8 at 1 x 128k; INT8 207.5 vs 282.6, INT4 168.3 vs 198.4, INT2 155.9 vs 166.4 at
// 64 x 4k: benchmarks/results/h200/cuda-quant-decode.txt), so it is the default.
// Per CTA of 4 warps of qdecode_kernel:
//  - one (sequence, kv head, tile of up to 8 query heads, chunk of whole pages);
//  - a stage of 64 tokens (K codes, V codes, K meta, V meta of each token) is copied into shared
//    memory with cp.async (16-byte copies for codes when the page geometry allows, else 4-byte);
//    the pipeline is STAGES deep with one block barrier per stage;
//  - each warp takes 16 tokens of the stage. Scores S^T = K Q^T are mma.m16n8k16 with M = the 16
//    tokens (dequantized K as A), N = 8 query heads, K = 16 head-dim values: one mma per 16
//    head-dim values and no zero rows (S = Q K^T with the heads as M took two, half of them
//    zeros: 3-8% slower, H200, benchmarks/results/h200/cuda-quant-decode-prologue.txt). P.V is
//    O^T = V^T P^T with M = 16 head-dim values, N = 8 heads, K = 16 tokens; movmatrix transposes
//    the C fragment of P (tokens x heads) into the B fragment of P^T;
//  - codes become f16 with the exponent trick: (word & plane mask) | magic gives 2^e + code in
//    each half (planar packing: plane k of a byte holds value j + k n), then (h - 2^e) * s + z.
//    The head-dim order inside an mma is permuted to follow the bytes a thread holds (the query
//    fragment and the output rows are permuted to match), and every thread's bytes of a token lie
//    in one quantization group, so each half2 needs one {scale, zero};
//  - online softmax in base 2 in f32 (slice_math, shared by both kernels);
//  - prologue and epilogue are per warp (warp_query / warp_epilogue, shared): each warp loads its
//    8 query rows into registers (all loads in flight), rotates them (q R_k: in-register FWHT with
//    xor shuffles, or the matrix), scales them and builds its f16 fragments with no block barrier;
//    at the end the warps' partials go through shared memory, the first warp of each head merges
//    them (one block barrier, none when a head has one warp), normalises and rotates the rows
//    back (o = õ R_v^T) before writing, so the LSE merge of chunks stays the plain one (rotation
//    is linear and merge weights sum to 1).
#include "cuda/decode_quant.cuh"

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
#include "cuda/decode_common.cuh"
#include "cuda/mma.cuh"
#include "cuda/dependent_launch.cuh"

namespace attn4j::cuda {
namespace {

using namespace detail;

constexpr int kThreads = 128;
constexpr int kWarps = 4;
constexpr int kTT = 64;  // tokens per stage (16 per warp)
constexpr int kGT = 8;   // query heads per CTA (qdecode_kernel) / per kv head (qdecode_pages_kernel)
// Page ids of a chunk kept in shared memory by qdecode_kernel (1 KB: a 4096-token chunk at page
// size 16); longer page lists are read from global memory per copy.
constexpr int kQPidCache = 256;

struct QParams : DecodeParamsBase {
    const uint8_t* k;
    const uint8_t* v;
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
    uint32_t opaque_zero;  // always 0, unknown to the compiler (see magic2)
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
    static constexpr int EPI = (kWarps * kGT * D + 2 * kWarps * kGT) * 4;  // also holds the query rows
    static constexpr int MAIN = PIPE > EPI ? PIPE : EPI;
    static constexpr int SMEM = MAIN + kQPidCache * 4;  // + the chunk's page ids
};

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

// f16x2 magic of plane K: 2^(10 - K * BITS) in each half. `zero` is a runtime 0
// (QParams::opaque_zero) that keeps the magic in a register: then (x & mask) | magic is one LOP3;
// with mask and magic both immediates ptxas emits two (64 extra instructions per INT2 slice).
template <int BITS, int K>
__device__ __forceinline__ uint32_t magic2(uint32_t zero) {
    constexpr uint32_t m = uint32_t(25 - K * BITS) << 10;
    return (m | (m << 16)) | zero;
}
// Codes of plane K in bytes 0 and 2 of x as the f16 values magic + code.
template <int BITS, int K>
__device__ __forceinline__ uint32_t plane_bits(uint32_t x, uint32_t mg2) {
    constexpr uint32_t mask = ((1u << BITS) - 1u) << (K * BITS);
    constexpr uint32_t m2 = mask | (mask << 16);
    uint32_t h;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(h) : "r"(x), "n"(m2), "r"(mg2));  // (x & m2) | mg2
    return h;
}
// Codes of plane K in bytes 0 and 2 of x -> f16x2: exact code values (FAST) or code * s + z.
template <int BITS, int K, bool FAST>
__device__ __forceinline__ uint32_t dqx(uint32_t x, uint32_t mg2, uint32_t s2, uint32_t z2) {
    const uint32_t c = hsub2(plane_bits<BITS, K>(x, mg2), mg2);
    if constexpr (FAST) return c;
    else return hfma2(c, s2, z2);
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

template <int U>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem, bool valid) {
    if constexpr (U == 16) cp_async16(smem, gmem, valid);
    else if constexpr (U == 8) cp_async8(smem, gmem, valid);
    else cp_async4(smem, gmem, valid);
}
__host__ __device__ constexpr int ilog2c(int x) { return x <= 1 ? 0 : 1 + ilog2c(x / 2); }

// Head-dim index of plane k of code byte `beta` of a token (planar packing, n bytes per group).
__device__ __forceinline__ int dmap(int beta, int k, int n, int G) { return (beta / n) * G + beta % n + k * n; }

// FAST: V's reference scale (first token of the chunk) that keeps P * s in the f16 normal range.
__device__ __forceinline__ void fast_ref_scale(const QParams& p, int kvh, int page0, float& s_ref, float& inv_sref) {
    const uint8_t* m0 = p.v + int64_t(kvh) * p.head_stride + int64_t(page0) * p.page_stride + p.meta_off;
    const float sr = p.meta_f16 ? __half2float(*reinterpret_cast<const __half*>(m0)) : *reinterpret_cast<const float*>(m0);
    s_ref = 1.f;
    inv_sref = 1.f;
    if (sr > 0.f && sr < 3.0e38f) {
        s_ref = sr;
        inv_sref = 1.f / sr;
    }
}

// ---- one warp's rows: kGT rows of D values, lane holds d = lane * E + e (E = D / 32).

// In-warp fast Walsh-Hadamard transform of each row (unnormalised): strides < E in registers,
// the others with xor shuffles.
template <int D>
__device__ __forceinline__ void warp_fwht(float (&x)[kGT][D / 32], int lane) {
    constexpr int E = D / 32;
#pragma unroll
    for (int len = 1; len < E; len <<= 1) {
#pragma unroll
        for (int r = 0; r < kGT; ++r) {
#pragma unroll
            for (int e = 0; e < E; ++e) {
                if ((e & len) == 0) {
                    const float a = x[r][e], b = x[r][e + len];
                    x[r][e] = a + b;
                    x[r][e + len] = a - b;
                }
            }
        }
    }
#pragma unroll
    for (int m = 1; m < 32; m <<= 1) {
        const bool hi = (lane & m) != 0;
#pragma unroll
        for (int r = 0; r < kGT; ++r) {
#pragma unroll
            for (int e = 0; e < E; ++e) {
                const float o = __shfl_xor_sync(0xffffffffu, x[r][e], m);
                x[r][e] = hi ? o - x[r][e] : x[r][e] + o;
            }
        }
    }
}

// x = rows xs[kGT][D] (this warp's shared rows) times R (inverse: times R^T).
template <int D>
__device__ __forceinline__ void warp_matmul(const float* xs, const float* R, bool inverse, float (&x)[kGT][D / 32],
                                            int lane) {
    constexpr int E = D / 32;
#pragma unroll
    for (int e = 0; e < E; ++e) {
        const int j = lane * E + e;
        float acc[kGT];
#pragma unroll
        for (int r = 0; r < kGT; ++r) acc[r] = 0.f;
        for (int i = 0; i < D; ++i) {
            const float rv = inverse ? __ldg(R + j * D + i) : __ldg(R + i * D + j);
#pragma unroll
            for (int r = 0; r < kGT; ++r) acc[r] = fmaf(xs[r * D + i], rv, acc[r]);
        }
#pragma unroll
        for (int r = 0; r < kGT; ++r) x[r][e] = acc[r];
    }
}

// Query prologue of one warp, no block barrier: query heads g0 + r (r < kGT) of kv head kvh are
// loaded into registers (every load issued before any use), rotated by R_k, scaled, and staged in
// the warp's shared rows qs[kGT][D] to build the f16 B fragments of the score mma (the kGT heads
// as N) in the head-dim order of the code bytes; FAST: qsum[j] = sum of row 2 tig + j's f16 query values.
template <int D, int P, int KR, bool FAST>
__device__ __forceinline__ void warp_query(const QParams& p, int b, int kvh, int g0, bool active, float* qs,
                                           uint32_t (&qa)[D / 16][2], float (&qsum)[2]) {
    constexpr int E = D / 32;
    const int lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    float x[kGT][E];
#pragma unroll
    for (int r = 0; r < kGT; ++r) {
        const int gh = g0 + r;
        const bool ok = active && gh < p.group;
        const int64_t base = int64_t(b) * p.q_row + int64_t(kvh * p.group + gh) * p.q_head + lane * E;
#pragma unroll
        for (int e = 0; e < E; ++e) x[r][e] = ok ? load_elem(p.q, p.q_dtype, base + e) : 0.f;
    }
    float sc = p.scale_log2;
    if (p.k_rot == ATTN4J_ROTATION_HADAMARD) {
        warp_fwht<D>(x, lane);
        sc *= rsqrtf(float(D));
    } else if (p.k_rot == ATTN4J_ROTATION_MATRIX) {
#pragma unroll
        for (int r = 0; r < kGT; ++r)
#pragma unroll
            for (int e = 0; e < E; ++e) qs[r * D + lane * E + e] = x[r][e];
        __syncwarp();
        warp_matmul<D>(qs, p.k_mat + int64_t(kvh) * D * D, false, x, lane);
        __syncwarp();
    }
#pragma unroll
    for (int r = 0; r < kGT; ++r) {
        float t = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            x[r][e] *= sc;
            qs[r * D + lane * E + e] = x[r][e];
            if constexpr (FAST) t += __half2float(__float2half_rn(x[r][e]));
        }
        if constexpr (FAST) {
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) t += __shfl_xor_sync(0xffffffffu, t, off);
            if (r == 2 * tig) qsum[0] = t;
            if (r == 2 * tig + 1) qsum[1] = t;
        }
    }
    __syncwarp();
    const int n = p.n, G = p.G;
    const float* row = qs + gid * D;
#pragma unroll
    for (int s = 0; s < D / 16; ++s) {
        const int i = s / P, k = s % P;
        const int B = tig * KR + 4 * i;
        qa[s][0] = pack_h2(row[dmap(B + 0, k, n, G)], row[dmap(B + 2, k, n, G)]);
        qa[s][1] = pack_h2(row[dmap(B + 1, k, n, G)], row[dmap(B + 3, k, n, G)]);
    }
}

// Online-softmax state of one warp: o[mt][0..1] = (d of e = 2 mt, heads 2 tig, 2 tig + 1),
// [2..3]: e = 2 mt + 1; m[j], l[j], pz[j] of head 2 tig + j (l, pz: this lane's tokens only).
template <int D>
struct WarpState {
    float o[D / 16][4];
    float m[2], l[2], pz[2];
    __device__ __forceinline__ void init() {
#pragma unroll
        for (int mt = 0; mt < D / 16; ++mt) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.f;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            m[j] = -INFINITY;
            l[j] = 0.f;
            pz[j] = 0.f;
        }
    }
};

// The math of one 16-token slice of one warp (tokens tok0 + r, r < 16; kcode / kmeta / vcode /
// vmeta(r): shared-memory rows of token r). Scores S^T[tokens gid, gid + 8][heads 2 tig + j] by
// one mma per 16 head-dim values with the dequantized K codes as A (M = the 16 tokens) and the
// query as B (N = 8 heads: no zero rows), online softmax per head over the tokens (lanes of one
// tig), P^T to the B operand of the values' mma with movmatrix, then O^T += V^T P^T. Tokens >=
// chunk_len are masked (their V meta zeroed: the page data past the sequence end may be anything).
template <int D, int BITS, bool FAST, class KC, class KM, class VC, class VM>
__device__ __forceinline__ void slice_math(WarpState<D>& st, const uint32_t (&qa)[D / 16][2], const float (&qsum)[2],
                                           float inv_sref, int tok0, int chunk_len, int meta_f16, uint32_t zero,
                                           int gk, int gv, KC kcode, KM kmeta, VC vcode, VM vmeta) {
    constexpr int CB = D * BITS / 8, P = 8 / BITS, KR = CB / 4, VR = CB / 8, NKS = D / 16;
    const int lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const uint32_t mg[4] = {magic2<BITS, 0>(zero), magic2<BITS, (P > 1 ? 1 : 0)>(zero),
                            magic2<BITS, (P > 2 ? 2 : 0)>(zero), magic2<BITS, (P > 3 ? 3 : 0)>(zero)};
    // ---- keys: rows gid (rr = 0) and gid + 8 (rr = 1) of the slice
    uint32_t w[2][KR / 4], ks2[2] = {0u, 0u}, kz2[2] = {0u, 0u};
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int row = gid + 8 * rr;
        if constexpr (!FAST) {
            float s, z;
            load_meta(kmeta(row), gk, meta_f16, s, z);
            ks2[rr] = pack_h2(s, s);
            kz2[rr] = pack_h2(z, z);
        }
        load_words<KR>(kcode(row) + tig * KR, w[rr]);
    }
    float sacc[4] = {0.f, 0.f, 0.f, 0.f};  // [rr * 2 + j]: token gid + 8 rr, head 2 tig + j
#pragma unroll
    for (int i = 0; i < KR / 4; ++i) {
        const uint32_t x00 = w[0][i], x01 = w[0][i] >> 8, x10 = w[1][i], x11 = w[1][i] >> 8;
#pragma unroll
        for (int k = 0; k < P; ++k) {
            uint32_t a0, a1, a2, a3;
            if (k == 0) {
                a0 = dqx<BITS, 0, FAST>(x00, mg[0], ks2[0], kz2[0]); a2 = dqx<BITS, 0, FAST>(x01, mg[0], ks2[0], kz2[0]);
                a1 = dqx<BITS, 0, FAST>(x10, mg[0], ks2[1], kz2[1]); a3 = dqx<BITS, 0, FAST>(x11, mg[0], ks2[1], kz2[1]);
            } else if (k == 1) {
                constexpr int K = P > 1 ? 1 : 0;
                a0 = dqx<BITS, K, FAST>(x00, mg[1], ks2[0], kz2[0]); a2 = dqx<BITS, K, FAST>(x01, mg[1], ks2[0], kz2[0]);
                a1 = dqx<BITS, K, FAST>(x10, mg[1], ks2[1], kz2[1]); a3 = dqx<BITS, K, FAST>(x11, mg[1], ks2[1], kz2[1]);
            } else if (k == 2) {
                constexpr int K = P > 2 ? 2 : 0;
                a0 = dqx<BITS, K, FAST>(x00, mg[2], ks2[0], kz2[0]); a2 = dqx<BITS, K, FAST>(x01, mg[2], ks2[0], kz2[0]);
                a1 = dqx<BITS, K, FAST>(x10, mg[2], ks2[1], kz2[1]); a3 = dqx<BITS, K, FAST>(x11, mg[2], ks2[1], kz2[1]);
            } else {
                constexpr int K = P > 3 ? 3 : 0;
                a0 = dqx<BITS, K, FAST>(x00, mg[3], ks2[0], kz2[0]); a2 = dqx<BITS, K, FAST>(x01, mg[3], ks2[0], kz2[0]);
                a1 = dqx<BITS, K, FAST>(x10, mg[3], ks2[1], kz2[1]); a3 = dqx<BITS, K, FAST>(x11, mg[3], ks2[1], kz2[1]);
            }
            mma16816(sacc, a0, a1, a2, a3, qa[i * P + k][0], qa[i * P + k][1]);
        }
    }
    bool inval[2];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) inval[rr] = tok0 + gid + 8 * rr >= chunk_len;
    float vs_t[2] = {1.f, 1.f}, vz_t[2] = {0.f, 0.f};  // FAST: V {scale, zero} of tokens gid, gid + 8
    if constexpr (FAST) {
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const int r = gid + 8 * rr;
            float s, z;
            load_meta(kmeta(r), 0, meta_f16, s, z);
            sacc[2 * rr] = fmaf(s, sacc[2 * rr], z * qsum[0]);
            sacc[2 * rr + 1] = fmaf(s, sacc[2 * rr + 1], z * qsum[1]);
            load_meta(vmeta(r), 0, meta_f16, vs_t[rr], vz_t[rr]);
            if (inval[rr]) vs_t[rr] = vz_t[rr] = 0.f;
        }
    }
#pragma unroll
    for (int rr = 0; rr < 2; ++rr)
        if (inval[rr]) sacc[2 * rr] = sacc[2 * rr + 1] = -INFINITY;
    // ---- online softmax per head 2 tig + j over the 16 tokens (the 8 lanes of this tig)
    float mnew[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        float mx = fmaxf(sacc[j], sacc[2 + j]);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
        mnew[j] = fmaxf(st.m[j], mx);
    }
    if (__any_sync(0xffffffffu, mnew[0] > st.m[0] || mnew[1] > st.m[1])) {
        float alpha[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            alpha[j] = mnew[j] == -INFINITY ? 1.f : ex2(st.m[j] - mnew[j]);
            st.l[j] *= alpha[j];
            st.pz[j] *= alpha[j];
            st.m[j] = mnew[j];
        }
#pragma unroll
        for (int mt = 0; mt < NKS; ++mt) {
            st.o[mt][0] *= alpha[0];
            st.o[mt][1] *= alpha[1];
            st.o[mt][2] *= alpha[0];
            st.o[mt][3] *= alpha[1];
        }
    }
    float pv[4];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const float ms = st.m[j] == -INFINITY ? 0.f : st.m[j];
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            pv[2 * rr + j] = ex2(sacc[2 * rr + j] - ms);
            st.l[j] += pv[2 * rr + j];
            if constexpr (FAST) st.pz[j] = fmaf(pv[2 * rr + j], vz_t[rr], st.pz[j]);
        }
    }
    // P (tokens x heads, C layout) -> P^T as the B operand (tokens 2 tig.. of head gid)
    uint32_t pb0, pb1;
    if constexpr (FAST) {
        const float f0 = vs_t[0] * inv_sref, f1 = vs_t[1] * inv_sref;
        pb0 = movmatrix_t(pack_h2(pv[0] * f0, pv[1] * f0));
        pb1 = movmatrix_t(pack_h2(pv[2] * f1, pv[3] * f1));
    } else {
        pb0 = movmatrix_t(pack_h2(pv[0], pv[1]));
        pb1 = movmatrix_t(pack_h2(pv[2], pv[3]));
    }

    // ---- values: A fragments of V^T from token pairs (2 tig, 2 tig + 1), (+8, +9)
    uint32_t vh[2][D / 8];
#pragma unroll
    for (int qq = 0; qq < 2; ++qq) {
        const int ra = 2 * tig + 8 * qq;
        uint32_t s2 = 0, z2 = 0;
        if constexpr (!FAST) {
            float sa, za, sbb, zb;
            load_meta(vmeta(ra), gv, meta_f16, sa, za);
            load_meta(vmeta(ra + 1), gv, meta_f16, sbb, zb);
            if (tok0 + ra >= chunk_len) sa = za = 0.f;
            if (tok0 + ra + 1 >= chunk_len) sbb = zb = 0.f;
            s2 = pack_h2(sa, sbb);
            z2 = pack_h2(za, zb);
        }
        constexpr int NWV = VR >= 4 ? VR / 4 : 1;
        uint32_t wa[NWV], wb[NWV];
        load_words<VR>(vcode(ra) + gid * VR, wa);
        load_words<VR>(vcode(ra + 1) + gid * VR, wb);
#pragma unroll
        for (int i = 0; i < NWV; ++i) {
#pragma unroll
            for (int hp = 0; hp < (VR >= 4 ? 2 : 1); ++hp) {
                const uint32_t r = prmt(wa[i], wb[i], hp ? 0x7632u : 0x5410u);
#pragma unroll
                for (int bb = 0; bb < 2; ++bb) {
                    const uint32_t x = bb ? r >> 8 : r;
                    const int e0 = (4 * i + 2 * hp + bb) * P;
                    vh[qq][e0] = dqx<BITS, 0, FAST>(x, mg[0], s2, z2);
                    if constexpr (P > 1) vh[qq][e0 + 1] = dqx<BITS, (P > 1 ? 1 : 0), FAST>(x, mg[1], s2, z2);
                    if constexpr (P > 2) vh[qq][e0 + 2] = dqx<BITS, (P > 2 ? 2 : 0), FAST>(x, mg[2], s2, z2);
                    if constexpr (P > 3) vh[qq][e0 + 3] = dqx<BITS, (P > 3 ? 3 : 0), FAST>(x, mg[3], s2, z2);
                }
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < NKS; ++mt)
        mma16816(st.o[mt], vh[0][2 * mt], vh[0][2 * mt + 1], vh[1][2 * mt], vh[1][2 * mt + 1], pb0, pb1);
}

// Epilogue. Every active warp writes its partial (o, m, l of query heads g0 + r of kv head kvh)
// to its slot of red_o [warps][kGT][D] / red_m / red_l [warps][kGT]; warp slot hl (the first of
// the wph warps hl + i * khp of its head) merges them, normalises, rotates back by R_v
// (o = õ R_v^T, linear, so the LSE merge of chunks stays the plain one) and emits the rows. With
// one warp per head (wph == 1) no block barrier is taken. Called by every thread of the CTA.
template <int D, int P, int VR, bool FAST>
__device__ __forceinline__ void warp_epilogue(const QParams& p, int b, int c, int kvh, int g0, bool active, int hl,
                                              int khp, int wph, float* red_o, float* red_m, float* red_l,
                                              WarpState<D>& st, float s_ref, bool bad) {
    constexpr int E = D / 32;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const int n = p.n, G = p.G;
    // l, pz of heads 2 tig + j over the slice's 16 token rows (the 8 lanes of this tig)
    float l[2], pz[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        l[j] = st.l[j];
        pz[j] = st.pz[j];
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) {
            l[j] += __shfl_xor_sync(0xffffffffu, l[j], off);
            pz[j] += __shfl_xor_sync(0xffffffffu, pz[j], off);
        }
    }
    // FAST: o = s_ref * (sum P' c) + sum p z, per column head 2 tig + {0, 1}
    const float pz0 = pz[0], pz1 = pz[1];
    if (active) {
        float* slot = red_o + warp * kGT * D;
#pragma unroll
        for (int mt = 0; mt < D / 16; ++mt) {
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
                const int e = 2 * mt + rr;
                const int d = dmap(gid * VR + e / P, e % P, n, G);
                if constexpr (FAST) {
                    slot[(2 * tig) * D + d] = fmaf(s_ref, st.o[mt][2 * rr], pz0);
                    slot[(2 * tig + 1) * D + d] = fmaf(s_ref, st.o[mt][2 * rr + 1], pz1);
                } else {
                    slot[(2 * tig) * D + d] = st.o[mt][2 * rr];
                    slot[(2 * tig + 1) * D + d] = st.o[mt][2 * rr + 1];
                }
            }
        }
        if (gid == 0) {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                red_m[warp * kGT + 2 * tig + j] = st.m[j];
                red_l[warp * kGT + 2 * tig + j] = l[j];
            }
        }
    }
    if (wph > 1) __syncthreads();  // CTA-uniform
    else __syncwarp();
    if (!active || warp != hl) return;
    float x[kGT][E], lse2[kGT];
#pragma unroll
    for (int r = 0; r < kGT; ++r) {
        float M = -INFINITY;
        for (int i = 0; i < wph; ++i) M = fmaxf(M, red_m[(hl + i * khp) * kGT + r]);
        const float Ms = M == -INFINITY ? 0.f : M;
        float L = 0.f, acc[E];
#pragma unroll
        for (int e = 0; e < E; ++e) acc[e] = 0.f;
        for (int i = 0; i < wph; ++i) {
            const int w = hl + i * khp;
            const float wt = ex2(red_m[w * kGT + r] - Ms);
            L = fmaf(wt, red_l[w * kGT + r], L);
#pragma unroll
            for (int e = 0; e < E; ++e) acc[e] = fmaf(wt, red_o[(w * kGT + r) * D + lane * E + e], acc[e]);
        }
#pragma unroll
        for (int e = 0; e < E; ++e) x[r][e] = L > 0.f ? acc[e] / L : 0.f;
        lse2[r] = M + __log2f(L);
    }
    float vsc = 1.f;
    if (p.v_rot == ATTN4J_ROTATION_HADAMARD) {
        warp_fwht<D>(x, lane);
        vsc = rsqrtf(float(D));
    } else if (p.v_rot == ATTN4J_ROTATION_MATRIX) {
        float* slot = red_o + warp * kGT * D;  // read by this warp alone
        __syncwarp();
#pragma unroll
        for (int r = 0; r < kGT; ++r)
#pragma unroll
            for (int e = 0; e < E; ++e) slot[r * D + lane * E + e] = x[r][e];
        __syncwarp();
        warp_matmul<D>(slot, p.v_mat + int64_t(kvh) * D * D, true, x, lane);
    }
#pragma unroll
    for (int r = 0; r < kGT; ++r) {
        const int gh = g0 + r;
        if (gh >= p.group) break;
        const int qo = kvh * p.group + gh;
#pragma unroll
        for (int e = 0; e < E; ++e)
            emit_result(p, b, c, qo, lane * E + e, bad ? NAN : x[r][e] * vsc, bad ? NAN : lse2[r], lane == 0 && e == 0);
    }
}

// FAST (one quantization group per token, G == head_dim): the mma operands are the exact codes;
// K's {scale, zero} are applied to the f32 scores (s * (q.c) + z * sum(q)), V's scale multiplies
// P (relative to a per-CTA reference scale, to keep P * s in the f16 normal range) and V's zero
// adds z * sum(p) to the output, so the per-element dequantize FMA disappears.
template <int D, int BITS, bool FAST>
__global__ void __launch_bounds__(kThreads) qdecode_kernel(const QParams p) {
    using C = Cfg<D, BITS, FAST>;
    constexpr int CB = C::CB, P = C::P, KR = C::KR, VR = C::VR, STAGES = C::STAGES;
    extern __shared__ __align__(16) unsigned char smem[];

    const int c = blockIdx.x;
    const int kvh = blockIdx.y / p.num_head_tiles;
    const int tile = blockIdx.y - kvh * p.num_head_tiles;
    const int b = blockIdx.z;
    const int h0 = tile * kGT;
    const int beg = p.indptr[b], end = p.indptr[b + 1], last = p.last_page_len[b];
    const bool empty = sequence_empty(p, beg, end, last);
    if (empty || !sequence_table_ok(p, b, beg, end, last)) {
        if (c == 0) write_fixed_rows(p, b, kvh * p.group + h0, min(kGT, p.group - h0), D, !empty);
        return;
    }
    ChunkSpan span;
    if (!chunk_span(p, c, beg, end, last, span)) return;
    const int ps = p.page_size;
    const int chunk_len = span.len;
    const int* pages = span.pages;
    bool bad_page = false;

    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
    const int n = p.n;

    uint32_t qa[D / 16][2];
    float qsum[2] = {0.f, 0.f};  // FAST: sums of heads 2 tig, 2 tig + 1's f16 query
    float s_ref = 1.f, inv_sref = 1.f;
    if constexpr (FAST) fast_ref_scale(p, kvh, checked_page_id(pages[0], p.num_pages, bad_page), s_ref, inv_sref);
    warp_query<D, P, KR, FAST>(p, b, kvh, h0, true, reinterpret_cast<float*>(smem) + warp * kGT * D, qa, qsum);
    // The chunk's page ids are checked once, here, not per copy (a bad one: no page is read, NaN
    // rows), and kept in shared memory so that a stage's copies wait on no global load.
    int* pid_s = reinterpret_cast<int*>(smem + C::MAIN);
    const bool pid_cached = span.npages <= kQPidCache;
    for (int i = tid; i < span.npages; i += kThreads) {
        const int id = checked_page_id(__ldg(pages + i), p.num_pages, bad_page);
        if (pid_cached) pid_s[i] = id;
    }
    const bool bad = __syncthreads_or(bad_page);  // smem becomes the pipeline, page ids visible
    const uint8_t* kb = p.k + int64_t(kvh) * p.head_stride;
    const uint8_t* vb = p.v + int64_t(kvh) * p.head_stride;
    const int MB = p.MB;

    // the copies of one stage, units of U bytes: unit u = piece u & (2^ush - 1) of token row
    // u >> ush (row_bytes per token, at src_off + slot * row_bytes in the page); tokens past the
    // chunk are zero-filled
    auto copy_rows = [&](auto u_bytes, uint8_t* kd, uint8_t* vd, int j0, int nu, int ush, int row_bytes,
                         int64_t src_off) {
        constexpr int U = decltype(u_bytes)::value;
        for (int u = tid; u < nu; u += kThreads) {
            const int t = u >> ush, piece = u & ((1 << ush) - 1);
            const int j = j0 + t;
            const bool valid = j < chunk_len;
            int64_t off = 0;
            if (valid) {
                const int pi = p.page_shift >= 0 ? j >> p.page_shift : j / ps;
                const int slot = j - pi * ps;
                const int pid = pid_cached ? pid_s[pi] : __ldg(pages + pi);
                off = int64_t(pid) * p.page_stride + src_off + int64_t(slot) * row_bytes + piece * U;
            }
            cp_async<U>(kd + t * row_bytes + piece * U, kb + off, valid);
            cp_async<U>(vd + t * row_bytes + piece * U, vb + off, valid);
        }
    };
    auto issue = [&](int it, int s) {
        unsigned char* sb = smem + s * C::STAGE_BYTES;
        uint8_t* kc = sb;
        uint8_t* vc = sb + kTT * CB;
        uint8_t* km = vc + kTT * CB;
        uint8_t* vm = km + kTT * C::MBMAX;
        const int j0 = it * kTT;
        constexpr int L16 = CB >= 16 ? ilog2c(CB / 16) : 0, L4 = ilog2c(CB / 4);
        if (p.vec16) copy_rows(std::integral_constant<int, 16>{}, kc, vc, j0, kTT << L16, L16, CB, 0);
        else copy_rows(std::integral_constant<int, 4>{}, kc, vc, j0, kTT << L4, L4, CB, 0);
        if (p.meta8)
            copy_rows(std::integral_constant<int, 8>{}, km, vm, j0, kTT * MB / 8, p.mb_shift - 1, MB, p.meta_off);
        else
            copy_rows(std::integral_constant<int, 4>{}, km, vm, j0, kTT * MB / 4, p.mb_shift, MB, p.meta_off);
    };

    const int ntiles = bad ? 0 : (chunk_len + kTT - 1) / kTT;
    // Not unrolled: each unrolled copy of issue() is about 2k instructions (four copy variants);
    // eight of them were a 17k-instruction prologue that missed the instruction cache (about 20% of
    // the INT2 kernel's stall samples at 1 x 128k under ncu).
#pragma unroll 1
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ntiles) issue(s, s);
        cp_async_commit();
    }

    WarpState<D> st;
    st.init();
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
        slice_math<D, BITS, FAST>(
            st, qa, qsum, inv_sref, tok0, chunk_len, p.meta_f16, p.opaque_zero, gk, gv, [&](int r) { return kc + r * CB; },
            [&](int r) { return km + r * MB; }, [&](int r) { return vc + r * CB; }, [&](int r) { return vm + r * MB; });
    }
    cp_async_wait<0>();
    __syncthreads();
    allow_dependent_launch();  // the merge kernel may become resident now (it waits for this grid)
    float* red_o = reinterpret_cast<float*>(smem);
    warp_epilogue<D, P, VR, FAST>(p, b, c, kvh, h0, true, 0, 1, kWarps, red_o, red_o + kWarps * kGT * D,
                                  red_o + kWarps * kGT * D + kWarps * kGT, st, s_ref, bad);
    if (bad && tid == 0) report_bad_page(p, b, pages, span.npages);
}

// ---------------------------------------------------------------------------------------------
// Page-major kernel: one CTA of 8 warps = (sequence, tile of up to 8 kv heads, chunk of pages).
// A stage holds TT tokens of ALL the tile's kv heads: for each sub-block of q = min(page_size, TT)
// tokens and each head, the q code rows then the q meta rows, copied verbatim from the page (so
// one page of the tile is one contiguous region of kh blocks in global memory, read at once).
// Warp w serves head w % khp (khp = kh rounded up to a power of two; warps of heads >= kh idle
// in the math) and the 16-token slices w / khp + i * (8 / khp) of the stage, i < SPW; warps of
// one head are merged at the end (warp_epilogue). The per-slice math is the one above.
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
    static constexpr int EPI = (kPWarps * kGT * D + 2 * kPWarps * kGT) * 4;  // also holds the query rows
    static constexpr int MAIN = PIPE > EPI ? PIPE : EPI;
    static constexpr int SMEM = MAIN + kPidCache * 4;  // + the chunk's page ids
};

template <int D, int BITS, bool FAST>
__global__ void __launch_bounds__(kPThreads, 2) qdecode_pages_kernel(const QParams p) {
    using C = PCfg<D, BITS, FAST>;
    constexpr int CB = C::CB, P = C::P, KR = C::KR, VR = C::VR, STAGES = C::STAGES, SPW = C::SPW;
    extern __shared__ __align__(16) unsigned char smem[];

    const int c = blockIdx.x;
    const int hb = blockIdx.y * kPWarps;
    const int b = blockIdx.z;
    const int kh = min(kPWarps, p.num_kv_heads - hb);
    const int khp = kh > 4 ? 8 : kh > 2 ? 4 : kh;  // 1, 2, 4, 8
    const int wph = kPWarps / khp;                 // warps per head
    const int TT = 16 * SPW * wph;                 // tokens per stage

    const int beg = p.indptr[b], end = p.indptr[b + 1], last = p.last_page_len[b];
    const bool empty = sequence_empty(p, beg, end, last);
    if (empty || !sequence_table_ok(p, b, beg, end, last)) {
        if (c == 0) write_fixed_rows(p, b, hb * p.group, kh * p.group, D, !empty);
        return;
    }
    ChunkSpan span;
    if (!chunk_span(p, c, beg, end, last, span)) return;
    const int ps = p.page_size;
    const int chunk_len = span.len;
    const int* pages = span.pages;
    bool bad_page = false;

    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
    const int hl = warp % khp, wr = warp / khp;
    // the chunk's page ids, read once (visible after the query prologue's barrier): the copies of a
    // stage then wait on no global load
    int* pid_s = reinterpret_cast<int*>(smem + C::MAIN);
    const bool pid_cached = span.npages <= kPidCache;
    // checked once, here, not per copy; a bad one: no page is read, NaN rows
    for (int i = tid; i < span.npages; i += kPThreads) {
        const int id = checked_page_id(__ldg(pages + i), p.num_pages, bad_page);
        if (pid_cached) pid_s[i] = id;
    }
    const bool active = hl < kh;
    const int kvh = hb + (active ? hl : 0);
    const int n = p.n, MB = p.MB;
    // sub-blocks: q tokens of one head (q a power of two)
    const int q = min(ps, TT);
    const int qs = p.page_shift < 0 ? 0 : min(p.page_shift, 31 - __clz(TT));
    const int qcb = q * CB;
    const int PB = q * (CB + MB);

    uint32_t qa[D / 16][2];
    float qsum[2] = {0.f, 0.f};
    float s_ref = 1.f, inv_sref = 1.f;
    if constexpr (FAST) fast_ref_scale(p, kvh, checked_page_id(pages[0], p.num_pages, bad_page), s_ref, inv_sref);
    // per-warp query rows (the warps of one head each build their own copy: no block barrier)
    warp_query<D, P, KR, FAST>(p, b, kvh, 0, active, reinterpret_cast<float*>(smem) + warp * kGT * D, qa, qsum);
    const bool bad = __syncthreads_or(bad_page);  // page ids visible; smem becomes the pipeline

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

    const int ntiles = bad ? 0 : (chunk_len + TT - 1) / TT;
#pragma unroll 1  // as in qdecode_kernel: one copy of issue() for the fill
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ntiles) issue(s, s);
        cp_async_commit();
    }

    WarpState<D> st;
    st.init();
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
            // byte offset (within a K/V half) of token t's codes / meta
            auto code_off = [&](int r) { const int t = t0 + r; return ((t >> qs) * kh + hl) * qcb + (t & qmask) * CB; };
            auto meta_off = [&](int r) {
                const int t = t0 + r;
                return codes_total + ((t >> qs) * kh + hl) * qmb + (t & qmask) * MB;
            };
            slice_math<D, BITS, FAST>(
                st, qa, qsum, inv_sref, tok0, chunk_len, p.meta_f16, p.opaque_zero, gk, gv, [&](int r) { return sk + code_off(r); },
                [&](int r) { return sk + meta_off(r); }, [&](int r) { return svb + code_off(r); },
                [&](int r) { return svb + meta_off(r); });
        }
    }
    cp_async_wait<0>();
    __syncthreads();
    allow_dependent_launch();
    float* red_o = reinterpret_cast<float*>(smem);
    warp_epilogue<D, P, VR, FAST>(p, b, c, kvh, 0, active, hl, khp, wph, red_o, red_o + kPWarps * kGT * D,
                                  red_o + kPWarps * kGT * D + kPWarps * kGT, st, s_ref, bad);
    if (bad && tid == 0) report_bad_page(p, b, pages, span.npages);
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

constexpr const char* kPlan = "CUDA quantized decode plan";

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
        // diagnostics, wrong output); pages: the page-major kernel where it applies (group <= 8,
        // power-of-two pages); old: the per-kv-head kernel even if pages is given.
        if (const char* env = std::getenv("ATTN4J_CUDA_QDECODE")) {
            generic_only_ = std::strstr(env, "generic") != nullptr;
            copy_only_ = std::strstr(env, "copy_only") != nullptr;
            old_only_ = std::strstr(env, "old") != nullptr;
            pages_requested_ = std::strstr(env, "pages") != nullptr;
        }
        // page-major kernel: up to 8 query heads per kv head (one warp per kv head) and a
        // power-of-two page size (checked per run); else the per-kv-head kernel.
        pages_ok_ = pages_requested_ && !old_only_ && group <= kGT;
        if (desc.max_batch_size > 65535) fail(ATTN4J_ERR_UNSUPPORTED, "CUDA decode: max_batch_size > 65535");
        DeviceScope scope(device, kPlan);
        cudaError_t e;
        cudaDeviceProp prop{};
        if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) cuda_fail(e, kPlan, "properties");
        sms_ = prop.multiProcessorCount;
        dependent_merge_ = tuning.dependent_merge && dependent_launch_enabled(prop.major);
        if ((e = cudaFuncSetAttribute(kernel_, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_)) != cudaSuccess ||
            (e = cudaFuncSetAttribute(fast_, cudaFuncAttributeMaxDynamicSharedMemorySize, fast_smem_)) != cudaSuccess ||
            (e = cudaFuncSetAttribute(pkernel_, cudaFuncAttributeMaxDynamicSharedMemorySize, psmem_)) != cudaSuccess ||
            (e = cudaFuncSetAttribute(pfast_, cudaFuncAttributeMaxDynamicSharedMemorySize, pfast_smem_)) != cudaSuccess)
            cuda_fail(e, kPlan, "cudaFuncSetAttribute");
        occ_ = tuning.ctas_per_sm;
        if (occ_ <= 0) {  // split planning follows the kernel of the common case (one group per token)
            e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ_, generic_only_ ? kernel_ : fast_, kThreads,
                                                              size_t(generic_only_ ? smem_ : fast_smem_));
            if (e != cudaSuccess) cuda_fail(e, kPlan, "occupancy");
            occ_ = std::max(occ_, 1);
        }
        pocc_ = tuning.ctas_per_sm;
        if (pocc_ <= 0) {
            e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&pocc_, generic_only_ ? pkernel_ : pfast_, kPThreads,
                                                              size_t(generic_only_ ? psmem_ : pfast_smem_));
            if (e != cudaSuccess) cuda_fail(e, kPlan, "occupancy");
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
            if ((e = cudaMalloc(&ws_, ws_bytes_)) != cudaSuccess) cuda_fail(e, kPlan, "workspace cudaMalloc");
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
        const int64_t units = pages ? int64_t(batch) * ((desc_.num_kv_heads + kPWarps - 1) / kPWarps)
                                    : int64_t(batch) * desc_.num_kv_heads * head_tiles_;
        return split_chunks(units, int64_t(sms_) * (pages ? pocc_ : occ_), tuning_.force_chunks);
    }
    size_t workspace_bytes() const override { return ws_bytes_; }
    const char* path_name() const override { return name_; }

    cudaError_t run(const DecodeArgs& a, cudaStream_t stream, const TableCheck& check) override {
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

        const bool pow2 = (a.kv.page_size & (a.kv.page_size - 1)) == 0;
        const bool use_pages = pages_ok_ && pow2;
        QParams p{};
        fill_common(p, a, check, head_tiles_, chunks_for(batch, use_pages),
                    use_pages ? tuning_.min_chunk_tokens / 4 : tuning_.min_chunk_tokens, tuning_.force_chunks > 0,
                    static_cast<float*>(ws_), ws_lse_offset_, D);
        p.k = static_cast<const uint8_t*>(a.kv.k);
        p.v = static_cast<const uint8_t*>(a.kv.v);
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
            const cudaError_t e = launch_dependent(dependent_merge_, merge_kernel<1, 8>,
                                                   dim3(unsigned(batch * desc_.num_qo_heads)), dim3(256), 0, stream,
                                                   static_cast<const DecodeParamsBase&>(p));
            if (e != cudaSuccess) return e;
        }
        return cudaGetLastError();
    }

private:
    attn4j_attention_desc desc_;
    int device_;
    DecodeTuning tuning_;
    int bits_ = 0, head_tiles_ = 1, smem_ = 0, fast_smem_ = 0, sms_ = 1, occ_ = 1;
    bool generic_only_ = false, old_only_ = false, pages_requested_ = false, pages_ok_ = false;
    int copy_only_ = 0;
    bool dependent_merge_ = false;  // merge kernel as a dependent launch (cuda/dependent_launch.cuh)
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
