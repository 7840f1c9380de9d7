// The decode chunk kernel, written once over a SIMD "Ops" policy (AVX-512: 16 lanes, AVX2: 8,
// scalar: 1) and instantiated by each decode_<isa>.cpp, which is compiled with that ISA's flags.
// Include only from those files.
//
// Per block of W keys (W = Ops::W lanes; the block may cross pages):
//   K phase: for each key, W-lane partial dot products with every query of the group tile (K row
//            converted to F32 once, queries read from L1), stored as W vectors per query, then
//            reduced with a transpose tree to one vector of W scores (no per-key horizontal sum).
//   softmax: one max and one sum per block and query (online softmax, base 2: q is pre-scaled by
//            sm_scale * log2(e)), vectorised exp2.
//   V phase: for each W-float slice of head_dim, the group tile's accumulators stay in registers
//            while the block's V rows are streamed.
// Rows Ops::kPrefetchBlocks blocks ahead are software-prefetched (pages are scattered), one
// burst of line prefetches per block. Further ahead (Ops::kTriggerBlocks), only the first
// Ops::kTriggerLines lines of each contiguous run of K and V rows are prefetched: a few line-fill
// buffers start the L2 hardware streamer on that run early, so the later burst mostly hits L2
// instead of holding every fill buffer for a full DRAM latency (measured +7-13% from DRAM).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu/decode_chunk.h"

namespace attn4j::cpu::decode_impl {

template <class Ops, int DT, int HD>
struct ChunkKernel {
    using V = typename Ops::V;
    static constexpr int W = Ops::W;
    using KvT = std::conditional_t<DT == ATTN4J_DTYPE_F32, float, uint16_t>;
    static constexpr int kPrefetchBlocks = Ops::kPrefetchBlocks;

    struct Cursor {
        const int32_t* page;
        int32_t slot;
        int64_t left;  // tokens left in the chunk
    };

    // Fills off[0..n) with the byte offsets of the next n <= W rows; returns n.
    static inline int next_block(Cursor& c, int32_t page_size, int64_t page_stride, int64_t row_bytes,
                                 int64_t* off) {
        const int n = c.left < W ? int(c.left) : W;
        for (int j = 0; j < n; ++j) {
            off[j] = int64_t(*c.page) * page_stride + int64_t(c.slot) * row_bytes;
            if (++c.slot == page_size) {
                c.slot = 0;
                ++c.page;
            }
        }
        c.left -= n;
        return n;
    }

    // Prefetches the rows of the next block of the look-ahead cursor (K and V).
    // max_bytes: prefetch at most that many bytes of each contiguous run of rows.
    static inline void prefetch_block(Cursor& c, int32_t page_size, int64_t page_stride, int64_t row_bytes,
                                      const char* kb, const char* vb, int64_t max_bytes = INT64_MAX) {
        if (c.left <= 0) return;
        const int n = c.left < W ? int(c.left) : W;
        // Rows inside one page are contiguous: prefetch runs of lines.
        int j = 0;
        while (j < n) {
            const int run = std::min<int64_t>(n - j, page_size - c.slot);
            const int64_t start = int64_t(*c.page) * page_stride + int64_t(c.slot) * row_bytes;
            const int64_t bytes = std::min<int64_t>(max_bytes, int64_t(run) * row_bytes);
            for (int64_t b = 0; b < bytes; b += 64) {
                __builtin_prefetch(kb + start + b, 0, Ops::kPrefetchLocality);
                __builtin_prefetch(vb + start + b, 0, Ops::kPrefetchLocality);
            }
            j += run;
            c.slot += run;
            if (c.slot == page_size) {
                c.slot = 0;
                ++c.page;
            }
        }
        c.left -= n;
    }

    // BF16 rows with a head_dim of whole 2W blocks are widened 2W at a time without shuffles:
    // shift gives the even elements, mask the odd ones. q and o are kept in that permuted order
    // ([even W | odd W] per 2W block) for the whole chunk.
    static constexpr bool kPaired = DT == ATTN4J_DTYPE_BF16 && HD != 0 && HD % (2 * W) == 0;
    static_assert(HD == 0 || (HD / W) % 2 == 0, "fixed head_dim must be whole 2W blocks");

    static inline void load2(const KvT* row, int c, V& k0, V& k1) {
        if constexpr (kPaired) {
            Ops::load_bf16_pair(row + c * W, k0, k1);
        } else {
            k0 = Ops::template load_kv<DT>(row + c * W);
            k1 = Ops::template load_kv<DT>(row + (c + 1) * W);
        }
    }

