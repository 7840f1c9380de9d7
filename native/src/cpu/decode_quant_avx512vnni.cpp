// AVX-512 VNNI fused quantized decode chunk kernel: decode_quant_impl.h over a policy that keeps
// the AVX2 policy's 8-lane softmax and meta handling (quant_ops_avx2.h) and replaces the integer
// phases, where the time goes, with VNNI:
//   K (INT4 / INT2): vpdpbusd of the shifted+masked code bytes (u8) with q and its residual (s8,
//       the AVX2 policy's unit order) into s32: one instruction per 64 bytes where AVX2 needs
//       vpmaddubsw + vpaddw per 32. The q vectors of a head pass are loaded once per block of
//       16 tokens and stay in registers. Rows of 32 bytes (INT2 / INT4 at the smaller head dims)
//       go two tokens to a zmm.
//   K (INT8): vpdpwssd of zero-extended codes with s16 q.
//   PV (INT4 / INT2): the weights p * scale of a block are quantized to u8 with one unit per half
//       block (vpmovusdb), four tokens' codes are interleaved byte-wise per dimension, and vpdpbusd
//       accumulates weight quads x code quads in s32 per half; the halves meet in F32.
// Compiled with the AVX-512 + VNNI flags (file name suffix); called only when cpu_features()
// reports AVX-512F/BW/VL/DQ and AVX512-VNNI.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12, _mm512_undefined_* in its headers
#endif
#include "cpu/quant_ops_avx2.h"

