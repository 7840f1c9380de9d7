// Quantized decode timing harness (not a test): 32 q / 8 kv heads, head_dim 128, batch 1, page 16,
// 16k and 64k tokens: BF16 (the library's decode kernel) vs the fused INT8 / INT4 / INT2 chunk
// kernels (G=128, F32 meta, Hadamard keys and values) driven here by OpenMP: the tokens x kv heads
// are split into ~8 page-aligned chunks per thread, run with `omp parallel for`, and merged by LSE.
// Rotates over several cache copies totalling >= max(2 x L3, 256 MiB), shuffled pages; median of
// `runs` after 2 warm-up runs; prints ms per step, KV bytes per step, GB/s, speed-up vs BF16, and
// the read bandwidth measured in the same run.
// Usage: bench_quant_decode [threads=2] [runs=21] [isa=best|avx512|avx2|scalar]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/kernel_args.h"
#include "cpu/decode.h"
#include "cpu/decode_quant.h"
#include "cpu/read_bandwidth.h"

using namespace attn4j;
using clk = std::chrono::steady_clock;

namespace {

double seconds_since(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

size_t l3_bytes() {
    std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index3/size");
    std::string s;
    if (!(f >> s) || s.empty()) return size_t(32) << 20;
    size_t v = std::strtoull(s.c_str(), nullptr, 10);
    const char u = s.back();
    if (u == 'K') v <<= 10;
    else if (u == 'M') v <<= 20;
    else if (u == 'G') v <<= 30;
    return v;
}

double median(std::vector<double> t) {
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

constexpr int QH = 32, H = 8, D = 128, GRP = QH / H;

double bench_bf16(int len, int ps, int threads, int runs, size_t min_total, Isa isa, std::mt19937_64& rng) {
    const int np = len / ps;
    const int64_t page_elems = int64_t(H) * ps * D;
    const size_t kv_bytes = size_t(np) * page_elems * 2 * 2;
    const int nbuf = int(std::max<size_t>(2, (min_total + kv_bytes - 1) / kv_bytes));
    std::vector<std::vector<uint16_t>> K(nbuf), V(nbuf);
    std::vector<std::vector<int32_t>> idx(nbuf);
    for (int b = 0; b < nbuf; ++b) {
        K[b].resize(size_t(np) * page_elems);
        V[b].resize(size_t(np) * page_elems);
        for (size_t i = 0; i < K[b].size(); ++i) {
            K[b][i] = uint16_t(0x3C00 + (rng() & 0x3FF)) ^ uint16_t((i & 1) << 15);
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
    return median(times);
}

struct QuantResult {
    double sec;
    double bytes;
};

QuantResult bench_quant(int bits, int len, int ps, int threads, int runs, size_t min_total, Isa isa,
                        std::mt19937_64& rng) {
    const QuantFormat f{bits, D, 128, ATTN4J_DTYPE_F32};
    const int np = len / ps;
    const int64_t head_block = int64_t(ps) * f.token_bytes();
    const int64_t page_stride = head_block * H;
    const size_t kv_bytes = size_t(np) * page_stride * 2;
    const int nbuf = int(std::max<size_t>(2, (min_total + kv_bytes - 1) / kv_bytes));
    std::vector<std::vector<uint8_t>> K(nbuf), V(nbuf);
    std::vector<std::vector<int32_t>> idx(nbuf);
    for (int b = 0; b < nbuf; ++b) {
        for (auto* buf : {&K[b], &V[b]}) {
            buf->resize(size_t(np) * page_stride);
            uint64_t x = rng();
            for (size_t i = 0; i + 8 <= buf->size(); i += 8) {  // random codes
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                std::memcpy(buf->data() + i, &x, 8);
            }
            for (int p = 0; p < np; ++p)  // sane meta: scale, zero
                for (int h = 0; h < H; ++h) {
                    uint8_t* meta = buf->data() + p * page_stride + h * head_block + int64_t(ps) * f.code_bytes();
                    for (int t = 0; t < ps; ++t) {
                        const float sz[2] = {0.02f + float(rng() % 100) * 1e-4f, -1.f + float(rng() % 100) * 1e-3f};
                        std::memcpy(meta + t * f.meta_bytes(), sz, 8);
                    }
                }
        }
        idx[b].resize(np);
        std::iota(idx[b].begin(), idx[b].end(), 0);
        std::shuffle(idx[b].begin(), idx[b].end(), rng);
    }
    std::vector<float> q(size_t(QH) * D);
    for (auto& x : q) x = float(int(rng() % 200) - 100) / 50.f * 0.08838834764831845f * 1.4426950408889634f;
    // ~8 chunks per thread, page-aligned.
    const int chunks_per_head = std::max(1, (8 * threads + H - 1) / H);
    const int pages_per_chunk = (np + chunks_per_head - 1) / chunks_per_head;
    struct Task {
        int head, page0, npages;
    };
    std::vector<Task> tasks;
    for (int h = 0; h < H; ++h)
        for (int p = 0; p < np; p += pages_per_chunk) tasks.push_back({h, p, std::min(pages_per_chunk, np - p)});
    const size_t sb = (cpu::quant_chunk_scratch_bytes(GRP, D, ps) + 63) / 64 * 64;
    std::vector<uint8_t> scratch_mem(sb * threads + 64);
    uint8_t* scratch = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(scratch_mem.data()) + 63) & ~uintptr_t(63));
    std::vector<float> tout(tasks.size() * GRP * D), tlse(tasks.size() * GRP), out(size_t(QH) * D);
    const cpu::QuantChunkFn fn = cpu::quant_chunk_fn(isa);
    std::vector<double> times;
    for (int r = -2; r < runs; ++r) {
        const int b = (r + 2) % nbuf;
        const auto t0 = clk::now();
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int i = 0; i < int(tasks.size()); ++i) {
            const Task& t = tasks[size_t(i)];
            cpu::QuantDecodeChunk ch;
            ch.fmt = f;
            ch.k_rot = RotationView{ATTN4J_ROTATION_HADAMARD, nullptr, nullptr};
            ch.v_rot = ch.k_rot;
            ch.kv_head = t.head;
            ch.group = GRP;
            ch.page_size = ps;
            ch.k_base = K[b].data() + t.head * head_block;
            ch.v_base = V[b].data() + t.head * head_block;
            ch.page_stride_bytes = page_stride;
            ch.pages = idx[b].data() + t.page0;
            ch.num_tokens = int64_t(t.npages) * ps;
            ch.q = q.data() + size_t(t.head) * GRP * D;
            ch.out = tout.data() + size_t(i) * GRP * D;
            ch.lse2 = tlse.data() + size_t(i) * GRP;
            ch.scratch = scratch + size_t(omp_get_thread_num()) * sb;
            fn(ch);
        }
        // Merge the chunks of each head by LSE.
        for (int h = 0; h < H; ++h)
            for (int g = 0; g < GRP; ++g) {
                float m = -INFINITY;
                for (size_t i = 0; i < tasks.size(); ++i)
                    if (tasks[i].head == h) m = std::max(m, tlse[i * GRP + g]);
                float* o = out.data() + (size_t(h) * GRP + g) * D;
                std::fill(o, o + D, 0.f);
                double wsum = 0;
                for (size_t i = 0; i < tasks.size(); ++i) {
                    if (tasks[i].head != h) continue;
                    const float w = std::exp2(tlse[i * GRP + g] - m);
                    wsum += w;
                    const float* to = tout.data() + (i * GRP + g) * D;
                    for (int d = 0; d < D; ++d) o[d] += w * to[d];
                }
                const float inv = float(1.0 / wsum);
                for (int d = 0; d < D; ++d) o[d] *= inv;
            }
        const double s = seconds_since(t0);
        if (r >= 0) times.push_back(s);
    }
    return {median(times), double(kv_bytes)};
}

// BENCH_MICRO=<tokens>: one chunk of one KV head (group 4), cache-resident (L2), run back to back;
// prints best-of-reps ns per token (4 query heads) for INT8 / INT4 / INT2.
void bench_micro(int len, Isa isa) {
    const int ps = 16, np = len / ps;
    std::mt19937_64 rng(7);
    const int reps = std::getenv("BENCH_REPS") ? std::atoi(std::getenv("BENCH_REPS")) : 200;
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
        std::printf("  INT%d micro: %d tokens, best of %d: %.2f ns/token (4 q heads)  [checksum %.6f]\n", bits, len, reps,
                    best * 1e9 / len, cs);
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
    // BENCH_HOT=1: two small copies, cache-resident (the compute ceiling).
    const size_t min_total = std::getenv("BENCH_HOT") ? 0 : std::max<size_t>(2 * l3, size_t(256) << 20);
    std::printf("bench_quant_decode: threads=%d runs=%d isa=%s L3=%zu MiB, >= %zu MiB of cache copies per case\n  %s\n",
                threads, runs, isa_name(isa), l3 >> 20, min_total >> 20, cpu_features_string().c_str());
    std::mt19937_64 rng(42);
    std::vector<int> lens = {16384, 65536};
    if (const char* e = std::getenv("BENCH_LEN")) lens = {std::atoi(e)};
    const int ps = 16;
    for (int len : lens) {
        const double bw = std::getenv("BENCH_BITS") ? 1.0 : cpu::measure_read_bandwidth(int64_t(1) << 30, 5, threads);
        const double bf = std::getenv("BENCH_BITS") ? 1.0 : bench_bf16(len, ps, threads, runs, min_total, isa, rng);
        const double bf_bytes = double(len) * H * D * 2 * 2;
        std::printf("len=%d page=%d  read bandwidth %.2f GB/s\n", len, ps, bw);
        std::printf("  %-5s %8s %10s %8s %8s %7s %9s\n", "kv", "ms", "KV MB", "GB/s", "%rd bw", "vsBF16", "byte ratio");
        std::printf("  %-5s %8.3f %10.2f %8.2f %7.0f%% %7.2fx %9s\n", "BF16", bf * 1e3, bf_bytes / 1e6, bf_bytes / bf / 1e9,
                    100 * bf_bytes / bf / 1e9 / bw, 1.0, "1.00");
        for (int bits : {8, 4, 2}) {
            if (const char* e = std::getenv("BENCH_BITS"))
                if (std::atoi(e) != bits) continue;
            const QuantResult q = bench_quant(bits, len, ps, threads, runs, min_total, isa, rng);
            char name[8];
            std::snprintf(name, sizeof name, "INT%d", bits);
            std::printf("  %-5s %8.3f %10.2f %8.2f %7.0f%% %7.2fx %8.2fx\n", name, q.sec * 1e3, q.bytes / 1e6,
                        q.bytes / q.sec / 1e9, 100 * q.bytes / q.sec / 1e9 / bw, bf / q.sec, bf_bytes / q.bytes);
        }
        std::fflush(stdout);
    }
    return 0;
}