    static void permute_pairs(float* x, int hd, bool inverse) {
        float tmp[2 * kDecodeMaxLanes];
        for (int b = 0; b < hd; b += 2 * W) {
            for (int i = 0; i < 2 * W; ++i) tmp[i] = x[b + i];
            for (int i = 0; i < W; ++i) {
                if (!inverse) {
                    x[b + i] = tmp[2 * i];
                    x[b + W + i] = tmp[2 * i + 1];
                } else {
                    x[b + 2 * i] = tmp[i];
                    x[b + 2 * i + 1] = tmp[W + i];
                }
            }
        }
    }

    // Keys per step in the fixed-head_dim K phase: share each q load among KJ keys.
    template <int GN>
    static constexpr int keys_per_step() {
        return (4 * GN + 8 + 2 <= Ops::kRegs) ? 4 : (2 * GN + 4 + 2 <= Ops::kRegs) ? 2 : 1;
    }

    template <int GN, int KJ>
    static inline void kstep(const char* kb, const int64_t* off, int j, const float* q, float* sacc) {
        constexpr int kNc = HD / W;
        const KvT* rows[KJ];
        for (int r = 0; r < KJ; ++r) rows[r] = reinterpret_cast<const KvT*>(kb + off[j + r]);
        V acc[KJ][GN];
        for (int r = 0; r < KJ; ++r)
            for (int g = 0; g < GN; ++g) acc[r][g] = Ops::zero();
#pragma GCC unroll 8
        for (int c = 0; c < kNc; c += 2) {
            V k0[KJ], k1[KJ];
            for (int r = 0; r < KJ; ++r) load2(rows[r], c, k0[r], k1[r]);
            for (int g = 0; g < GN; ++g) {
                const V q0 = Ops::load(q + g * HD + c * W), q1 = Ops::load(q + g * HD + (c + 1) * W);
                for (int r = 0; r < KJ; ++r) {
                    acc[r][g] = Ops::fma(q0, k0[r], acc[r][g]);
                    acc[r][g] = Ops::fma(q1, k1[r], acc[r][g]);
                }
            }
        }
        for (int r = 0; r < KJ; ++r)
            for (int g = 0; g < GN; ++g) Ops::store(sacc + (g * W + j + r) * W, acc[r][g]);
    }

    template <int GN>
    static inline void kphase(const char* kb, const int64_t* off, int n, const float* q, int hd,
                              float* sacc) {
        if constexpr (HD != 0) {
            constexpr int KJ = keys_per_step<GN>();
            int j = 0;
            for (; j + KJ <= n; j += KJ) kstep<GN, KJ>(kb, off, j, q, sacc);
            for (; j < n; ++j) kstep<GN, 1>(kb, off, j, q, sacc);
            return;
        }
        const int nc = hd / W;
        for (int j = 0; j < n; ++j) {
            const KvT* row = reinterpret_cast<const KvT*>(kb + off[j]);
            V acc[GN];
            for (int g = 0; g < GN; ++g) acc[g] = Ops::zero();
            for (int c = 0; c < nc; ++c) {
                const V k = Ops::template load_kv<DT>(row + c * W);
                for (int g = 0; g < GN; ++g)
                    acc[g] = Ops::fma(Ops::load(q + g * hd + c * W), k, acc[g]);
            }
            for (int g = 0; g < GN; ++g) Ops::store(sacc + (g * W + j) * W, acc[g]);
        }
    }

