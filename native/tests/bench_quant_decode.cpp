// Quantized decode timing harness (not a test): 32 q / 8 kv heads, head_dim 128, batch 1, page 16,
// 16k and 64k tokens, through the library's decode driver (split-KV over both threads, LSE merge):
// BF16 pages vs INT8 / INT4 / INT2 pages (G=128, F32 meta, Hadamard keys and values). Rotates over
// cache copies totalling >= max(2 x L3, 256 MiB), shuffled pages; median of `runs` after 2 warm-up
// runs; prints ms per step, KV bytes per step, GB/s, speed-up vs BF16, and the read bandwidth
// measured in the same run. BENCH_MICRO=<tokens> instead times one chunk kernel cache-resident.
// Usage: bench_quant_decode [threads=2] [runs=21] [isa=best|avx512|avx2|scalar]
// Environment: BENCH_LEN, BENCH_BITS (one format), BENCH_HOT=1, BENCH_MICRO, BENCH_REPS, BENCH_GROUP
// (query heads per KV head of the micro run; default 4).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "core/cpu_features.h"
#include "core/kernel_args.h"
#include "cpu/decode_quant.h"
#include "cpu/read_bandwidth.h"
#include "decode_bench.h"

using namespace attn4j;
using namespace a4j_bench;

namespace {

constexpr int GRP = QH / H;

// BENCH_MICRO=<tokens>: one chunk of one KV head (group 4, or BENCH_GROUP), cache-resident (L2 at
// 1024 tokens), run back to back; prints best-of-reps ns per token (all query heads of the group)
// for INT8 / INT4 / INT2.
void bench_micro(int len, Isa isa) {
    const int ps = 16, np = len / ps;
    std::mt19937_64 rng(7);
    const int reps = std::getenv("BENCH_REPS") ? std::atoi(std::getenv("BENCH_REPS")) : 200;
    const int GRP = std::getenv("BENCH_GROUP") ? std::max(1, std::atoi(std::getenv("BENCH_GROUP"))) : ::GRP;
    for (int bits : {8, 4, 2}) {
        if (const char* e = std::getenv("BENCH_BITS"))
            if (std::atoi(e) != bits) continue;
        const QuantFormat f{bits, D, 128, ATTN4J_DTYPE_F32};
        const int64_t head_block = int64_t(ps) * f.token_bytes();
        std::vector<uint8_t> K(size_t(np) * head_block), V(K.size());
        for (auto* buf : {&K, &V}) {
            for (auto& x : *buf) x = uint8_t(rng());
            for (int p = 0; p < np; ++p)
                for (int t = 0; t < ps; ++t) {
                    const float sz[2] = {0.02f + float(rng() % 100) * 1e-4f, -1.f + float(rng() % 100) * 1e-3f};
                    std::memcpy(buf->data() + p * head_block + int64_t(ps) * f.code_bytes() + t * f.meta_bytes(), sz, 8);
                }
        }
        std::vector<int32_t> idx(np);
        std::iota(idx.begin(), idx.end(), 0);
        std::shuffle(idx.begin(), idx.end(), rng);
        std::vector<float> q(size_t(GRP) * D), out(size_t(GRP) * D), lse(GRP);
        for (auto& x : q) x = float(int(rng() % 200) - 100) / 50.f * 0.08838834764831845f * 1.4426950408889634f;
        const size_t sb = cpu::quant_chunk_scratch_bytes(GRP, D, ps);
        std::vector<uint8_t> sm(sb + 64);
        cpu::QuantDecodeChunk ch;
        ch.fmt = f;
        ch.k_rot = RotationView{ATTN4J_ROTATION_HADAMARD, nullptr, nullptr};
        ch.v_rot = ch.k_rot;
        ch.group = GRP;
        ch.page_size = ps;
        ch.k_base = K.data();
        ch.v_base = V.data();
        ch.page_stride_bytes = head_block;
        ch.pages = idx.data();
        ch.num_tokens = len;
        ch.q = q.data();
        ch.out = out.data();
        ch.lse2 = lse.data();
        ch.scratch = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(sm.data()) + 63) & ~uintptr_t(63));
        const cpu::QuantChunkFn fn = cpu::quant_chunk_fn(isa);
        double best = 1e30;
        for (int r = 0; r < reps; ++r) {
            const auto t0 = clk::now();
            fn(ch);
            best = std::min(best, seconds_since(t0));
        }
        double cs = 0;
        for (float x : out) cs += x;
        std::printf("  INT%d micro: %d tokens, best of %d: %.2f ns/token (%d q heads)  [checksum %.6f]\n", bits, len, reps,
                    best * 1e9 / len, GRP, cs);
    }
}

}  // namespace

