// Mixed-precision (tiered) CUDA decode benchmark: what reading a TieredKvCache costs on the GPU.
// 32 q / 8 kv heads, head_dim 128, BF16 q/out, page 16, shuffled pages, G128 F32 meta, Hadamard.
// Per shape and format (INT8 / INT4 / INT2) three rows, CUDA events on one stream, median of
// `reps` after 20 warm-up runs, KV pools rotated past L2:
//   bf16     this project's BF16 decode over all L tokens (the base of the ratios);
//   intN     the quantized kernel over all L tokens (one segment, as bench_cuda_quant_decode);
//   intN-api the same through the C API (attn4j_decode_run on a non-default stream: argument
//            checks on the host, page tables checked in the kernel, as a captured step runs);
//   intN-tiered  attn4j_decode_run_segments through the C API, same stream: the quantized middle
//            (L - 320 tokens) and a BF16 part of 320 tokens (64 sinks + 256 recent), one kernel
//            each into plan scratch, then the LSE merge kernel.
// graph_us: the same runs captured 20 at a time in a CUDA graph and replayed (time per run without
// the host's work between launches; the BF16 row has none).
// Usage: bench_cuda_tiered_decode [--json PATH] [--reps N] [--shapes b:L,...]
#include <cuda_runtime.h>

#include "cuda_bench.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "a4j_test.h"
#include "quant_test.h"
#include "attn4j.h"
#include "core/kernel_args.h"
#include "cuda/decode.cuh"
#include "cuda/decode_quant.cuh"

using namespace attn4j;

namespace {

constexpr int HQO = 32, HKV = 8, D = 128, GS = 128, PS = 16, PRECISE = 320;

attn4j_tensor device_i32(int* p, int64_t n) { return a4j_test::dev_tensor(p, ATTN4J_DTYPE_I32, {n}); }

attn4j_attention_desc decode_desc(attn4j_dtype kv_dtype, int batch) {
    return a4j_test::attention_desc(HQO, HKV, D, ATTN4J_DTYPE_BF16, kv_dtype, PS, batch);
}

attn4j_page_table device_table(const a4j_bench::PageTable& pt, int B) {
    attn4j_page_table t{};
    t.struct_size = sizeof t;
    t.indptr = device_i32(pt.indptr, B + 1);
    t.indices = device_i32(pt.indices, pt.num_pages);
    t.last_page_len = device_i32(pt.last, B);
    return t;
}

// `n` copies of a pool of `bytes` (K and V each), filled as BF16 (bits 16) or quantized pages.
struct Pools {
    std::vector<void*> k, v;
    Pools(int n, size_t bytes, int bits, const QuantFormat& f) : k(size_t(n)), v(size_t(n)) {
        for (int r = 0; r < n; ++r) {
            CK(cudaMalloc(&k[size_t(r)], bytes));
            CK(cudaMalloc(&v[size_t(r)], bytes));
            if (bits == 16) {
                a4j_bench::fill_bf16<<<1024, 256>>>(static_cast<uint16_t*>(k[size_t(r)]), bytes / 2, 17u + r);
                a4j_bench::fill_bf16<<<1024, 256>>>(static_cast<uint16_t*>(v[size_t(r)]), bytes / 2, 91u + r);
            } else {
                const int bw = PS * f.token_bytes() / 4, cw = PS * f.code_bytes() / 4;
                a4j_bench::fill_quant<<<1024, 256>>>(static_cast<uint32_t*>(k[size_t(r)]), bytes / 4, bw, cw,
                                                     float(f.max_code()), 17u + r);
                a4j_bench::fill_quant<<<1024, 256>>>(static_cast<uint32_t*>(v[size_t(r)]), bytes / 4, bw, cw,
                                                     float(f.max_code()), 91u + r);
            }
            CK(cudaGetLastError());
        }
    }
    ~Pools() {
        for (size_t r = 0; r < k.size(); ++r) {
            CK(cudaFree(k[r]));
            CK(cudaFree(v[r]));
        }
    }
    Pools(const Pools&) = delete;
    Pools& operator=(const Pools&) = delete;
};

int copies_for(size_t bytes) { return std::max<int>(2, int((256e6 + 2.0 * bytes - 1) / (2.0 * bytes))); }

}  // namespace

