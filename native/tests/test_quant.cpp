// Quantized KV: quantize / rotation primitives (cpu/quantize.h) and the fused quantized decode
// chunk kernels (cpu/decode_quant.h) on every SIMD path this CPU has, against an fp64 attention
// over the DEQUANTIZED cache (same codes), so only the kernel's own error is measured.
// Usage: test_quant [seed] [cases]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "a4j_test.h"
#include "quant_test.h"
#include "core/cpu_features.h"
#include "core/dtype.h"
#include "cpu/decode_quant.h"
#include "cpu/quantize.h"

using namespace attn4j;
using namespace attn4j::cpu;

namespace {

using Rng = std::mt19937_64;

double gauss(Rng& r) {
    static thread_local std::normal_distribution<double> n(0.0, 1.0);
    return n(r);
}

std::vector<double> hadamard_matrix(int n) {  // H / sqrt(n), Sylvester order
    std::vector<double> h(size_t(n) * n);
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) h[size_t(i) * n + j] = (__builtin_popcount(unsigned(i & j)) & 1 ? -1.0 : 1.0) / std::sqrt(double(n));
    return h;
}

float meta_at(const void* meta, const QuantFormat& f, int i) {
    const uint8_t* p = static_cast<const uint8_t*>(meta);
    if (f.meta_dtype == ATTN4J_DTYPE_F16) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        return f16_to_f32(h);
    }
    float x;
    std::memcpy(&x, p + 4 * i, 4);
    return x;
}

// ---- quantize primitives ----------------------------------------------------------------------
void test_hadamard() {
    for (int n = 2; n <= 256; n *= 2) {
        const auto ref = hadamard_matrix(n);
        std::vector<float> rows(size_t(n) * n);
        for (int i = 0; i < n; ++i) {
            float* r = &rows[size_t(i) * n];
            for (int j = 0; j < n; ++j) r[j] = i == j ? 1.f : 0.f;
            hadamard_inplace(r, n);  // e_i H = row i
        }
        double max_ref = 0, max_orth = 0;
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < n; ++j) {
                max_ref = std::max(max_ref, std::fabs(rows[size_t(i) * n + j] - ref[size_t(i) * n + j]));
                double d = 0;
                for (int k = 0; k < n; ++k) d += double(rows[size_t(i) * n + k]) * rows[size_t(j) * n + k];
                max_orth = std::max(max_orth, std::fabs(d - (i == j ? 1.0 : 0.0)));
            }
        CHECK_MSG(max_ref < 1e-6, "n=" + std::to_string(n) + " vs explicit " + std::to_string(max_ref));
        CHECK_MSG(max_orth < 1e-6, "n=" + std::to_string(n) + " H H^T - I " + std::to_string(max_orth));
    }
}

void test_rotation_roundtrip(Rng& rng) {
    for (int n : {64, 128, 256}) {
        const auto mat = a4j_test::random_orthogonal(n, rng);
        for (auto kind : {ATTN4J_ROTATION_NONE, ATTN4J_ROTATION_HADAMARD, ATTN4J_ROTATION_MATRIX}) {
            std::vector<float> x(n), y(n), z(n);
            for (auto& v : x) v = float(gauss(rng));
            rotate_row(x.data(), y.data(), n, kind, mat.data());
            unrotate_row(y.data(), z.data(), n, kind, mat.data());
            double err = 0, nx = 0, ny = 0;
            for (int i = 0; i < n; ++i) {
                err = std::max(err, double(std::fabs(z[i] - x[i])));
                nx += double(x[i]) * x[i];
                ny += double(y[i]) * y[i];
            }
            CHECK_MSG(err < 1e-5, "n=" + std::to_string(n) + " kind=" + std::to_string(kind));
            CHECK(std::fabs(nx - ny) < 1e-4 * nx);
            if (kind == ATTN4J_ROTATION_MATRIX) {  // y = x R explicitly
                double e = 0;
                for (int j = 0; j < n; ++j) {
                    double s = 0;
                    for (int i = 0; i < n; ++i) s += double(x[i]) * mat[size_t(i) * n + j];
                    e = std::max(e, std::fabs(s - y[j]));
                }
                CHECK(e < 1e-5);
            }
        }
    }
}

