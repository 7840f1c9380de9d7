// Fused decode chunk kernels over INT8 / INT4 / INT2 pages (decode_quant.h), written once over a
// SIMD "Ops" policy and instantiated by decode_quant_<isa>.cpp (compiled with that ISA's flags).
// Include only from those files; everything here lives in the includer's policy types, so the
// instantiations of different ISAs never share a symbol.
//
// Two kernels:
//  * GenericKernel<Ops>: any format / head_dim (multiple of G, <= 256) / page_size; float math on
//    codes decoded one token at a time into an L1 row (double accumulators). The scalar path, and
//    the fallback of the SIMD paths for shapes the fast kernel does not take.
//  * FastKernel<Ops, BITS, HD> (head_dim 64 / 128 / 256): blocks of 16 tokens (two vectors of 8;
//    a block may cross pages; with page_size % 16 == 0 offsets are affine and meta is loaded in
//    one go), head tiles of 1/2/4 query heads; the integer K phase of a block is one fully
//    unrolled Ops call per tile (kblock_i8 / kblock_i16, group bytes a template argument):
//      K phase: integer dot products per (token, head, K group) when a 32-byte run of codes lies
//               in one group (n = G*bits/8 >= 32): INT4/INT2 by vpmaddubsw on the shifted+masked
//               code bytes with q as s8 (|q| <= 127, per-group symmetric scale, reordered once
//               into the planar order) PLUS an s8 residual of q (127x finer), so
//               q.c = sq/127 * (127 * q_int.c + q_res.c) is ~14-bit accurate; INT8 by vpmaddwd on
//               zero-extended codes with q as s16 (|q| <= 16383). A mid-code correction
//               mid * sum_j (q_j - sq q_int_j) removes the mean of the rounding error against
//               the uncentred codes. Other formats (INT4 G=32, INT2 G<=64): float FMAs on codes
//               widened 8 at a time. Partial vectors are transposed-reduced per 8 tokens.
//               score = sum_g sq_g * scale_g * I_g + zero_g * sum(q_g) + scale_g * corr_g.
//      softmax: online, base 2, per block. A policy with kTileSoftmax (AVX2) runs its own
//               softmax_tile for tiles of 2 / 4 heads instead of the per-head chain below:
//               maxima, rescale factors and weight units of the tile's heads computed together in
//               vectors, and (integer K) the K phase's partial sums reduced per token across
//               lanes for 4 heads at once (one-head tiles: the per-head chain, measured faster).
//      V phase: INT4/INT2 with n >= 32: integer PV: per block and head, w_t = p_t * scale_t is
//               quantized to u8 (per half-block max / 255), token pairs interleaved byte-wise
//               and multiplied by vpmaddubsw (s16 sums per half block), the halves combined by
//               vpmaddwd with their s16 unit ratios, then o += wscale * sums in F32; the weights' rounding error times the mid code goes to the constant part.
//               Otherwise (INT8, small groups): o += (p * scale_g) * code in F32, codes widened
//               once per token and shared by the tile's heads. The zero part
//               sum_t p_t * zero_g,t is a per-(head, group) accumulator added to every dim of the
//               group at the end. Accumulators live in the codes' planar order, permuted back
//               (and un-rotated by R_v) once per chunk.
//    Blocks kPrefetchTokens ahead are software-prefetched (codes and meta of K and V).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"
#include "cpu/decode_quant.h"
#include "cpu/quantize.h"

