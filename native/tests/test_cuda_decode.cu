// CUDA paged decode against a float64 CPU reference: head_dim 64/128, BF16/F16 KV, every q/out
// dtype, GQA groups 1..16, power-of-two and odd page sizes, ragged batches, forced and automatic
// split counts, strided q/out, LSE, and a CUDA-graph capture of run(). Outputs are poisoned (NaN)
// before each run; pages not referenced and page slots past last_page_len hold NaN, so any read
// outside the sequence shows. Without a CUDA device it prints "SKIP: no CUDA device" and exits 0.
// Usage: test_cuda_decode [seed]
#include <cuda_runtime.h>

#include "cuda_test.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "dtype_buffer.h"
#include "core/kernel_args.h"
#include "cuda/decode.cuh"
#include "a4j_test.h"

using namespace attn4j;

namespace {

int g_failures = 0;


using namespace attn4j;
using a4j_test::Buf;
using a4j_test::to_device;
using a4j_test::dname;
using a4j_test::dsize;


struct Case {
    const char* name;
    int D;
    attn4j_dtype kv, q, out;
    int hqo, hkv, ps;
    std::vector<int> lens;
    int force_chunks;
    bool lse;
    int pad;  // extra elements per q/out row (strided views)
    bool graph = false;
};

void run_case(const Case& c, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    const int B = int(c.lens.size()), D = c.D, G = c.hqo / c.hkv;
    // page table: shuffled page ids, a few unused (poisoned) pages
    std::vector<int> indptr(B + 1, 0), last(B);
    for (int b = 0; b < B; ++b) {
        const int np = (c.lens[b] + c.ps - 1) / c.ps;
        indptr[b + 1] = indptr[b] + np;
        last[b] = c.lens[b] - (np - 1) * c.ps;
    }
    const int used_pages = indptr[B], num_pages = used_pages + 3;
    std::vector<int> perm(num_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int> indices(perm.begin(), perm.begin() + used_pages);

    const size_t page_elems = size_t(c.hkv) * c.ps * D;
    Buf K(c.kv, num_pages * page_elems), V(c.kv, num_pages * page_elems);
    for (size_t i = 0; i < K.bytes.size() / dsize(c.kv); ++i) {
        K.set(i, NAN);
        V.set(i, NAN);
    }
    // real tokens: Gaussian, K outlier channels (x8 on channels 3 and D-7), token 0 is a sink
    std::vector<float> qv(size_t(B) * c.hqo * D);
    for (auto& x : qv) x = nd(rng);
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < c.lens[b]; ++t) {
            const int page = indices[indptr[b] + t / c.ps], slot = t % c.ps;
            for (int h = 0; h < c.hkv; ++h)
                for (int d = 0; d < D; ++d) {
                    const size_t i = size_t(page) * page_elems + (size_t(h) * c.ps + slot) * D + d;
                    float kx = nd(rng);
                    if (d == 3 || d == D - 7) kx *= 8.f;
                    if (t == 0) kx = 2.5f * qv[(size_t(b) * c.hqo + h * G) * D + d] + 0.3f * kx;
                    K.set(i, kx);
                    V.set(i, nd(rng) + (t == 0 ? 2.f : 0.f));
                }
        }
    const int64_t row = int64_t(c.hqo) * D + c.pad;
    Buf Q(c.q, size_t(B) * row);
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < c.hqo; ++h)
            for (int d = 0; d < D; ++d) Q.set(size_t(b) * row + size_t(h) * D + d, qv[(size_t(b) * c.hqo + h) * D + d]);
    const float scale = 1.f / std::sqrt(float(D));

