// Harness shared by the CUDA decode benchmarks (bench_cuda_decode, bench_cuda_quant_decode):
// random BF16 fill, the device-to-device copy roofline, "b:L,..." shape lists, a device page
// table of B sequences of L tokens (page ids shuffled or in order), event-timed runs and the
// JSON file write.
#pragma once

#include <cuda_runtime.h>

#include "cuda_test.h"
#include "core/kernel_args.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace a4j_bench {

__device__ __forceinline__ uint32_t hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

// BF16 values uniform in about [-2, 2): sign, exponent 126..127, random mantissa.
__global__ void fill_bf16(uint16_t* p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        const uint32_t x = hash32(uint32_t(i) * 2654435761u ^ seed);
        const uint32_t sign = (x & 1u) << 15, exp = 126u + ((x >> 1) % 2u), man = (x >> 8) & 0x7Fu;
        p[i] = uint16_t(sign | (exp << 7) | man);
    }
}

// Quantized pool of [blocks] of (codes [code_region bytes], F32 meta {scale, zero}...): random
// codes, scale in [0.5, 1.5] * 4 / max_code, zero in [-2.5, -1.5].
__global__ void fill_quant(uint32_t* p, size_t words, int block_words, int code_words, float max_code,
                           uint32_t seed) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < words; i += size_t(gridDim.x) * blockDim.x) {
        const uint32_t x = hash32(uint32_t(i) * 2654435761u ^ seed);
        const int off = int(i % size_t(block_words));
        if (off < code_words) {
            p[i] = x;
        } else {
            const float u = float(x >> 8) * (1.f / 16777216.f);
            const float v = ((off - code_words) & 1) ? -1.5f - u : (0.5f + u) * 4.f / max_code;
            p[i] = __float_as_uint(v);
        }
    }
}

inline double median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// TB/s of a 1 GiB device-to-device copy (bytes read + written), median of 10.
inline double copy_bandwidth() {
    const size_t bytes = size_t(1) << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> t;
    for (int i = 0; i < 12; ++i) {
        CK(cudaEventRecord(e0));
        CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 2) t.push_back(ms);
    }
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    CK(cudaFree(a));
    CK(cudaFree(b));
    return 2.0 * bytes / (median(t) * 1e-3) / 1e12;
}

// "b:L,b:L,..." -> {(b, L), ...}
inline std::vector<std::pair<int, int>> parse_shapes(const std::string& shapes) {
    std::vector<std::pair<int, int>> out;
    size_t pos = 0;
    while (pos < shapes.size()) {
        size_t comma = shapes.find(',', pos);
        if (comma == std::string::npos) comma = shapes.size();
        const std::string item = shapes.substr(pos, comma - pos);
        pos = comma + 1;
        out.emplace_back(std::atoi(item.c_str()), std::atoi(item.c_str() + item.find(':') + 1));
    }
    return out;
}

// Device page table (CSR) of B sequences of L tokens each, pages of PS tokens.
struct PageTable {
    int pages_per_seq = 0, num_pages = 0;
    int *indptr = nullptr, *indices = nullptr, *last = nullptr;
    PageTable(int B, int L, int PS, bool shuffled) {
        pages_per_seq = (L + PS - 1) / PS;
        num_pages = B * pages_per_seq;
        std::vector<int> h_indptr(B + 1), h_last(B, L - (pages_per_seq - 1) * PS), h_indices(num_pages);
        for (int b = 0; b <= B; ++b) h_indptr[b] = b * pages_per_seq;
        std::iota(h_indices.begin(), h_indices.end(), 0);
        if (shuffled) std::shuffle(h_indices.begin(), h_indices.end(), std::mt19937(1234));
        indptr = a4j_test::to_device(h_indptr);
        indices = a4j_test::to_device(h_indices);
        last = a4j_test::to_device(h_last);
    }
    ~PageTable() {
        CK(cudaFree(indptr));
        CK(cudaFree(indices));
        CK(cudaFree(last));
    }
    PageTable(const PageTable&) = delete;
    PageTable& operator=(const PageTable&) = delete;
};

// run(i) enqueues run i on s: `warmup` untimed runs, then `reps` runs each bracketed by events.
// Returns the per-run times in ms.
template <class Run>
std::vector<float> time_runs(cudaStream_t s, int warmup, int reps, Run&& run) {
    std::vector<cudaEvent_t> ev(2 * reps);
    for (auto& e : ev) CK(cudaEventCreate(&e));
    for (int i = 0; i < warmup; ++i) run(i);
    for (int i = 0; i < reps; ++i) {
        CK(cudaEventRecord(ev[2 * i], s));
        run(i);
        CK(cudaEventRecord(ev[2 * i + 1], s));
    }
    CK(cudaStreamSynchronize(s));
    CK(cudaGetLastError());
    std::vector<float> t(reps);
    for (int i = 0; i < reps; ++i) CK(cudaEventElapsedTime(&t[i], ev[2 * i], ev[2 * i + 1]));
    for (auto& e : ev) CK(cudaEventDestroy(e));
    return t;
}

// Time per run of a CUDA graph of `runs` calls of run(i) captured on s and replayed (no host work
// between the kernels): median of max(5, reps / 10) replays after 3 warm-up replays.
template <class Run>
double graph_us(cudaStream_t s, int reps, Run&& run, int runs = 20) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < runs; ++i) run(i);
    CK(cudaStreamEndCapture(s, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    const std::vector<float> t = time_runs(s, 3, std::max(5, reps / 10), [&](int) { CK(cudaGraphLaunch(exec, s)); });
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
    return median(t) * 1e3 / runs;
}

// Decode arguments of the benchmarks: BF16 q/out of [B][hqo][D] (dense), LSE [B][hqo], KV of
// kv_dtype with hkv heads in `pt`'s pages (k / v set per run).
inline attn4j::DecodeArgs bench_args(int B, int hqo, int hkv, int D, float sm_scale, attn4j_dtype kv_dtype, int PS,
                                     const PageTable& pt, void* q, void* out, float* lse) {
    attn4j::DecodeArgs a;
    a.shape = {hqo, hkv, D, sm_scale, false};
    a.q = {q, ATTN4J_DTYPE_BF16, hqo * D, D};
    a.out = {out, ATTN4J_DTYPE_BF16, hqo * D, D};
    a.lse = {lse, hqo, 1};
    a.kv.dtype = kv_dtype;
    a.kv.num_kv_heads = hkv;
    a.kv.head_dim = D;
    a.kv.page_size = PS;
    a.kv.num_pages = pt.num_pages;
    a.table = {B, pt.indptr, pt.indices, pt.last};
    return a;
}

// (median, min) of run times in ms, as us.
inline std::pair<double, double> median_min_us(const std::vector<float>& t) {
    return {median(t) * 1e3, *std::min_element(t.begin(), t.end()) * 1e3};
}

inline void write_file(const std::string& path, const std::string& text) {
    if (path.empty()) return;
    if (FILE* f = std::fopen(path.c_str(), "w")) {
        std::fputs(text.c_str(), f);
        std::fclose(f);
    }
}

}  // namespace a4j_bench
