// Quantized CUDA paged decode benchmark: 32 q / 8 kv heads, head_dim 128, BF16 q/out, page size
// 16, shuffled page ids; BF16 KV (cuda::make_decode_kernel, this project's BF16 decode) vs INT8 /
// INT4 / INT2 KV (cuda::make_quant_decode_kernel; group 128, F32 meta, Hadamard rotation of K and
// V). Per shape and format: 20 warm-up runs, then `reps` runs each bracketed by CUDA events on
// one stream; median reported. KV pools rotate among copies (>= 256 MB in all, > 2x the 50 MB L2)
// so no run finds its KV in L2. Effective TB/s = K+V bytes of all tokens, codes + meta (token
// bytes BF16 256, INT8 136, INT4 72, INT2 40 per head, each of K and V) / median time.
// Also (--diag 1, default) at 1 x 128k and 64 x 4k: the generic kernel (any group size; the default
// takes the one-group-per-token kernel here) and a copy-only run (pages streamed through the same
// pipeline, no math: the kernel's memory ceiling); at every shape the page-major kernel
// (ATTN4J_CUDA_QDECODE=pages) for comparison with the per-kv-head default.
// Usage: bench_cuda_quant_decode [--json PATH] [--reps N] [--shapes b:L,...] [--diag 0|1]
//        [--page N] [--shuffle 0|1] [--only NAME,...]
// --page / --shuffle change the page size (16) and the shuffled page order; --only keeps the rows
// of those names (e.g. int2,int2-copy_only; bf16 always runs: it is the ratio's base).
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
#include "cuda/decode_quant.cuh"
#include "a4j_test.h"

using namespace attn4j;
using a4j_bench::fill_bf16;
using a4j_bench::fill_quant;
using a4j_bench::hash32;
using a4j_bench::median;


