// Quantize-on-write for the INT8 / INT4 / INT2 KV formats and its inverse (see quantize.h and
// attn4j_kv_quant in attn4j.h). Plain, exact scalar code: it runs once per appended token.
//
// Per group of G values along head_dim (x already rotated):
//   lo = clip * min, hi = clip * max, scale = (hi - lo) / (2^bits - 1), zero = lo,
//   code = clamp(round((x - zero) / scale), 0, 2^bits - 1), x ~= code * scale + zero.
// scale and zero are first rounded to the meta dtype (F16 or F32) and the codes are computed
// against the stored values, so dequantization uses exactly what the encoder assumed.
// Rounding: half away from zero (floor(v + 0.5) with v >= 0 after the clamp at 0).
// Constant groups (max == min, or a scale that rounds to 0 in the meta dtype): scale 0, codes 0,
// zero = min WITHOUT the clip, so the group decodes exactly (up to the meta dtype's rounding).
// Packing: planar within a group, n = G * bits / 8 bytes: value j sits in byte j % n at bit
// bits * (j / n).
#include "cpu/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"

namespace attn4j::cpu {

void hadamard_inplace(float* x, int n) {
    // Unnormalised fast Walsh-Hadamard transform (Sylvester order: H_2n = [[H, H], [H, -H]],
    // symmetric, so x H == H x), then 1 / sqrt(n).
    for (int h = 1; h < n; h *= 2) {
        for (int i = 0; i < n; i += 2 * h) {
            for (int j = i; j < i + h; ++j) {
                const float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
    }
    const float s = float(1.0 / std::sqrt(double(n)));
    for (int i = 0; i < n; ++i) x[i] *= s;
}

void rotate_row(const float* x, float* y, int n, attn4j_rotation kind, const float* matrix) {
    if (kind == ATTN4J_ROTATION_MATRIX && matrix) {
        // y_j = sum_i x_i R[i][j], accumulated in double.
        std::vector<double> acc(size_t(n), 0.0);
        for (int i = 0; i < n; ++i) {
            const double xi = x[i];
            const float* r = matrix + int64_t(i) * n;
            for (int j = 0; j < n; ++j) acc[size_t(j)] += xi * r[j];
        }
        for (int j = 0; j < n; ++j) y[j] = float(acc[size_t(j)]);
        return;
    }
    if (x != y) std::memmove(y, x, size_t(n) * sizeof(float));
    if (kind == ATTN4J_ROTATION_HADAMARD) hadamard_inplace(y, n);
}

void unrotate_row(const float* x, float* y, int n, attn4j_rotation kind, const float* matrix) {
    if (kind == ATTN4J_ROTATION_MATRIX && matrix) {
        // y_i = sum_j x_j R[i][j] (x R^T).
        for (int i = 0; i < n; ++i) {
            const float* r = matrix + int64_t(i) * n;
            double acc = 0.0;
            for (int j = 0; j < n; ++j) acc += double(x[j]) * r[j];
            y[i] = float(acc);
        }
        return;
    }
    // H / sqrt(n) is symmetric and orthonormal: its own inverse.
    if (x != y) std::memmove(y, x, size_t(n) * sizeof(float));
    if (kind == ATTN4J_ROTATION_HADAMARD) hadamard_inplace(y, n);
}

namespace {

inline float round_meta(float v, attn4j_dtype meta) {
    return meta == ATTN4J_DTYPE_F16 ? f16_to_f32(f32_to_f16(v)) : v;
}

inline void store_meta(void* meta, attn4j_dtype dt, int i, float v) {
    if (dt == ATTN4J_DTYPE_F16) {
        const uint16_t h = f32_to_f16(v);
        std::memcpy(static_cast<uint8_t*>(meta) + 2 * i, &h, 2);
    } else {
        std::memcpy(static_cast<uint8_t*>(meta) + 4 * i, &v, 4);
    }
}

inline float read_meta(const void* meta, attn4j_dtype dt, int i) {
    if (dt == ATTN4J_DTYPE_F16) {
        uint16_t h;
        std::memcpy(&h, static_cast<const uint8_t*>(meta) + 2 * i, 2);
        return f16_to_f32(h);
    }
    float f;
    std::memcpy(&f, static_cast<const uint8_t*>(meta) + 4 * i, 4);
    return f;
}

}  // namespace

void quantize_row(const float* x, const QuantFormat& f, float clip, uint8_t* codes, void* meta) {
    const int G = f.group_size, n = f.group_code_bytes(), qmax = f.max_code();
    std::memset(codes, 0, size_t(f.code_bytes()));
    for (int g = 0; g < f.groups(); ++g) {
        const float* xg = x + g * G;
        float mn = xg[0], mx = xg[0];
        for (int j = 1; j < G; ++j) {
            mn = std::min(mn, xg[j]);
            mx = std::max(mx, xg[j]);
        }
        const float lo = clip * mn, hi = clip * mx;
        float scale = round_meta((hi - lo) / float(qmax), f.meta_dtype);
        float zero = round_meta(lo, f.meta_dtype);
        if (!(mx > mn) || !(scale > 0.f)) {
            scale = 0.f;
            zero = round_meta(mn, f.meta_dtype);
        }
        store_meta(meta, f.meta_dtype, 2 * g, scale);
        store_meta(meta, f.meta_dtype, 2 * g + 1, zero);
        if (scale == 0.f) continue;  // codes stay 0
        uint8_t* cg = codes + g * n;
        for (int j = 0; j < G; ++j) {
            float v = (xg[j] - zero) / scale;
            v = std::min(std::max(v, 0.f), float(qmax));
            const int c = int(std::floor(v + 0.5f));
            cg[j % n] |= uint8_t(std::min(c, qmax) << (f.bits * (j / n)));
        }
    }
}

void dequantize_row(const uint8_t* codes, const void* meta, const QuantFormat& f, float* x) {
    const int G = f.group_size;
    for (int g = 0; g < f.groups(); ++g) {
        const float scale = read_meta(meta, f.meta_dtype, 2 * g);
        const float zero = read_meta(meta, f.meta_dtype, 2 * g + 1);
        for (int j = 0; j < G; ++j) x[g * G + j] = float(code_at(codes, f, g * G + j)) * scale + zero;
    }
}

}  // namespace attn4j::cpu