// Anonymous: every ISA unit that includes this gets its own copy of the helpers below, so the
// linker never shares one unit's wider code with another ISA's path.
namespace attn4j::cpu {
namespace {
namespace quant_impl {

constexpr int kMaxHd = 256;
constexpr int kMaxGroupsPerHead = kMaxHd / 32;  // G >= 32
constexpr int kBlock = 16;                      // tokens per block of the fast kernel (2 vectors of 8)
constexpr int kMaxTile = 4;                     // query heads per tile

inline size_t align64(size_t x) { return (x + 63) / 64 * 64; }

// Scratch layout (all offsets 64-byte aligned), shared by both kernels.
struct Scratch {
    float* qr;      // [group][hd] rotated q (natural order)
    float* qv;      // [group][hd] rotated q in V order (float K path)
    int8_t* q8;     // [group][2][hd] s8 q in unit order (INT4 / INT2 integer K path), then the
                    // s8 residual in units of sq / 127
    int16_t* q16;   // [group][hd] s16 q, natural order (INT8 integer K path)
    float* sq;      // [group][kMaxGroupsPerHead] q scale per K group
    float* qsum;    // [group][kMaxGroupsPerHead] sum of rotated q per K group
    float* qcorr;   // [group][kMaxGroupsPerHead] mid_code * (sum q - sq * sum q_int)
    float* o;       // [group][hd] accumulator (V order in the fast kernel)
    double* od;     // [hd] generic kernel accumulator of one head... sized [group][hd]
    float* zacc;    // [group][kMaxGroupsPerHead][8] zero-part accumulators
    float* m;       // [group]
    double* l;      // [group] (generic kernel)
    float* lacc;    // [group][8] fast kernel: softmax denominator per lane, summed at the end
    float* sacc;    // [kMaxTile][kMaxGroupsPerHead][kBlock][8] per-token partial dots
    float* p;       // [kMaxTile][8]
    float* w;       // [kMaxGroupsPerHead][kMaxTile][kBlock] p * scale of V
    uint32_t* wpair;  // [kMaxTile][kMaxGroupsPerHead][kBlock / 2] u8 weights of token pairs (integer PV)
    float* wscale;    // [kMaxTile][kMaxGroupsPerHead] weight unit of the block (integer PV)
    uint32_t* wratio; // [kMaxTile][kMaxGroupsPerHead] s16 pair: weight units of the two halves of
                      // the block in units of wscale / 32767
    float* ksc;     // [kMaxGroupsPerHead][kBlock] staged K meta
    float* kzr;
    float* vsc;     // staged V meta
    float* vzr;
    float* row;     // [hd] decoded row / temp
    float* row2;    // [hd]
    size_t bytes;