    template <int GN>
    static inline void vphase(const char* vb, const int64_t* off, int n, const float* p,
                              const float* alpha, float* o, int hd) {
        if constexpr (HD != 0) {
            // CS W-slices of head_dim per pass (CS * GN accumulators in registers): each broadcast
            // p feeds CS * GN FMAs and CS * GN independent chains hide the FMA latency.
            constexpr int CS = (4 * GN + 4 + 4 <= Ops::kRegs && (HD / W) % 4 == 0) ? 4 : 2;
            for (int c = 0; c < HD / W; c += CS) {
                V a[CS][GN];
                for (int g = 0; g < GN; ++g) {
                    const V al = Ops::set1(alpha[g]);
                    for (int t = 0; t < CS; ++t) a[t][g] = Ops::mul(Ops::load(o + g * HD + (c + t) * W), al);
                }
                for (int j = 0; j < n; ++j) {
                    V v[CS];
                    const KvT* row = reinterpret_cast<const KvT*>(vb + off[j]);
                    for (int t = 0; t < CS; t += 2) load2(row, c + t, v[t], v[t + 1]);
                    for (int g = 0; g < GN; ++g) {
                        const V pb = Ops::set1(p[g * W + j]);
                        for (int t = 0; t < CS; ++t) a[t][g] = Ops::fma(pb, v[t], a[t][g]);
                    }
                }
                for (int g = 0; g < GN; ++g)
                    for (int t = 0; t < CS; ++t) Ops::store(o + g * HD + (c + t) * W, a[t][g]);
            }
            return;
        }
        const int hd_ = hd;
        const int nc = hd_ / W;
        for (int c = 0; c < nc; ++c) {
            V acc[GN];
            for (int g = 0; g < GN; ++g)
                acc[g] = Ops::mul(Ops::load(o + g * hd_ + c * W), Ops::set1(alpha[g]));
            int j = 0;
            if constexpr (GN <= 4) {
                // Two accumulator sets to halve the FMA dependency chain.
                V acc2[GN];
                for (int g = 0; g < GN; ++g) acc2[g] = Ops::zero();
                for (; j + 1 < n; j += 2) {
                    const V v0 = Ops::template load_kv<DT>(reinterpret_cast<const KvT*>(vb + off[j]) + c * W);
                    const V v1 = Ops::template load_kv<DT>(reinterpret_cast<const KvT*>(vb + off[j + 1]) + c * W);
                    for (int g = 0; g < GN; ++g) {
                        acc[g] = Ops::fma(Ops::set1(p[g * W + j]), v0, acc[g]);
                        acc2[g] = Ops::fma(Ops::set1(p[g * W + j + 1]), v1, acc2[g]);
                    }
                }
                for (int g = 0; g < GN; ++g) acc[g] = Ops::add(acc[g], acc2[g]);
            }
            for (; j < n; ++j) {
                const V v = Ops::template load_kv<DT>(reinterpret_cast<const KvT*>(vb + off[j]) + c * W);
                for (int g = 0; g < GN; ++g) acc[g] = Ops::fma(Ops::set1(p[g * W + j]), v, acc[g]);
            }
            for (int g = 0; g < GN; ++g) Ops::store(o + g * hd_ + c * W, acc[g]);
        }
    }

    // Scores of one group tile -> online softmax update; probabilities to s.p.
    template <int GN>
    static inline void tile(const DecodeChunk& ch, int g0, const int64_t* off, int n) {
        DecodeScratch& s = *ch.scratch;
        const int hd = HD ? HD : ch.head_dim;
        kphase<GN>(ch.k_base, off, n, s.q + int64_t(g0) * hd, hd, s.sacc);
        for (int gi = 0; gi < GN; ++gi) {
            const int g = g0 + gi;
            V sc = Ops::reduce_rows(s.sacc + gi * W * W);
            sc = Ops::mask_neg_inf(sc, n);
            const float mx = Ops::hmax(sc);
            const float m_old = s.m[g];
            const float m_new = mx > m_old ? mx : m_old;
            const float alpha = Ops::exp2_scalar(m_old - m_new);
            V p = Ops::exp2(Ops::sub(sc, Ops::set1(m_new)));
            p = Ops::mask_zero(p, n);
            s.l[g] = s.l[g] * double(alpha) + double(Ops::hsum(p));
            s.m[g] = m_new;
            s.alpha[g] = alpha;
            Ops::store(s.p + g * W, p);
        }
        vphase<GN>(ch.v_base, off, n, s.p + g0 * W, s.alpha + g0, s.o + int64_t(g0) * hd, hd);
    }

