// STREAM-like read bandwidth: the roofline the decode benchmark is judged against.
#pragma once

#include <cstdint>

namespace attn4j::cpu {

// Allocates a `bytes` buffer (rounded up to 4 KiB), first-touches it on the measuring threads,
// then sums it `repeats` times on `num_threads` OpenMP threads (static split, widest loads the
// CPU allows) and returns the best pass in GB/s (1e9 bytes/s). Throws std::bad_alloc.
double measure_read_bandwidth(int64_t bytes, int repeats, int num_threads);

// Sum of n 64-bit words, per ISA (read_bandwidth_avx512.cpp / read_bandwidth_avx2.cpp / here).
uint64_t read_sum_scalar(const uint64_t* p, int64_t n);
uint64_t read_sum_avx2(const uint64_t* p, int64_t n);
uint64_t read_sum_avx512(const uint64_t* p, int64_t n);

}  // namespace attn4j::cpu
