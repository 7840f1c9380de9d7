// AVX2 + FMA + F16C policy of the fused quantized decode kernels (decode_quant_impl.h):
// vpmaddubsw / vpmaddwd integer dot products for QK, integer (u8 weights) or 8-wide F32 PV, and
// its own softmax / weight chain (softmax_tile: all heads of a tile at once, no scalar steps).
// Loops are rolled where the fully unrolled code overflowed Zen 3's op cache (measured).
// Used by decode_quant_avx2.cpp, and as the base of the AVX-512 VNNI policy
// (decode_quant_avx512vnni.cpp), which replaces the integer phases. Include only from files
// compiled with at least the AVX2 flags. Everything here is in an anonymous namespace: each ISA
// unit gets its own copy, so the linker can never hand one unit's wider code to another's path.
#pragma once

#include <immintrin.h>

#include "cpu/avx2_ops.h"
#include "cpu/decode_quant_impl.h"

namespace attn4j::cpu {
namespace {

using namespace quant_impl;

struct Avx2QuantOps : Avx2FloatOps {
    static constexpr int kPrefetchTokens = 64;   // look-ahead in tokens (multiple of kBlock)
    static constexpr int kPrefetchLocality = 1;  // prefetcht2, as the float kernel

    // Integer PV: bytes of codes per run (the unit of pv_int's accumulator order).
    template <int BITS, int HD>
    static constexpr int pv_run(int /*group code bytes*/) { return 32; }
    // Integer PV accumulator order of a 32-byte run: slot q = 32 * shift + i, and position i
    // (vector i / 8, lane i % 8) holds the run's byte 4 * (v & 1) + 8 * (v >> 1) + lane (+ 12 for
    // lanes 4..7), the order the s16 half-block sums come out of vpunpck{l,h}wd + vpmaddwd.
    static inline void pv_slot(int q, int /*run*/, int /*per*/, int& sh, int& byte) {
        sh = q / 32;
        const int v = q % 32 / 8, lane = q % 8;
        byte = 4 * (v & 1) + 8 * (v >> 1) + lane + (lane >= 4 ? 12 : 0);
    }

    // 1 / x by vrcpss + one Newton step (~23 bits; no divider).
    static inline float rcp(float x) {
        const __m128 v = _mm_set_ss(x);
        const __m128 r = _mm_rcp_ss(v);
        return _mm_cvtss_f32(_mm_mul_ss(r, _mm_fnmadd_ss(v, r, _mm_set_ss(2.f))));
    }

