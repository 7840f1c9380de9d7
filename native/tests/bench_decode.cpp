// Decode timing harness (not a test): 32 q / 8 kv heads, head_dim 128, BF16 KV, batch 1, at
// 16k and 64k tokens, page sizes 16 and 64, on each SIMD path. Rotates over several KV buffers
// (>= 1 GiB in all, larger than the LLC) with shuffled pages, so caches do not flatter. Prints the
// effective KV bandwidth (K+V bytes / time) and the library's STREAM-like read bandwidth measured
// in the same run with the same threads.
// Usage: bench_decode [threads=2] [runs=25] [isa=best|all|avx512|avx2|scalar]
// Environment: BENCH_PAGE=<tokens>, BENCH_LEN=<tokens>, BENCH_HOT=1 (one cache-resident copy).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "core/cpu_features.h"
#include "cpu/read_bandwidth.h"
#include "decode_bench.h"

using namespace attn4j;
using namespace a4j_bench;

int main(int argc, char** argv) {
    const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
    const int runs = argc > 2 ? std::atoi(argv[2]) : 25;
    const char* isa_arg = argc > 3 ? argv[3] : "best";
    std::printf("bench_decode: threads=%d runs=%d %s\n", threads, runs, cpu_features_string().c_str());
    const double stream = cpu::measure_read_bandwidth(int64_t(1) << 30, 5, threads);
    std::printf("read bandwidth (1 GiB, best of 5): %.2f GB/s\n", stream);

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
            PagedKvView proto;
            proto.dtype = ATTN4J_DTYPE_BF16;
            proto.page_size = ps;
            const Caches caches = make_caches(proto, len, std::getenv("BENCH_HOT") ? 0 : size_t(1) << 30, rng);
            const attn4j_attention_desc desc = bench_desc(ATTN4J_DTYPE_BF16, ps);
            for (Isa isa : isas) {
                auto kernel = cpu::make_decode_kernel_for_isa(desc, threads, isa);
                const double med = time_decode(*kernel, caches, desc.sm_scale, runs, rng);
                const double bytes = double(caches.kv_bytes);
                std::printf("path=%-6s page=%-2d len=%-5d bufs=%-2zu  median %.3f ms  %.2f GB/s (%.0f%% of read bw)\n",
                            kernel->path_name(), ps, len, caches.k.size(), med * 1e3, bytes / med / 1e9,
                            100.0 * bytes / med / 1e9 / stream);
            }
        }
    }
    return 0;
}
