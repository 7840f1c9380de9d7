// paged_kv_append round trip (every input dtype into every cache dtype, strided input, pages out
// of order, several sequences, appends in two steps) and merge_states against a float64 scalar
// reference (F32 / F16 / BF16 states, empty parts, all-empty rows).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "a4j_test.h"
#include "attn4j.h"
#include "core/dtype.h"

using namespace attn4j;
using a4j_test::tensor;

namespace {

std::mt19937 rng(20240611);

// Values with outlier channels, stored in `dtype` (as raw bytes) and their exact float values.
void gen(std::vector<uint8_t>& raw, std::vector<float>& exact, attn4j_dtype dtype, int64_t n) {
    std::normal_distribution<float> nd(0.f, 1.f);
    raw.assign(size_t(n) * size_t(dtype_size(dtype)) + 64, 0);
    exact.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) {
        float x = nd(rng) * ((i % 64) == 7 ? 40.f : 1.f);
        store_f32(raw.data(), dtype, i, x);
        exact[size_t(i)] = load_f32(raw.data(), dtype, i);
    }
}

float to_cache(float x, attn4j_dtype cache) {
    uint16_t h;
    switch (cache) {
        case ATTN4J_DTYPE_BF16: h = f32_to_bf16(x); return bf16_to_f32(h);
        case ATTN4J_DTYPE_F16: h = f32_to_f16(x); return f16_to_f32(h);
        default: return x;
    }
}

void test_append(attn4j_dtype in_dtype, attn4j_dtype cache_dtype, int threads) {
    const int KVH = 3, D = 48, PS = 8, PAGES = 12;
    attn4j_context* ctx = a4j_test::make_context(ATTN4J_DEVICE_CPU, threads);
    const int es = dtype_size(cache_dtype);
    std::vector<uint8_t> kc(size_t(PAGES) * KVH * PS * D * es), vc(kc.size());
    // poison
    for (size_t i = 0; i < kc.size(); ++i) kc[i] = vc[i] = 0xA5;
    const attn4j_paged_kv cache =
        a4j_test::paged_kv(cache_dtype, KVH, D, PS, PAGES, kc.data(), vc.data(), int64_t(kc.size()));
    // 3 sequences, pages out of order. Final lengths 13, 8, 20.
    std::vector<int32_t> indptr{0, 2, 3, 6}, indices{7, 2, 11, 0, 5, 9}, last{5, 8, 4};
    const int64_t lens[3] = {13, 8, 20};
    // step 1 appends 10, 8, 3; step 2 appends 3, 0, 17 (table of step 1 has shorter lengths)
    const int64_t step1[3] = {10, 8, 3};
    std::vector<std::vector<float>> kref(3), vref(3);  // [seq][pos * KVH * D + h * D + d]
    for (int s = 0; s < 3; ++s) kref[size_t(s)].assign(size_t(lens[s] * KVH * D), NAN), vref[size_t(s)] = kref[size_t(s)];

    for (int step = 0; step < 2; ++step) {
        int64_t cur[3], add[3];
        for (int s = 0; s < 3; ++s) {
            cur[s] = step == 0 ? step1[s] : lens[s];
            add[s] = step == 0 ? step1[s] : lens[s] - step1[s];
        }
        std::vector<int32_t> ip(4), lp(3), ap(4);
        ip[0] = 0;
        ap[0] = 0;
        for (int s = 0; s < 3; ++s) {
            const int64_t pages = (cur[s] + PS - 1) / PS;
            ip[size_t(s + 1)] = ip[size_t(s)] + int32_t(pages);
            lp[size_t(s)] = int32_t(cur[s] - (pages - 1) * PS);
            ap[size_t(s + 1)] = ap[size_t(s)] + int32_t(add[s]);
        }
        std::vector<int32_t> ix;
        for (int s = 0; s < 3; ++s)
            for (int32_t j = 0; j < ip[size_t(s + 1)] - ip[size_t(s)]; ++j) ix.push_back(indices[size_t(indptr[size_t(s)] + j)]);
        attn4j_page_table t{};
        t.struct_size = sizeof t;
        t.indptr = tensor(ip.data(), ATTN4J_DTYPE_I32, {4});
        t.indices = tensor(ix.data(), ATTN4J_DTYPE_I32, {int64_t(ix.size())});
        t.last_page_len = tensor(lp.data(), ATTN4J_DTYPE_I32, {3});
        const int64_t nnz = ap[3];
        // strided input: rows padded (row stride KVH * D + 16), heads padded (head stride D + 16)
        const int64_t hs = D + 16, rs = KVH * hs + 16;
        std::vector<uint8_t> kraw, vraw;
        std::vector<float> kex, vex;
        gen(kraw, kex, in_dtype, nnz * rs);
        gen(vraw, vex, in_dtype, nnz * rs);
        attn4j_tensor tk = tensor(kraw.data(), in_dtype, {nnz, KVH, D});
        tk.strides[0] = rs;
        tk.strides[1] = hs;
        tk.size_bytes = nnz * rs * dtype_size(in_dtype);
        attn4j_tensor tv = tk;
        tv.data = vraw.data();
        attn4j_tensor tap = tensor(ap.data(), ATTN4J_DTYPE_I32, {4});
        const attn4j_status st = attn4j_paged_kv_append(ctx, &cache, &t, &tap, &tk, &tv);
        CHECK_MSG(st == ATTN4J_OK, attn4j_last_error());
        for (int s = 0; s < 3; ++s)
            for (int64_t j = 0; j < add[s]; ++j) {
                const int64_t row = ap[size_t(s)] + j, pos = cur[s] - add[s] + j;
                for (int h = 0; h < KVH; ++h)
                    for (int d = 0; d < D; ++d) {
                        kref[size_t(s)][size_t((pos * KVH + h) * D + d)] = kex[size_t(row * rs + h * hs + d)];
                        vref[size_t(s)][size_t((pos * KVH + h) * D + d)] = vex[size_t(row * rs + h * hs + d)];
                    }
            }
    }
    // read back through the final table
    int bad = 0;
    for (int s = 0; s < 3; ++s)
        for (int64_t pos = 0; pos < lens[s]; ++pos) {
            const int64_t page = indices[size_t(indptr[size_t(s)] + pos / PS)], slot = pos % PS;
            for (int h = 0; h < KVH; ++h)
                for (int d = 0; d < D; ++d) {
                    const int64_t off = ((page * KVH + h) * PS + slot) * D + d;
                    const float gk = load_f32(kc.data(), cache_dtype, off), gv = load_f32(vc.data(), cache_dtype, off);
                    const float wk = to_cache(kref[size_t(s)][size_t((pos * KVH + h) * D + d)], cache_dtype);
                    const float wv = to_cache(vref[size_t(s)][size_t((pos * KVH + h) * D + d)], cache_dtype);
                    if (!(gk == wk) || !(gv == wv)) ++bad;
                }
        }
    CHECK_MSG(bad == 0, std::string("append ") + dtype_name(in_dtype) + " -> " + dtype_name(cache_dtype) +
                            ": " + std::to_string(bad) + " mismatches");
    // pages not in any table stay poisoned
    for (int64_t page : {1, 3, 4, 6, 8, 10})
        for (int64_t i = 0; i < int64_t(KVH) * PS * D * es; ++i)
            if (kc[size_t(page * KVH * PS * D * es + i)] != 0xA5) {
                CHECK_MSG(false, "append wrote outside its slots");
                break;
            }
    attn4j_context_destroy(ctx);
}

