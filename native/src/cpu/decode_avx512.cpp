// AVX-512 decode chunk kernel: 16 keys per block, 16-lane F32 math; BF16 widened by shift,
// F16 by vcvtph2ps. Compiled with the AVX-512 flags (file name suffix), called only when
// cpu_features() reports AVX-512F/BW/VL/DQ.
// GCC 12 warns about _mm512_undefined_ps() inside its own intrinsic headers (false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "cpu/decode_kernel_impl.h"

namespace attn4j::cpu {
namespace {

using namespace decode_impl;

struct Avx512Ops {
    static constexpr int W = 16;
    static constexpr int kRegs = 32;
    static constexpr int kPrefetchBlocks = 2;  // look-ahead, in blocks of W keys (32 keys)
    static constexpr int kPrefetchLocality = 1;  // __builtin_prefetch locality (1: prefetcht2)
    static constexpr int kTriggerBlocks = 8;  // streamer triggers, in blocks of W keys (8*W = 128 keys)
    static constexpr int kTriggerLines = 4;   // lines per run of rows
    using V = __m512;
    static inline V zero() { return _mm512_setzero_ps(); }
    static inline V set1(float x) { return _mm512_set1_ps(x); }
    static inline V load(const float* p) { return _mm512_loadu_ps(p); }
    static inline void store(float* p, V v) { _mm512_storeu_ps(p, v); }
    static inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static inline V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static inline V add(V a, V b) { return _mm512_add_ps(a, b); }
    static inline V sub(V a, V b) { return _mm512_sub_ps(a, b); }
    static inline float hmax(V v) { return _mm512_reduce_max_ps(v); }
    static inline float hsum(V v) { return _mm512_reduce_add_ps(v); }

    static inline void load_bf16_pair(const uint16_t* p, V& even, V& odd) {
        const __m512i x = _mm512_loadu_si512(p);
        even = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
        odd = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(int(0xFFFF0000u))));
    }

    template <int DT, class T>
    static inline V load_kv(const T* p) {
        if constexpr (DT == ATTN4J_DTYPE_F32) {
            return _mm512_loadu_ps(p);
        } else if constexpr (DT == ATTN4J_DTYPE_F16) {
            return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        } else {
            const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
            return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
        }
    }

    static inline __mmask16 tail_mask(int n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }
    static inline V mask_neg_inf(V s, int n) {
        return _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), tail_mask(n), s);
    }
    static inline V mask_zero(V s, int n) { return _mm512_maskz_mov_ps(tail_mask(n), s); }

    // 16 vectors (16 floats apart) -> lane k holds the sum of vector k.
    static inline V reduce_rows(const float* a) {
        V t[8];
        for (int i = 0; i < 8; ++i) {
            const V x = load(a + (2 * i) * 16), y = load(a + (2 * i + 1) * 16);
            t[i] = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
        }
        V u[4];
        for (int i = 0; i < 4; ++i) {
            const __m512d x = _mm512_castps_pd(t[2 * i]), y = _mm512_castps_pd(t[2 * i + 1]);
            u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
        }
        const V w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
        const V w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 1, 3, 1)));
        return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(3, 1, 3, 1)));
    }

    // 2^x for x <= 0 (x = -inf gives 0).
    static inline V exp2(V x) {
        x = _mm512_max_ps(x, _mm512_set1_ps(-150.f));
        const V n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const V f = _mm512_sub_ps(x, n);
        V p = _mm512_set1_ps(kExp2C7);
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C6));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C5));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C4));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C3));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C2));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C1));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
        return _mm512_scalef_ps(p, n);
    }
    static inline float exp2_scalar(float x) { return std::exp2(x); }
};

}  // namespace

void decode_chunk_avx512(const DecodeChunk& c) { dispatch_chunk<Avx512Ops>(c); }

}  // namespace attn4j::cpu