int main(int argc, char** argv) {
    if (a4j_test::no_cuda_device("bench_cuda_quant_decode")) return 0;
    std::string json_path, shapes = "1:131072,1:32768,64:4096,1:4096";
    int reps = 100;
    bool diag = true, shuffle = true;
    int PS = 16;
    std::string only;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--json")) json_path = argv[i + 1];
        else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--shapes")) shapes = argv[i + 1];
        else if (!std::strcmp(argv[i], "--diag")) diag = std::atoi(argv[i + 1]) != 0;
        else if (!std::strcmp(argv[i], "--page")) PS = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--shuffle")) shuffle = std::atoi(argv[i + 1]) != 0;
        else if (!std::strcmp(argv[i], "--only")) only = "," + std::string(argv[i + 1]) + ",";
    }
    if (PS <= 0) {
        std::fprintf(stderr, "--page must be positive\n");
        return 2;
    }
    cudaDeviceProp prop{};
    CK(cudaGetDeviceProperties(&prop, 0));
    const double copy_tbs = a4j_bench::copy_bandwidth();
    const int HQO = 32, HKV = 8, D = 128, GS = 128;
    std::printf("device %s, %d SMs, L2 %d MB; D2D copy %.2f TB/s (read+write); page %d %s, G %d F32 meta, "
                "Hadamard; %d reps\n",
                prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_tbs, PS,
                shuffle ? "shuffled" : "in order", GS, reps);
    std::string json = "{\n  \"device\": \"" + std::string(prop.name) + "\",\n  \"copy_tb_s\": " +
                       std::to_string(copy_tbs) +
                       ",\n  \"num_qo_heads\": 32, \"num_kv_heads\": 8, \"head_dim\": 128, \"page_size\": " +
                       std::to_string(PS) + ", \"shuffled\": " + (shuffle ? "true" : "false") +
                       ", \"group_size\": 128, \"meta\": \"f32\", \"rotation\": \"hadamard\", \"reps\": " +
                       std::to_string(reps) + ",\n  \"results\": [\n";
    bool first = true;
    std::printf("%6s %8s %15s %7s %10s %10s %8s %9s\n", "batch", "seq_len", "kv", "chunks", "median_us", "min_us",
                "TB/s", "vs_bf16");
    for (const auto& [B, L] : a4j_bench::parse_shapes(shapes)) {
        const a4j_bench::PageTable pt(B, L, PS, shuffle);
        const int num_pages = pt.num_pages;
        uint16_t *dq, *dout;
        float* dlse;
        CK(cudaMalloc(&dq, size_t(B) * HQO * D * 2));
        CK(cudaMalloc(&dout, size_t(B) * HQO * D * 2));
        CK(cudaMalloc(&dlse, size_t(B) * HQO * 4));
        fill_bf16<<<256, 256>>>(dq, size_t(B) * HQO * D, 5u);
        CK(cudaGetLastError());
        double bf16_us = 0;

        struct Cfg {
            int bits;
            const char* mode;  // ATTN4J_CUDA_QDECODE for the plan: "" default, "generic", "copy_only"
        };
        std::vector<Cfg> cfgs = {{16, ""}, {8, ""}, {4, ""}, {2, ""}};
        if (diag && (L >= 131072 || B >= 64))
            for (Cfg c : {Cfg{4, "generic"}, Cfg{2, "generic"}, Cfg{8, "copy_only"}, Cfg{4, "copy_only"},
                          Cfg{2, "copy_only"}, Cfg{2, "pages,copy_only"}})
                cfgs.push_back(c);
        if (diag)
            for (Cfg c : {Cfg{8, "pages"}, Cfg{4, "pages"}, Cfg{2, "pages"}}) cfgs.push_back(c);
        for (const Cfg& cfg : cfgs) {
            const int bits = cfg.bits;
            const std::string name = std::string(bits == 16  ? "bf16"
                                                 : bits == 8 ? "int8"
                                                 : bits == 4 ? "int4"
                                                             : "int2") +
                                     (*cfg.mode ? std::string("-") + cfg.mode : std::string());
            if (bits != 16 && !only.empty() && only.find("," + name + ",") == std::string::npos) continue;
            QuantFormat f;
            f.bits = bits == 16 ? 0 : bits;
            f.head_dim = D;
            f.group_size = GS;
            f.meta_dtype = ATTN4J_DTYPE_F32;
            const int TB = bits == 16 ? 2 * D : f.token_bytes();
            const size_t pool = size_t(num_pages) * HKV * PS * TB;
            const double kv_bytes = 2.0 * B * L * HKV * TB;
            const int nrot = std::max<int>(2, int((256e6 + 2.0 * pool - 1) / (2.0 * pool)));
            std::vector<void*> ks(nrot), vs(nrot);
            for (int r = 0; r < nrot; ++r) {
                CK(cudaMalloc(&ks[r], pool));
                CK(cudaMalloc(&vs[r], pool));
                if (bits == 16) {
                    fill_bf16<<<1024, 256>>>(static_cast<uint16_t*>(ks[r]), pool / 2, 17u + r);
                    fill_bf16<<<1024, 256>>>(static_cast<uint16_t*>(vs[r]), pool / 2, 91u + r);
                } else {
                    const int bw = PS * TB / 4, cw = PS * f.code_bytes() / 4;
                    fill_quant<<<1024, 256>>>(static_cast<uint32_t*>(ks[r]), pool / 4, bw, cw, float(f.max_code()), 17u + r);
                    fill_quant<<<1024, 256>>>(static_cast<uint32_t*>(vs[r]), pool / 4, bw, cw, float(f.max_code()), 91u + r);
                }
                CK(cudaGetLastError());
            }
            const attn4j_dtype kv_dtype = bits == 16 ? ATTN4J_DTYPE_BF16
                                          : bits == 8 ? ATTN4J_DTYPE_INT8
                                          : bits == 4 ? ATTN4J_DTYPE_INT4
                                                      : ATTN4J_DTYPE_INT2;
            const attn4j_attention_desc desc = a4j_test::attention_desc(HQO, HKV, D, ATTN4J_DTYPE_BF16, kv_dtype, PS, B);
            if (*cfg.mode) setenv("ATTN4J_CUDA_QDECODE", cfg.mode, 1);
            auto kernel = bits == 16 ? cuda::make_decode_kernel(desc, 0) : cuda::make_quant_decode_kernel(desc, 0);
            unsetenv("ATTN4J_CUDA_QDECODE");

            DecodeArgs a = a4j_bench::bench_args(B, HQO, HKV, D, desc.sm_scale, desc.kv_dtype, PS, pt, dq, dout, dlse);
            if (bits != 16) {
                a.kv.quant = f;
                a.kv.k_rot.kind = ATTN4J_ROTATION_HADAMARD;
                a.kv.v_rot.kind = ATTN4J_ROTATION_HADAMARD;
            }

            cudaStream_t s;
            CK(cudaStreamCreate(&s));
            const std::vector<float> t = a4j_bench::time_runs(s, 20, reps, [&](int i) {
                a.kv.k = ks[i % nrot];
                a.kv.v = vs[i % nrot];
                CK(kernel->run(a, s));
            });
            const auto [med_us, min_us] = a4j_bench::median_min_us(t);
            const double tbs = kv_bytes / (med_us * 1e-6) / 1e12;
            if (bits == 16) bf16_us = med_us;
            const double speedup = bf16_us / med_us;
            std::printf("%6d %8d %15s %7d %10.1f %10.1f %8.2f %8.2fx\n", B, L, name.c_str(), kernel->num_chunks(B), med_us,
                        min_us, tbs, speedup);
            std::fflush(stdout);
            char row[512];
            std::snprintf(row, sizeof row,
                          "    {\"batch\": %d, \"seq_len\": %d, \"kv\": \"%s\", \"token_head_bytes\": %d, \"chunks\": %d, "
                          "\"median_us\": %.2f, \"min_us\": %.2f, \"tb_s\": %.3f, \"speedup_vs_bf16\": %.3f, "
                          "\"kv_copies\": %d}",
                          B, L, name.c_str(), TB, kernel->num_chunks(B), med_us, min_us, tbs, speedup, nrot);
            json += (first ? "" : ",\n") + std::string(row);
            first = false;
            CK(cudaStreamDestroy(s));
            for (int r = 0; r < nrot; ++r) {
                CK(cudaFree(ks[r]));
                CK(cudaFree(vs[r]));
            }
        }
        CK(cudaFree(dq));
        CK(cudaFree(dout));
        CK(cudaFree(dlse));
    }
    json += "\n  ]\n}\n";
    a4j_bench::write_file(json_path, json);
    return 0;
}
