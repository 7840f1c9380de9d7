// Host buffers of one element type for the kernel tests: set() rounds to the dtype exactly as
// the library stores it (core/dtype.h conversions), get() reads it back, poison() fills NaN.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/dtype.h"

namespace a4j_test {

inline size_t dsize(attn4j_dtype d) { return d == ATTN4J_DTYPE_F32 ? 4 : 2; }
inline const char* dname(attn4j_dtype d) {
    return d == ATTN4J_DTYPE_F32 ? "f32" : d == ATTN4J_DTYPE_F16 ? "f16" : "bf16";
}

struct Buf {
    attn4j_dtype dt;
    std::vector<uint8_t> bytes;
    Buf(attn4j_dtype d, size_t n) : dt(d), bytes(n * dsize(d)) {}
    void set(size_t i, float v) {
        if (dt == ATTN4J_DTYPE_F32) {
            std::memcpy(&bytes[i * 4], &v, 4);
        } else {
            const uint16_t h = dt == ATTN4J_DTYPE_F16 ? attn4j::f32_to_f16(v) : attn4j::f32_to_bf16(v);
            std::memcpy(&bytes[i * 2], &h, 2);
        }
    }
    float get(size_t i) const {
        if (dt == ATTN4J_DTYPE_F32) {
            float f;
            std::memcpy(&f, &bytes[i * 4], 4);
            return f;
        }
        uint16_t h;
        std::memcpy(&h, &bytes[i * 2], 2);
        return dt == ATTN4J_DTYPE_F16 ? attn4j::f16_to_f32(h) : attn4j::bf16_to_f32(h);
    }
    void poison() {
        const size_t n = bytes.size() / dsize(dt);
        for (size_t i = 0; i < n; ++i) {
            if (dt == ATTN4J_DTYPE_F32) {
                const float f = NAN;
                std::memcpy(&bytes[i * 4], &f, 4);
            } else {
                const uint16_t h = dt == ATTN4J_DTYPE_F16 ? 0x7E00 : 0x7FC0;
                std::memcpy(&bytes[i * 2], &h, 2);
            }
        }
    }
    void* data() { return bytes.data(); }
};

}  // namespace a4j_test
