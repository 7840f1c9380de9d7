// Helpers shared by the CUDA tests and benchmarks: CK() exits with the failing call and CUDA's
// message; no_cuda_device() is the skip check of every main(); to_device() copies a host vector
// into a fresh device allocation.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(call)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            std::fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #call,              \
                         cudaGetErrorString(e_));                                             \
            std::exit(1);                                                                     \
        }                                                                                     \
    } while (0)

namespace a4j_test {

// True (after printing "SKIP: no CUDA device (name)", which ctest's SKIP_REGULAR_EXPRESSION
// marks as skipped) when no CUDA device is visible: main() then returns 0.
inline bool no_cuda_device(const char* name) {
    int n = 0;
    if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) return false;
    (void)cudaGetLastError();
    std::printf("SKIP: no CUDA device (%s)\n", name);
    return true;
}

template <typename T>
T* to_device(const std::vector<T>& h) {
    T* d = nullptr;
    CK(cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(T)));
    if (!h.empty()) CK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

}  // namespace a4j_test