    static void run(const DecodeChunk& ch) {
        DecodeScratch& s = *ch.scratch;
        const int hd = HD ? HD : ch.head_dim;
        const int group = ch.group;
        const int64_t row_bytes = int64_t(hd) * sizeof(KvT);
        for (int64_t i = 0; i < int64_t(group) * hd; ++i) s.o[i] = 0.f;
        for (int g = 0; g < group; ++g) {
            s.m[g] = -INFINITY;
            s.l[g] = 0.f;
        }
        for (int i = 0; i < kDecodeMaxGroupTile * W * W; ++i) s.sacc[i] = 0.f;
        if constexpr (kPaired)
            for (int g = 0; g < group; ++g) permute_pairs(s.q + int64_t(g) * hd, hd, false);

        Cursor cur{ch.pages, 0, ch.num_tokens};
        Cursor pf{ch.pages, 0, ch.num_tokens};
        // Skip the first block (it is being loaded now) and prefetch the next ones.
        {
            int64_t tmp[kDecodeMaxLanes];
            next_block(pf, ch.page_size, ch.page_stride_bytes, row_bytes, tmp);
            for (int b = 0; b + 1 < kPrefetchBlocks; ++b)
                prefetch_block(pf, ch.page_size, ch.page_stride_bytes, row_bytes, ch.k_base, ch.v_base);
        }
        // Streamer triggers: first lines of each run, kTriggerBlocks blocks ahead.
        constexpr int kTriggerBlocks = Ops::kTriggerBlocks;
        constexpr int64_t kTriggerBytes = int64_t(Ops::kTriggerLines) * 64;
        Cursor tr{ch.pages, 0, ch.num_tokens};
        if constexpr (kTriggerBlocks > 0) {
            int64_t tmp[kDecodeMaxLanes];
            next_block(tr, ch.page_size, ch.page_stride_bytes, row_bytes, tmp);
            for (int b = 0; b + 1 < kTriggerBlocks; ++b)
                prefetch_block(tr, ch.page_size, ch.page_stride_bytes, row_bytes, ch.k_base, ch.v_base, kTriggerBytes);
        }
        int64_t* off = s.off;
        while (cur.left > 0) {
            const int n = next_block(cur, ch.page_size, ch.page_stride_bytes, row_bytes, off);
            if constexpr (kTriggerBlocks > 0)
                prefetch_block(tr, ch.page_size, ch.page_stride_bytes, row_bytes, ch.k_base, ch.v_base, kTriggerBytes);
            // Rows kPrefetchBlocks blocks ahead, issued as one burst per block (measured better
            // than spreading them over the K phase, and than 128-byte strides).
            if constexpr (kPrefetchBlocks > 0)
                prefetch_block(pf, ch.page_size, ch.page_stride_bytes, row_bytes, ch.k_base, ch.v_base);
            int g0 = 0;
            while (g0 < group) {
                const int left = group - g0;
                if (left >= 8) {
                    tile<8>(ch, g0, off, n);
                    g0 += 8;
                } else if (left >= 4) {
                    tile<4>(ch, g0, off, n);
                    g0 += 4;
                } else if (left >= 2) {
                    tile<2>(ch, g0, off, n);
                    g0 += 2;
                } else {
                    tile<1>(ch, g0, off, n);
                    g0 += 1;
                }
            }
        }
        for (int g = 0; g < group; ++g) {
            const float inv = float(1.0 / s.l[g]);
            float* o = s.o + int64_t(g) * hd;
            for (int c = 0; c < hd / W; ++c) Ops::store(o + c * W, Ops::mul(Ops::load(o + c * W), Ops::set1(inv)));
            if constexpr (kPaired) permute_pairs(o, hd, true);
            ch.lse2[g] = float(double(s.m[g]) + std::log2(s.l[g]));
        }
    }
};

template <class Ops, int DT>
inline void dispatch_head_dim(const DecodeChunk& c) {
    switch (c.head_dim) {
        case 64: ChunkKernel<Ops, DT, 64>::run(c); break;
        case 128: ChunkKernel<Ops, DT, 128>::run(c); break;
        default: ChunkKernel<Ops, DT, 0>::run(c); break;
    }
}

template <class Ops>
inline void dispatch_chunk(const DecodeChunk& c) {
    switch (c.kv_dtype) {
        case ATTN4J_DTYPE_F32: dispatch_head_dim<Ops, ATTN4J_DTYPE_F32>(c); break;
        case ATTN4J_DTYPE_F16: dispatch_head_dim<Ops, ATTN4J_DTYPE_F16>(c); break;
        default: dispatch_head_dim<Ops, ATTN4J_DTYPE_BF16>(c); break;
    }
}

// Taylor coefficients of 2^f = e^(f ln 2), |f| <= 0.5: truncation error < 6e-9 relative.
constexpr float kExp2C1 = 0.6931471805599453f;
constexpr float kExp2C2 = 0.2402265069591007f;
constexpr float kExp2C3 = 0.05550410866482158f;
constexpr float kExp2C4 = 0.009618129107628477f;
constexpr float kExp2C5 = 0.0013333558146428443f;
constexpr float kExp2C6 = 0.00015403530393381606f;
constexpr float kExp2C7 = 1.525273380405984e-05f;

}  // namespace attn4j::cpu::decode_impl
