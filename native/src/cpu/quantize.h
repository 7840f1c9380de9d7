// Quantize-on-write for the INT8 / INT4 / INT2 KV formats (attn4j.h, attn4j_kv_quant): rotation
// (none, fast Walsh-Hadamard, or a per-head matrix), asymmetric min/max per group with a clipping
// ratio, planar code packing. Also the inverse, used by reference code, tests and chunked prefill.
#pragma once

#include <cstdint>

#include "core/kernel_args.h"

namespace attn4j::cpu {

// x <- x H / sqrt(n) in place (orthonormal Walsh-Hadamard, Sylvester order); n a power of 2.
void hadamard_inplace(float* x, int n);

// y = x R (forward: applied to K / V on write and to q before a quantized chunk).
// kind NONE copies; HADAMARD uses hadamard_inplace; MATRIX uses `matrix` [n][n] row-major.
// x and y may alias only for NONE / HADAMARD.
void rotate_row(const float* x, float* y, int n, attn4j_rotation kind, const float* matrix);
// y = x R^T (inverse: applied to an output computed in rotated V space).
void unrotate_row(const float* x, float* y, int n, attn4j_rotation kind, const float* matrix);

// Encodes one already-rotated vector x[head_dim]: codes -> `codes` (f.code_bytes() bytes, planar
// per group), {scale, zero} per group -> `meta` (f.meta_bytes() bytes of f.meta_dtype).
void quantize_row(const float* x, const QuantFormat& f, float clip, uint8_t* codes, void* meta);
// Decodes one vector (still in rotated space) into x[head_dim].
void dequantize_row(const uint8_t* codes, const void* meta, const QuantFormat& f, float* x);

// Code (0 .. 2^bits - 1) of value j (0 .. head_dim) of a token's packed codes.
inline int code_at(const uint8_t* codes, const QuantFormat& f, int j) {
    const int g = j / f.group_size, jj = j % f.group_size, n = f.group_code_bytes();
    return (codes[g * n + jj % n] >> (f.bits * (jj / n))) & f.max_code();
}

}  // namespace attn4j::cpu