int main(int argc, char** argv) {
    if (a4j_test::no_cuda_device("bench_cuda_tiered_decode")) return 0;
    std::string json_path, shapes = "1:131072,64:4096,1:32768";
    int reps = 100;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--json")) json_path = argv[i + 1];
        else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--shapes")) shapes = argv[i + 1];
    }
    cudaDeviceProp prop{};
    CK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device %s; 32 q / 8 kv heads, d 128, page %d shuffled, G%d F32 meta, Hadamard; tiered: %d BF16 "
                "tokens per sequence; %d reps\n",
                prop.name, PS, GS, PRECISE, reps);
    std::printf("%6s %8s %12s %10s %10s %8s %10s %9s\n", "batch", "seq_len", "kv", "median_us", "min_us", "vs_bf16",
                "vs_plain", "graph_us");
    std::string json = "{\n  \"device\": \"" + std::string(prop.name) +
                       "\",\n  \"num_qo_heads\": 32, \"num_kv_heads\": 8, \"head_dim\": 128, \"page_size\": 16, "
                       "\"group_size\": 128, \"meta\": \"f32\", \"rotation\": \"hadamard\", \"precise_tokens\": " +
                       std::to_string(PRECISE) + ", \"reps\": " + std::to_string(reps) + ",\n  \"results\": [\n";
    bool first = true;
    attn4j_context* ctx = a4j_test::make_context(ATTN4J_DEVICE_CUDA, 2);
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    attn4j_stream* st = nullptr;
    CHECK_MSG(attn4j_stream_wrap(ctx, s, &st) == ATTN4J_OK, attn4j_last_error());
    CHECK_MSG(attn4j_context_set_stream(ctx, st) == ATTN4J_OK, attn4j_last_error());
    for (const auto& [B, L] : a4j_bench::parse_shapes(shapes)) {
        if (L <= PRECISE + PS) continue;
        const a4j_bench::PageTable all(B, L, PS, true), middle(B, L - PRECISE, PS, true), precise(B, PRECISE, PS, true);
        uint16_t *dq, *dout;
        float* dlse;
        CK(cudaMalloc(&dq, size_t(B) * HQO * D * 2));
        CK(cudaMalloc(&dout, size_t(B) * HQO * D * 2));
        CK(cudaMalloc(&dlse, size_t(B) * HQO * 4));
        a4j_bench::fill_bf16<<<256, 256>>>(dq, size_t(B) * HQO * D, 5u);
        CK(cudaGetLastError());
        const QuantFormat none{};
        const size_t bf16_bytes = size_t(all.num_pages) * HKV * PS * 2 * D;
        double bf16_us = 0;
        {  // BF16 over all tokens
            Pools kv(copies_for(bf16_bytes), bf16_bytes, 16, none);
            attn4j_attention_desc desc = decode_desc(ATTN4J_DTYPE_BF16, B);
            auto kernel = cuda::make_decode_kernel(desc, 0);
            DecodeArgs a = a4j_bench::bench_args(B, HQO, HKV, D, desc.sm_scale, desc.kv_dtype, PS, all, dq, dout, dlse);
            const auto run = [&](int i) {
                a.kv.k = kv.k[size_t(i) % kv.k.size()];
                a.kv.v = kv.v[size_t(i) % kv.v.size()];
                CK(kernel->run(a, s));
            };
            const std::vector<float> t = a4j_bench::time_runs(s, 20, reps, run);
            bf16_us = a4j_bench::median_min_us(t).first;
            std::printf("%6d %8d %12s %10.1f %10.1f %8s %10s %9.1f\n", B, L, "bf16", bf16_us,
                        a4j_bench::median_min_us(t).second, "1.00x", "", a4j_bench::graph_us(s, reps, run));
        }
        const size_t precise_bytes = size_t(precise.num_pages) * HKV * PS * 2 * D;
        Pools pkv(copies_for(precise_bytes), precise_bytes, 16, none);
        for (int bits : {8, 4, 2}) {
            QuantFormat f;
            f.bits = bits;
            f.head_dim = D;
            f.group_size = GS;
            f.meta_dtype = ATTN4J_DTYPE_F32;
            const attn4j_dtype dt = bits == 8 ? ATTN4J_DTYPE_INT8 : bits == 4 ? ATTN4J_DTYPE_INT4 : ATTN4J_DTYPE_INT2;
            const std::string name = "int" + std::to_string(bits);
            attn4j_attention_desc desc = decode_desc(dt, B);
            double plain_us = 0;
            for (int mode = 0; mode < 3; ++mode) {  // kernel, C API, tiered
                const bool tiered = mode == 2;
                const a4j_bench::PageTable& pt = tiered ? middle : all;
                const size_t bytes = size_t(pt.num_pages) * HKV * PS * size_t(f.token_bytes());
                Pools qkv(copies_for(bytes), bytes, bits, f);
                std::vector<float> t;
                double g_us = 0;
                if (mode == 0) {
                    auto kernel = cuda::make_quant_decode_kernel(desc, 0);
                    DecodeArgs a = a4j_bench::bench_args(B, HQO, HKV, D, desc.sm_scale, dt, PS, all, dq, dout, dlse);
                    a.kv.quant = f;
                    a.kv.k_rot.kind = ATTN4J_ROTATION_HADAMARD;
                    a.kv.v_rot.kind = ATTN4J_ROTATION_HADAMARD;
                    const auto run = [&](int i) {
                        a.kv.k = qkv.k[size_t(i) % qkv.k.size()];
                        a.kv.v = qkv.v[size_t(i) % qkv.v.size()];
                        CK(kernel->run(a, s));
                    };
                    t = a4j_bench::time_runs(s, 20, reps, run);
                    g_us = a4j_bench::graph_us(s, reps, run);
                } else {
                    attn4j_plan* plan = nullptr;
                    CHECK_MSG(attn4j_decode_plan_create(ctx, &desc, &plan) == ATTN4J_OK, attn4j_last_error());
                    attn4j_paged_kv caches[2] = {
                        a4j_test::paged_kv(dt, HKV, D, PS, pt.num_pages, qkv.k[0], qkv.v[0], int64_t(bytes),
                                           ATTN4J_DEVICE_CUDA, GS, ATTN4J_DTYPE_F32, ATTN4J_ROTATION_HADAMARD),
                        a4j_test::paged_kv(ATTN4J_DTYPE_BF16, HKV, D, PS, precise.num_pages, pkv.k[0], pkv.v[0],
                                           int64_t(precise_bytes), ATTN4J_DEVICE_CUDA)};
                    const attn4j_page_table tables[2] = {device_table(pt, B), device_table(precise, B)};
                    attn4j_tensor q = a4j_test::dev_tensor(dq, ATTN4J_DTYPE_BF16, {B, HQO, D});
                    attn4j_tensor o = a4j_test::dev_tensor(dout, ATTN4J_DTYPE_BF16, {B, HQO, D});
                    const auto run = [&](int i) {
                        caches[0].k_data = qkv.k[size_t(i) % qkv.k.size()];
                        caches[0].v_data = qkv.v[size_t(i) % qkv.v.size()];
                        caches[1].k_data = pkv.k[size_t(i) % pkv.k.size()];
                        caches[1].v_data = pkv.v[size_t(i) % pkv.v.size()];
                        CHECK_MSG(attn4j_decode_run_segments(plan, &q, tiered ? 2 : 1, caches, tables, &o, nullptr) ==
                                      ATTN4J_OK,
                                  attn4j_last_error());
                    };
                    t = a4j_bench::time_runs(s, 20, reps, run);
                    g_us = a4j_bench::graph_us(s, reps, run);
                    CHECK_MSG(attn4j_stream_synchronize(st) == ATTN4J_OK, attn4j_last_error());
                    attn4j_plan_destroy(plan);
                }
                const auto [med_us, min_us] = a4j_bench::median_min_us(t);
                if (mode == 0) plain_us = med_us;
                const std::string row_name = name + (mode == 1 ? "-api" : tiered ? "-tiered" : "");
                std::printf("%6d %8d %12s %10.1f %10.1f %7.2fx %9.2fx %9.1f\n", B, L, row_name.c_str(), med_us, min_us,
                            bf16_us / med_us, plain_us / med_us, g_us);
                std::fflush(stdout);
                char row[320];
                std::snprintf(row, sizeof row,
                              "    {\"batch\": %d, \"seq_len\": %d, \"kv\": \"%s\", \"median_us\": %.2f, \"min_us\": %.2f, "
                              "\"bf16_us\": %.2f, \"speedup_vs_bf16\": %.3f, \"graph_us\": %.2f}",
                              B, L, row_name.c_str(), med_us, min_us, bf16_us, bf16_us / med_us, g_us);
                json += (first ? "" : ",\n") + std::string(row);
                first = false;
            }
        }
        CK(cudaFree(dq));
        CK(cudaFree(dout));
        CK(cudaFree(dlse));
    }
    attn4j_context_set_stream(ctx, nullptr);
    attn4j_stream_destroy(st);
    CK(cudaStreamDestroy(s));
    attn4j_context_destroy(ctx);
    json += "\n  ]\n}\n";
    a4j_bench::write_file(json_path, json);
    return a4j_test::finish("bench_cuda_tiered_decode");
}
