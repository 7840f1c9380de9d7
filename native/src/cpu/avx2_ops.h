// 8-lane F32 primitives shared by the AVX2 decode kernels (float: decode_avx2.cpp, quantized:
// decode_quant_avx2.cpp). Include only from files compiled with the AVX2 flags (`_avx2.cpp`).
#pragma once

#include <immintrin.h>

#include <cmath>

#include "cpu/decode_kernel_impl.h"  // exp2 polynomial coefficients

namespace attn4j::cpu {
namespace {  // one copy per including ISA unit (see quant_ops_avx2.h)

struct Avx2FloatOps {
    using V = __m256;
    static inline V zero() { return _mm256_setzero_ps(); }
    static inline V set1(float x) { return _mm256_set1_ps(x); }
    static inline V load(const float* p) { return _mm256_loadu_ps(p); }
    static inline void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static inline V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static inline V add(V a, V b) { return _mm256_add_ps(a, b); }
    static inline V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static inline V max(V a, V b) { return _mm256_max_ps(a, b); }
    static inline float hmax(V v) {
        __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        x = _mm_max_ps(x, _mm_movehl_ps(x, x));
        x = _mm_max_ss(x, _mm_movehdup_ps(x));
        return _mm_cvtss_f32(x);
    }
    static inline float hsum(V v) {
        __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        x = _mm_add_ss(x, _mm_movehdup_ps(x));
        return _mm_cvtss_f32(x);
    }
    static inline V tail_mask(int n) {
        const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx));
    }
    static inline V mask_neg_inf(V s, int n) {
        return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), s, tail_mask(n));
    }
    static inline V mask_zero(V s, int n) { return _mm256_and_ps(s, tail_mask(n)); }

    // 8 vectors (8 floats apart) -> lane k holds the sum of vector k.
    static inline V reduce_rows(const float* a) {
        const V t0 = _mm256_hadd_ps(load(a + 0), load(a + 8));
        const V t1 = _mm256_hadd_ps(load(a + 16), load(a + 24));
        const V t2 = _mm256_hadd_ps(load(a + 32), load(a + 40));
        const V t3 = _mm256_hadd_ps(load(a + 48), load(a + 56));
        const V u0 = _mm256_hadd_ps(t0, t1);
        const V u1 = _mm256_hadd_ps(t2, t3);
        return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
    }

    // 2^x for x <= 0; below -126 it returns 2^-126 (callers mask lanes that must be 0).
    static inline V exp2(V x) {
        using namespace decode_impl;
        x = _mm256_max_ps(x, _mm256_set1_ps(-126.f));
        const V n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const V f = _mm256_sub_ps(x, n);
        V p = _mm256_set1_ps(kExp2C7);
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C6));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C5));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C4));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C3));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C2));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C1));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
        const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    }
    static inline float exp2_scalar(float x) { return std::exp2(x); }
};

}  // namespace
}  // namespace attn4j::cpu