    // float64 reference on the stored (rounded) values
    std::vector<double> ref(size_t(B) * c.hqo * D), ref_lse(size_t(B) * c.hqo);
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < c.hqo; ++h) {
            const int kvh = h / G;
            std::vector<double> s(c.lens[b]);
            double mx = -INFINITY;
            for (int t = 0; t < c.lens[b]; ++t) {
                const int page = indices[indptr[b] + t / c.ps], slot = t % c.ps;
                const size_t kb = size_t(page) * page_elems + (size_t(kvh) * c.ps + slot) * D;
                double a = 0;
                for (int d = 0; d < D; ++d) a += double(Q.get(size_t(b) * row + size_t(h) * D + d)) * K.get(kb + d);
                s[t] = a * scale;
                mx = std::max(mx, s[t]);
            }
            double l = 0;
            std::vector<double> acc(D, 0.0);
            for (int t = 0; t < c.lens[b]; ++t) {
                const double p = std::exp(s[t] - mx);
                l += p;
                const int page = indices[indptr[b] + t / c.ps], slot = t % c.ps;
                const size_t vb = size_t(page) * page_elems + (size_t(kvh) * c.ps + slot) * D;
                for (int d = 0; d < D; ++d) acc[d] += p * V.get(vb + d);
            }
            for (int d = 0; d < D; ++d) ref[(size_t(b) * c.hqo + h) * D + d] = acc[d] / l;
            ref_lse[size_t(b) * c.hqo + h] = mx + std::log(l);
        }

    // device buffers
    void* dK = to_device(K.bytes);
    void* dV = to_device(V.bytes);
    void* dQ = to_device(Q.bytes);
    int* d_indptr = to_device(indptr);
    int* d_indices = to_device(indices);
    int* d_last = to_device(last);
    const size_t out_elems = size_t(B) * row;
    void* dOut = nullptr;
    float* dLse = nullptr;
    CK(cudaMalloc(&dOut, out_elems * dsize(c.out)));
    CK(cudaMalloc(&dLse, size_t(B) * c.hqo * sizeof(float)));

    attn4j_attention_desc desc = a4j_test::attention_desc(c.hqo, c.hkv, D, c.q, c.kv, c.ps, B + 5, false, scale);
    desc.out_dtype = c.out;
    cuda::DecodeTuning tuning;
    tuning.force_chunks = c.force_chunks;
    auto kernel = cuda::make_decode_kernel(desc, 0, tuning);

    DecodeArgs a;
    a.shape.num_qo_heads = c.hqo;
    a.shape.num_kv_heads = c.hkv;
    a.shape.head_dim = D;
    a.shape.sm_scale = scale;
    a.q = {dQ, c.q, row, D};
    a.out = {dOut, c.out, row, D};
    if (c.lse) a.lse = {dLse, c.hqo, 1};
    a.kv.dtype = c.kv;
    a.kv.num_kv_heads = c.hkv;
    a.kv.head_dim = D;
    a.kv.page_size = c.ps;
    a.kv.num_pages = num_pages;
    a.kv.k = dK;
    a.kv.v = dV;
    a.table = {B, d_indptr, d_indices, d_last};

    cudaStream_t stream;
    CK(cudaStreamCreate(&stream));
    CK(cudaMemset(dOut, 0xFF, out_elems * dsize(c.out)));  // NaN in every dtype
    CK(cudaMemset(dLse, 0xFF, size_t(B) * c.hqo * sizeof(float)));
    if (c.graph) {
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        CK(kernel->run(a, stream));
        CK(cudaStreamEndCapture(stream, &graph));
        CK(cudaGraphInstantiate(&exec, graph, 0));
        for (int i = 0; i < 3; ++i) CK(cudaGraphLaunch(exec, stream));
        CK(cudaGraphExecDestroy(exec));
        CK(cudaGraphDestroy(graph));
    } else {
        CK(kernel->run(a, stream));
    }
    CK(cudaStreamSynchronize(stream));
    CK(cudaGetLastError());

    Buf out(c.out, out_elems);
    std::vector<float> lse(size_t(B) * c.hqo);
    CK(cudaMemcpy(out.bytes.data(), dOut, out.bytes.size(), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(lse.data(), dLse, lse.size() * 4, cudaMemcpyDeviceToHost));

    double num = 0, den = 0, lse_err = 0;
    size_t bad = 0;
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < c.hqo; ++h) {
            for (int d = 0; d < D; ++d) {
                const double o = out.get(size_t(b) * row + size_t(h) * D + d);
                const double r = ref[(size_t(b) * c.hqo + h) * D + d];
                if (!std::isfinite(o)) ++bad;
                num += (o - r) * (o - r);
                den += r * r;
            }
            if (c.lse) {
                const double e = std::fabs(lse[size_t(b) * c.hqo + h] - ref_lse[size_t(b) * c.hqo + h]);
                if (!std::isfinite(e)) ++bad;
                lse_err = std::max(lse_err, e / std::max(1.0, std::fabs(ref_lse[size_t(b) * c.hqo + h])));
            }
        }
    const double rel = std::sqrt(num / den);
    const double tol = c.out == ATTN4J_DTYPE_F32 && c.q == ATTN4J_DTYPE_F32 ? 1e-5 : 1e-2;
    // F32 out with BF16/F16 q: q is exact, only fp32 accumulation error remains
    const double tol2 = c.out == ATTN4J_DTYPE_F32 ? 1e-5 : tol;
    const bool ok = bad == 0 && rel <= tol2 && lse_err <= 1e-5 * 10;
    std::printf("%-34s D=%-3d kv=%-4s q=%-4s out=%-4s heads=%d/%d ps=%-2d B=%-3d chunks=%-3d rel=%.2e lse=%.1e bad=%zu %s\n",
                c.name, D, dname(c.kv), dname(c.q), dname(c.out), c.hqo, c.hkv, c.ps, B,
                kernel->num_chunks(B), rel, lse_err, bad, ok ? "ok" : "FAIL");
    if (!ok) {
        ++g_failures;
        std::fprintf(stderr, "FAIL %s (seed %llu)\n", c.name, (unsigned long long)seed);
    }
    CK(cudaStreamDestroy(stream));
    for (void* p : {dK, dV, dQ, (void*)d_indptr, (void*)d_indices, (void*)d_last, dOut, (void*)dLse})
        CK(cudaFree(p));
}

}  // namespace