    Scratch(void* base, int group, int hd) {
        uint8_t* b = static_cast<uint8_t*>(base);
        size_t at = 0;
        auto take = [&](size_t n) {
            uint8_t* p = b ? b + at : nullptr;
            at += align64(n);
            return p;
        };
        const size_t gh = size_t(group) * hd;
        qr = reinterpret_cast<float*>(take(gh * 4));
        qv = reinterpret_cast<float*>(take(gh * 4));
        q8 = reinterpret_cast<int8_t*>(take(2 * gh));
        q16 = reinterpret_cast<int16_t*>(take(gh * 2));
        sq = reinterpret_cast<float*>(take(size_t(group) * kMaxGroupsPerHead * 4));
        qsum = reinterpret_cast<float*>(take(size_t(group) * kMaxGroupsPerHead * 4));
        qcorr = reinterpret_cast<float*>(take(size_t(group) * kMaxGroupsPerHead * 4));
        o = reinterpret_cast<float*>(take(gh * 4));
        od = reinterpret_cast<double*>(take(gh * 8));
        zacc = reinterpret_cast<float*>(take(size_t(group) * kMaxGroupsPerHead * 8 * 4));
        m = reinterpret_cast<float*>(take(size_t(group) * 4));
        l = reinterpret_cast<double*>(take(size_t(group) * 8));
        lacc = reinterpret_cast<float*>(take(size_t(group) * 8 * 4));
        sacc = reinterpret_cast<float*>(take(size_t(kMaxTile) * kMaxGroupsPerHead * kBlock * 8 * 4));
        p = reinterpret_cast<float*>(take(size_t(kMaxTile) * 8 * 4));
        w = reinterpret_cast<float*>(take(size_t(kMaxGroupsPerHead) * kMaxTile * kBlock * 4));
        wpair = reinterpret_cast<uint32_t*>(take(size_t(kMaxGroupsPerHead) * kMaxTile * (kBlock / 2) * 4));
        wscale = reinterpret_cast<float*>(take(size_t(kMaxGroupsPerHead) * kMaxTile * 4));
        wratio = reinterpret_cast<uint32_t*>(take(size_t(kMaxGroupsPerHead) * kMaxTile * 4));
        ksc = reinterpret_cast<float*>(take(kMaxGroupsPerHead * kBlock * 4));
        kzr = reinterpret_cast<float*>(take(kMaxGroupsPerHead * kBlock * 4));
        vsc = reinterpret_cast<float*>(take(kMaxGroupsPerHead * kBlock * 4));
        vzr = reinterpret_cast<float*>(take(kMaxGroupsPerHead * kBlock * 4));
        row = reinterpret_cast<float*>(take(size_t(hd) * 4));
        row2 = reinterpret_cast<float*>(take(size_t(hd) * 4));
        bytes = at;
    }
};

// Nearest integer, halves away from zero (no libm call).
inline int round_int(float x) { return int(x + (x >= 0.f ? 0.5f : -0.5f)); }

inline float meta_value(const uint8_t* meta, attn4j_dtype dt, int i) {
    if (dt == ATTN4J_DTYPE_F16) {
        uint16_t h;
        std::memcpy(&h, meta + 2 * i, 2);
        return f16_to_f32(h);
    }
    float f;
    std::memcpy(&f, meta + 4 * i, 4);
    return f;
}

// Byte position in a token's codes and shift -> dimension (planar packing, n >= 8 bytes per group).
inline int planar_dim(const QuantFormat& f, int pos, int shift) {
    const int n = f.group_code_bytes();
    return (pos / n) * f.group_size + pos % n + shift * n;
}

// Rotated q of every head of the group -> s.qr.
inline void prepare_q(const QuantDecodeChunk& ch, const Scratch& s) {
    const int hd = ch.fmt.head_dim;
    const float* mk = ch.k_rot.matrix_of(ch.kv_head, hd);
    for (int g = 0; g < ch.group; ++g) rotate_row(ch.q + int64_t(g) * hd, s.qr + int64_t(g) * hd, hd, ch.k_rot.kind, mk);
}

// Output of head g from a natural-order normalised row `o` (rotated V space) -> ch.out.
inline void finish_head(const QuantDecodeChunk& ch, int g, const float* o) {
    const int hd = ch.fmt.head_dim;
    unrotate_row(o, ch.out + int64_t(g) * hd, hd, ch.v_rot.kind, ch.v_rot.matrix_of(ch.kv_head, hd));
}

// ---- generic kernel ---------------------------------------------------------------------------
template <class Ops>
struct GenericKernel {
    static void run(const QuantDecodeChunk& ch) {
        const QuantFormat& f = ch.fmt;
        const int hd = f.head_dim, group = ch.group, ng = f.groups();
        Scratch s(ch.scratch, group, hd);
        prepare_q(ch, s);
        const int64_t codes_bytes = int64_t(ch.page_size) * f.code_bytes();
        for (int64_t i = 0; i < int64_t(group) * hd; ++i) s.od[i] = 0.0;
        for (int g = 0; g < group; ++g) {
            s.m[g] = -INFINITY;
            s.l[g] = 0.0;
        }
        const int32_t* page = ch.pages;
        int slot = 0;
        for (int64_t t = 0; t < ch.num_tokens; ++t) {
            const int64_t blk = int64_t(*page) * ch.page_stride_bytes;
            const uint8_t* kc = ch.k_base + blk + int64_t(slot) * f.code_bytes();
            const uint8_t* km = ch.k_base + blk + codes_bytes + int64_t(slot) * f.meta_bytes();
            const uint8_t* vc = ch.v_base + blk + int64_t(slot) * f.code_bytes();
            const uint8_t* vm = ch.v_base + blk + codes_bytes + int64_t(slot) * f.meta_bytes();
            if (++slot == ch.page_size) {
                slot = 0;
                ++page;
            }
            dequantize_row(kc, km, f, s.row);
            dequantize_row(vc, vm, f, s.row2);
            (void)ng;
            for (int g = 0; g < group; ++g) {
                const float* q = s.qr + int64_t(g) * hd;
                double sc = 0.0;
                for (int j = 0; j < hd; ++j) sc += double(q[j]) * s.row[j];
                const float x = float(sc);
                double* o = s.od + int64_t(g) * hd;
                if (x > s.m[g]) {
                    const double a = std::exp2(double(s.m[g]) - x);
                    s.l[g] *= a;
                    for (int j = 0; j < hd; ++j) o[j] *= a;
                    s.m[g] = x;
                }
                const double p = std::exp2(double(x) - s.m[g]);
                s.l[g] += p;
                for (int j = 0; j < hd; ++j) o[j] += p * s.row2[j];
            }
        }
        for (int g = 0; g < group; ++g) {
            const double* o = s.od + int64_t(g) * hd;
            for (int j = 0; j < hd; ++j) s.row[j] = float(o[j] / s.l[g]);
            finish_head(ch, g, s.row);
            ch.lse2[g] = float(double(s.m[g]) + std::log2(s.l[g]));
        }
    }
};

// ---- fast kernel ------------------------------------------------------------------------------
// Ops (besides the float policy of decode_kernel_impl.h: V, zero, set1, load, store, fma, mul,
// add, sub, hmax, hsum, reduce_rows, exp2, exp2_scalar, mask_neg_inf, mask_zero) provides
//   kdot_i16<GN> / kdot_i8<BITS, GN> / kdot_f32<BITS, GN>(codes of one group, n, q, qstride,
//       out[GN]): one token's group against GN heads; out[h] = 8 partial sums (F32)
//   gather_meta(meta of token 0, meta bytes, n, fmt, sc, zr): {scale, zero} of 8 tokens
//   quantize_weights(w[16], pairs, &scale, &ratio, zacc[8], mid): u8 weights (integer PV); adds
//       mid * (w_t - wq_t * unit) per lane to the group's constant-part accumulator
//   pv<BITS, GN, HD> / pv_int<BITS, GN, HD>: V-phase accumulation of a block.
template <class Ops, int BITS, int HD>
struct FastKernel {
    using V = typename Ops::V;
    static constexpr int kPrefetchTokens = Ops::kPrefetchTokens;