void test_quantize_rows(Rng& rng) {
    for (int bits : {8, 4, 2})
        for (int G : {32, 64, 128})
            for (int hd : {64, 128, 256}) {
                if (hd % G) continue;
                for (auto meta : {ATTN4J_DTYPE_F32, ATTN4J_DTYPE_F16})
                    for (float clip : {1.f, 0.8f}) {
                        QuantFormat f{bits, hd, G, meta};
                        const std::string tag = "bits=" + std::to_string(bits) + " G=" + std::to_string(G) +
                                                " hd=" + std::to_string(hd) + " meta=" + std::to_string(meta) +
                                                " clip=" + std::to_string(clip);
                        for (int rep = 0; rep < 20; ++rep) {
                            std::vector<float> x(hd), y(hd);
                            const double off = gauss(rng), amp = std::exp(gauss(rng));
                            for (auto& v : x) v = float(off + amp * gauss(rng));
                            if (rep == 1)  // constant first group
                                for (int j = 0; j < G; ++j) x[j] = 3.7f;
                            std::vector<uint8_t> codes(f.code_bytes()), mbuf(f.meta_bytes());
                            quantize_row(x.data(), f, clip, codes.data(), mbuf.data());
                            dequantize_row(codes.data(), mbuf.data(), f, y.data());
                            int bad = 0;
                            for (int g = 0; g < f.groups(); ++g) {
                                const float scale = meta_at(mbuf.data(), f, 2 * g), zero = meta_at(mbuf.data(), f, 2 * g + 1);
                                float mn = x[g * G], mx = x[g * G];
                                for (int j = 0; j < G; ++j) {
                                    mn = std::min(mn, x[g * G + j]);
                                    mx = std::max(mx, x[g * G + j]);
                                }
                                const float mq = meta == ATTN4J_DTYPE_F16 ? 1e-3f * std::max(std::fabs(mn), std::fabs(mx)) : 1e-6f * std::max(std::fabs(mn), std::fabs(mx));
                                if (mx == mn) {  // constant group: exact (up to the meta dtype)
                                    CHECK_MSG(scale == 0.f, tag);
                                    for (int j = 0; j < G; ++j) bad += std::fabs(y[g * G + j] - x[g * G + j]) > mq;
                                    continue;
                                }
                                const float lo = clip * mn, hi = clip * mx;
                                bad += std::fabs(scale - (hi - lo) / float(f.max_code())) > 2e-3f * scale;
                                bad += std::fabs(zero - lo) > mq + 1e-7f;
                                for (int j = 0; j < G; ++j) {
                                    const float v = x[g * G + j];
                                    // expected code and planar position
                                    float e = std::round((v - zero) / scale);
                                    e = std::min(std::max(e, 0.f), float(f.max_code()));
                                    const int n = f.group_code_bytes();
                                    const int byte = codes[g * n + j % n] >> (bits * (j / n)) & f.max_code();
                                    bad += std::fabs(float(byte) - e) > 1.f;  // ties may round either way
                                    bad += byte != code_at(codes.data(), f, g * G + j);
                                    const float dq = y[g * G + j];
                                    bad += std::fabs(dq - (float(byte) * scale + zero)) > 1e-6f * (std::fabs(dq) + 1.f);
                                    if (v >= lo && v <= hi)
                                        bad += std::fabs(dq - v) > 0.5f * scale * 1.0001f + 2 * mq;
                                    else if (v < lo)
                                        bad += byte != 0;
                                    else
                                        bad += byte != f.max_code();
                                }
                            }
                            CHECK_MSG(bad == 0, tag + " bad=" + std::to_string(bad));
                        }
                    }
            }
}

