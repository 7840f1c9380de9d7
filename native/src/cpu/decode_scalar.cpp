// Portable scalar decode chunk kernel (one key per block): the reference-grade fallback for CPUs
// without AVX2/FMA/F16C, and for ATTN4J_ISA=scalar.
#include <cstring>

#include "core/dtype.h"
#include "cpu/decode_kernel_impl.h"

namespace attn4j::cpu {
namespace {

using namespace decode_impl;

struct ScalarOps {
    static constexpr int W = 1;
    static constexpr int kRegs = 16;
    static constexpr int kPrefetchBlocks = 32;  // look-ahead, in keys
    static constexpr int kPrefetchLocality = 3;  // __builtin_prefetch locality (1: prefetcht2)
    static constexpr int kTriggerBlocks = 0;  // no streamer triggers (the prefetch above covers it)
    static constexpr int kTriggerLines = 0;
    using V = float;
    static inline V zero() { return 0.f; }
    static inline V set1(float x) { return x; }
    static inline V load(const float* p) { return *p; }
    static inline void store(float* p, V v) { *p = v; }
    // Product exact in double, one rounding: as accurate as a hardware FMA.
    static inline V fma(V a, V b, V c) { return float(double(a) * double(b) + double(c)); }
    static inline V mul(V a, V b) { return a * b; }
    static inline V add(V a, V b) { return a + b; }
    static inline V sub(V a, V b) { return a - b; }
    static inline float hmax(V v) { return v; }
    static inline float hsum(V v) { return v; }

    static inline void load_bf16_pair(const uint16_t* p, V& even, V& odd) {
        even = load_kv<ATTN4J_DTYPE_BF16>(p);
        odd = load_kv<ATTN4J_DTYPE_BF16>(p + 1);
    }

    template <int DT, class T>
    static inline V load_kv(const T* p) {
        if constexpr (DT == ATTN4J_DTYPE_F32) {
            return *p;
        } else if constexpr (DT == ATTN4J_DTYPE_F16) {
            return f16_to_f32(*p);
        } else {
            const uint32_t bits = uint32_t(*p) << 16;
            float f;
            std::memcpy(&f, &bits, 4);
            return f;
        }
    }
    static inline V mask_neg_inf(V s, int) { return s; }
    static inline V mask_zero(V s, int) { return s; }
    static inline V reduce_rows(const float* a) { return *a; }
    static inline V exp2(V x) { return std::exp2(x); }
    static inline float exp2_scalar(float x) { return std::exp2(x); }
};

}  // namespace

void decode_chunk_scalar(const DecodeChunk& c) { dispatch_chunk<ScalarOps>(c); }

}  // namespace attn4j::cpu