void test_conversions() {
    // bf16 / f16 round trips on special values and rounding ties
    CHECK(f32_to_bf16(1.0f) == 0x3f80);
    CHECK(f32_to_bf16(f32_from_bits(0x3f808000u)) == 0x3f80);  // tie -> even
    CHECK(f32_to_bf16(f32_from_bits(0x3f818000u)) == 0x3f82);  // tie -> even (up)
    CHECK(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
    CHECK(f32_to_f16(1.0f) == 0x3c00);
    CHECK(f32_to_f16(65504.f) == 0x7bff);
    CHECK(f32_to_f16(65520.f) == 0x7c00);
    CHECK(f32_to_f16(-2.0f) == 0xc000);
    CHECK(f32_to_f16(5.9604644775390625e-8f) == 0x0001);
    CHECK(f32_to_f16(2.9802322387695312e-8f) == 0x0000);  // tie at half the smallest subnormal -> 0
    CHECK(std::isnan(f16_to_f32(f32_to_f16(NAN))));
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000u; ++h) {  // every finite f16 round-trips exactly
        if ((h & 0x7c00u) == 0x7c00u) continue;
        if (f32_to_f16(f16_to_f32(uint16_t(h))) != h) ++bad;
    }
    CHECK_MSG(bad == 0, std::to_string(bad) + " f16 values do not round-trip");
    // f32 -> f16 matches the compiler's own conversion (_Float16, round to nearest even)
    std::uniform_real_distribution<float> u(-70000.f, 70000.f);
    bad = 0;
    for (int i = 0; i < 200000; ++i) {
        const float x = u(rng) * (i % 3 == 0 ? 1e-5f : (i % 3 == 1 ? 1e-9f : 1.f));
        const _Float16 r = static_cast<_Float16>(x);
        uint16_t hr;
        std::memcpy(&hr, &r, 2);
        if (f32_to_f16(x) != hr) ++bad;
    }
    CHECK_MSG(bad == 0, std::to_string(bad) + " f32->f16 conversions not nearest");
}

