// AVX2 + FMA + F16C decode chunk kernel: 8 keys per block, 8-lane F32 math. Compiled with the
// AVX2 flags (file name suffix), called only when cpu_features() reports AVX2, FMA and F16C.
#include <immintrin.h>

#include "cpu/avx2_ops.h"
#include "cpu/decode_kernel_impl.h"

namespace attn4j::cpu {
namespace {

using namespace decode_impl;

struct Avx2Ops : Avx2FloatOps {
    static constexpr int W = 8;
    static constexpr int kRegs = 16;
    static constexpr int kPrefetchBlocks = 4;  // look-ahead, in blocks of W keys (32 keys)
    static constexpr int kPrefetchLocality = 1;  // __builtin_prefetch locality (1: prefetcht2)
    static constexpr int kTriggerBlocks = 16;  // streamer triggers, in blocks of W keys (16*W = 128 keys)
    static constexpr int kTriggerLines = 4;   // lines per run of rows

    static inline void load_bf16_pair(const uint16_t* p, V& even, V& odd) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        even = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
        odd = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(int(0xFFFF0000u))));
    }

    template <int DT, class T>
    static inline V load_kv(const T* p) {
        if constexpr (DT == ATTN4J_DTYPE_F32) {
            return _mm256_loadu_ps(p);
        } else if constexpr (DT == ATTN4J_DTYPE_F16) {
            return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        } else {
            const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
            return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
        }
    }
};

}  // namespace

void decode_chunk_avx2(const DecodeChunk& c) { dispatch_chunk<Avx2Ops>(c); }

}  // namespace attn4j::cpu