    struct Cursor {
        const int32_t* page;
        int32_t slot;
        int64_t left;
    };

    // Offsets (from the head block of page 0) of the next n <= 8 tokens' codes and meta.
    static inline int next_block(Cursor& c, const QuantDecodeChunk& ch, int64_t codes_region,
                                 int64_t* coff, int64_t* moff) {
        const int n = c.left < kBlock ? int(c.left) : kBlock;
        const int cb = ch.fmt.code_bytes(), mb = ch.fmt.meta_bytes();
        for (int j = 0; j < n; ++j) {
            const int64_t blk = int64_t(*c.page) * ch.page_stride_bytes;
            coff[j] = blk + int64_t(c.slot) * cb;
            moff[j] = blk + codes_region + int64_t(c.slot) * mb;
            if (++c.slot == ch.page_size) {
                c.slot = 0;
                ++c.page;
            }
        }
        c.left -= n;
        return n;
    }

    static inline void prefetch_range(const uint8_t* a, int64_t bytes) {
        for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(a + b, 0, Ops::kPrefetchLocality);
        __builtin_prefetch(a + bytes - 1, 0, Ops::kPrefetchLocality);
    }

    static inline void prefetch_block(Cursor& c, const QuantDecodeChunk& ch, int64_t codes_region) {
        if (c.left <= 0) return;
        const int n = c.left < kBlock ? int(c.left) : kBlock;
        const int cb = ch.fmt.code_bytes(), mb = ch.fmt.meta_bytes();
        int j = 0;
        while (j < n) {
            const int run = int(std::min<int64_t>(n - j, ch.page_size - c.slot));
            const int64_t blk = int64_t(*c.page) * ch.page_stride_bytes;
            const int64_t co = blk + int64_t(c.slot) * cb, mo = blk + codes_region + int64_t(c.slot) * mb;
            prefetch_range(ch.k_base + co, int64_t(run) * cb);
            prefetch_range(ch.v_base + co, int64_t(run) * cb);
            prefetch_range(ch.k_base + mo, int64_t(run) * mb);
            prefetch_range(ch.v_base + mo, int64_t(run) * mb);
            j += run;
            c.slot += run;
            if (c.slot == ch.page_size) {
                c.slot = 0;
                ++c.page;
            }
        }
        c.left -= n;
    }

    // Stages meta of the block: sc[g][t], zr[g][t] (tokens >= n get 0).
    static inline void stage_meta(const uint8_t* base, const int64_t* moff, int n, const QuantFormat& f,
                                  float* sc, float* zr) {
        const int ng = f.groups();
        for (int t = 0; t < kBlock; ++t) {
            if (t < n) {
                const uint8_t* mp = base + moff[t];
                for (int g = 0; g < ng; ++g) {
                    sc[g * kBlock + t] = meta_value(mp, f.meta_dtype, 2 * g);
                    zr[g * kBlock + t] = meta_value(mp, f.meta_dtype, 2 * g + 1);
                }
            } else {
                for (int g = 0; g < ng; ++g) sc[g * kBlock + t] = zr[g * kBlock + t] = 0.f;
            }
        }
    }

