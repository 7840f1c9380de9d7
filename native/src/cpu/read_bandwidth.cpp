#include "cpu/read_bandwidth.h"

#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>

#include "core/cpu_features.h"

namespace attn4j::cpu {

uint64_t read_sum_scalar(const uint64_t* p, int64_t n) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3];
        s4 += p[i + 4]; s5 += p[i + 5]; s6 += p[i + 6]; s7 += p[i + 7];
    }
    for (; i < n; ++i) s0 += p[i];
    return s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
}

double measure_read_bandwidth(int64_t bytes, int repeats, int num_threads) {
    // 2 MiB-aligned and advised for transparent huge pages, like the Java KV slabs, so the
    // roofline and the decode kernels see the same TLB behaviour.
    constexpr int64_t kAlign = int64_t(2) << 20;
    const int64_t size = (bytes + kAlign - 1) / kAlign * kAlign;
    struct Free {
        void operator()(void* p) const { std::free(p); }
    };
    std::unique_ptr<uint64_t, Free> buf(static_cast<uint64_t*>(std::aligned_alloc(kAlign, size_t(size))));
    if (!buf) throw std::bad_alloc();
    madvise(buf.get(), size_t(size), MADV_HUGEPAGE);  // best effort: ignored where THP is off
    uint64_t* data = buf.get();
    const int64_t words = size / 8;
    const int nt = std::max(1, num_threads);

    using SumFn = uint64_t (*)(const uint64_t*, int64_t);
    SumFn sum = read_sum_scalar;
    switch (cpu_features().isa) {
        case Isa::avx512: sum = read_sum_avx512; break;
        case Isa::avx2: sum = read_sum_avx2; break;
        default: break;
    }

    // Each thread owns one contiguous, 4 KiB-aligned slice, for the first touch and every pass.
    auto slice = [&](int t, int64_t* begin, int64_t* end) {
        const int64_t pages = words / 512;
        *begin = pages * t / nt * 512;
        *end = pages * (t + 1) / nt * 512;
    };
#pragma omp parallel num_threads(nt)
    {
        int64_t b, e;
        slice(omp_get_thread_num(), &b, &e);
        for (int64_t i = b; i < e; ++i) data[i] = uint64_t(i) * 0x9E3779B97F4A7C15ull;
    }

    double best = 0.0;
    volatile uint64_t sink = 0;
    for (int r = 0; r < std::max(1, repeats); ++r) {
        uint64_t total = 0;
        const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(nt) reduction(+ : total)
        {
            int64_t b, e;
            slice(omp_get_thread_num(), &b, &e);
            total += sum(data + b, e - b);
        }
        const double dt = omp_get_wtime() - t0;
        sink = sink + total;
        if (dt > 0) best = std::max(best, double(size) / dt / 1e9);
    }
    (void)sink;
    return best;
}

}  // namespace attn4j::cpu
