// Paged decode kernel against a float64 scalar reference, on every SIMD path this CPU allows.
// Standalone: exit status 0 on success. Usage: test_decode [seed] (default: time-based, printed).
#include <algorithm>
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
#include "core/cpu_features.h"
#include "core/kernel_args.h"
#include "cpu/decode.h"
#include "a4j_test.h"

using namespace attn4j;

namespace {

using namespace attn4j;
using a4j_test::Buf;
using a4j_test::dname;
using a4j_test::dsize;

struct Case {
    std::vector<int> lens;
    int page_size = 16, num_kv_heads = 2, group = 4, head_dim = 128;
    attn4j_dtype qdt = ATTN4J_DTYPE_F32, kvdt = ATTN4J_DTYPE_F32, odt = ATTN4J_DTYPE_F32;
    bool lse = true;
    bool padded_strides = false;
    int threads = 2;
};

std::string describe(const Case& c) {
    std::string s = "batch=" + std::to_string(c.lens.size()) + " lens=[";
    for (size_t i = 0; i < c.lens.size() && i < 6; ++i) s += (i ? "," : "") + std::to_string(c.lens[i]);
    if (c.lens.size() > 6) s += ",...";
    s += "] page=" + std::to_string(c.page_size) + " kv_heads=" + std::to_string(c.num_kv_heads) +
         " group=" + std::to_string(c.group) + " d=" + std::to_string(c.head_dim) + " q=" + dname(c.qdt) +
         " kv=" + dname(c.kvdt) + " out=" + dname(c.odt) + (c.lse ? " lse" : "") +
         (c.padded_strides ? " padded" : "") + " threads=" + std::to_string(c.threads);
    return s;
}

int g_failures = 0, g_runs = 0;

void run_case(const Case& c, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> N(0.f, 1.f);
    const int B = int(c.lens.size()), H = c.num_kv_heads, QH = H * c.group, D = c.head_dim, P = c.page_size;
    // Pages: each sequence gets ceil(len / P) pages, all of them shuffled into a larger pool.
    std::vector<int32_t> indptr(B + 1, 0), last(B);
    for (int i = 0; i < B; ++i) {
        const int np = (c.lens[i] + P - 1) / P;
        indptr[i + 1] = indptr[i] + np;
        last[i] = c.lens[i] - (np - 1) * P;
    }
    const int used = indptr[B];
    const int num_pages = used + 3 + int(rng() % 7);
    std::vector<int32_t> perm(num_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> indices(perm.begin(), perm.begin() + used);

    // Query with padded strides optionally.
    const int64_t q_hs = c.padded_strides ? D + 16 : D, q_rs = QH * q_hs + (c.padded_strides ? 8 : 0);
    const int64_t o_hs = c.padded_strides ? D + 32 : D, o_rs = QH * o_hs + (c.padded_strides ? 16 : 0);
    const int64_t l_hs = c.padded_strides ? 2 : 1, l_rs = QH * l_hs + (c.padded_strides ? 3 : 0);
    Buf q(c.qdt, size_t(B) * q_rs);
    for (int i = 0; i < B; ++i)
        for (int h = 0; h < QH; ++h)
            for (int d = 0; d < D; ++d) q.set(i * q_rs + h * q_hs + d, N(rng));

    // K/V with outlier channels; token 0 of each sequence is an attention sink for head 0 of
    // each group (key aligned with that query).
    std::vector<float> kscale(D, 1.f), vscale(D, 1.f);
    for (int j = 0; j < 4; ++j) kscale[rng() % D] = 8.f + 4.f * float(j);
    for (int j = 0; j < 2; ++j) vscale[rng() % D] = 6.f;
    const int64_t page_elems = int64_t(H) * P * D;
    Buf k(c.kvdt, size_t(num_pages) * page_elems), v(c.kvdt, size_t(num_pages) * page_elems);
    for (size_t i = 0; i < size_t(num_pages) * page_elems; ++i) {
        const int d = int(i % D);
        k.set(i, N(rng) * kscale[d] + 0.3f);
        v.set(i, N(rng) * vscale[d] - 0.1f);
    }
    for (int i = 0; i < B; ++i) {
        const int page = indices[indptr[i]];
        for (int h = 0; h < H; ++h)
            for (int d = 0; d < D; ++d)
                k.set(page * page_elems + int64_t(h) * P * D + d, 0.4f * q.get(i * q_rs + (h * c.group) * q_hs + d));
    }
    const float sm_scale = 1.f / std::sqrt(float(D));

    // Reference in double.
    std::vector<double> ref(size_t(B) * QH * D), ref_lse(size_t(B) * QH);
    for (int i = 0; i < B; ++i) {
        for (int h = 0; h < QH; ++h) {
            const int kh = h / c.group;
            std::vector<double> s(c.lens[i]);
            double mx = -INFINITY;
            for (int t = 0; t < c.lens[i]; ++t) {
                const int64_t base = int64_t(indices[indptr[i] + t / P]) * page_elems + int64_t(kh) * P * D + int64_t(t % P) * D;
                double acc = 0;
                for (int d = 0; d < D; ++d) acc += double(q.get(i * q_rs + h * q_hs + d)) * double(k.get(base + d));
                s[t] = acc * double(sm_scale);
                mx = std::max(mx, s[t]);
            }
            double sum = 0;
            std::vector<double> o(D, 0.0);
            for (int t = 0; t < c.lens[i]; ++t) {
                const double w = std::exp(s[t] - mx);
                sum += w;
                const int64_t base = int64_t(indices[indptr[i] + t / P]) * page_elems + int64_t(kh) * P * D + int64_t(t % P) * D;
                for (int d = 0; d < D; ++d) o[d] += w * double(v.get(base + d));
            }
            for (int d = 0; d < D; ++d) ref[(size_t(i) * QH + h) * D + d] = o[d] / sum;
            ref_lse[size_t(i) * QH + h] = mx + std::log(sum);
        }
    }

    attn4j_attention_desc desc =
        a4j_test::attention_desc(QH, H, D, c.qdt, c.kvdt, P, B + int(rng() % 3), false, sm_scale);
    desc.out_dtype = c.odt;

    const Isa best = cpu_features().isa;
    for (int isa_i = 0; isa_i <= int(best); ++isa_i) {
        const Isa isa = Isa(isa_i);
        auto kernel = cpu::make_decode_kernel_for_isa(desc, c.threads, isa);
        Buf out(c.odt, size_t(B) * o_rs);
        std::vector<float> lse(size_t(B) * l_rs);
        const double tol = c.odt == ATTN4J_DTYPE_F32 ? 1e-5 : 1e-2;
        // Two runs on the same kernel (reuse of the workspace), both poisoned first.
        for (int rep = 0; rep < 2; ++rep) {
            out.poison();
            std::fill(lse.begin(), lse.end(), NAN);
            DecodeArgs a;
            a.shape.num_qo_heads = QH;
            a.shape.num_kv_heads = H;
            a.shape.head_dim = D;
            a.shape.sm_scale = sm_scale;
            a.q = RowsHeadsView{q.data(), c.qdt, q_rs, q_hs};
            a.out = RowsHeadsView{out.data(), c.odt, o_rs, o_hs};
            a.lse = c.lse ? LseView{lse.data(), l_rs, l_hs} : LseView{};
            a.kv.dtype = c.kvdt;
            a.kv.num_kv_heads = H;
            a.kv.head_dim = D;
            a.kv.page_size = P;
            a.kv.num_pages = num_pages;
            a.kv.k = k.data();
            a.kv.v = v.data();
            a.table = PageTableView{B, indptr.data(), indices.data(), last.data()};
            kernel->run(a);
            ++g_runs;

            double num = 0, den = 0, lse_err = 0;
            bool unwritten = false;
            for (int i = 0; i < B; ++i)
                for (int h = 0; h < QH; ++h) {
                    for (int d = 0; d < D; ++d) {
                        const float got = out.get(i * o_rs + h * o_hs + d);
                        if (!std::isfinite(got)) unwritten = true;
                        const double r = ref[(size_t(i) * QH + h) * D + d];
                        num += (got - r) * (got - r);
                        den += r * r;
                    }
                    if (c.lse) {
                        const float got = lse[i * l_rs + h * l_hs];
                        if (!std::isfinite(got)) unwritten = true;
                        const double r = ref_lse[size_t(i) * QH + h];
                        lse_err = std::max(lse_err, std::fabs(got - r) / std::max(1.0, std::fabs(r)));
                    }
                }
            const double rel = std::sqrt(num / den);
            const double lse_tol = 2e-6 * 8;  // F32 accumulation of scores over up to 8k keys
            if (unwritten || !(rel <= tol) || (c.lse && !(lse_err <= lse_tol))) {
                ++g_failures;
                std::printf("FAIL [%s] seed=%llu %s rep=%d: rel=%.3g (tol %.0e) lse_err=%.3g%s\n", isa_name(isa),
                            (unsigned long long)seed, describe(c).c_str(), rep, rel, tol, lse_err,
                            unwritten ? " UNWRITTEN/NONFINITE" : "");
            } else if (std::getenv("TEST_DECODE_VERBOSE")) {
                std::printf("ok   [%s] %s rel=%.3g lse_err=%.3g\n", isa_name(isa), describe(c).c_str(), rel, lse_err);
            }
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    const uint64_t seed0 = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : uint64_t(std::random_device{}());
    std::printf("test_decode: seed %llu, %s\n", (unsigned long long)seed0, cpu_features_string().c_str());
    std::mt19937_64 rng(seed0);
    const attn4j_dtype dts[3] = {ATTN4J_DTYPE_F32, ATTN4J_DTYPE_F16, ATTN4J_DTYPE_BF16};
    const int page_sizes[3] = {1, 16, 64};
    const int groups[3] = {1, 4, 8};
    const int odd_dims[3] = {32, 96, 256};
    std::vector<Case> cases;

    // 1. Every dtype combination, with and without LSE, on mixed shapes.
    int n = 0;
    for (auto qd : dts)
        for (auto kd : dts)
            for (auto od : dts) {
                Case c;
                c.qdt = qd;
                c.kvdt = kd;
                c.odt = od;
                c.lse = (n % 2) == 0;
                c.page_size = page_sizes[n % 3];
                c.group = groups[(n / 3) % 3];
                c.head_dim = (n % 4 == 3) ? odd_dims[(n / 4) % 3] : ((n % 2) ? 64 : 128);
                c.num_kv_heads = 1 + int(rng() % 3);
                c.lens = std::vector<int>{1 + int(rng() % 300), 1 + int(rng() % 40)};
                c.threads = 1 + n % 3;
                c.padded_strides = (n % 5) == 0;
                cases.push_back(c);
                ++n;
            }
    // 2. Page sizes x GQA x head dims (64 / 128 / an odd one), lengths up to 8k, ragged batches.
    for (int ps : page_sizes)
        for (int g : groups)
            for (int dsel = 0; dsel < 3; ++dsel) {
                Case c;
                c.page_size = ps;
                c.group = g;
                c.head_dim = dsel == 0 ? 64 : dsel == 1 ? 128 : odd_dims[rng() % 3];
                c.num_kv_heads = g == 8 ? 1 : 2;
                c.kvdt = (dsel == 1) ? ATTN4J_DTYPE_BF16 : dts[rng() % 3];
                c.qdt = dts[rng() % 3];
                c.odt = dts[rng() % 3];
                c.lse = rng() % 2;
                c.threads = 1 + int(rng() % 3);
                const int B = 1 + int(rng() % 4);
                for (int i = 0; i < B; ++i) {
                    const int r = int(rng() % 4);
                    c.lens.push_back(r == 0 ? 1 + int(rng() % 16) : r == 1 ? 1 + int(rng() % 600)
                                                                    : 1 + int(rng() % (ps == 1 ? 3000 : 8192)));
                }
                cases.push_back(c);
            }
    // 3. Long single sequences (split-KV across threads, merge) and long + short ragged mixes.
    for (int len : {8192, 8191, 4097, 2048}) {
        Case c;
        c.lens = std::vector<int>{len};
        c.page_size = len == 4097 ? 64 : 16;
        c.group = len == 8192 ? 4 : 8;
        c.num_kv_heads = 1;
        c.kvdt = ATTN4J_DTYPE_BF16;
        c.threads = len == 2048 ? 3 : 2;
        c.lse = true;
        cases.push_back(c);
    }
    {
        Case c;
        c.lens = std::vector<int>{8000, 3, 17, 1, 64, 65, 700, 1};
        c.page_size = 16;
        c.group = 4;
        c.num_kv_heads = 2;
        c.kvdt = ATTN4J_DTYPE_F16;
        c.qdt = ATTN4J_DTYPE_BF16;
        c.odt = ATTN4J_DTYPE_F32;
        c.threads = 2;
        cases.push_back(c);
        c.group = 3;  // a group that is not a power of two
        c.num_kv_heads = 1;
        c.head_dim = 96;
        c.kvdt = ATTN4J_DTYPE_F32;
        c.qdt = ATTN4J_DTYPE_F32;
        cases.push_back(c);
        c.group = 16;  // bigger than one group tile
        c.head_dim = 64;
        c.lens = std::vector<int>{3000, 1, 200};
        c.page_size = 1;
        cases.push_back(c);
    }

    for (size_t i = 0; i < cases.size(); ++i) run_case(cases[i], seed0 * 1000003ull + i);
    std::printf("test_decode: %zu cases, %d runs, %d failures\n", cases.size(), g_runs, g_failures);
    return g_failures ? 1 : 0;
}