    template <int GN>
    static inline void tile(const QuantDecodeChunk& ch, const Scratch& s, int g0, const int64_t* coff, int n,
                            bool int_k) {
        const bool int_pv = BITS < 8 && int_k;
        const QuantFormat& f = ch.fmt;
        constexpr int hd = HD;
        const int ng = f.groups(), nb = f.group_code_bytes();
        // K phase: per token, per K group, GN vectors of 8 partial sums -> sacc[h][g][t][8].
        if constexpr (BITS == 8) {
            if (int_k) {
                const int16_t* q = s.q16 + int64_t(g0) * hd;
                switch (nb) {  // G = nb for INT8
                    case 32: Ops::template kblock_i16<GN, HD, 32>(ch.k_base, coff, n, q, s.sacc); break;
                    case 64: Ops::template kblock_i16<GN, HD, 64>(ch.k_base, coff, n, q, s.sacc); break;
                    case 128: Ops::template kblock_i16<GN, HD, 128>(ch.k_base, coff, n, q, s.sacc); break;
                    default: Ops::template kblock_i16<GN, HD, HD>(ch.k_base, coff, n, q, s.sacc); break;
                }
                goto scores;
            }
        }
        if constexpr (BITS < 8) {
            if (int_k) {
                const int8_t* q = s.q8 + int64_t(g0) * 2 * hd;
                switch (nb) {  // compile-time group size: fully unrolled token loop
                    case 32: Ops::template kblock_i8<BITS, GN, HD, 32>(ch.k_base, coff, n, q, s.sacc); break;
                    case 64: Ops::template kblock_i8<BITS, GN, HD, 64>(ch.k_base, coff, n, q, s.sacc); break;
                    default: Ops::template kblock_i8<BITS, GN, HD, 128>(ch.k_base, coff, n, q, s.sacc); break;
                }
                goto scores;
            }
        }
        for (int t = 0; t < n; ++t) {
            const uint8_t* row = ch.k_base + coff[t];
            for (int g = 0; g < ng; ++g) {
                float* out[GN];
                for (int h = 0; h < GN; ++h) out[h] = s.sacc + ((h * ng + g) * kBlock + t) * 8;
                if (int_k) {
                    if constexpr (BITS == 8)
                        Ops::template kdot_i16<GN>(row + g * nb, nb, s.q16 + int64_t(g0) * hd + g * nb, hd, out);
                    else
                        Ops::template kdot_i8<BITS, GN>(row + g * nb, nb, s.q8 + int64_t(g0) * 2 * hd + g * f.group_size, hd, out);
                } else {
                    Ops::template kdot_f32<BITS, GN>(row + g * nb, nb, s.qv + int64_t(g0) * hd + g * f.group_size, hd, out);
                }
            }
        }
    scores:
        // Scores and online softmax.
        if constexpr (Ops::kTileSoftmax && GN > 1) {  // the policy's chain, all heads of the tile at once
            Ops::template softmax_tile<BITS, GN>(s, g0, ng, n, int_k, int_pv);
        } else {
            for (int h = 0; h < GN; ++h) {
                const int gq = g0 + h;
                // Tokens 0-7 in sc0, 8-15 in sc1.
                V sc0 = Ops::zero(), sc1 = Ops::zero();
                for (int g = 0; g < ng; ++g) {
                    const float* sa = s.sacc + (h * ng + g) * kBlock * 8;
                    const V r0 = Ops::reduce_rows(sa), r1 = Ops::reduce_rows(sa + 64);
                    const V sqv = Ops::set1(s.sq[gq * kMaxGroupsPerHead + g]);
                    const V qs = Ops::set1(s.qsum[gq * kMaxGroupsPerHead + g]);
                    const V qc = Ops::set1(s.qcorr[gq * kMaxGroupsPerHead + g]);
                    const V k0 = Ops::load(s.ksc + g * kBlock), k1 = Ops::load(s.ksc + g * kBlock + 8);
                    sc0 = Ops::fma(k0, Ops::fma(r0, sqv, qc), Ops::fma(Ops::load(s.kzr + g * kBlock), qs, sc0));
                    sc1 = Ops::fma(k1, Ops::fma(r1, sqv, qc), Ops::fma(Ops::load(s.kzr + g * kBlock + 8), qs, sc1));
                }
                sc0 = Ops::mask_neg_inf(sc0, n);
                sc1 = Ops::mask_neg_inf(sc1, n - 8);
                const float mx = Ops::hmax(Ops::max(sc0, sc1));
                const float m_old = s.m[gq];
                const float m_new = mx > m_old ? mx : m_old;
                const float alpha = m_new == m_old ? 1.f : Ops::exp2_scalar(m_old - m_new);
                const V mv = Ops::set1(m_new);
                const V p0 = Ops::mask_zero(Ops::exp2(Ops::sub(sc0, mv)), n);
                const V p1 = Ops::mask_zero(Ops::exp2(Ops::sub(sc1, mv)), n - 8);
                float* la = s.lacc + gq * 8;  // lanes summed once per chunk: no reduction per block
                Ops::store(la, Ops::fma(Ops::load(la), Ops::set1(alpha), Ops::add(p0, p1)));
                s.m[gq] = m_new;
                // w[g][h][t] = p * scale of V; zero part accumulated per (head, group).
                const V al = Ops::set1(alpha);
                for (int g = 0; g < ng; ++g) {
                    Ops::store(s.w + (g * kMaxTile + h) * kBlock, Ops::mul(p0, Ops::load(s.vsc + g * kBlock)));
                    Ops::store(s.w + (g * kMaxTile + h) * kBlock + 8, Ops::mul(p1, Ops::load(s.vsc + g * kBlock + 8)));
                    float* z = s.zacc + (int64_t(gq) * kMaxGroupsPerHead + g) * 8;
                    Ops::store(z, Ops::fma(p0, Ops::load(s.vzr + g * kBlock),
                                           Ops::fma(p1, Ops::load(s.vzr + g * kBlock + 8), Ops::mul(Ops::load(z), al))));
                }
                s.p[h] = alpha;  // alpha of head h for the V phase
                if constexpr (BITS < 8) {
                    if (int_pv) {
                        // u8 weights of the block: w ~= wscale * wq, wq in 0..255, per token pair;
                        // sum_t (w_t - wscale * wq_t) * c_t ~= mid_code * sum_t (w_t - wscale * wq_t)
                        // goes into the group's constant part.
                        for (int g = 0; g < ng; ++g) {
                            Ops::quantize_weights(s.w + (g * kMaxTile + h) * kBlock,
                                                  s.wpair + (h * kMaxGroupsPerHead + g) * (kBlock / 2),
                                                  s.wscale + h * kMaxGroupsPerHead + g, s.wratio + h * kMaxGroupsPerHead + g,
                                                  s.zacc + (int64_t(gq) * kMaxGroupsPerHead + g) * 8,
                                                  0.5f * float((1 << BITS) - 1));
                        }
                    }
                }
            }
        }
        // V phase.
        const uint8_t* rows[kBlock];
        for (int t = 0; t < n; ++t) rows[t] = ch.v_base + coff[t];
        if constexpr (BITS < 8) {
            if (int_pv) {
                Ops::template pv_int<BITS, GN, HD>(rows, n, nb, s.wpair, s.wscale, s.wratio, s.p, s.o + int64_t(g0) * hd);
                return;
            }
        }
        Ops::template pv<BITS, GN, HD>(rows, n, nb, f.group_size, s.w, s.p, s.o + int64_t(g0) * hd);
    }