int main(int argc, char** argv) {
    const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
    const int runs = std::max(15, argc > 2 ? std::atoi(argv[2]) : 21);
    const char* isa_arg = argc > 3 ? argv[3] : "best";
    const Isa isa = !std::strcmp(isa_arg, "best") ? cpu_features().isa
                    : !std::strcmp(isa_arg, "avx512") ? Isa::avx512
                    : !std::strcmp(isa_arg, "avx2") ? Isa::avx2 : Isa::scalar;
    if (const char* e = std::getenv("BENCH_MICRO")) {
        bench_micro(std::atoi(e), isa);
        return 0;
    }
    const size_t l3 = l3_bytes();
    // BENCH_HOT=1: one cache-resident copy (the compute ceiling).
    const size_t min_total = std::getenv("BENCH_HOT") ? 0 : std::max<size_t>(2 * l3, size_t(256) << 20);
    std::printf("bench_quant_decode: threads=%d runs=%d isa=%s L3=%zu MiB, >= %zu MiB of cache copies per case\n  %s\n",
                threads, runs, isa_name(isa), l3 >> 20, min_total >> 20, cpu_features_string().c_str());
    std::mt19937_64 rng(42);
    std::vector<int> lens = {16384, 65536};
    if (const char* e = std::getenv("BENCH_LEN")) lens = {std::atoi(e)};
    const int ps = 16;
    const int only_bits = std::getenv("BENCH_BITS") ? std::atoi(std::getenv("BENCH_BITS")) : 0;
    for (int len : lens) {
        const double bw = cpu::measure_read_bandwidth(int64_t(1) << 30, 5, threads);
        std::printf("len=%d page=%d  read bandwidth %.2f GB/s\n", len, ps, bw);
        std::printf("  %-5s %8s %10s %8s %8s %7s %9s\n", "kv", "ms", "KV MB", "GB/s", "%rd bw", "vsBF16", "byte ratio");
        double bf = 0, bf_bytes = 0;
        for (int bits : {16, 8, 4, 2}) {
            if (only_bits && bits != 16 && bits != only_bits) continue;
            PagedKvView proto;
            proto.page_size = ps;
            attn4j_dtype dt = ATTN4J_DTYPE_BF16;
            if (bits != 16) {
                dt = bits == 8 ? ATTN4J_DTYPE_INT8 : bits == 4 ? ATTN4J_DTYPE_INT4 : ATTN4J_DTYPE_INT2;
                proto.quant = QuantFormat{bits, D, 128, ATTN4J_DTYPE_F32};
                proto.k_rot = proto.v_rot = RotationView{ATTN4J_ROTATION_HADAMARD, nullptr, nullptr};
            }
            proto.dtype = dt;
            const Caches caches = make_caches(proto, len, min_total, rng);
            const attn4j_attention_desc desc = bench_desc(dt, ps);
            auto kernel = cpu::make_decode_kernel_for_isa(desc, threads, isa);
            const double sec = time_decode(*kernel, caches, desc.sm_scale, runs, rng);
            const double bytes = double(caches.kv_bytes);
            if (bits == 16) {
                bf = sec;
                bf_bytes = bytes;
            }
            char name[8];
            std::snprintf(name, sizeof name, bits == 16 ? "BF16" : "INT%d", bits);
            std::printf("  %-5s %8.3f %10.2f %8.2f %7.0f%% %7.2fx %8.2fx\n", name, sec * 1e3, bytes / 1e6,
                        bytes / sec / 1e9, 100 * bytes / sec / 1e9 / bw, bf / sec, bf_bytes / bytes);
        }
        std::fflush(stdout);
    }
    return 0;
}
