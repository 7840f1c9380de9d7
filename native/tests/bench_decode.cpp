// Decode timing harness (not a test): 32 q / 8 kv heads, head_dim 128, BF16 KV, batch 1, at
// 16k and 64k tokens, page sizes 16 and 64, on each SIMD path. Rotates over several KV buffers
// (>= 1 GiB in all, larger than the LLC) with shuffled pages, so caches do not flatter. Prints the
// effective KV bandwidth (K+V bytes / time) and a STREAM-like read bandwidth measured in the same
// run with the same threads. Usage: bench_decode [threads=2] [runs=25] [isa=best|avx512|avx2|scalar]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "core/cpu_features.h"
#include "core/kernel_args.h"
#include "cpu/decode.h"

using namespace attn4j;
using clk = std::chrono::steady_clock;

static double seconds_since(clk::time_point t0) {
    return std::chrono::duration<double>(clk::now() - t0).count();
}

static double read_bandwidth(int threads, size_t bytes, int repeats) {
    const size_t n = bytes / 8;
    std::vector<uint64_t> buf(n);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; ++i) buf[i] = i;
    double best = 0;
    volatile uint64_t sink = 0;
    for (int r = 0; r < repeats; ++r) {
        const auto t0 = clk::now();
        uint64_t total = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
        for (size_t i = 0; i < n; ++i) total += buf[i];
        const double s = seconds_since(t0);
        sink = sink + total;
        best = std::max(best, double(bytes) / s / 1e9);
    }
    return best;
}

int main(int argc, char** argv) {
    const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
    const int runs = argc > 2 ? std::atoi(argv[2]) : 25;
    const char* isa_arg = argc > 3 ? argv[3] : "best";
    std::printf("bench_decode: threads=%d runs=%d %s\n", threads, runs, cpu_features_string().c_str());
    const double stream = read_bandwidth(threads, size_t(1) << 30, 5);
    std::printf("read bandwidth (1 GiB, best of 5): %.2f GB/s\n", stream);

    const int QH = 32, H = 8, D = 128;
    std::vector<Isa> isas;
    if (!std::strcmp(isa_arg, "best")) isas = {cpu_features().isa};
    else if (!std::strcmp(isa_arg, "all")) for (int i = int(cpu_features().isa); i >= 0; --i) isas.push_back(Isa(i));
    else isas = {!std::strcmp(isa_arg, "avx512") ? Isa::avx512 : !std::strcmp(isa_arg, "avx2") ? Isa::avx2 : Isa::scalar};

    std::mt19937_64 rng(42);
    std::vector<int> page_sizes = {16, 64};
    if (const char* e = std::getenv("BENCH_PAGE")) page_sizes = {std::atoi(e)};
    for (int ps : page_sizes) {
        std::vector<int> lens = {16384, 65536};
        if (const char* e = std::getenv("BENCH_LEN")) lens = {std::atoi(e)};  // e.g. 512 with BENCH_HOT=1: L2-resident
        for (int len : lens) {
            const int np = len / ps;
            const int64_t page_elems = int64_t(H) * ps * D;
            const size_t kv_bytes = size_t(np) * page_elems * 2 * 2;  // K + V, BF16
            // BENCH_HOT=1: one buffer, re-read every run (cache-resident: the compute ceiling).
            const int nbuf = std::getenv("BENCH_HOT") ? 1 : int(std::max<size_t>(2, (size_t(1) << 30) / kv_bytes));
            std::vector<std::vector<uint16_t>> K(nbuf), V(nbuf);
            std::vector<std::vector<int32_t>> idx(nbuf);
            for (int b = 0; b < nbuf; ++b) {
                K[b].resize(size_t(np) * page_elems);
                V[b].resize(size_t(np) * page_elems);
                for (size_t i = 0; i < K[b].size(); ++i) {
                    K[b][i] = uint16_t(0x3C00 + (rng() & 0x3FF)) ^ uint16_t((i & 1) << 15);  // +-[0.0078, 0.0156)
                    V[b][i] = uint16_t(0x3F00 + (rng() & 0xFF));
                }
                idx[b].resize(np);
                std::iota(idx[b].begin(), idx[b].end(), 0);
                std::shuffle(idx[b].begin(), idx[b].end(), rng);
            }
            std::vector<float> q(size_t(QH) * D), out(size_t(QH) * D), lse(QH);
            for (auto& x : q) x = float(int(rng() % 200) - 100) / 50.f;
            std::vector<int32_t> indptr = {0, np}, last = {ps};

            attn4j_attention_desc desc{};
            desc.struct_size = sizeof(desc);
            desc.num_qo_heads = QH;
            desc.num_kv_heads = H;
            desc.head_dim = D;
            desc.q_dtype = ATTN4J_DTYPE_F32;
            desc.kv_dtype = ATTN4J_DTYPE_BF16;
            desc.out_dtype = ATTN4J_DTYPE_F32;
            desc.sm_scale = 0.08838834764831845f;
            desc.page_size = ps;
            desc.max_batch_size = 1;
            for (Isa isa : isas) {
                auto kernel = cpu::make_decode_kernel_for_isa(desc, threads, isa);
                std::vector<double> times;
                for (int r = -2; r < runs; ++r) {
                    const int b = (r + 2) % nbuf;
                    DecodeArgs a;
                    a.shape.num_qo_heads = QH;
                    a.shape.num_kv_heads = H;
                    a.shape.head_dim = D;
                    a.shape.sm_scale = desc.sm_scale;
                    a.q = RowsHeadsView{q.data(), ATTN4J_DTYPE_F32, int64_t(QH) * D, D};
                    a.out = RowsHeadsView{out.data(), ATTN4J_DTYPE_F32, int64_t(QH) * D, D};
                    a.lse = LseView{lse.data(), QH, 1};
                    a.kv.dtype = ATTN4J_DTYPE_BF16;
                    a.kv.num_kv_heads = H;
                    a.kv.head_dim = D;
                    a.kv.page_size = ps;
                    a.kv.num_pages = np;
                    a.kv.k = K[b].data();
                    a.kv.v = V[b].data();
                    a.table = PageTableView{1, indptr.data(), idx[b].data(), last.data()};
                    const auto t0 = clk::now();
                    kernel->run(a);
                    const double s = seconds_since(t0);
                    if (r >= 0) times.push_back(s);
                }
                std::sort(times.begin(), times.end());
                const double med = times[times.size() / 2], best = times[0];
                const double bytes = double(len) * H * D * 2 * 2;
                std::printf("path=%-6s page=%-2d len=%-5d bufs=%-2d  median %.3f ms  %.2f GB/s (%.0f%% of read bw)  best %.2f GB/s\n",
                            kernel->path_name(), ps, len, nbuf, med * 1e3, bytes / med / 1e9,
                            100.0 * bytes / med / 1e9 / stream, bytes / best / 1e9);
            }
        }
    }
    return 0;
}
