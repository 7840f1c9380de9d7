// The access-pattern roofline of paged decode: reads K and V exactly as the decode kernel walks
// them (one task per KV head, HND pages in shuffled order, K and V chunks of each page in turn,
// optionally software prefetch `pf` pages ahead as the decode kernel does), but with only a vector
// add per line: the most a decode kernel with this access pattern can stream. Runs with hardware
// prefetch alone and with the software prefetch; compare both with the STREAM-like read bandwidth
// printed alongside.
//   bench_kv_access [threads=2] [page_size=16] [prefetch_pages=2]
#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cpu/read_bandwidth.h"

namespace {

struct Kv {
    char* k;
    char* v;
    std::vector<int> pages;
};

__attribute__((target("avx512f"))) float walk(const Kv& kv, int head, int num_pages, size_t page_bytes,
                                             size_t chunk, int pf) {
    __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
    for (int p = 0; p < num_pages; ++p) {
        if (pf > 0 && p + pf < num_pages) {
            const size_t q = size_t(kv.pages[p + pf]) * page_bytes + head * chunk;
            for (size_t o = 0; o < chunk; o += 64) {
                _mm_prefetch(kv.k + q + o, _MM_HINT_T2);
                _mm_prefetch(kv.v + q + o, _MM_HINT_T2);
            }
        }
        const size_t base = size_t(kv.pages[p]) * page_bytes + head * chunk;
        for (size_t o = 0; o < chunk; o += 64) a = _mm512_add_ps(a, _mm512_load_ps(kv.k + base + o));
        for (size_t o = 0; o < chunk; o += 64) b = _mm512_add_ps(b, _mm512_load_ps(kv.v + base + o));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a, b));
}

}  // namespace

int main(int argc, char** argv) {
    if (!__builtin_cpu_supports("avx512f")) {
        std::printf("bench_kv_access: needs AVX-512\n");
        return 0;
    }
    const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
    const int page_size = argc > 2 ? std::atoi(argv[2]) : 16;
    const int pf = argc > 3 ? std::atoi(argv[3]) : 2;
    const int heads = 8, head_dim = 128, len = 16384, num_pages = len / page_size;
    const size_t chunk = size_t(page_size) * head_dim * 2;  // one head of one page, BF16
    const size_t page_bytes = chunk * heads, bytes = page_bytes * num_pages;
    const int nbuf = 16;  // 16 x 64 MiB x 2: well past the last-level cache
    std::vector<Kv> bufs(nbuf);
    std::mt19937 rng(1);
    for (Kv& kv : bufs) {
        kv.k = static_cast<char*>(std::aligned_alloc(size_t(2) << 20, bytes));
        kv.v = static_cast<char*>(std::aligned_alloc(size_t(2) << 20, bytes));
        madvise(kv.k, bytes, MADV_HUGEPAGE);
        madvise(kv.v, bytes, MADV_HUGEPAGE);
        for (size_t i = 0; i < bytes; i += 64) kv.k[i] = kv.v[i] = 1;
        kv.pages.resize(num_pages);
        for (int i = 0; i < num_pages; ++i) kv.pages[i] = i;
        std::shuffle(kv.pages.begin(), kv.pages.end(), rng);
    }
    const double read_bw = attn4j::cpu::measure_read_bandwidth(int64_t(1) << 30, 5, threads);
    for (int prefetch : {0, pf}) {
        std::vector<double> times;
        volatile float sink = 0;
        for (int run = 0; run < 48; ++run) {
            const Kv& kv = bufs[run % nbuf];
            const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for num_threads(threads) schedule(static)
            for (int h = 0; h < heads; ++h) sink = sink + walk(kv, h, num_pages, page_bytes, chunk, prefetch);
            times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        std::sort(times.begin(), times.end());
        const double gbps = 2.0 * bytes / times[times.size() / 2] / 1e9;
        std::printf("threads=%d page=%d software prefetch=%d pages: %.2f GB/s = %.0f%% of read bandwidth %.2f GB/s\n",
                    threads, page_size, prefetch, gbps, 100 * gbps / read_bw, read_bw);
        if (pf == 0) break;
    }
    for (Kv& kv : bufs) {
        std::free(kv.k);
        std::free(kv.v);
    }
    return 0;
}