// ---- chunk kernel vs fp64 over the dequantized cache ------------------------------------------
struct Case {
    int bits, hd, G, ps, group, ntok;
    attn4j_dtype meta;
    attn4j_rotation krot, vrot;
    bool outliers;
};

struct Result {
    double rel = 0, lse = 0;
    bool finite = true;
};

struct Cache {
    QuantFormat f;
    int H, ps, np;
    std::vector<uint8_t> k, v;
    std::vector<int32_t> pages;
    std::vector<float> kmat, vmat;  // [H][hd][hd]
    int64_t page_stride() const { return int64_t(H) * ps * f.token_bytes(); }
    int64_t head_block() const { return int64_t(ps) * f.token_bytes(); }
};

// Builds a cache of H = 2 kv heads (the kernel runs on head 1), shuffled pages.
Cache build_cache(const Case& c, Rng& rng) {
    Cache ca;
    ca.f = QuantFormat{c.bits, c.hd, c.G, c.meta};
    ca.H = 2;
    ca.ps = c.ps;
    const int used = (c.ntok + c.ps - 1) / c.ps;
    ca.np = used + 3;
    ca.k.assign(size_t(ca.np * ca.page_stride()), 0xA5);
    ca.v.assign(size_t(ca.np * ca.page_stride()), 0x5A);
    std::vector<int32_t> ids(ca.np);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    ca.pages.assign(ids.begin(), ids.begin() + used);
    ca.kmat.clear();
    ca.vmat.clear();
    for (int h = 0; h < ca.H; ++h) {
        auto a = a4j_test::random_orthogonal(c.hd, rng), b = a4j_test::random_orthogonal(c.hd, rng);
        ca.kmat.insert(ca.kmat.end(), a.begin(), a.end());
        ca.vmat.insert(ca.vmat.end(), b.begin(), b.end());
    }
    const int hd = c.hd;
    std::vector<int> outl;
    for (int i = 0; i < 4; ++i) outl.push_back(int(rng() % hd));
    std::vector<float> x(hd), y(hd);
    const QuantFormat& f = ca.f;
    for (int t = 0; t < c.ntok; ++t) {
        const int page = ca.pages[t / c.ps], slot = t % c.ps;
        for (int h = 0; h < ca.H; ++h) {
            const int64_t blk = page * ca.page_stride() + h * ca.head_block();
            for (int kv = 0; kv < 2; ++kv) {
                for (int j = 0; j < hd; ++j) x[j] = float(gauss(rng));
                if (kv == 0 && c.outliers)
                    for (int o : outl) x[o] = float(10.0 * x[o] + 5.0);
                if (kv == 1) for (int j = 0; j < hd; ++j) x[j] += 0.5f;
                const attn4j_rotation kind = kv == 0 ? c.krot : c.vrot;
                const float* m = (kv == 0 ? ca.kmat : ca.vmat).data() + size_t(h) * hd * hd;
                rotate_row(x.data(), y.data(), hd, kind, m);
                uint8_t* base = (kv == 0 ? ca.k : ca.v).data() + blk;
                quantize_row(y.data(), f, 1.f, base + int64_t(slot) * f.code_bytes(),
                             base + int64_t(c.ps) * f.code_bytes() + int64_t(slot) * f.meta_bytes());
            }
        }
    }
    return ca;
}

