// Element types: names, sizes, and the scalar F16 / BF16 <-> F32 conversions used by baseline
// code (append, merge, validation, tests). Header-only and ISA-neutral (no F16C / AVX-512-BF16
// instructions), so it is safe to include from every translation unit.
#pragma once

#include <cstdint>
#include <cstring>

#include "attn4j.h"

namespace attn4j {

// "F32", "F16", "BF16", "I32", "INT8", "INT4", "INT2"; anything else -> "UNKNOWN".
inline const char* dtype_name(attn4j_dtype d) {
    switch (d) {
        case ATTN4J_DTYPE_F32: return "F32";
        case ATTN4J_DTYPE_F16: return "F16";
        case ATTN4J_DTYPE_BF16: return "BF16";
        case ATTN4J_DTYPE_I32: return "I32";
        case ATTN4J_DTYPE_INT8: return "INT8";
        case ATTN4J_DTYPE_INT4: return "INT4";
        case ATTN4J_DTYPE_INT2: return "INT2";
        default: return "UNKNOWN";
    }
}

// Bytes per element; 0 for an unknown dtype or a quantized KV format (see kv_token_bytes).
inline int dtype_size(attn4j_dtype d) {
    switch (d) {
        case ATTN4J_DTYPE_F32: return 4;
        case ATTN4J_DTYPE_F16: return 2;
        case ATTN4J_DTYPE_BF16: return 2;
        case ATTN4J_DTYPE_I32: return 4;
        default: return 0;
    }
}

inline bool is_float_dtype(attn4j_dtype d) {
    return d == ATTN4J_DTYPE_F32 || d == ATTN4J_DTYPE_F16 || d == ATTN4J_DTYPE_BF16;
}

inline const char* device_name(attn4j_device_type t) {
    switch (t) {
        case ATTN4J_DEVICE_CPU: return "CPU";
        case ATTN4J_DEVICE_CUDA: return "CUDA";
        default: return "UNKNOWN";
    }
}

inline uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

inline float f32_from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// ---- BF16 -------------------------------------------------------------------------------------
inline float bf16_to_f32(uint16_t h) { return f32_from_bits(uint32_t(h) << 16); }

// Round to nearest even; NaN stays NaN (quiet), infinities stay infinite.
inline uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

// ---- F16 (IEEE binary16) ----------------------------------------------------------------------
inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (mant << 13));  // inf / NaN
    if (exp != 0) return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
    if (mant == 0) return f32_from_bits(sign);  // +-0
    // subnormal: value = mant * 2^-24
    const float v = float(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
}

// Round to nearest even, overflow to infinity, NaN stays NaN.
inline uint16_t f32_to_f16(float f) {
    const uint32_t u = f32_bits(f);
    const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
    if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
    if (a >= 0x38800000u) {                                  // normal in f16 (>= 2^-14)
        const uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
        return uint16_t(sign | (r >> 13));
    }
    if (a < 0x33000000u) return sign;  // < 2^-25 rounds to 0
    // subnormal f16: shift the full mantissa, round to nearest even
    const uint32_t e = a >> 23;
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24 (e in 102..112)
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return uint16_t(sign | r);
}

// ---- generic element access ---------------------------------------------------------------------
inline float load_f32(const void* base, attn4j_dtype d, int64_t i) {
    switch (d) {
        case ATTN4J_DTYPE_F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
        case ATTN4J_DTYPE_BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
        default: return static_cast<const float*>(base)[i];
    }
}

inline void store_f32(void* base, attn4j_dtype d, int64_t i, float v) {
    switch (d) {
        case ATTN4J_DTYPE_F16: static_cast<uint16_t*>(base)[i] = f32_to_f16(v); break;
        case ATTN4J_DTYPE_BF16: static_cast<uint16_t*>(base)[i] = f32_to_bf16(v); break;
        default: static_cast<float*>(base)[i] = v; break;
    }
}

// True when the element's exponent is all ones (Inf or NaN), by bit pattern (works under
// -ffast-math too).
inline bool bits_nonfinite_f32(uint32_t u) { return (u & 0x7f800000u) == 0x7f800000u; }
inline bool bits_nonfinite_f16(uint16_t h) { return (h & 0x7c00u) == 0x7c00u; }
inline bool bits_nonfinite_bf16(uint16_t h) { return (h & 0x7f80u) == 0x7f80u; }

}  // namespace attn4j