    static void run(const QuantDecodeChunk& ch) {
        const QuantFormat& f = ch.fmt;
        constexpr int hd = HD;
        const int group = ch.group, ng = f.groups(), nb = f.group_code_bytes(), G = f.group_size;
        Scratch s(ch.scratch, group, hd);
        prepare_q(ch, s);
        const bool int_k = nb >= 32;
        // Query preparation: per head and K group, sum of q, integer q (unit order) and scale,
        // float q in V order.
        for (int h = 0; h < group; ++h) {
            const float* qr = s.qr + int64_t(h) * hd;
            for (int g = 0; g < ng; ++g) {
                double sum = 0.0;
                float amax = 0.f;
                for (int j = 0; j < G; ++j) {
                    sum += qr[g * G + j];
                    amax = std::max(amax, std::fabs(qr[g * G + j]));
                }
                s.qsum[h * kMaxGroupsPerHead + g] = float(sum);
                const float qmax = BITS == 8 ? 16383.f : 127.f;
                float sq = int_k ? amax / qmax : 1.f;
                s.sq[h * kMaxGroupsPerHead + g] = sq;
                const float inv = sq > 0.f ? 1.f / sq : 0.f;
                int64_t isum = 0;  // sum of the integer q of the group
                if (BITS == 8) {
                    for (int j = 0; j < G; ++j) {
                        const int v = int(round_int(qr[g * G + j] * inv));
                        s.q16[int64_t(h) * hd + g * G + j] = int16_t(v);
                        isum += v;
                    }
                } else {
                    // unit order inside the group: 32-byte runs x shifts, lane i <-> byte i
                    const int per = 8 / BITS;
                    for (int cb = 0; cb < nb / 32; ++cb)
                        for (int sh = 0; sh < per; ++sh)
                            for (int i = 0; i < 32; ++i) {
                                const int d = g * G + cb * 32 + i + sh * nb;  // planar_dim(g * nb + cb * 32 + i, sh)
                                const int v = int(round_int(qr[d] * inv));
                                const int r = std::clamp(int(round_int((qr[d] - sq * float(v)) * inv * 127.f)), -127, 127);
                                int8_t* q8 = s.q8 + int64_t(h) * 2 * hd + g * G + (cb * per + sh) * 32 + i;
                                q8[0] = int8_t(v);
                                q8[hd] = int8_t(r);
                                isum += 127 * v + r;
                            }
                    if (int_k) {
                        sq /= 127.f;  // the kernel returns 127 * (q_int . c) + (q_res . c)
                        s.sq[h * kMaxGroupsPerHead + g] = sq;
                    }
                }
                // q . c = sq * (q_int . c) + sum_j (q_j - sq q_int_j) c_j; the second sum is
                // approximated by mid * sum_j (q_j - sq q_int_j) (exact part of the rounding
                // error's mean), which removes most of the error of the uncentered codes.
                s.qcorr[h * kMaxGroupsPerHead + g] =
                    int_k ? float(0.5 * f.max_code() * (sum - double(sq) * double(isum))) : 0.f;
            }
            // V order (float K path): 8-byte runs x shifts.
            if (!int_k) {
                const int per = 8 / BITS;
                for (int g = 0; g < ng; ++g)
                    for (int bl = 0; bl < nb / 8; ++bl)
                        for (int sh = 0; sh < per; ++sh)
                            for (int i = 0; i < 8; ++i)
                                s.qv[int64_t(h) * hd + ((g * nb / 8 + bl) * per + sh) * 8 + i] = qr[g * G + bl * 8 + i + sh * nb];
            }
        }
        for (int64_t i = 0; i < int64_t(group) * hd; ++i) s.o[i] = 0.f;
        for (int64_t i = 0; i < int64_t(group) * kMaxGroupsPerHead * 8; ++i) s.zacc[i] = 0.f;
        for (int i = 0; i < kMaxTile * kMaxGroupsPerHead * kBlock * 8; ++i) s.sacc[i] = 0.f;
        for (int64_t i = 0; i < int64_t(group) * 8; ++i) s.lacc[i] = 0.f;
        for (int g = 0; g < group; ++g) s.m[g] = -INFINITY;
        const int64_t codes_region = int64_t(ch.page_size) * f.code_bytes();
        Cursor cur{ch.pages, 0, ch.num_tokens};
        Cursor pf{ch.pages, 0, ch.num_tokens};
        {
            int64_t c[kBlock], m[kBlock];
            next_block(pf, ch, codes_region, c, m);
            for (int b = 0; b < kPrefetchTokens / kBlock; ++b) prefetch_block(pf, ch, codes_region);
        }
        int64_t coff[kBlock], moff[kBlock];
        // page_size a multiple of the block: every block is 8 consecutive slots of one page, so
        // offsets are affine and the meta of the block is gathered in one go.
        const bool aligned = ch.page_size % kBlock == 0;
        const int cbytes = f.code_bytes(), mbytes = f.meta_bytes();
        while (cur.left > 0) {
            int n;
            if (aligned) {
                n = cur.left < kBlock ? int(cur.left) : kBlock;
                const int64_t blk = int64_t(*cur.page) * ch.page_stride_bytes;
                for (int t = 0; t < kBlock; ++t) coff[t] = blk + int64_t(cur.slot + t) * cbytes;
                moff[0] = blk + codes_region + int64_t(cur.slot) * mbytes;
                cur.slot += kBlock;
                if (cur.slot == ch.page_size) {
                    cur.slot = 0;
                    ++cur.page;
                }
                cur.left -= n;
                prefetch_block(pf, ch, codes_region);
                if (n == kBlock && mbytes == 8 && f.meta_dtype == ATTN4J_DTYPE_F32) {
                    // one group, F32: {scale, zero} pairs of 16 consecutive tokens, de-interleaved
                    Ops::load_meta_f32(ch.k_base + moff[0], s.ksc, s.kzr);
                    Ops::load_meta_f32(ch.v_base + moff[0], s.vsc, s.vzr);
                } else {
                    Ops::gather_meta(ch.k_base + moff[0], mbytes, n, f, s.ksc, s.kzr);
                    Ops::gather_meta(ch.v_base + moff[0], mbytes, n, f, s.vsc, s.vzr);
                    Ops::gather_meta(ch.k_base + moff[0] + 8 * mbytes, mbytes, n - 8, f, s.ksc + 8, s.kzr + 8);
                    Ops::gather_meta(ch.v_base + moff[0] + 8 * mbytes, mbytes, n - 8, f, s.vsc + 8, s.vzr + 8);
                }
            } else {
                n = next_block(cur, ch, codes_region, coff, moff);
                prefetch_block(pf, ch, codes_region);
                stage_meta(ch.k_base, moff, n, f, s.ksc, s.kzr);
                stage_meta(ch.v_base, moff, n, f, s.vsc, s.vzr);
            }
            int g0 = 0;
            while (g0 < group) {
                const int left = group - g0;
                if (left >= 4) {
                    tile<4>(ch, s, g0, coff, n, int_k);
                    g0 += 4;
                } else if (left >= 2) {
                    tile<2>(ch, s, g0, coff, n, int_k);
                    g0 += 2;
                } else {
                    tile<1>(ch, s, g0, coff, n, int_k);
                    g0 += 1;
                }
            }
        }
        // Normalise, add the zero part, back to natural order, un-rotate.
        for (int h = 0; h < group; ++h) {
            const float* o = s.o + int64_t(h) * hd;
            float zsum[kMaxGroupsPerHead];
            for (int g = 0; g < ng; ++g) {
                double z = 0.0;
                for (int i = 0; i < 8; ++i) z += s.zacc[(int64_t(h) * kMaxGroupsPerHead + g) * 8 + i];
                zsum[g] = float(z);
            }
            double l = 0.0;
            for (int i = 0; i < 8; ++i) l += s.lacc[h * 8 + i];
            const double inv = 1.0 / l;
            // o order: per run of `run` code bytes, run * per slots; float PV: 8-byte runs x shifts,
            // integer PV: the policy's order (Ops::pv_slot: slot -> shift and byte of the run).
            const int per = 8 / BITS, run = (BITS < 8 && int_k) ? Ops::template pv_run<BITS, HD>(nb) : 8;
            for (int g = 0; g < ng; ++g)
                for (int bl = 0; bl < nb / run; ++bl)
                    for (int q = 0; q < run * per; ++q) {
                        int sh = q / run, b = q % run;
                        if (run > 8) Ops::pv_slot(q, run, per, sh, b);
                        s.row[g * G + bl * run + b + sh * nb] =
                            float((double(o[(g * nb / run + bl) * per * run + q]) + zsum[g]) * inv);
                    }
            finish_head(ch, h, s.row);
            ch.lse2[h] = float(double(s.m[h]) + std::log2(l));
        }
    }
};

template <class Ops, int BITS>
inline bool run_fast_bits(const QuantDecodeChunk& c) {
    switch (c.fmt.head_dim) {
        case 64: FastKernel<Ops, BITS, 64>::run(c); return true;
        case 128: FastKernel<Ops, BITS, 128>::run(c); return true;
        case 256: FastKernel<Ops, BITS, 256>::run(c); return true;
        default: return false;
    }
}

// Fast kernel where it applies, generic kernel otherwise.
template <class Ops>
inline void dispatch(const QuantDecodeChunk& c) {
    bool done = false;
    switch (c.fmt.bits) {
        case 8: done = run_fast_bits<Ops, 8>(c); break;
        case 4: done = run_fast_bits<Ops, 4>(c); break;
        case 2: done = run_fast_bits<Ops, 2>(c); break;
        default: break;
    }
    if (!done) GenericKernel<Ops>::run(c);
}

}  // namespace quant_impl
}  // namespace
}  // namespace attn4j::cpu