Result run_case(const Case& c, const Cache& ca, const std::vector<float>& q, Isa isa) {
    const int hd = c.hd, kvh = 1;
    const QuantFormat& f = ca.f;
    // fp64 reference in rotated space on the dequantized rows.
    std::vector<double> rk(size_t(hd) * hd), rv(size_t(hd) * hd);
    auto fill = [&](std::vector<double>& r, attn4j_rotation kind, const std::vector<float>& mats) {
        if (kind == ATTN4J_ROTATION_HADAMARD) r = hadamard_matrix(hd);
        else if (kind == ATTN4J_ROTATION_MATRIX)
            for (size_t i = 0; i < r.size(); ++i) r[i] = mats[size_t(kvh) * hd * hd + i];
        else
            for (int i = 0; i < hd; ++i)
                for (int j = 0; j < hd; ++j) r[size_t(i) * hd + j] = i == j;
    };
    fill(rk, c.krot, ca.kmat);
    fill(rv, c.vrot, ca.vmat);
    std::vector<float> kd(size_t(c.ntok) * hd), vd(size_t(c.ntok) * hd);
    for (int t = 0; t < c.ntok; ++t) {
        const int64_t blk = ca.pages[t / c.ps] * ca.page_stride() + kvh * ca.head_block();
        const int slot = t % c.ps;
        for (int kv = 0; kv < 2; ++kv) {
            const uint8_t* base = (kv == 0 ? ca.k : ca.v).data() + blk;
            dequantize_row(base + int64_t(slot) * f.code_bytes(), base + int64_t(c.ps) * f.code_bytes() + int64_t(slot) * f.meta_bytes(), f,
                           (kv == 0 ? kd : vd).data() + size_t(t) * hd);
        }
    }
    std::vector<double> ref(size_t(c.group) * hd), lref(c.group);
    for (int g = 0; g < c.group; ++g) {
        std::vector<double> qr(hd, 0.0), s(c.ntok), orot(hd, 0.0);
        for (int i = 0; i < hd; ++i)
            for (int j = 0; j < hd; ++j) qr[j] += double(q[size_t(g) * hd + i]) * rk[size_t(i) * hd + j];
        double mx = -INFINITY;
        for (int t = 0; t < c.ntok; ++t) {
            double d = 0;
            for (int j = 0; j < hd; ++j) d += qr[j] * kd[size_t(t) * hd + j];
            s[t] = d;
            mx = std::max(mx, d);
        }
        double l = 0;
        for (int t = 0; t < c.ntok; ++t) {
            const double p = std::exp2(s[t] - mx);
            l += p;
            for (int j = 0; j < hd; ++j) orot[j] += p * vd[size_t(t) * hd + j];
        }
        for (int i = 0; i < hd; ++i) {
            double o = 0;
            for (int j = 0; j < hd; ++j) o += orot[j] / l * rv[size_t(i) * hd + j];  // o_rot R^T
            ref[size_t(g) * hd + i] = o;
        }
        lref[g] = mx + std::log2(l);
    }
    // Kernel.
    QuantDecodeChunk ch;
    ch.fmt = f;
    ch.k_rot = RotationView{c.krot, c.krot == ATTN4J_ROTATION_MATRIX ? ca.kmat.data() : nullptr, nullptr};
    ch.v_rot = RotationView{c.vrot, c.vrot == ATTN4J_ROTATION_MATRIX ? ca.vmat.data() : nullptr, nullptr};
    ch.kv_head = kvh;
    ch.group = c.group;
    ch.page_size = c.ps;
    ch.k_base = ca.k.data() + kvh * ca.head_block();
    ch.v_base = ca.v.data() + kvh * ca.head_block();
    ch.page_stride_bytes = ca.page_stride();
    ch.pages = ca.pages.data();
    ch.num_tokens = c.ntok;
    ch.q = q.data();
    std::vector<float> out(size_t(c.group) * hd, NAN), lse(c.group, NAN);
    ch.out = out.data();
    ch.lse2 = lse.data();
    const size_t sb = quant_chunk_scratch_bytes(c.group, hd, c.ps);
    void* scratch = std::aligned_alloc(64, (sb + 63) / 64 * 64);
    std::memset(scratch, 0xFF, sb);  // NaN garbage
    ch.scratch = scratch;
    quant_chunk_fn(isa)(ch);
    std::free(scratch);
    Result r;
    double num = 0, den = 0;
    for (size_t i = 0; i < out.size(); ++i) {
        if (!std::isfinite(out[i])) r.finite = false;
        num += (out[i] - ref[i]) * (out[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    r.rel = std::sqrt(num / den);
    for (int g = 0; g < c.group; ++g) {
        if (!std::isfinite(lse[g])) r.finite = false;
        r.lse = std::max(r.lse, std::fabs(lse[g] - lref[g]));
    }
    return r;
}

std::vector<float> make_q(const Case& c, Rng& rng) {
    std::vector<float> q(size_t(c.group) * c.hd);
    const float sc = float(1.0 / std::sqrt(double(c.hd)) * 1.4426950408889634);
    for (auto& x : q) x = float(gauss(rng)) * sc;
    return q;
}

const char* rot_name(attn4j_rotation r) {
    return r == ATTN4J_ROTATION_NONE ? "none" : r == ATTN4J_ROTATION_HADAMARD ? "hadamard" : "matrix";
}

std::string describe(const Case& c, Isa isa) {
    char b[256];
    std::snprintf(b, sizeof b, "isa=%s bits=%d hd=%d G=%d ps=%d group=%d ntok=%d meta=%s krot=%s vrot=%s outl=%d",
                  isa_name(isa), c.bits, c.hd, c.G, c.ps, c.group, c.ntok, c.meta == ATTN4J_DTYPE_F16 ? "f16" : "f32",
                  rot_name(c.krot), rot_name(c.vrot), int(c.outliers));
    return b;
}

std::vector<Isa> isas() {
    std::vector<Isa> v = {Isa::scalar};
    if (int(cpu_features().isa) >= int(Isa::avx2)) v.push_back(Isa::avx2);
    if (int(cpu_features().isa) >= int(Isa::avx512)) v.push_back(Isa::avx512);
    return v;
}

// Kernel error budget: the scalar path is float-exact; SIMD paths quantize q to int16 (INT8) or
// int8 + an int8 residual (INT4 / INT2 with n >= 32 code bytes per group, which also round the
// P.V weights to u8 per half block of 8 tokens: up to 1/510 of the half's largest weight each, so
// sequences of a few tokens see up to about 0.6%: 5.64e-3 at 8 tokens, the largest of 20 seeds x
// 120 cases); the other INT4 / INT2 formats use float FMAs on the codes (errors about 5e-6).
double tolerance(const Case& c, Isa isa) {
    if (isa == Isa::scalar) return 2e-5;
    if (c.bits == 8) return 1e-3;
    return c.G * c.bits / 8 >= 32 ? 1e-2 : 1e-4;
}

void test_kernel_random(uint64_t seed, int cases) {
    Rng rng(seed);
    const int gs[] = {1, 2, 3, 4, 8};
    const int pss[] = {1, 16, 64};
    for (int i = 0; i < cases; ++i) {
        const uint64_t cs = rng();
        Rng r(cs);
        Case c;
        c.bits = (int[]){8, 4, 2}[r() % 3];
        c.hd = (r() % 2) ? 128 : 64;
        c.G = (int[]){32, 64, 128}[r() % 3];
        if (c.G > c.hd) c.G = c.hd;
        if (r() % 8 == 0) {  // odd head_dim (generic kernel on every path)
            c.hd = 96;
            c.G = 32;
        }
        c.ps = pss[r() % 3];
        c.group = gs[r() % 5];
        c.ntok = (r() % 4 == 0) ? int(1 + r() % 20) : int(1 + r() % 3000);
        c.meta = (r() % 2) ? ATTN4J_DTYPE_F16 : ATTN4J_DTYPE_F32;
        const attn4j_rotation rots[] = {ATTN4J_ROTATION_NONE, ATTN4J_ROTATION_HADAMARD, ATTN4J_ROTATION_MATRIX};
        c.krot = rots[r() % 3];
        c.vrot = rots[r() % 3];
        if (c.hd == 96) {
            if (c.krot == ATTN4J_ROTATION_HADAMARD) c.krot = ATTN4J_ROTATION_MATRIX;
            if (c.vrot == ATTN4J_ROTATION_HADAMARD) c.vrot = ATTN4J_ROTATION_NONE;
        }
        c.outliers = r() % 2;
        const Cache ca = build_cache(c, r);
        const auto q = make_q(c, r);
        for (Isa isa : isas()) {
            const Result res = run_case(c, ca, q, isa);
            const double tol = tolerance(c, isa);
            const bool ok = res.finite && res.rel <= tol && res.lse <= 50 * tol;
            char msg[512];
            std::snprintf(msg, sizeof msg, "%s rel=%.3g lse=%.3g (seed %llu case %d case-seed %llu)", describe(c, isa).c_str(),
                          res.rel, res.lse, (unsigned long long)seed, i, (unsigned long long)cs);
            CHECK_MSG(ok, msg);
        }
    }
}

// Accuracy of the kernels on outlier keys (4 channels x10 with an offset) after rotation:
// printed for the report, checked against the targets (INT8 0.3 %, INT4 / INT2 0.5 %).
void accuracy_report(uint64_t seed) {
    Rng rng(seed ^ 0x5eed);
    std::printf("kernel accuracy vs fp64 on the dequantized cache (outlier keys, d=128, group=4, 4096 tokens, page 16):\n");
    for (auto krot : {ATTN4J_ROTATION_HADAMARD, ATTN4J_ROTATION_NONE})
        for (int bits : {8, 4, 2})
            for (int G : {128, 64, 32}) {
                Case c{bits, 128, G, 16, 4, 4096, ATTN4J_DTYPE_F32, krot, ATTN4J_ROTATION_HADAMARD, true};
                double worst[3] = {0, 0, 0}, wl[3] = {0, 0, 0};
                for (int rep = 0; rep < 3; ++rep) {
                    const Cache ca = build_cache(c, rng);
                    const auto q = make_q(c, rng);
                    for (Isa isa : isas()) {
                        const Result res = run_case(c, ca, q, isa);
                        worst[int(isa)] = std::max(worst[int(isa)], res.rel);
                        wl[int(isa)] = std::max(wl[int(isa)], res.lse);
                    }
                }
                std::printf("  krot=%-8s INT%d G=%-3d", rot_name(krot), bits, G);
                for (Isa isa : isas()) std::printf("  %s rel %.2e lse %.1e", isa_name(isa), worst[int(isa)], wl[int(isa)]);
                std::printf("\n");
                if (krot == ATTN4J_ROTATION_HADAMARD)
                    for (Isa isa : isas())
                        CHECK_MSG(worst[int(isa)] <= (bits == 8 ? 3e-3 : 5e-3),
                                  "accuracy target " + std::to_string(bits) + " " + isa_name(isa));
            }
}

}  // namespace

int main(int argc, char** argv) {
    const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 20261123ull;
    const int cases = argc > 2 ? std::atoi(argv[2]) : 120;
    std::printf("test_quant: seed=%llu cases=%d %s\n", (unsigned long long)seed, cases, cpu_features_string().c_str());
    Rng rng(seed);
    if (std::getenv("QDEBUG")) {
        for (int G : {128, 64}) for (int bits : {4, 2}) for (int rep = 0; rep < 6; ++rep) {
            Case c{bits, 128, G, 16, 1, 1, ATTN4J_DTYPE_F32, ATTN4J_ROTATION_HADAMARD, ATTN4J_ROTATION_NONE, true};
            const Cache ca = build_cache(c, rng);
            const auto q = make_q(c, rng);
            const Result r = run_case(c, ca, q, Isa::avx2);
            std::printf("G=%d bits=%d score err %.4f\n", G, bits, r.lse);
        }
        return 0;
    }
    test_hadamard();
    test_rotation_roundtrip(rng);
    test_quantize_rows(rng);
    test_kernel_random(seed, cases);
    accuracy_report(seed);
    return a4j_test::finish("test_quant");
}
