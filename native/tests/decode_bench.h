// Shared by the CPU decode timing harnesses (bench_decode.cpp, bench_quant_decode.cpp): rotating,
// page-shuffled copies of one sequence's paged K/V in any cache format, and the timing loop of
// the library's decode driver over them. Not a test.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/kernel_args.h"
#include "cpu/decode.h"
#include "a4j_test.h"

namespace a4j_bench {

using clk = std::chrono::steady_clock;

// The benchmark shape: 32 query heads over 8 KV heads, head_dim 128, batch 1.
constexpr int QH = 32, H = 8, D = 128;

inline double seconds_since(clk::time_point t0) {
    return std::chrono::duration<double>(clk::now() - t0).count();
}

inline double median(std::vector<double> t) {
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

// Last-level cache size from sysfs (32 MiB when unknown).
inline size_t l3_bytes() {
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

// Copies of one sequence of `len` tokens in the format of `proto` (dtype, page size, quant):
// at least `min_total` bytes of K+V in all, at least one copy; each copy's pages are shuffled.
// BF16 values are small random numbers; quantized pages get random codes and plausible
// {scale, zero} pairs (this is a timing harness: the values do not matter, only the bytes).
struct Caches {
    attn4j::PagedKvView proto;
    int num_pages = 0;
    size_t kv_bytes = 0;  // K + V of one copy
    std::vector<std::vector<uint8_t>> k, v;
    std::vector<std::vector<int32_t>> pages;
};

inline Caches make_caches(attn4j::PagedKvView proto, int len, size_t min_total, std::mt19937_64& rng) {
    Caches c;
    c.num_pages = len / proto.page_size;
    proto.num_kv_heads = H;
    proto.head_dim = D;
    proto.num_pages = c.num_pages;
    c.proto = proto;
    const size_t bytes = size_t(c.num_pages) * size_t(proto.page_stride_bytes());
    c.kv_bytes = 2 * bytes;
    const size_t copies = std::max<size_t>(1, (min_total + c.kv_bytes - 1) / c.kv_bytes);
    for (size_t b = 0; b < copies; ++b) {
        std::vector<uint8_t> k(bytes), v(bytes);
        if (!proto.quantized()) {
            auto* kh = reinterpret_cast<uint16_t*>(k.data());
            auto* vh = reinterpret_cast<uint16_t*>(v.data());
            for (size_t i = 0; i < bytes / 2; ++i) {
                kh[i] = uint16_t(0x3C00 + (rng() & 0x3FF)) ^ uint16_t((i & 1) << 15);  // +-[0.0078, 0.0156) in BF16
                vh[i] = uint16_t(0x3F00 + (rng() & 0xFF));
            }
        } else {
            const attn4j::QuantFormat& f = proto.quant;
            for (auto* buf : {&k, &v}) {
                for (auto& x : *buf) x = uint8_t(rng());
                for (size_t blk = 0; blk < bytes / size_t(proto.head_stride_bytes()); ++blk)
                    for (int t = 0; t < proto.page_size; ++t)
                        for (int g = 0; g < f.groups(); ++g) {
                            const float sz[2] = {0.02f + float(rng() % 100) * 1e-4f, -1.f + float(rng() % 100) * 1e-3f};
                            uint8_t* m = buf->data() + blk * proto.head_stride_bytes() +
                                         int64_t(proto.page_size) * f.code_bytes() + t * f.meta_bytes() + g * 8;
                            std::memcpy(m, sz, 8);  // F32 meta
                        }
            }
        }
        std::vector<int32_t> order(size_t(c.num_pages));
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), rng);
        c.k.push_back(std::move(k));
        c.v.push_back(std::move(v));
        c.pages.push_back(std::move(order));
    }
    return c;
}

// Median seconds of `runs` decode steps (after 2 warm-ups) of `kernel`, rotating over the copies.
inline double time_decode(attn4j::cpu::DecodeKernel& kernel, const Caches& c, float sm_scale, int runs,
                          std::mt19937_64& rng) {
    std::vector<float> q(size_t(QH) * D), out(size_t(QH) * D), lse(QH);
    for (auto& x : q) x = float(int(rng() % 200) - 100) / 50.f;
    std::vector<int32_t> indptr = {0, c.num_pages}, last = {c.proto.page_size};
    std::vector<double> times;
    for (int r = -2; r < runs; ++r) {
        const size_t b = size_t(r + 2) % c.k.size();
        attn4j::DecodeArgs a;
        a.shape.num_qo_heads = QH;
        a.shape.num_kv_heads = H;
        a.shape.head_dim = D;
        a.shape.sm_scale = sm_scale;
        a.q = attn4j::RowsHeadsView{q.data(), ATTN4J_DTYPE_F32, int64_t(QH) * D, D};
        a.out = attn4j::RowsHeadsView{out.data(), ATTN4J_DTYPE_F32, int64_t(QH) * D, D};
        a.lse = attn4j::LseView{lse.data(), QH, 1};
        a.kv = c.proto;
        a.kv.k = const_cast<uint8_t*>(c.k[b].data());
        a.kv.v = const_cast<uint8_t*>(c.v[b].data());
        a.table = attn4j::PageTableView{1, indptr.data(), c.pages[b].data(), last.data()};
        const auto t0 = clk::now();
        kernel.run(a);
        const double s = seconds_since(t0);
        if (r >= 0) times.push_back(s);
    }
    return median(times);
}

// A decode desc for the benchmark shape over `kv_dtype` pages.
inline attn4j_attention_desc bench_desc(attn4j_dtype kv_dtype, int page_size) {
    return a4j_test::attention_desc(QH, H, D, ATTN4J_DTYPE_F32, kv_dtype, page_size, 1);
}

}  // namespace a4j_bench