void test_merge(attn4j_dtype vdt, attn4j_dtype odt, int threads) {
    const int64_t n = 5, S = 4, H = 3, D = 80;
    attn4j_context* ctx = a4j_test::make_context(ATTN4J_DEVICE_CPU, threads);
    std::vector<uint8_t> vraw;
    std::vector<float> vex;
    gen(vraw, vex, vdt, n * S * H * D);
    std::vector<float> s(size_t(n * S * H));
    std::normal_distribution<float> nd(0.f, 4.f);
    for (float& x : s) x = nd(rng) + 30.f;  // large LSEs: the merge must be shift-invariant
    const float ninf = -std::numeric_limits<float>::infinity();
    s[size_t((1 * S + 2) * H + 0)] = ninf;  // one empty part
    for (int64_t k = 0; k < S; ++k) s[size_t((3 * S + k) * H + 1)] = ninf;  // row 3 head 1: all empty
    s[size_t((4 * S + 0) * H + 2)] = 200.f;  // one part dominates
    std::vector<uint8_t> out(size_t(n * H * D * dtype_size(odt)));
    std::vector<float> sout(size_t(n * H), 12345.f);
    for (size_t i = 0; i < out.size(); ++i) out[i] = 0xFF;  // poison (NaN patterns)
    attn4j_tensor tv = tensor(vraw.data(), vdt, {n, S, H, D});
    attn4j_tensor ts = tensor(s.data(), ATTN4J_DTYPE_F32, {n, S, H});
    attn4j_tensor to = tensor(out.data(), odt, {n, H, D});
    attn4j_tensor tso = tensor(sout.data(), ATTN4J_DTYPE_F32, {n, H});
    const attn4j_status st = attn4j_merge_states(ctx, &tv, &ts, &to, &tso);
    CHECK_MSG(st == ATTN4J_OK, attn4j_last_error());
    double num = 0, den = 0, sbad = 0;
    for (int64_t i = 0; i < n; ++i)
        for (int64_t h = 0; h < H; ++h) {
            double m = -INFINITY;
            for (int64_t k = 0; k < S; ++k) m = std::fmax(m, double(s[size_t((i * S + k) * H + h)]));
            std::vector<double> ref(size_t(D), 0.0);
            double sum = 0;
            if (m != -INFINITY) {
                for (int64_t k = 0; k < S; ++k) {
                    const double w = std::exp(double(s[size_t((i * S + k) * H + h)]) - m);
                    sum += w;
                    for (int64_t d = 0; d < D; ++d) ref[size_t(d)] += w * vex[size_t(((i * S + k) * H + h) * D + d)];
                }
                for (double& r : ref) r /= sum;
            }
            const double sref = m == -INFINITY ? -INFINITY : m + std::log(sum);
            const float sg = sout[size_t(i * H + h)];
            if (sref == -INFINITY) {
                if (sg != ninf) ++sbad;
            } else if (std::fabs(sg - sref) > 1e-5 * std::fabs(sref) + 1e-6) {
                ++sbad;
            }
            for (int64_t d = 0; d < D; ++d) {
                const double g = load_f32(out.data(), odt, (i * H + h) * D + d);
                const double r = ref[size_t(d)];
                if (!std::isfinite(g)) ++sbad;
                num += (g - r) * (g - r);
                den += r * r;
            }
        }
    const double rel = std::sqrt(num / den);
    const double tol = odt == ATTN4J_DTYPE_F32 ? 1e-5 : 1e-2;
    const std::string what = std::string("merge v ") + dtype_name(vdt) + " out " + dtype_name(odt);
    CHECK_MSG(rel <= tol, what + ": relative error " + std::to_string(rel));
    CHECK_MSG(sbad == 0, what + ": " + std::to_string(sbad) + " bad LSE / non-finite outputs");
    // the all-empty row gives zeros
    for (int64_t d = 0; d < D; ++d) CHECK(load_f32(out.data(), odt, (3 * H + 1) * D + d) == 0.f);
    attn4j_context_destroy(ctx);
}

}  // namespace

int main() {
    std::printf("seed 20240611\n");
    test_conversions();
    const attn4j_dtype fl[3] = {ATTN4J_DTYPE_F32, ATTN4J_DTYPE_F16, ATTN4J_DTYPE_BF16};
    for (attn4j_dtype in : fl)
        for (attn4j_dtype cd : fl)
            for (int threads : {1, 2}) test_append(in, cd, threads);
    for (attn4j_dtype vd : fl)
        for (attn4j_dtype od : fl)
            for (int threads : {1, 2}) test_merge(vd, od, threads);
    return a4j_test::finish("test_append_merge");
}
