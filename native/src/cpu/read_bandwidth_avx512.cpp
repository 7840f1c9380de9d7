// AVX-512 read loop of measure_read_bandwidth (compiled with -mavx512f; entered only when the CPU
// and OS support it).
#include <immintrin.h>

#include "cpu/read_bandwidth.h"

namespace attn4j::cpu {

uint64_t read_sum_avx512(const uint64_t* p, int64_t n) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512(p + i));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512(p + i + 8));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512(p + i + 16));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512(p + i + 24));
    }
    // Reduce in unsigned arithmetic (_mm512_reduce_add_epi64 adds as signed: overflow is UB).
    alignas(64) uint64_t lanes[8];
    _mm512_store_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
    uint64_t s = 0;
    for (uint64_t l : lanes) s += l;
    for (; i < n; ++i) s += p[i];
    return s;
}

}  // namespace attn4j::cpu