int main(int argc, char** argv) {
    if (a4j_test::no_cuda_device("test_cuda_decode")) return 0;
    const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10)
                                   : uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
    std::printf("test_cuda_decode: seed %llu\n", (unsigned long long)seed);
    const auto BF = ATTN4J_DTYPE_BF16, HF = ATTN4J_DTYPE_F16, F32 = ATTN4J_DTYPE_F32;
    std::mt19937_64 lr(seed ^ 0x9E3779B97F4A7C15ull);
    std::vector<int> mixed(33);
    for (auto& x : mixed) x = 1 + int(lr() % 3000);
    const std::vector<Case> cases = {
        {"gqa4 bf16 ragged auto", 128, BF, BF, BF, 32, 8, 16, {1, 17, 300, 4097}, 0, true, 0},
        {"gqa4 f16 forced 7 chunks", 128, HF, HF, HF, 32, 8, 16, {5000}, 7, true, 0},
        {"mha d64 f32 ps1", 64, BF, F32, F32, 8, 8, 1, {1, 2, 33, 129}, 0, true, 0},
        {"gqa7 d64 f16kv ps7 strided", 64, HF, BF, F32, 28, 4, 7, {100, 3, 1000}, 3, false, 24},
        {"gqa8 bf16 q f32 out bf16", 128, BF, F32, BF, 64, 8, 16, {2048, 16, 15}, 0, true, 0},
        {"gqa16 head tiles", 128, BF, BF, F32, 16, 1, 32, {700}, 2, true, 8},
        {"gqa4 long 32k auto split", 128, BF, BF, F32, 32, 8, 16, {32768}, 0, true, 0},
        {"gqa4 mixed batch 33", 128, BF, BF, BF, 32, 8, 16, mixed, 0, true, 0},
        {"gqa4 d64 f16 mixed", 64, HF, HF, F32, 16, 4, 16, {1, 4096, 64, 65}, 0, true, 0},
        {"mha bf16 ps5 out f32", 128, BF, BF, F32, 4, 4, 5, {1, 63, 64, 65, 999}, 0, true, 0},
        {"gqa2 d64 bf16 ps3 3 chunks", 64, BF, BF, BF, 8, 4, 3, {700, 2, 130}, 3, true, 0},
        {"graph capture split", 128, BF, BF, BF, 32, 8, 16, {1, 17, 300, 4097}, 5, true, 0, true},
        {"graph capture direct", 64, HF, F32, HF, 8, 2, 16, {77, 1234}, 1, true, 0, true},
    };
    for (size_t i = 0; i < cases.size(); ++i) run_case(cases[i], seed + i);
    if (g_failures) {
        std::fprintf(stderr, "test_cuda_decode: %d case(s) failed (seed %llu)\n", g_failures,
                     (unsigned long long)seed);
        return 1;
    }
    std::printf("test_cuda_decode: all checks passed\n");
    return 0;
}
