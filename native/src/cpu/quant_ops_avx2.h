// AVX2 + FMA + F16C policy of the fused quantized decode kernels (decode_quant_impl.h):
// vpmaddubsw / vpmaddwd integer dot products for QK, integer (u8 weights) or 8-wide F32 PV.
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

    // K phase of a block, INT4 / INT2 with NB code bytes per group (compile time, >= 32): per
    // token and group as kdot_i8, fully unrolled; q = s8 q of the tile's first head
    // ([GN][2][HD]), sacc[((h * ng + g) * kBlock + t) * 8].
    template <int BITS, int GN, int HD, int NB>
    static inline void kblock_i8(const uint8_t* base, const int64_t* coff, int n, const int8_t* q, float* sacc) {
        constexpr int per = 8 / BITS, G = NB * 8 / BITS, ng = HD / G;
        const __m256i mask = _mm256_set1_epi8(char((1 << BITS) - 1));
        const __m256i w127 = _mm256_set1_epi16(127), ones = _mm256_set1_epi16(1);
        // Heads in passes of (up to) 2: 4 s16 accumulators live, no spills; the codes are
        // re-shifted per pass (cheap).
        constexpr int HP = GN < 2 ? GN : 2;
        for (int t = 0; t < n; ++t) {
            const uint8_t* row = base + coff[t];
            for (int g = 0; g < ng; ++g) {
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
                    for (int h = 0; h < HP; ++h)
                        _mm256_storeu_ps(sacc + (((h0 + h) * ng + g) * kBlock + t) * 8,
                                         _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_madd_epi16(acc[h], w127), _mm256_madd_epi16(res[h], ones))));
                }
            }
        }
    }

    // K phase of a block, INT8 with NB code bytes per group (compile time, multiple of 16): as
    // kdot_i16, fully unrolled; q = s16 q of the tile's first head ([GN][HD]).
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
                for (int h = 0; h < GN; ++h) _mm256_storeu_ps(sacc + ((h * ng + g) * kBlock + t) * 8, _mm256_cvtepi32_ps(acc[h]));
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
        const __m256i mask = _mm256_set1_epi8(char((1 << BITS) - 1));
        const uint8_t* r[kBlock];
        begin_pv_block<GN, HD>(rows, n, alpha, o, r);
        for (int cb = 0; cb < kRuns; ++cb) {
            const int g = cb * 32 / nb;
#pragma GCC unroll 4
            for (int sh = 0; sh < per; ++sh) {
                __m256i lo[GN], hi[GN], lo0[GN], hi0[GN];
                for (int h = 0; h < GN; ++h) lo[h] = hi[h] = _mm256_setzero_si256();
#pragma GCC unroll 8
                for (int k = 0; k < kBlock / 2; ++k) {
                    if (k == kBlock / 4)
                        for (int h = 0; h < GN; ++h) {
                            lo0[h] = lo[h], hi0[h] = hi[h];
                            lo[h] = hi[h] = _mm256_setzero_si256();
                        }
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
