// CUDA paged decode benchmark: 32 q / 8 kv heads, head_dim 128, BF16 q/KV/out, page size 16
// (--page-size), shuffled page ids (--ordered 1: in order). Per shape: warm-up, then `reps` runs,
// each bracketed by CUDA events: median and min; then a CUDA graph of 20 runs (time per run,
// without host launch gaps). KV pools rotate (at least 2 and >= 256 MB in all) so L2 (50 MB)
// never holds the next run's KV. Effective bandwidth = K+V bytes of all tokens / time. Also
// measures a device-to-device copy (bytes read + written) as the roofline.
// Usage: bench_cuda_decode [--json PATH] [--min-chunk TOKENS] [--reps N] [--shapes b:L,b:L,...]
//                          [--page-size N] [--ordered 0|1] [--pdl 0|1|ab] [--rounds N]
// --pdl: the split merge as a dependent launch (1, what plans do on sm_90+) or a plain one (0);
// ab: both, alternated --rounds times per shape (column "dep").
#include <cuda_runtime.h>

#include "cuda_bench.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/kernel_args.h"
#include "cuda/decode.cuh"
#include "a4j_test.h"

using namespace attn4j;
using a4j_bench::fill_bf16;
using a4j_bench::median;

int main(int argc, char** argv) {
    if (a4j_test::no_cuda_device("bench_cuda_decode")) return 0;
    std::string json_path, shapes = "1:4096,1:32768,1:131072,64:4096,16:16384,128:1024";
    int min_chunk = 128, reps = 200, PS = 16, pdl = 1, rounds = 3;
    bool ordered = false;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--json")) json_path = argv[i + 1];
        else if (!std::strcmp(argv[i], "--min-chunk")) min_chunk = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--shapes")) shapes = argv[i + 1];
        else if (!std::strcmp(argv[i], "--page-size")) PS = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--ordered")) ordered = std::atoi(argv[i + 1]) != 0;
        else if (!std::strcmp(argv[i], "--pdl")) pdl = !std::strcmp(argv[i + 1], "ab") ? -1 : std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--rounds")) rounds = std::atoi(argv[i + 1]);
    }
    cudaDeviceProp prop{};
    CK(cudaGetDeviceProperties(&prop, 0));
    const double copy_tbs = a4j_bench::copy_bandwidth();
    std::printf("device %s, %d SMs, L2 %d MB; D2D copy %.2f TB/s (read+write); min_chunk %d\n",
                prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_tbs, min_chunk);

    const int HQO = 32, HKV = 8, D = 128;
    std::printf("page size %d, page ids %s\n", PS, ordered ? "in order" : "shuffled");
    std::string json = "{\n  \"device\": \"" + std::string(prop.name) + "\",\n  \"copy_tb_s\": " +
                       std::to_string(copy_tbs) + ",\n  \"min_chunk_tokens\": " + std::to_string(min_chunk) +
                       ",\n  \"page_size\": " + std::to_string(PS) + ",\n  \"shuffled_pages\": " +
                       (ordered ? "false" : "true") + ",\n  \"results\": [\n";
    bool first = true;
    std::printf("%6s %8s %7s %4s %10s %10s %9s %9s %9s\n", "batch", "seq_len", "chunks", "dep", "median_us", "min_us", "TB/s",
                "graph_us", "graph_TB/s");
    for (const auto& [B, L] : a4j_bench::parse_shapes(shapes)) {
        const a4j_bench::PageTable pt(B, L, PS, !ordered);
        const int num_pages = pt.num_pages;
        const size_t pool_elems = size_t(num_pages) * HKV * PS * D;
        const double kv_bytes = double(B) * L * HKV * D * 2 * 2;
        const int nrot = std::max<int>(2, int((256e6 + 2.0 * pool_elems * 2 - 1) / (2.0 * pool_elems * 2)));
        std::vector<uint16_t*> ks(nrot), vs(nrot);
        for (int r = 0; r < nrot; ++r) {
            CK(cudaMalloc(&ks[r], pool_elems * 2));
            CK(cudaMalloc(&vs[r], pool_elems * 2));
            fill_bf16<<<1024, 256>>>(ks[r], pool_elems, 17u + r);
            fill_bf16<<<1024, 256>>>(vs[r], pool_elems, 91u + r);
        }
        uint16_t *dq, *dout;
        float* dlse;
        CK(cudaMalloc(&dq, size_t(B) * HQO * D * 2));
        CK(cudaMalloc(&dout, size_t(B) * HQO * D * 2));
        CK(cudaMalloc(&dlse, size_t(B) * HQO * 4));
        fill_bf16<<<256, 256>>>(dq, size_t(B) * HQO * D, 5u);
        CK(cudaGetLastError());

        const attn4j_attention_desc desc =
            a4j_test::attention_desc(HQO, HKV, D, ATTN4J_DTYPE_BF16, ATTN4J_DTYPE_BF16, PS, B);
        DecodeArgs a = a4j_bench::bench_args(B, HQO, HKV, D, desc.sm_scale, ATTN4J_DTYPE_BF16, PS, pt, dq, dout, dlse);
        cudaStream_t s;
        CK(cudaStreamCreate(&s));
        // --pdl ab: both merge launches, alternated `rounds` times in this run (A/B); else one.
        const std::vector<int> variants = pdl < 0 ? std::vector<int>{1, 0} : std::vector<int>{pdl};
        for (int round = 0; round < (pdl < 0 ? rounds : 1); ++round)
            for (int dep : variants) {
                cuda::DecodeTuning tuning;
                tuning.min_chunk_tokens = min_chunk;
                tuning.dependent_merge = dep != 0;
                auto kernel = cuda::make_decode_kernel(desc, 0, tuning);
                const auto run = [&](int i) {
                    a.kv.k = ks[i % nrot];
                    a.kv.v = vs[i % nrot];
                    CK(kernel->run(a, s));
                };
                const std::vector<float> t = a4j_bench::time_runs(s, 20, reps, run);
                const auto [med_us, min_us] = a4j_bench::median_min_us(t);
                const double tbs = kv_bytes / (med_us * 1e-6) / 1e12;
                // A CUDA graph of 20 runs (rotating KV): time per run without host launch gaps.
                const double graph_us = a4j_bench::graph_us(s, reps, run);
                std::printf("%6d %8d %7d %4d %10.1f %10.1f %9.3f %9.1f %9.3f\n", B, L, kernel->num_chunks(B), dep,
                            med_us, min_us, tbs, graph_us, kv_bytes / (graph_us * 1e-6) / 1e12);
                char line[512];
                std::snprintf(line, sizeof line,
                              "%s    {\"batch\": %d, \"seq_len\": %d, \"chunks\": %d, \"dependent_merge\": %s, "
                              "\"kv_bytes\": %.0f, \"median_us\": %.2f, \"min_us\": %.2f, \"tb_s\": %.4f, "
                              "\"graph_us\": %.2f, \"graph_tb_s\": %.4f, \"rotating_buffers\": %d}",
                              first ? "" : ",\n", B, L, kernel->num_chunks(B), dep ? "true" : "false", kv_bytes,
                              med_us, min_us, tbs, graph_us, kv_bytes / (graph_us * 1e-6) / 1e12, nrot);
                json += line;
                first = false;
            }

        CK(cudaStreamDestroy(s));
        for (int r = 0; r < nrot; ++r) {
            CK(cudaFree(ks[r]));
            CK(cudaFree(vs[r]));
        }
        for (void* p : {(void*)dq, (void*)dout, (void*)dlse})
            CK(cudaFree(p));
    }
    json += "\n  ]\n}\n";
    a4j_bench::write_file(json_path, json);
    return 0;
}
