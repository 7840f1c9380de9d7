// CPU prefill throughput: 32 q / 8 kv heads, head_dim 128, BF16, causal (bottom-right), 512 new
// query tokens over 4k and 16k context, both BF16 engines (AMX intrinsics, oneDNN matmul).
// FLOPs = 4 * head_dim * num_qo_heads * sum_i visible(i), visible(i) = i + n_kv - n_q + 1:
// only unmasked keys count (QK^T and PV, 2 FLOPs per multiply-add each).
// Usage: bench_prefill [threads=2] [runs=15]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "core/cpu_features.h"
#include "cpu/prefill.h"
#include "a4j_test.h"

using namespace attn4j;

namespace {

uint16_t to_bf16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

void bench(int n_q, int n_kv, int threads, int runs, const char* engine) {
    const int hq = 32, hkv = 8, D = 128;
    std::mt19937 rng(1);
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<uint16_t> q(size_t(n_q) * hq * D), k(size_t(n_kv) * hkv * D), v(k.size()),
        out(q.size());
    for (auto& x : q) x = to_bf16(g(rng));
    for (auto& x : k) x = to_bf16(g(rng));
    for (auto& x : v) x = to_bf16(g(rng));
    std::vector<float> lse(size_t(n_q) * hq);
    int32_t qo[2] = {0, n_q}, kvp[2] = {0, n_kv};

    const attn4j_attention_desc desc =
        a4j_test::attention_desc(hq, hkv, D, ATTN4J_DTYPE_BF16, ATTN4J_DTYPE_BF16, 0, 1, true);
    setenv("ATTN4J_PREFILL_ENGINE", engine, 1);
    auto kernel = cpu::make_prefill_kernel(desc, threads);

    PrefillArgs a;
    a.shape = {hq, hkv, D, desc.sm_scale, true};
    a.batch = 1;
    a.qo_indptr = qo;
    a.q = {q.data(), ATTN4J_DTYPE_BF16, int64_t(hq) * D, D};
    a.out = {out.data(), ATTN4J_DTYPE_BF16, int64_t(hq) * D, D};
    a.lse = {lse.data(), hq, 1};
    a.k = {k.data(), ATTN4J_DTYPE_BF16, int64_t(hkv) * D, D};
    a.v = {v.data(), ATTN4J_DTYPE_BF16, int64_t(hkv) * D, D};
    a.kv_indptr = kvp;

    double visible = 0;
    for (int i = 0; i < n_q; ++i) visible += i + n_kv - n_q + 1;
    const double flops = 4.0 * D * hq * visible;

    kernel->run(a);  // warm-up
    std::vector<double> t;
    for (int r = 0; r < runs; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        kernel->run(a);
        auto t1 = std::chrono::steady_clock::now();
        t.push_back(std::chrono::duration<double>(t1 - t0).count());
    }
    // spot check a few (query, head) outputs against a float64 reference
    auto f = [](uint16_t h) {
        uint32_t x = uint32_t(h) << 16;
        float r;
        std::memcpy(&r, &x, 4);
        return double(r);
    };
    double e2 = 0, r2 = 0;
    for (int c = 0; c < 6; ++c) {
        const int i = int(rng() % n_q), h = int(rng() % hq), hk = h / (hq / hkv);
        const int lim = i + n_kv - n_q + 1;
        std::vector<double> sc(lim), o(D, 0.0);
        double mx = -1e300, l = 0;
        for (int j = 0; j < lim; ++j) {
            double acc = 0;
            for (int e = 0; e < D; ++e)
                acc += f(q[(size_t(i) * hq + h) * D + e]) * f(k[(size_t(j) * hkv + hk) * D + e]);
            sc[j] = acc * desc.sm_scale;
            mx = std::max(mx, sc[j]);
        }
        for (int j = 0; j < lim; ++j) {
            const double p = std::exp(sc[j] - mx);
            l += p;
            for (int e = 0; e < D; ++e) o[e] += p * f(v[(size_t(j) * hkv + hk) * D + e]);
        }
        for (int e = 0; e < D; ++e) {
            const double d = f(out[(size_t(i) * hq + h) * D + e]) - o[e] / l;
            e2 += d * d;
            r2 += o[e] / l * o[e] / l;
        }
    }
    const double rel = std::sqrt(e2 / r2);
    std::sort(t.begin(), t.end());
    const double med = t[t.size() / 2], best = t[0];
    std::printf("%-12s n_q=%4d n_kv=%5d threads=%d: median %8.3f ms %7.1f GFLOP/s | best %8.3f ms "
                "%7.1f GFLOP/s (spot-check rel err %.1e)\n",
                kernel->path_name(), n_q, n_kv, threads, med * 1e3, flops / med * 1e-9, best * 1e3,
                flops / best * 1e-9, rel);
}

}  // namespace

int main(int argc, char** argv) {
    const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
    const int runs = argc > 2 ? std::atoi(argv[2]) : 15;
    std::printf("cpu: %s\nFLOPs = 4 * head_dim * num_qo_heads * sum over queries of visible keys\n",
                cpu_features_string().c_str());
    for (int n_kv : {4096, 16384})
        for (const char* e : {"amx", "onednn"}) bench(512, n_kv, threads, runs, e);
    return 0;
}