namespace attn4j::cpu {
namespace {

struct Avx512VnniQuantOps : Avx2QuantOps {
    // The per-head softmax chain of decode_quant_impl.h, reading this policy's K layout
    // (sacc[h][g][t][8]) and calling its quantize_weights (quad format); Avx2QuantOps::softmax_tile
    // reads the AVX2 reduced K layout and writes the AVX2 pair format. (Not measured on AVX-512
    // hardware yet: the 2026-12-02 session had a Zen 3 VM without AVX-512.)
    static constexpr bool kTileSoftmax = false;
    static inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }
    static inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
    static inline __m512i join(__m256i lo, __m256i hi) {
        return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    }
    // 127 * a + b (the K phase's q = 127 * q_int + q_res recombination), in s32.
    static inline __m512i times127_plus(__m512i a, __m512i b) {
        return _mm512_add_epi32(_mm512_sub_epi32(_mm512_slli_epi32(a, 7), a), b);
    }
    static inline __m256 fold_ps(__m512i v) {  // 16 s32 -> 8 F32 (lane i + lane i + 8)
        return _mm256_cvtepi32_ps(_mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)));
    }
    template <int BITS>
    static inline __m512i unit(__m512i x, int sh) {  // code bits of shift sh, one per byte
        const __m512i mask = _mm512_set1_epi8(char((1 << BITS) - 1));
        return _mm512_and_si512(sh ? _mm512_srli_epi16(x, BITS * sh) : x, mask);
    }

    // K phase, INT4 / INT2 (see quant_ops_avx2.h for the q layout and sacc). A zmm holds 64 code
    // bytes of one token (two 32-byte runs) or, for 32-byte rows, one run of two tokens.
    template <int BITS, int GN, int HD, int NB>
    static inline void kblock_i8(const uint8_t* base, const int64_t* coff, int n, const int8_t* q, float* sacc) {
        if constexpr (HD * BITS / 8 < 32)  // never taken: groups of n < 32 bytes use the float K path
            Avx2QuantOps::kblock_i8<BITS, GN, HD, NB>(base, coff, n, q, sacc);
        else
            kblock_vnni<BITS, GN, HD, NB>(base, coff, n, q, sacc);
    }

    template <int BITS, int GN, int HD, int NB>
    static inline void kblock_vnni(const uint8_t* base, const int64_t* coff, int n, const int8_t* q, float* sacc) {
        constexpr int per = 8 / BITS, G = NB * per, ng = HD / G, CB = HD * BITS / 8;
        constexpr bool pairs = CB == 32;
        constexpr int Z = pairs ? 1 : CB / 64;  // zmm of codes per token
        constexpr int QV = Z * per;             // q vectors per head (each also has a residual)
        constexpr int HP = GN * QV <= 8 ? GN : (2 * QV <= 8 ? 2 : 1);  // heads per pass: <= 16 q regs
        static_assert(pairs || CB % 64 == 0, "row bytes: 32 or a multiple of 64");
        for (int h0 = 0; h0 < GN; h0 += HP) {
            __m512i qi[HP][QV], qr[HP][QV];
            for (int h = 0; h < HP; ++h)
                for (int z = 0; z < Z; ++z)
                    for (int sh = 0; sh < per; ++sh) {
                        const int8_t* qh = q + 2 * (h0 + h) * HD;
                        if constexpr (pairs) {
                            qi[h][sh] = _mm512_broadcast_i64x4(load256(qh + sh * 32));
                            qr[h][sh] = _mm512_broadcast_i64x4(load256(qh + HD + sh * 32));
                        } else {
                            const int u0 = ((2 * z) * per + sh) * 32, u1 = ((2 * z + 1) * per + sh) * 32;
                            qi[h][z * per + sh] = join(load256(qh + u0), load256(qh + u1));
                            qr[h][z * per + sh] = join(load256(qh + HD + u0), load256(qh + HD + u1));
                        }
                    }
            auto out = [&](int h, int g, int t) { return sacc + (((h0 + h) * ng + g) * kBlock + t) * 8; };
            if constexpr (pairs) {
                // tokens t, t + 1 in the halves; an odd tail repeats the last row (masked later)
                for (int t = 0; t < n; t += 2) {
                    const __m512i x = join(load256(base + coff[t]), load256(base + coff[t + 1 < n ? t + 1 : t]));
                    __m512i acc[HP], res[HP];
                    for (int h = 0; h < HP; ++h) acc[h] = res[h] = _mm512_setzero_si512();
                    for (int sh = 0; sh < per; ++sh) {
                        const __m512i u = unit<BITS>(x, sh);
                        for (int h = 0; h < HP; ++h) {
                            acc[h] = _mm512_dpbusd_epi32(acc[h], u, qi[h][sh]);
                            res[h] = _mm512_dpbusd_epi32(res[h], u, qr[h][sh]);
                        }
                    }
                    for (int h = 0; h < HP; ++h) {
                        const __m512i v = times127_plus(acc[h], res[h]);
                        _mm256_storeu_ps(out(h, 0, t), _mm256_cvtepi32_ps(_mm512_castsi512_si256(v)));
                        _mm256_storeu_ps(out(h, 0, t + 1), _mm256_cvtepi32_ps(_mm512_extracti64x4_epi64(v, 1)));
                    }
                }
            } else if constexpr (NB >= 64) {
                // a group spans NB / 64 whole zmm
                constexpr int ZG = NB / 64;
                for (int t = 0; t < n; ++t) {
                    const uint8_t* row = base + coff[t];
                    for (int g = 0; g < ng; ++g) {
                        __m512i acc[HP], res[HP];
                        for (int h = 0; h < HP; ++h) acc[h] = res[h] = _mm512_setzero_si512();
                        for (int zz = 0; zz < ZG; ++zz) {
                            const int z = g * ZG + zz;
                            const __m512i x = load512(row + 64 * z);
                            for (int sh = 0; sh < per; ++sh) {
                                const __m512i u = unit<BITS>(x, sh);
                                for (int h = 0; h < HP; ++h) {
                                    acc[h] = _mm512_dpbusd_epi32(acc[h], u, qi[h][z * per + sh]);
                                    res[h] = _mm512_dpbusd_epi32(res[h], u, qr[h][z * per + sh]);
                                }
                            }
                        }
                        for (int h = 0; h < HP; ++h) _mm256_storeu_ps(out(h, g, t), fold_ps(times127_plus(acc[h], res[h])));
                    }
                }
            } else {
                // NB == 32: the halves of zmm z are groups 2z and 2z + 1
                for (int t = 0; t < n; ++t) {
                    const uint8_t* row = base + coff[t];
                    for (int z = 0; z < Z; ++z) {
                        const __m512i x = load512(row + 64 * z);
                        __m512i acc[HP], res[HP];
                        for (int h = 0; h < HP; ++h) acc[h] = res[h] = _mm512_setzero_si512();
                        for (int sh = 0; sh < per; ++sh) {
                            const __m512i u = unit<BITS>(x, sh);
                            for (int h = 0; h < HP; ++h) {
                                acc[h] = _mm512_dpbusd_epi32(acc[h], u, qi[h][z * per + sh]);
                                res[h] = _mm512_dpbusd_epi32(res[h], u, qr[h][z * per + sh]);
                            }
                        }
                        for (int h = 0; h < HP; ++h) {
                            const __m512i v = times127_plus(acc[h], res[h]);
                            _mm256_storeu_ps(out(h, 2 * z, t), _mm256_cvtepi32_ps(_mm512_castsi512_si256(v)));
                            _mm256_storeu_ps(out(h, 2 * z + 1, t), _mm256_cvtepi32_ps(_mm512_extracti64x4_epi64(v, 1)));
                        }
                    }
                }
            }
        }
    }

    // K phase, INT8: 32 codes zero-extended to s16 per zmm, vpdpwssd with s16 q (natural order);
    // NB (the group's bytes) a multiple of 32.
    template <int GN, int HD, int NB>
    static inline void kblock_i16(const uint8_t* base, const int64_t* coff, int n, const int16_t* q, float* sacc) {
        constexpr int ng = HD / NB, QV = HD / 32, HP = GN * QV <= 16 ? GN : (2 * QV <= 16 ? 2 : 1);
        static_assert(NB % 32 == 0, "INT8 groups of 32, 64 or 128 codes");
        for (int h0 = 0; h0 < GN; h0 += HP) {
            __m512i qv[HP][QV];
            for (int h = 0; h < HP; ++h)
                for (int i = 0; i < QV; ++i) qv[h][i] = load512(q + (h0 + h) * HD + 32 * i);
            for (int t = 0; t < n; ++t) {
                const uint8_t* row = base + coff[t];
                for (int g = 0; g < ng; ++g) {
                    __m512i acc[HP];
                    for (int h = 0; h < HP; ++h) acc[h] = _mm512_setzero_si512();
                    for (int u = 0; u < NB / 32; ++u) {
                        const __m512i c = _mm512_cvtepu8_epi16(load256(row + g * NB + 32 * u));
                        for (int h = 0; h < HP; ++h) acc[h] = _mm512_dpwssd_epi32(acc[h], c, qv[h][g * NB / 32 + u]);
                    }
                    for (int h = 0; h < HP; ++h)
                        _mm256_storeu_ps(sacc + (((h0 + h) * ng + g) * kBlock + t) * 8, fold_ps(acc[h]));
                }
            }
        }
    }

    // u8 weights of a block of 16, one unit per half of 8 tokens (as on AVX2: a half whose weights
    // are far below the other's keeps its precision): quads[k] = wq[4k .. 4k + 3] (bytes),
    // *scale = unit of tokens 0-7, *ratio = the F32 bits of the unit of tokens 8-15;
    // zacc[lane] += mid * the rounding errors (w_t - unit_t * wq_t) of tokens lane and lane + 8.
    static inline void quantize_weights(const float* w, uint32_t* quads, float* scale, uint32_t* ratio, float* zacc,
                                        float mid) {
        // two 8-lane loads, as the halves were stored: one 16-lane load would miss store forwarding
        const __m256 x0 = _mm256_loadu_ps(w), x1 = _mm256_loadu_ps(w + 8);
        const float m0 = hmax(x0), m1 = hmax(x1);
        const float u0 = m0 * (1.f / 255.f), u1 = m1 * (1.f / 255.f);
        *scale = u0;
        std::memcpy(ratio, &u1, 4);
        const __m512 x = _mm512_insertf32x8(_mm512_castps256_ps512(x0), x1, 1);
        const __m512 inv = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(m0 > 0.f ? 255.f * rcp(m0) : 0.f)),
                                              _mm256_set1_ps(m1 > 0.f ? 255.f * rcp(m1) : 0.f), 1);
        const __m512 unit = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(u0)), _mm256_set1_ps(u1), 1);
        const __m512i wq = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x, inv)), _mm512_set1_epi32(255));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(quads), _mm512_cvtusepi32_epi8(wq));
        const __m512 err = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(wq), unit, x);
        const __m256 e8 = _mm256_add_ps(_mm512_castps512_ps256(err), _mm512_extractf32x8_ps(err, 1));
        _mm256_storeu_ps(zacc, _mm256_fmadd_ps(e8, _mm256_set1_ps(mid), _mm256_loadu_ps(zacc)));
    }

    // Integer PV runs: 64 bytes (a zmm per shift) where the row and the group allow, else 32 (a
    // zmm per pair of shifts).
    template <int BITS, int HD>
    static constexpr int pv_run(int nb) {
        return HD * BITS / 8 >= 64 && nb >= 64 ? 64 : 32;
    }
    // Accumulator order (pv_runs512 / pv_runs_pairs): four vectors j of vl lanes; lane i holds
    // byte 16 * (i / 4) + 4 * j + i % 4 (per 128-bit lane: the order vpunpck{l,h}bw +
    // vpunpck{l,h}wd of four rows produce). 64-byte runs: slot q = 64 * shift + 16 * j + i.
    // 32-byte runs: a zmm holds shifts 2P (lanes 0-7) and 2P + 1 (lanes 8-15):
    // slot q = 64 * P + 16 * j + lane.
    static inline void pv_slot(int q, int run, int /*per*/, int& sh, int& byte) {
        const int r = q % 64, j = r / 16, lane = r % 16;
        const int i = run == 64 ? lane : lane % 8;
        sh = run == 64 ? q / 64 : 2 * (q / 64) + lane / 8;
        byte = 16 * (i / 4) + 4 * j + i % 4;
    }

    // Four rows' units of one shift, interleaved per byte: c[j] lane i = the four tokens' codes of
    // byte 16 * (i / 4) + 4 * j + i % 4 (per 128-bit lane).
    template <class VI, class Unpack8Lo, class Unpack8Hi, class Unpack16Lo, class Unpack16Hi>
    static inline void interleave4(const VI* u, VI* c, Unpack8Lo l8, Unpack8Hi h8, Unpack16Lo l16, Unpack16Hi h16) {
        const VI a = l8(u[0], u[1]), b = h8(u[0], u[1]), e = l8(u[2], u[3]), d = h8(u[2], u[3]);
        c[0] = l16(a, e);
        c[1] = h16(a, e);
        c[2] = l16(b, d);
        c[3] = h16(b, d);
    }

    // o[h][pv_slot order] = o * alpha[h] + sum over the block's halves of unit_half * sum_t wq_t *
    // codes_t.
    template <int BITS, int GN, int HD>
    static inline void pv_int(const uint8_t* const* rows, int n, int nb, const uint32_t* wquads, const float* wscale,
                              const uint32_t* wunit1, const float* alpha, float* o) {
        const uint8_t* r[kBlock];
        begin_pv_block<GN, HD>(rows, n, alpha, o, r);
        if (pv_run<BITS, HD>(nb) == 64)
            pv_runs512<BITS, GN, HD>(r, nb, wquads, wscale, wunit1, o);
        else
            pv_runs_pairs<BITS, GN, HD>(r, nb, wquads, wscale, wunit1, o);
    }

    template <int BITS, int GN, int HD>
    static inline void pv_runs512(const uint8_t* const* r, int nb, const uint32_t* wq, const float* wscale,
                                  const uint32_t* wunit1, float* o) {
        constexpr int per = 8 / BITS, kRuns = HD * BITS / 8 / 64;
        for (int cb = 0; cb < kRuns; ++cb) {
            const int g = cb * 64 / nb;
            for (int sh = 0; sh < per; ++sh) {
                __m512i c[4][4];
                for (int k = 0; k < 4; ++k) {
                    __m512i u[4];
                    for (int i = 0; i < 4; ++i) u[i] = unit<BITS>(load512(r[4 * k + i] + cb * 64), sh);
                    interleave4(
                        u, c[k], [](__m512i a, __m512i b) { return _mm512_unpacklo_epi8(a, b); },
                        [](__m512i a, __m512i b) { return _mm512_unpackhi_epi8(a, b); },
                        [](__m512i a, __m512i b) { return _mm512_unpacklo_epi16(a, b); },
                        [](__m512i a, __m512i b) { return _mm512_unpackhi_epi16(a, b); });
                }
                accumulate<GN, HD>(c, wq, wscale, wunit1, g, o + (cb * per + sh) * 64);
            }
        }
    }

    // 32-byte runs: each row's run is broadcast to both halves of a zmm and shifted by two
    // different amounts (vpsrlvw), so one pass covers shifts 2P and 2P + 1.
    template <int BITS, int GN, int HD>
    static inline void pv_runs_pairs(const uint8_t* const* r, int nb, const uint32_t* wq, const float* wscale,
                                     const uint32_t* wunit1, float* o) {
        constexpr int per = 8 / BITS, kRuns = HD * BITS / 8 / 32;
        static_assert(per % 2 == 0, "shift pairs");
        const __m512i mask = _mm512_set1_epi8(char((1 << BITS) - 1));
        for (int cb = 0; cb < kRuns; ++cb) {
            const int g = cb * 32 / nb;
            for (int P = 0; P < per / 2; ++P) {
                const __m512i counts = join(_mm256_set1_epi16(short(BITS * 2 * P)), _mm256_set1_epi16(short(BITS * (2 * P + 1))));
                __m512i c[4][4];
                for (int k = 0; k < 4; ++k) {
                    __m512i u[4];
                    for (int i = 0; i < 4; ++i)
                        u[i] = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(load256(r[4 * k + i] + cb * 32)), counts), mask);
                    interleave4(
                        u, c[k], [](__m512i a, __m512i b) { return _mm512_unpacklo_epi8(a, b); },
                        [](__m512i a, __m512i b) { return _mm512_unpackhi_epi8(a, b); },
                        [](__m512i a, __m512i b) { return _mm512_unpacklo_epi16(a, b); },
                        [](__m512i a, __m512i b) { return _mm512_unpackhi_epi16(a, b); });
                }
                accumulate<GN, HD>(c, wq, wscale, wunit1, g, o + cb * per * 32 + 64 * P);
            }
        }
    }

    // o[h] slots oo .. oo + 64 += unit_half * sum_k wq_k . c[k][j] per half block (quads 0-1 and
    // 2-3; exact s32 sums of u8 x u8 quads).
    template <int GN, int HD>
    static inline void accumulate(const __m512i (&c)[4][4], const uint32_t* wq, const float* wscale,
                                  const uint32_t* wunit1, int g, float* oo) {
        for (int h = 0; h < GN; ++h) {
            const int hg = h * kMaxGroupsPerHead + g;
            const uint32_t* wh = wq + hg * (kBlock / 2);
            float u1;
            std::memcpy(&u1, wunit1 + hg, 4);
            const __m512 f0 = _mm512_set1_ps(wscale[hg]), f1 = _mm512_set1_ps(u1);
            float* oh = oo + h * HD;
            for (int j = 0; j < 4; ++j) {
                const __m512i a0 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi32(int(wh[0])), c[0][j]),
                                                       _mm512_set1_epi32(int(wh[1])), c[1][j]);
                const __m512i a1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi32(int(wh[2])), c[2][j]),
                                                       _mm512_set1_epi32(int(wh[3])), c[3][j]);
                _mm512_storeu_ps(oh + 16 * j, _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), f0,
                                                              _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), f1, _mm512_loadu_ps(oh + 16 * j))));
            }
        }
    }
};

}  // namespace

void decode_quant_chunk_avx512vnni(const QuantDecodeChunk& c) { quant_impl::dispatch<Avx512VnniQuantOps>(c); }

}  // namespace attn4j::cpu
