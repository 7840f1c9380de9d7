// CUDA prefill benchmark through the C ABI (attn4j_prefill_run / _paged_run on a CUDA context):
// per configuration, warm-up runs, then `reps` runs each bracketed by CUDA events on the context's
// stream; median and min. Inputs are random BF16 (F16 for the f16 row); K/V sets rotate so that L2
// never holds the previous run's data. TFLOP/s use the FlashAttention convention (4 * n_q * n_kv
// * D * heads, halved when causal), the same formula benchmarks/peers/torch_sdpa_prefill.py uses
// for PyTorch on the same shapes, so the ratio is like for like.
// Usage: bench_cuda_prefill [--json PATH] [--reps N] [--only NAME]
#include <cuda_runtime.h>

#include "cuda_bench.h"
#include "cuda_test.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "a4j_test.h"
#include "attn4j.h"

namespace {

struct Config {
    const char* name;
    int hq, hkv, d;
    bool causal, paged;
    attn4j_dtype dt;
    std::vector<int> lens;  // sequences, n_q = n_kv each
};

using a4j_test::dev_tensor;

}  // namespace

int main(int argc, char** argv) {
    if (a4j_test::no_cuda_device("bench_cuda_prefill")) return 0;
    std::string json_path, only;
    int reps = 10;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--json")) json_path = argv[i + 1];
        else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];
    }
    const attn4j_dtype BF = ATTN4J_DTYPE_BF16;
    std::vector<int> ragged;  // 16 sequences of 512 .. 4096 tokens
    for (int i = 0; i < 16; ++i) ragged.push_back(512 + (i * 2309) % 3585);
    const std::vector<Config> configs = {
        {"causal-mha-16k", 32, 32, 128, true, false, BF, {16384}},
        {"causal-mha-32k", 32, 32, 128, true, false, BF, {32768}},
        {"causal-gqa-16k", 32, 8, 128, true, false, BF, {16384}},
        {"causal-gqa-32k", 32, 8, 128, true, false, BF, {32768}},
        {"full-mha-16k", 32, 32, 128, false, false, BF, {16384}},
        {"causal-mha-16k-d64", 32, 32, 64, true, false, BF, {16384}},
        {"causal-mha-16k-f16", 32, 32, 128, true, false, ATTN4J_DTYPE_F16, {16384}},
        {"causal-gqa-16k-paged16", 32, 8, 128, true, true, BF, {16384}},
        {"causal-gqa-ragged16", 32, 8, 128, true, false, BF, ragged},
        {"causal-mha-8x2k", 32, 32, 128, true, false, BF, {2048, 2048, 2048, 2048, 2048, 2048, 2048, 2048}},
    };

    cudaDeviceProp prop{};
    CK(cudaGetDeviceProperties(&prop, 0));
    attn4j_context* ctx = a4j_test::make_context(ATTN4J_DEVICE_CUDA, 0);
    if (!ctx) return a4j_test::finish("bench_cuda_prefill");
    std::printf("%s, %d reps, CUDA events around each attn4j_prefill_run (host planning included)\n", prop.name, reps);
    std::printf("%-24s %8s %10s %10s %10s\n", "config", "tokens", "median ms", "min ms", "TFLOP/s");
    std::string json = "{\n  \"device\": \"" + std::string(prop.name) + "\",\n  \"rows\": [";
    bool first = true;
    for (const Config& c : configs) {
        if (!only.empty() && only != c.name) continue;
        const int batch = int(c.lens.size()), D = c.d;
        std::vector<int32_t> indptr(batch + 1, 0);
        double flops = 0;
        for (int b = 0; b < batch; ++b) {
            indptr[b + 1] = indptr[b] + c.lens[b];
            flops += 4.0 * c.lens[b] * double(c.lens[b]) * D * c.hq * (c.causal ? 0.5 : 1.0);
        }
        const int64_t nnz = indptr[batch];
        const size_t q_elems = size_t(nnz) * c.hq * D, kv_elems = size_t(nnz) * c.hkv * D;
        const int PS = 16;
        const int64_t pages = c.paged ? [&] {
            int64_t p = 0;
            for (int L : c.lens) p += (L + PS - 1) / PS;
            return p;
        }() : 0;
        const size_t kv_alloc = c.paged ? size_t(pages) * PS * c.hkv * D : kv_elems;
        const int nrot = int(std::max<size_t>(2, size_t(std::ceil(512e6 / (4.0 * kv_alloc)))));
        uint16_t *q, *out;
        CK(cudaMalloc(&q, q_elems * 2));
        CK(cudaMalloc(&out, q_elems * 2));
        std::vector<uint16_t*> ks(nrot), vs(nrot);
        for (int r = 0; r < nrot; ++r) {
            CK(cudaMalloc(&ks[r], kv_alloc * 2));
            CK(cudaMalloc(&vs[r], kv_alloc * 2));
            a4j_bench::fill_bf16<<<1024, 256>>>(ks[r], kv_alloc, 11 + r);
            a4j_bench::fill_bf16<<<1024, 256>>>(vs[r], kv_alloc, 911 + r);
        }
        a4j_bench::fill_bf16<<<1024, 256>>>(q, q_elems, 7);  // BF16 bit patterns; as F16 also finite and small
        CK(cudaDeviceSynchronize());

        const attn4j_attention_desc d =
            a4j_test::attention_desc(c.hq, c.hkv, D, c.dt, c.dt, c.paged ? PS : 0, batch, c.causal);
        attn4j_plan* plan = nullptr;
        if (attn4j_prefill_plan_create(ctx, &d, &plan) != ATTN4J_OK) {
            std::fprintf(stderr, "%s: %s\n", c.name, attn4j_last_error());
            return 1;
        }
        attn4j_tensor tq = dev_tensor(q, c.dt, {nnz, c.hq, D}), to = dev_tensor(out, c.dt, {nnz, c.hq, D});
        attn4j_tensor tqo = a4j_test::tensor(indptr.data(), ATTN4J_DTYPE_I32, {batch + 1});
        a4j_bench::PageTable* pt = c.paged ? new a4j_bench::PageTable(1, c.lens[0], PS, true) : nullptr;
        attn4j_page_table table{};
        if (pt) {
            table.struct_size = sizeof table;
            table.indptr = dev_tensor(pt->indptr, ATTN4J_DTYPE_I32, {2});
            table.indices = dev_tensor(pt->indices, ATTN4J_DTYPE_I32, {pt->num_pages});
            table.last_page_len = dev_tensor(pt->last, ATTN4J_DTYPE_I32, {1});
        }
        bool failed = false;
        auto run = [&](int i) {
            const int r = i % nrot;
            attn4j_status st;
            if (c.paged) {
                const attn4j_paged_kv cache = a4j_test::paged_kv(c.dt, c.hkv, D, PS, int32_t(pages), ks[r], vs[r],
                                                                 int64_t(kv_alloc) * 2, ATTN4J_DEVICE_CUDA);
                st = attn4j_prefill_paged_run(plan, &tq, &tqo, &cache, &table, &to, nullptr);
            } else {
                attn4j_tensor tk = dev_tensor(ks[r], c.dt, {nnz, c.hkv, D}), tv = dev_tensor(vs[r], c.dt, {nnz, c.hkv, D});
                st = attn4j_prefill_run(plan, &tq, &tqo, &tk, &tv, &tqo, &to, nullptr);
            }
            if (st != ATTN4J_OK && !failed) {
                std::fprintf(stderr, "%s: %s\n", c.name, attn4j_last_error());
                failed = true;
            }
        };
        const std::vector<float> t = a4j_bench::time_runs(nullptr, 3, reps, run);
        if (failed) return 1;
        const double med = a4j_bench::median(t), mn = *std::min_element(t.begin(), t.end());
        const double tflops = flops / (med * 1e-3) / 1e12;
        std::printf("%-24s %8lld %10.3f %10.3f %10.1f\n", c.name, (long long)nnz, med, mn, tflops);
        char line[512];
        std::string lens;
        for (int L : c.lens) lens += (lens.empty() ? "" : ",") + std::to_string(L);
        std::snprintf(line, sizeof line,
                      "%s\n    {\"name\": \"%s\", \"hq\": %d, \"hkv\": %d, \"d\": %d, \"causal\": %s, \"paged\": %s, "
                      "\"dtype\": \"%s\", \"lens\": [%s], \"flops\": %.6e, \"ms_median\": %.4f, \"ms_min\": %.4f, "
                      "\"tflops\": %.2f}",
                      first ? "" : ",", c.name, c.hq, c.hkv, D, c.causal ? "true" : "false", c.paged ? "true" : "false",
                      c.dt == ATTN4J_DTYPE_F16 ? "f16" : "bf16", lens.c_str(), flops, med, mn, tflops);
        json += line;
        first = false;
        delete pt;
        attn4j_plan_destroy(plan);
        for (int r = 0; r < nrot; ++r) {
            CK(cudaFree(ks[r]));
            CK(cudaFree(vs[r]));
        }
        CK(cudaFree(q));
        CK(cudaFree(out));
    }
    json += "\n  ]\n}\n";
    a4j_bench::write_file(json_path, json);
    attn4j_context_destroy(ctx);
    return 0;
}