    // Meta of 8 tokens whose rows are `mb` bytes apart from m0 (tokens >= n give 0):
    // sc[g * kBlock + t], zr[g * kBlock + t].
    static inline void gather_meta(const uint8_t* m0, int mb, int n, const QuantFormat& f, float* sc, float* zr) {
        const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(mb));
        const V m = tail_mask(n);
        for (int g = 0; g < f.groups(); ++g) {
            if (f.meta_dtype == ATTN4J_DTYPE_F32) {
                const float* p = reinterpret_cast<const float*>(m0 + 8 * g);
                store(sc + g * kBlock, _mm256_mask_i32gather_ps(zero(), p, idx, m, 1));
                store(zr + g * kBlock, _mm256_mask_i32gather_ps(zero(), p + 1, idx, m, 1));
            } else {
                const int* p = reinterpret_cast<const int*>(m0 + 4 * g);
                const __m256i x = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), p, idx, _mm256_castps_si256(m), 1);
                const __m256i lo = _mm256_and_si256(x, _mm256_set1_epi32(0xFFFF)), hi = _mm256_srli_epi32(x, 16);
                const __m256i pk = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
                store(sc + g * kBlock, _mm256_cvtph_ps(_mm256_castsi256_si128(pk)));
                store(zr + g * kBlock, _mm256_cvtph_ps(_mm256_extracti128_si256(pk, 1)));
            }
        }
    }

    // {scale, zero} F32 pairs of 16 consecutive tokens (one group) -> sc[0..15], zr[0..15].
    static inline void load_meta_f32(const uint8_t* m, float* sc, float* zr) {
        const float* p = reinterpret_cast<const float*>(m);
        for (int half = 0; half < 2; ++half) {
            const V a = load(p + 16 * half), b = load(p + 16 * half + 8);  // s0 z0 s1 z1 .. | s4 z4 ..
            const V s = _mm256_shuffle_ps(a, b, 0x88), z = _mm256_shuffle_ps(a, b, 0xDD);  // s0 s1 s4 s5 | s2 s3 s6 s7
            store(sc + 8 * half, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0xD8)));
            store(zr + 8 * half, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(z), 0xD8)));
        }
    }

    // Reduced K layout (kblock_i8 / kblock_i16 of this policy for tiles of 2 or 4 heads, read by
    // softmax_tile; one-head tiles keep the impl's layout and per-head chain): the 8 s32 partial
    // dot products of each of the tile's GN <= 4 heads for one (token, group), summed across
    // lanes (transposed, 7 ops for 4 heads) -> out[0..3] = F32 dot of head 0..3 (0 past GN).
    // sacc[(g * kBlock + t) * 4 + h].
    // In two steps: pair_dots of heads (0, 1) and (2, 3), then finish_dots.
    static inline __m256i pair_dots(__m256i a, __m256i b) {
        return _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
    }
    static inline void finish_dots(__m256i x01, __m256i x23, float* out) {
        const __m256i y = _mm256_add_epi32(_mm256_unpacklo_epi64(x01, x23), _mm256_unpackhi_epi64(x01, x23));
        _mm_storeu_ps(out, _mm_cvtepi32_ps(_mm_add_epi32(_mm256_castsi256_si128(y), _mm256_extracti128_si256(y, 1))));
    }
    template <int GN>
    static inline void store_dots(const __m256i* v, float* out) {
        const __m256i z = _mm256_setzero_si256();
        const __m256i a = v[0], b = GN > 1 ? v[1 % GN] : z, c = GN > 2 ? v[2 % GN] : z, d = GN > 3 ? v[3 % GN] : z;
        finish_dots(pair_dots(a, b), pair_dots(c, d), out);
    }

    // K phase of a block, INT4 / INT2 with NB code bytes per group (compile time, >= 32): per
    // token and group as kdot_i8, fully unrolled; q = s8 q of the tile's first head
    // ([GN][2][HD]); output in the reduced layout (one head: sacc[(g * kBlock + t) * 8]).
    template <int BITS, int GN, int HD, int NB>
    static inline void kblock_i8(const uint8_t* base, const int64_t* coff, int n, const int8_t* q, float* sacc) {
        constexpr int per = 8 / BITS, G = NB * 8 / BITS, ng = HD / G;
        const __m256i mask = _mm256_set1_epi8(char((1 << BITS) - 1));
        const __m256i w127 = _mm256_set1_epi16(127), ones = _mm256_set1_epi16(1);
        // Heads in passes of (up to) 2: 4 s16 accumulators live, no spills; the codes are
        // re-shifted per pass (cheap).
        constexpr int HP = GN < 2 ? GN : 2;
        static_assert(GN != 3, "tiles of 1, 2 or 4 heads");
        for (int t = 0; t < n; ++t) {
            const uint8_t* row = base + coff[t];
            for (int g = 0; g < ng; ++g) {
                __m256i xd[2];  // pair_dots of heads (0, 1) and (2, 3)
                for (int h0 = 0; h0 < GN; h0 += HP) {
                    __m256i acc[HP], res[HP];
                    for (int h = 0; h < HP; ++h) acc[h] = res[h] = _mm256_setzero_si256();
                    for (int cb = 0; cb < NB / 32; ++cb) {
                        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + g * NB + cb * 32));
                        for (int sh = 0; sh < per; ++sh) {
                            const __m256i u = _mm256_and_si256(sh ? _mm256_srli_epi16(x, BITS * sh) : x, mask);
                            for (int h = 0; h < HP; ++h) {
                                const int8_t* qh = q + 2 * (h0 + h) * HD + g * G + (cb * per + sh) * 32;
                                acc[h] = _mm256_add_epi16(acc[h], _mm256_maddubs_epi16(u, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh))));
                                res[h] = _mm256_add_epi16(res[h], _mm256_maddubs_epi16(u, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh + HD))));
                            }
                        }
                    }
                    __m256i d[HP];
                    for (int h = 0; h < HP; ++h) d[h] = _mm256_add_epi32(_mm256_madd_epi16(acc[h], w127), _mm256_madd_epi16(res[h], ones));
                    if constexpr (GN == 1) {  // one head: the impl's per-head chain, layout sacc[g][t][8]
                        _mm256_storeu_ps(sacc + (g * kBlock + t) * 8, _mm256_cvtepi32_ps(d[0]));
                    } else {
                        xd[h0 / 2] = pair_dots(d[0], d[1]);
                        if (GN == 2) xd[1] = _mm256_setzero_si256();
                    }
                }
                if constexpr (GN > 1) finish_dots(xd[0], xd[1], sacc + (g * kBlock + t) * 4);
            }
        }
    }

    // K phase of a block, INT8 with NB code bytes per group (compile time, multiple of 16): as
    // kdot_i16, fully unrolled; q = s16 q of the tile's first head ([GN][HD]); output as kblock_i8.
    template <int GN, int HD, int NB>
    static inline void kblock_i16(const uint8_t* base, const int64_t* coff, int n, const int16_t* q, float* sacc) {
        constexpr int ng = HD / NB;
        for (int t = 0; t < n; ++t) {
            const uint8_t* row = base + coff[t];
            for (int g = 0; g < ng; ++g) {
                __m256i acc[GN];
                for (int h = 0; h < GN; ++h) acc[h] = _mm256_setzero_si256();
                for (int u = 0; u < NB; u += 16) {
                    const __m256i c = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + g * NB + u)));
                    for (int h = 0; h < GN; ++h)
                        acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(c, _mm256_loadu_si256(
                                                                              reinterpret_cast<const __m256i*>(q + h * HD + g * NB + u))));
                }
                if constexpr (GN == 1)  // one head: the impl's per-head chain, layout sacc[g][t][8]
                    _mm256_storeu_ps(sacc + (g * kBlock + t) * 8, _mm256_cvtepi32_ps(acc[0]));
                else
                    store_dots<GN>(acc, sacc + (g * kBlock + t) * 4);
            }
        }
    }

    // INT8: codes zero-extended to s16, q s16 (natural order), vpmaddwd; nb multiple of 16.
    template <int GN>
    static inline void kdot_i16(const uint8_t* codes, int nb, const int16_t* q, int qstride, float* const* out) {
        __m256i acc[GN];
        for (int h = 0; h < GN; ++h) acc[h] = _mm256_setzero_si256();
        for (int u = 0; u < nb; u += 16) {
            const __m256i c = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + u)));
            for (int h = 0; h < GN; ++h)
                acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(c, _mm256_loadu_si256(
                                                                      reinterpret_cast<const __m256i*>(q + h * qstride + u))));
        }
        for (int h = 0; h < GN; ++h) _mm256_storeu_ps(out[h], _mm256_cvtepi32_ps(acc[h]));
    }

    // INT4 / INT2 (n >= 32): shifted+masked code bytes (u8) x q s8 (unit order) by vpmaddubsw,
    // s16 sums over the group's units (<= 4 units: |sum| <= 4 * 2 * 15 * 127 < 2^15); the same
    // for the s8 residual of q (q[qstride ..]); out = 127 * (q_int . c) + (q_res . c) by
    // vpmaddwd with 127 / 1.
    template <int BITS, int GN>
    static inline void kdot_i8(const uint8_t* codes, int nb, const int8_t* q, int qstride, float* const* out) {
        constexpr int per = 8 / BITS;
        const __m256i mask = _mm256_set1_epi8(char((1 << BITS) - 1));
        __m256i acc[GN], res[GN];
        for (int h = 0; h < GN; ++h) acc[h] = res[h] = _mm256_setzero_si256();
        for (int cb = 0; cb < nb / 32; ++cb) {
            const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + cb * 32));
            for (int sh = 0; sh < per; ++sh) {
                const __m256i u = _mm256_and_si256(_mm256_srli_epi16(x, BITS * sh), mask);
                for (int h = 0; h < GN; ++h) {
                    const int8_t* qh = q + 2 * h * qstride + (cb * per + sh) * 32;
                    acc[h] = _mm256_add_epi16(acc[h], _mm256_maddubs_epi16(u, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh))));
                    res[h] = _mm256_add_epi16(res[h], _mm256_maddubs_epi16(u, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh + qstride))));
                }
            }
        }
        const __m256i ones = _mm256_set1_epi16(1), w127 = _mm256_set1_epi16(127);
        for (int h = 0; h < GN; ++h)
            _mm256_storeu_ps(out[h], _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_madd_epi16(acc[h], w127),
                                                                          _mm256_madd_epi16(res[h], ones))));
    }

    // Codes widened 8 at a time to F32, FMA with float q in V order (groups with n < 32).
    template <int BITS, int GN>
    static inline void kdot_f32(const uint8_t* codes, int nb, const float* q, int qstride, float* const* out) {
        constexpr int per = 8 / BITS;
        const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1);
        V acc[GN];
        for (int h = 0; h < GN; ++h) acc[h] = zero();
        for (int bc = 0; bc < nb / 8; ++bc) {
            const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + bc * 8)));
            for (int sh = 0; sh < per; ++sh) {
                const V c = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(x, BITS * sh), mask));
                for (int h = 0; h < GN; ++h) acc[h] = fma(c, load(q + h * qstride + (bc * per + sh) * 8), acc[h]);
            }
        }
        for (int h = 0; h < GN; ++h) store(out[h], acc[h]);
    }

    // 8 codes of V order vector v of a row, as F32.
    template <int BITS>
    static inline void codes2(const uint8_t* row, int v, V& c0, V& c1) {
        if constexpr (BITS == 8) {
            c0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + v * 8))));
            c1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + v * 8 + 8))));
        } else {
            constexpr int per = 8 / BITS;
            const int bc = v / per, sh = v % per;
            const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1);
            const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + bc * 8)));
            c0 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(x, BITS * sh), mask));
            c1 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(x, BITS * (sh + 1)), mask));
        }
    }

    // u8 weights of a block of 16, per half of 8 tokens: pairs[k] = (wq[2k] | wq[2k+1] << 8)
    // repeated to 32 bits, half unit u_i = max_i / 255; *ratio = (r0 | r1 << 16) with
    // r_i = round(32767 * u_i / u_max), *scale = u_max / 32767; zacc[lane] += mid * the rounding
    // errors (w_t - u_t * wq_t) of tokens lane and lane + 8.
    static inline void quantize_weights(const float* w, uint32_t* pairs, float* scale, uint32_t* ratio, float* zacc,
                                        float mid) {
        const V x0 = load(w), x1 = load(w + 8);
        const float m0 = hmax(x0), m1 = hmax(x1);
        const float mx = m0 > m1 ? m0 : m1;
        const float inv_mx = mx > 0.f ? rcp(mx) : 0.f;
        const int r0 = int(32767.f * m0 * inv_mx + 0.5f), r1 = int(32767.f * m1 * inv_mx + 0.5f);
        *ratio = uint32_t(r0) | uint32_t(r1) << 16;
        *scale = mx * (1.f / (255.f * 32767.f));
        const float u0 = float(r0) * *scale, u1 = float(r1) * *scale;  // effective units
        // 1 / u_i = 255 * 32767 / (r_i * mx) (0 for an empty half)
        const float k = 255.f * 32767.f * inv_mx;
        const __m256i q0 = _mm256_cvtps_epi32(mul(x0, set1(r0 > 0 ? k * rcp(float(r0)) : 0.f)));  // nearest even
        const __m256i q1 = _mm256_cvtps_epi32(mul(x1, set1(r1 > 0 ? k * rcp(float(r1)) : 0.f)));
        const __m256i q0c = _mm256_min_epi32(q0, _mm256_set1_epi32(255)), q1c = _mm256_min_epi32(q1, _mm256_set1_epi32(255));
        const V err = add(_mm256_fnmadd_ps(_mm256_cvtepi32_ps(q0c), set1(u0), x0),
                          _mm256_fnmadd_ps(_mm256_cvtepi32_ps(q1c), set1(u1), x1));
        const __m256i q16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(q0c, q1c), 0xD8);  // wq0..wq15 as u16
        const __m128i q8 = _mm_packus_epi16(_mm256_castsi256_si128(q16), _mm256_extracti128_si256(q16, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(pairs), _mm_unpacklo_epi16(q8, q8));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(pairs + 4), _mm_unpackhi_epi16(q8, q8));
        store(zacc, fma(err, set1(mid), load(zacc)));
    }

    // ---- softmax of a tile, vectorized across its heads (impl: Ops::kTileSoftmax) ----------------
    static constexpr bool kTileSoftmax = true;

    // 4 vectors -> [max of a, max of b, max of c, max of d] (transposed reduction, 6 ops).
    static inline __m128 hmax4(V a, V b, V c, V d) {
        const V x01 = _mm256_max_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
        const V x23 = _mm256_max_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
        const V y = _mm256_max_ps(_mm256_shuffle_ps(x01, x23, 0x44), _mm256_shuffle_ps(x01, x23, 0xEE));
        return _mm_max_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1));
    }
    // 8 vectors -> lane k = max of v[k].
    static inline V hmax8(const V* v) {
        auto half = [](V a, V b, V c, V d) {
            const V x01 = _mm256_max_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
            const V x23 = _mm256_max_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
            return _mm256_max_ps(_mm256_shuffle_ps(x01, x23, 0x44), _mm256_shuffle_ps(x01, x23, 0xEE));
        };
        const V ya = half(v[0], v[1], v[2], v[3]), yb = half(v[4], v[5], v[6], v[7]);
        return _mm256_max_ps(_mm256_permute2f128_ps(ya, yb, 0x20), _mm256_permute2f128_ps(ya, yb, 0x31));
    }
    // 1 / x per lane by vrcpps + one Newton step (as rcp); 0 where x <= 0.
    static inline V rcp_pos(V x) {
        const V r = _mm256_rcp_ps(x);
        const V y = _mm256_mul_ps(r, _mm256_fnmadd_ps(x, r, set1(2.f)));
        return _mm256_and_ps(y, _mm256_cmp_ps(x, zero(), _CMP_GT_OQ));
    }

    // 2^x for x <= 0 (as exp2: below -126 it returns 2^-126; callers mask lanes that must be 0):
    // round to nearest by the 1.5 * 2^23 shifter (its low bits are then n, the exponent field's
    // input), degree-5 minimax polynomial on [-0.5, 0.5] (relative error 1.1e-7).
    static inline V exp2_fast(V x) {
        x = _mm256_max_ps(x, set1(-126.f));
        const V shifter = set1(12582912.f);
        const V t = add(x, shifter);
        const V f = sub(x, sub(t, shifter));
        V p = set1(1.3400432165550141e-3f);
        p = fma(p, f, set1(9.676037097859972e-3f));
        p = fma(p, f, set1(5.550327214208467e-2f));
        p = fma(p, f, set1(2.4022107355830688e-1f));
        p = fma(p, f, set1(6.931472067106208e-1f));
        p = fma(p, f, set1(1.000000075495349f));
        const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127)), 23);
        return mul(p, _mm256_castsi256_ps(e));
    }

    // Scores, online softmax and the V weights of the GN heads of a tile (the chain of the
    // impl's per-head loop, with the per-head maxima, rescale factors and weight units computed
    // for all heads at once): s.m, s.lacc, s.zacc, s.p (alpha per head), and s.w (float PV) or
    // s.wpair / s.wscale / s.wratio (integer PV, the format of quantize_weights).
    template <int BITS, int GN>
    static inline void softmax_tile(const Scratch& s, int g0, int ng, int n, bool int_k, bool int_pv) {
        static_assert(GN >= 2 && GN <= 4, "tiles of 2 or 4 heads (one head: the impl's chain)");
        V sc0[GN], sc1[GN];
        if (int_k) {  // reduced layout (store_dots): sacc[g][t][4 heads], transposed 4 x 4 per half lane
            for (int h = 0; h < GN; ++h) sc0[h] = sc1[h] = zero();
            for (int g = 0; g < ng; ++g) {
                const float* sa = s.sacc + g * kBlock * 4;
                V d[2][4];
                for (int half = 0; half < 2; ++half) {
                    const float* b = sa + half * 32;  // tokens 8 half + j (lanes 0-3) and + 4 + j (4-7)
                    const V r0 = _mm256_loadu2_m128(b + 16, b), r1 = _mm256_loadu2_m128(b + 20, b + 4);
                    const V r2 = _mm256_loadu2_m128(b + 24, b + 8), r3 = _mm256_loadu2_m128(b + 28, b + 12);
                    const V t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpacklo_ps(r2, r3);
                    const V t2 = _mm256_unpackhi_ps(r0, r1), t3 = _mm256_unpackhi_ps(r2, r3);
                    d[half][0] = _mm256_shuffle_ps(t0, t1, 0x44);
                    d[half][1] = _mm256_shuffle_ps(t0, t1, 0xEE);
                    d[half][2] = _mm256_shuffle_ps(t2, t3, 0x44);
                    d[half][3] = _mm256_shuffle_ps(t2, t3, 0xEE);
                }
                const V k0 = load(s.ksc + g * kBlock), k1 = load(s.ksc + g * kBlock + 8);
                const V z0 = load(s.kzr + g * kBlock), z1 = load(s.kzr + g * kBlock + 8);
                for (int h = 0; h < GN; ++h) {
                    const int gq = g0 + h;
                    const V sqv = set1(s.sq[gq * kMaxGroupsPerHead + g]);
                    const V qs = set1(s.qsum[gq * kMaxGroupsPerHead + g]);
                    const V qc = set1(s.qcorr[gq * kMaxGroupsPerHead + g]);
                    sc0[h] = fma(k0, fma(d[0][h], sqv, qc), fma(z0, qs, sc0[h]));
                    sc1[h] = fma(k1, fma(d[1][h], sqv, qc), fma(z1, qs, sc1[h]));
                }
            }
        } else {  // float K path (impl's kdot loops): sacc[h][g][t][8]
            for (int h = 0; h < GN; ++h) {
                const int gq = g0 + h;
                V a0 = zero(), a1 = zero();
                for (int g = 0; g < ng; ++g) {
                    const float* sa = s.sacc + (h * ng + g) * kBlock * 8;
                    const V r0 = reduce_rows(sa), r1 = reduce_rows(sa + 64);
                    const V sqv = set1(s.sq[gq * kMaxGroupsPerHead + g]);
                    const V qs = set1(s.qsum[gq * kMaxGroupsPerHead + g]);
                    const V qc = set1(s.qcorr[gq * kMaxGroupsPerHead + g]);
                    a0 = fma(load(s.ksc + g * kBlock), fma(r0, sqv, qc), fma(load(s.kzr + g * kBlock), qs, a0));
                    a1 = fma(load(s.ksc + g * kBlock + 8), fma(r1, sqv, qc), fma(load(s.kzr + g * kBlock + 8), qs, a1));
                }
                sc0[h] = a0;
                sc1[h] = a1;
            }
        }
        const bool tail = n < kBlock;
        if (tail)
            for (int h = 0; h < GN; ++h) {
                sc0[h] = mask_neg_inf(sc0[h], n);
                sc1[h] = mask_neg_inf(sc1[h], n - 8);
            }
        // Per-head maxima, new running maxima and rescale factors, 4 heads to a vector.
        V mh[4];
        for (int h = 0; h < 4; ++h) mh[h] = h < GN ? max(sc0[h], sc1[h]) : max(sc0[0], sc1[0]);
        const __m128 mx = hmax4(mh[0], mh[1], mh[2], mh[3]);
        alignas(16) float mo[4];
        for (int h = 0; h < 4; ++h) mo[h] = s.m[g0 + (h < GN ? h : 0)];
        const __m128 m_old = _mm_load_ps(mo);
        const __m128 m_new = _mm_max_ps(mx, m_old);
        __m128 al = _mm256_castps256_ps128(exp2_fast(_mm256_castps128_ps256(_mm_sub_ps(m_old, m_new))));
        al = _mm_blendv_ps(al, _mm_set1_ps(1.f), _mm_cmpeq_ps(m_new, m_old));          // no new max: 1 exactly
        al = _mm_andnot_ps(_mm_cmpeq_ps(m_old, _mm_set1_ps(-INFINITY)), al);           // first block: 0
        alignas(16) float mn[4];
        _mm_store_ps(mn, m_new);
        for (int h = 0; h < GN; ++h) s.m[g0 + h] = mn[h];
        _mm_storeu_ps(s.p, al);  // alpha of each head for the V phase
        const V m8 = _mm256_castps128_ps256(m_new), a8 = _mm256_castps128_ps256(al);
        V p0[GN], p1[GN];
#pragma GCC unroll 1
        for (int h = 0; h < GN; ++h) {  // rolled loops here and below: code size (op cache)
            const __m256i ih = _mm256_set1_epi32(h);
            const V mv = _mm256_permutevar8x32_ps(m8, ih), av = _mm256_permutevar8x32_ps(a8, ih);
            p0[h] = exp2_fast(sub(sc0[h], mv));
            p1[h] = exp2_fast(sub(sc1[h], mv));
            if (tail) {
                p0[h] = mask_zero(p0[h], n);
                p1[h] = mask_zero(p1[h], n - 8);
            }
            float* la = s.lacc + (g0 + h) * 8;  // lanes summed once per chunk
            store(la, fma(load(la), av, add(p0[h], p1[h])));
        }
        if (!int_pv) {
            for (int g = 0; g < ng; ++g) {
                const V s0 = load(s.vsc + g * kBlock), s1 = load(s.vsc + g * kBlock + 8);
                const V z0 = load(s.vzr + g * kBlock), z1 = load(s.vzr + g * kBlock + 8);
                for (int h = 0; h < GN; ++h) {
                    store(s.w + (g * kMaxTile + h) * kBlock, mul(p0[h], s0));
                    store(s.w + (g * kMaxTile + h) * kBlock + 8, mul(p1[h], s1));
                    float* z = s.zacc + (int64_t(g0 + h) * kMaxGroupsPerHead + g) * 8;
                    store(z, fma(p0[h], z0, fma(p1[h], z1, mul(load(z), _mm256_broadcast_ss(s.p + h)))));
                }
            }
            return;
        }
        // Integer PV: u8 weights per half block (quantize_weights' format and rounding), the
        // half maxima, units and ratios of all heads in one vector (lanes 2h, 2h + 1).
        const V mid = set1(0.5f * float((1 << BITS) - 1));
        for (int g = 0; g < ng; ++g) {
            const V s0 = load(s.vsc + g * kBlock), s1 = load(s.vsc + g * kBlock + 8);
            V x[8];
            for (int h = 0; h < 4; ++h) {
                const int hh = h < GN ? h : 0;
                x[2 * h] = mul(p0[hh], s0);
                x[2 * h + 1] = mul(p1[hh], s1);
            }
            const V hm = hmax8(x);                                 // half maxima
            const V mxv = max(hm, _mm256_permute_ps(hm, 0xB1));    // head maxima (both lanes)
            const V inv_mx = rcp_pos(mxv);
            const __m256i r = _mm256_cvttps_epi32(add(mul(mul(set1(32767.f), hm), inv_mx), set1(0.5f)));
            const __m256i ratio = _mm256_or_si256(r, _mm256_srli_epi64(r, 16));  // lanes 2h: r0 | r1 << 16
            const V scale = mul(mxv, set1(1.f / (255.f * 32767.f)));
            const V rf = _mm256_cvtepi32_ps(r);
            const V unit = mul(rf, scale);
            const V invu = mul(mul(set1(255.f * 32767.f), inv_mx), rcp_pos(rf));
            alignas(32) float scl[8];
            alignas(32) uint32_t rat[8];
            store(scl, scale);
            _mm256_store_si256(reinterpret_cast<__m256i*>(rat), ratio);
            const V z0 = load(s.vzr + g * kBlock), z1 = load(s.vzr + g * kBlock + 8);
#pragma GCC unroll 1
            for (int h = 0; h < GN; ++h) {
                const int hg = h * kMaxGroupsPerHead + g;
                s.wscale[hg] = scl[2 * h];
                s.wratio[hg] = rat[2 * h];
                const __m256i i0x = _mm256_set1_epi32(2 * h), i1x = _mm256_set1_epi32(2 * h + 1);
                const V i0 = _mm256_permutevar8x32_ps(invu, i0x), i1 = _mm256_permutevar8x32_ps(invu, i1x);
                const V u0 = _mm256_permutevar8x32_ps(unit, i0x), u1 = _mm256_permutevar8x32_ps(unit, i1x);
                const __m256i lim = _mm256_set1_epi32(255);
                const V x0 = mul(p0[h], s0), x1 = mul(p1[h], s1);  // recomputed: fewer live registers
                const __m256i q0 = _mm256_min_epi32(_mm256_cvtps_epi32(mul(x0, i0)), lim);  // nearest even
                const __m256i q1 = _mm256_min_epi32(_mm256_cvtps_epi32(mul(x1, i1)), lim);
                const V err = add(_mm256_fnmadd_ps(_mm256_cvtepi32_ps(q0), u0, x0), _mm256_fnmadd_ps(_mm256_cvtepi32_ps(q1), u1, x1));
                const __m256i q16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(q0, q1), 0xD8);
                const __m128i q8 = _mm_packus_epi16(_mm256_castsi256_si128(q16), _mm256_extracti128_si256(q16, 1));
                uint32_t* pairs = s.wpair + hg * (kBlock / 2);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(pairs), _mm_unpacklo_epi16(q8, q8));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(pairs + 4), _mm_unpackhi_epi16(q8, q8));
                // zero part: alpha-scaled, plus this block's p * zero, plus mid * rounding errors
                float* z = s.zacc + (int64_t(g0 + h) * kMaxGroupsPerHead + g) * 8;
                store(z, fma(err, mid, fma(p0[h], z0, fma(p1[h], z1, mul(load(z), _mm256_broadcast_ss(s.p + h))))));
            }
        }
    }

    // Start of an integer PV block: o *= alpha per head; r = the block's 16 rows, a short block
    // padded with its last row (the weights of tokens >= n are 0).
    template <int GN, int HD>
    static inline void begin_pv_block(const uint8_t* const* rows, int n, const float* alpha, float* o, const uint8_t** r) {
        for (int h = 0; h < GN; ++h)
            if (alpha[h] != 1.f) {
                const V al = set1(alpha[h]);
                for (int i = 0; i < HD; i += 8) store(o + h * HD + i, mul(load(o + h * HD + i), al));
            }
        for (int t = 0; t < kBlock; ++t) r[t] = rows[t < n ? t : n - 1];
    }

    // Integer PV (INT4 / INT2, n >= 32): per 32-byte run of codes and shift, token pairs
    // interleaved byte-wise (vpunpck{l,h}bw) and multiplied by the pair's u8 weights
    // (vpmaddubsw: weights unsigned, codes <= 15 signed), s16 sums over each half block's 4
    // pairs (<= 4 * 2 * 255 * 15 < 2^15), the halves combined by vpmaddwd with their s16 unit
    // ratios (wratio), then o += wscale * sums in F32. o order: runs x shifts x 32 (pv_slot).
    template <int BITS, int GN, int HD>
    static inline void pv_int(const uint8_t* const* rows, int n, int nb, const uint32_t* wpair, const float* wscale,
                              const uint32_t* wratio, const float* alpha, float* o) {
        constexpr int per = 8 / BITS, kRuns = HD * BITS / 8 / 32;
        const uint8_t* r[kBlock];
        begin_pv_block<GN, HD>(rows, n, alpha, o, r);
        for (int cb = 0; cb < kRuns; ++cb) {
            const int g = cb * 32 / nb;
            // rolled: the unrolled shifts overflow the op cache (INT2 13% slower on Zen 3)
#pragma GCC unroll 1
            for (int sh = 0; sh < per; ++sh) pv_run_shift<BITS, GN, HD>(r, cb, g, sh, wpair, wscale, wratio, o);
        }
    }

    // One (run, shift) of pv_int: 8 token pairs x GN heads, then the F32 update of 32 dims per head.
    template <int BITS, int GN, int HD>
    static inline __attribute__((always_inline)) void pv_run_shift(const uint8_t* const* r, int cb, int g, int sh,
                                                                   const uint32_t* wpair, const float* wscale,
                                                                   const uint32_t* wratio, float* o) {
        constexpr int per = 8 / BITS;
        const __m256i mask = _mm256_set1_epi8(char((1 << BITS) - 1));
        __m256i lo[GN], hi[GN], lo0[GN], hi0[GN];
        for (int h = 0; h < GN; ++h) lo[h] = hi[h] = lo0[h] = hi0[h] = _mm256_setzero_si256();
        for (int half = 0; half < 2; ++half) {  // halves of 4 pairs (own units, s16 bound)
            if (half)
                for (int h = 0; h < GN; ++h) {
                    lo0[h] = lo[h], hi0[h] = hi[h];
                    lo[h] = hi[h] = _mm256_setzero_si256();
                }
#pragma GCC unroll 2
            for (int k = half * kBlock / 4; k < (half + 1) * kBlock / 4; ++k) {
                const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r[2 * k] + cb * 32));
                const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r[2 * k + 1] + cb * 32));
                const __m256i u0 = _mm256_and_si256(_mm256_srli_epi16(x0, BITS * sh), mask);
                const __m256i u1 = _mm256_and_si256(_mm256_srli_epi16(x1, BITS * sh), mask);
                const __m256i il = _mm256_unpacklo_epi8(u0, u1), ih = _mm256_unpackhi_epi8(u0, u1);
                for (int h = 0; h < GN; ++h) {
                    const __m256i wv = _mm256_set1_epi32(int(wpair[(h * kMaxGroupsPerHead + g) * (kBlock / 2) + k]));
                    lo[h] = _mm256_add_epi16(lo[h], _mm256_maddubs_epi16(wv, il));
                    hi[h] = _mm256_add_epi16(hi[h], _mm256_maddubs_epi16(wv, ih));
                }
            }
        }
        for (int h = 0; h < GN; ++h) {
            const V f = set1(wscale[h * kMaxGroupsPerHead + g]);
            float* oo = o + h * HD + (cb * per + sh) * 32;
            // lo holds dims 0-7 | 16-23 of the run, hi 8-15 | 24-31 (s16, halves 0 / 1 in
            // lo0 / lo); interleaved per dim and weighted by the halves' ratios.
            const __m256i rv = _mm256_set1_epi32(int(wratio[h * kMaxGroupsPerHead + g]));
            const V d0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_unpacklo_epi16(lo0[h], lo[h]), rv));
            const V d1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_unpackhi_epi16(lo0[h], lo[h]), rv));
            const V d2 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_unpacklo_epi16(hi0[h], hi[h]), rv));
            const V d3 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_unpackhi_epi16(hi0[h], hi[h]), rv));
            store(oo, fma(d0, f, load(oo)));
            store(oo + 8, fma(d1, f, load(oo + 8)));
            store(oo + 16, fma(d2, f, load(oo + 16)));
            store(oo + 24, fma(d3, f, load(oo + 24)));
        }
    }

    // o[h][V order] = o * alpha[h] + sum_t w[g][h][t] * codes_t, two vectors per pass.
    template <int BITS, int GN, int HD>
    static inline void pv(const uint8_t* const* rows, int n, int nb, int G, const float* w, const float* alpha,
                          float* o) {
        constexpr int per = 8 / BITS;
        for (int v = 0; v < HD / 8; v += 2) {
            const int g = ((v / per) * 8) / nb;
            const float* wg = w + g * kMaxTile * kBlock;
            V a0[GN], a1[GN];
            for (int h = 0; h < GN; ++h) {
                const V al = set1(alpha[h]);
                a0[h] = mul(load(o + h * HD + v * 8), al);
                a1[h] = mul(load(o + h * HD + v * 8 + 8), al);
            }
            for (int t = 0; t < n; ++t) {
                V c0, c1;
                codes2<BITS>(rows[t], v, c0, c1);
                for (int h = 0; h < GN; ++h) {
                    const V wb = _mm256_broadcast_ss(wg + h * kBlock + t);
                    a0[h] = fma(wb, c0, a0[h]);
                    a1[h] = fma(wb, c1, a1[h]);
                }
            }
            for (int h = 0; h < GN; ++h) {
                store(o + h * HD + v * 8, a0[h]);
                store(o + h * HD + v * 8 + 8, a1[h]);
            }
        }
    }
};


}  // namespace
}  // namespace attn4j::cpu
