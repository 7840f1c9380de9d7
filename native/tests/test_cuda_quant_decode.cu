// CUDA paged decode over quantized KV (INT8 / INT4 / INT2 pages) against a float64 CPU reference
// over the dequantized cache: pages are written by cpu::quantize_row (after cpu::rotate_row), the
// reference decodes them with cpu::code_at and the {scale, zero} meta, rotates q by R_k, and
// rotates the output back by R_v^T, all in double. Random cases: batch 1..16 with ragged lengths
// 1..5000, page sizes 1 / 16 / 64, GQA groups 1 / 4 / 8 (and 12, 16: several head tiles),
// head_dim 64 / 128, group size 32 / 64 / 128, meta F32 / F16, rotations NONE / HADAMARD / a
// random orthogonal MATRIX (per kv head), q and out F32 / F16 / BF16, optional LSE, automatic and
// forced split counts, shuffled page ids; outputs are poisoned (NaN) before each run, and unused
// pages and slots past last_page_len hold 0xFF bytes (NaN meta), so reads outside the sequences
// show. A few runs go through a captured CUDA graph.
// Usage: test_cuda_quant_decode [--seed S] [--cases N] [--max-len L]   (no GPU: prints SKIP)
#include <cuda_runtime.h>

#include "cuda_test.h"

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

#include "core/kernel_args.h"
#include "cpu/quantize.h"
#include "cuda/decode_quant.cuh"
#include "dtype_buffer.h"
#include "a4j_test.h"

using namespace attn4j;
using a4j_test::Buf;
using a4j_test::dname;
using a4j_test::to_device;

namespace {

int g_failures = 0;
double g_worst = 0.0;

struct Case {
    int D, G, bits;
    attn4j_dtype meta;
    attn4j_rotation krot, vrot;
    int hkv, group, ps;
    std::vector<int> lens;
    attn4j_dtype q, out;
    bool lse;
    int force_chunks;
    bool graph;
    const char* mode = "";  // ATTN4J_CUDA_QDECODE for this case's plan ("pages": page-major kernel)
};

const char* rot_name(attn4j_rotation r) {
    return r == ATTN4J_ROTATION_NONE ? "none" : r == ATTN4J_ROTATION_HADAMARD ? "had" : "mat";
}

// Random orthogonal D x D (Gram-Schmidt of a Gaussian matrix), row-major.
std::vector<float> random_orthogonal(int D, std::mt19937_64& rng) {
    std::normal_distribution<double> nd(0.0, 1.0);
    std::vector<double> m(size_t(D) * D);
    for (auto& x : m) x = nd(rng);
    for (int i = 0; i < D; ++i) {
        double* r = &m[size_t(i) * D];
        for (int j = 0; j < i; ++j) {
            const double* s = &m[size_t(j) * D];
            double dot = 0;
            for (int k = 0; k < D; ++k) dot += r[k] * s[k];
            for (int k = 0; k < D; ++k) r[k] -= dot * s[k];
        }
        double nrm = 0;
        for (int k = 0; k < D; ++k) nrm += r[k] * r[k];
        nrm = std::sqrt(nrm);
        for (int k = 0; k < D; ++k) r[k] /= nrm;
    }
    return std::vector<float>(m.begin(), m.end());
}

void fwht(std::vector<double>& x) {
    const int n = int(x.size());
    for (int len = 1; len < n; len <<= 1)
        for (int i = 0; i < n; i += 2 * len)
            for (int j = i; j < i + len; ++j) {
                const double a = x[j], b = x[j + len];
                x[j] = a + b;
                x[j + len] = a - b;
            }
    const double s = 1.0 / std::sqrt(double(n));
    for (auto& v : x) v *= s;
}

// y = x R (forward) or x R^T (inverse), double.
std::vector<double> rotate(const std::vector<double>& x, attn4j_rotation kind, const float* R, bool inverse) {
    const int D = int(x.size());
    if (kind == ATTN4J_ROTATION_NONE) return x;
    if (kind == ATTN4J_ROTATION_HADAMARD) {
        std::vector<double> y = x;
        fwht(y);  // H is symmetric
        return y;
    }
    std::vector<double> y(D, 0.0);
    for (int j = 0; j < D; ++j)
        for (int i = 0; i < D; ++i) y[j] += x[i] * double(inverse ? R[size_t(j) * D + i] : R[size_t(i) * D + j]);
    return y;
}

float read_meta(const uint8_t* meta, attn4j_dtype dt, int i) {
    if (dt == ATTN4J_DTYPE_F32) {
        float f;
        std::memcpy(&f, meta + 4 * i, 4);
        return f;
    }
    uint16_t h;
    std::memcpy(&h, meta + 2 * i, 2);
    return f16_to_f32(h);
}

std::string describe(const Case& c) {
    char buf[256];
    int maxl = 0;
    long tot = 0;
    for (int l : c.lens) maxl = std::max(maxl, l), tot += l;
    std::snprintf(buf, sizeof buf,
                  "int%d d%d G%d meta=%s krot=%s vrot=%s hkv=%d grp=%d ps=%d B=%zu tok=%ld max=%d q=%s out=%s lse=%d "
                  "chunks=%d%s%s%s",
                  c.bits, c.D, c.G, c.meta == ATTN4J_DTYPE_F32 ? "f32" : "f16", rot_name(c.krot), rot_name(c.vrot),
                  c.hkv, c.group, c.ps, c.lens.size(), tot, maxl, dname(c.q), dname(c.out), int(c.lse),
                  c.force_chunks, c.graph ? " graph" : "", *c.mode ? " mode=" : "", c.mode);
    return buf;
}

void run_case(const Case& c, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    const int B = int(c.lens.size()), D = c.D, hkv = c.hkv, hqo = hkv * c.group, ps = c.ps;
    QuantFormat f;
    f.bits = c.bits;
    f.head_dim = D;
    f.group_size = c.G;
    f.meta_dtype = c.meta;
    const int TB = f.token_bytes(), CBy = f.code_bytes();
    const int64_t block = int64_t(ps) * TB;

    std::vector<int> indptr(B + 1, 0), last(B);
    for (int b = 0; b < B; ++b) {
        const int np = (c.lens[b] + ps - 1) / ps;
        indptr[b + 1] = indptr[b] + np;
        last[b] = c.lens[b] - (np - 1) * ps;
    }
    const int used = indptr[B], num_pages = used + 3;
    std::vector<int> perm(num_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int> indices(perm.begin(), perm.begin() + used);

    std::vector<std::vector<float>> Rk(hkv), Rv(hkv);
    std::vector<float> rk_all, rv_all;
    for (int h = 0; h < hkv; ++h) {
        if (c.krot == ATTN4J_ROTATION_MATRIX) Rk[h] = random_orthogonal(D, rng);
        if (c.vrot == ATTN4J_ROTATION_MATRIX) Rv[h] = random_orthogonal(D, rng);
        rk_all.insert(rk_all.end(), Rk[h].begin(), Rk[h].end());
        rv_all.insert(rv_all.end(), Rv[h].begin(), Rv[h].end());
    }

    const size_t pool = size_t(num_pages) * hkv * block;
    std::vector<uint8_t> kpool(pool, 0xFF), vpool(pool, 0xFF);
    // dequantized (rotated-space) K and V per sequence: [b][t][kvh][D], double
    std::vector<std::vector<double>> kdq(B), vdq(B);
    std::vector<float> x(D), xr(D), y(D);
    for (int b = 0; b < B; ++b) {
        const int L = c.lens[b];
        kdq[b].resize(size_t(L) * hkv * D);
        vdq[b].resize(size_t(L) * hkv * D);
        for (int t = 0; t < L; ++t) {
            const int page = indices[indptr[b] + t / ps], slot = t % ps;
            for (int h = 0; h < hkv; ++h) {
                const size_t blk = (size_t(page) * hkv + h) * block;
                for (int kv = 0; kv < 2; ++kv) {
                    // a few outlier channels, as real keys have
                    for (int d = 0; d < D; ++d) x[d] = nd(rng) * (d % 17 == 3 ? 4.f : 1.f) + (kv ? 0.f : 0.3f);
                    const attn4j_rotation rot = kv ? c.vrot : c.krot;
                    const float* R = kv ? (Rv[h].empty() ? nullptr : Rv[h].data()) : (Rk[h].empty() ? nullptr : Rk[h].data());
                    cpu::rotate_row(x.data(), xr.data(), D, rot, R);
                    uint8_t* base = (kv ? vpool.data() : kpool.data()) + blk;
                    uint8_t* codes = base + size_t(slot) * CBy;
                    uint8_t* meta = base + size_t(ps) * CBy + size_t(slot) * f.meta_bytes();
                    cpu::quantize_row(xr.data(), f, 1.f, codes, meta);
                    double* dst = (kv ? vdq[b].data() : kdq[b].data()) + (size_t(t) * hkv + h) * D;
                    for (int d = 0; d < D; ++d) {
                        const int g = d / c.G;
                        const double s = read_meta(meta, c.meta, 2 * g), z = read_meta(meta, c.meta, 2 * g + 1);
                        dst[d] = cpu::code_at(codes, f, d) * s + z;
                    }
                }
            }
        }
    }

    Buf q(c.q, size_t(B) * hqo * D);
    for (size_t i = 0; i < size_t(B) * hqo * D; ++i) q.set(i, nd(rng));
    const float sm_scale = 1.f / std::sqrt(float(D));

    // reference
    std::vector<double> ref(size_t(B) * hqo * D), ref_lse(size_t(B) * hqo);
    for (int b = 0; b < B; ++b) {
        const int L = c.lens[b];
        std::vector<double> sc(L);
        for (int qo = 0; qo < hqo; ++qo) {
            const int h = qo / c.group;
            std::vector<double> qv(D);
            for (int d = 0; d < D; ++d) qv[d] = q.get((size_t(b) * hqo + qo) * D + d);
            qv = rotate(qv, c.krot, Rk[h].empty() ? nullptr : Rk[h].data(), false);
            double mx = -INFINITY;
            for (int t = 0; t < L; ++t) {
                const double* k = &kdq[b][(size_t(t) * hkv + h) * D];
                double s = 0;
                for (int d = 0; d < D; ++d) s += qv[d] * k[d];
                sc[t] = s * sm_scale;
                mx = std::max(mx, sc[t]);
            }
            double sum = 0;
            std::vector<double> o(D, 0.0);
            for (int t = 0; t < L; ++t) {
                const double p = std::exp(sc[t] - mx);
                sum += p;
                const double* v = &vdq[b][(size_t(t) * hkv + h) * D];
                for (int d = 0; d < D; ++d) o[d] += p * v[d];
            }
            for (auto& v : o) v /= sum;
            o = rotate(o, c.vrot, Rv[h].empty() ? nullptr : Rv[h].data(), true);
            for (int d = 0; d < D; ++d) ref[(size_t(b) * hqo + qo) * D + d] = o[d];
            ref_lse[size_t(b) * hqo + qo] = mx + std::log(sum);
        }
    }

    // device
    uint8_t* dk = to_device(kpool);
    uint8_t* dv = to_device(vpool);
    float* drk = rk_all.empty() ? nullptr : to_device(rk_all);
    float* drv = rv_all.empty() ? nullptr : to_device(rv_all);
    int* d_indptr = to_device(indptr);
    int* d_indices = to_device(indices);
    int* d_last = to_device(last);
    uint8_t* dq = to_device(q.bytes);
    Buf out(c.out, size_t(B) * hqo * D);
    void* dout = nullptr;
    float* dlse = nullptr;
    CK(cudaMalloc(&dout, out.bytes.size()));
    CK(cudaMemset(dout, 0xFF, out.bytes.size()));
    if (c.lse) {
        CK(cudaMalloc(&dlse, size_t(B) * hqo * 4));
        CK(cudaMemset(dlse, 0xFF, size_t(B) * hqo * 4));
    }

    const attn4j_dtype kv_dtype = c.bits == 8 ? ATTN4J_DTYPE_INT8 : c.bits == 4 ? ATTN4J_DTYPE_INT4 : ATTN4J_DTYPE_INT2;
    attn4j_attention_desc desc = a4j_test::attention_desc(hqo, hkv, D, c.q, kv_dtype, ps, B + 2, false, sm_scale);
    desc.out_dtype = c.out;
    cuda::DecodeTuning tuning;
    tuning.force_chunks = c.force_chunks;
    if (*c.mode) setenv("ATTN4J_CUDA_QDECODE", c.mode, 1);
    auto kernel = cuda::make_quant_decode_kernel(desc, 0, tuning);
    unsetenv("ATTN4J_CUDA_QDECODE");

    DecodeArgs a;
    a.shape = {hqo, hkv, D, sm_scale, false};
    a.q = {dq, c.q, int64_t(hqo) * D, D};
    a.out = {dout, c.out, int64_t(hqo) * D, D};
    a.lse = {dlse, hqo, 1};
    a.kv.dtype = desc.kv_dtype;
    a.kv.num_kv_heads = hkv;
    a.kv.head_dim = D;
    a.kv.page_size = ps;
    a.kv.num_pages = num_pages;
    a.kv.k = dk;
    a.kv.v = dv;
    a.kv.quant = f;
    a.kv.k_rot = RotationView{c.krot, drk, nullptr};
    a.kv.v_rot = RotationView{c.vrot, drv, nullptr};
    a.table = {B, d_indptr, d_indices, d_last};

    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    if (c.graph) {
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        CK(kernel->run(a, s));
        CK(cudaStreamEndCapture(s, &graph));
        CK(cudaGraphInstantiate(&exec, graph, 0));
        CK(cudaGraphLaunch(exec, s));
        CK(cudaStreamSynchronize(s));
        CK(cudaGraphExecDestroy(exec));
        CK(cudaGraphDestroy(graph));
    } else {
        CK(kernel->run(a, s));
    }
    CK(cudaStreamSynchronize(s));
    CK(cudaGetLastError());
    CK(cudaMemcpy(out.bytes.data(), dout, out.bytes.size(), cudaMemcpyDeviceToHost));
    std::vector<float> lse(c.lse ? size_t(B) * hqo : 0);
    if (c.lse) CK(cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost));

    double num = 0, den = 0, maxabs = 0, lse_err = 0;
    bool finite = true;
    for (size_t i = 0; i < ref.size(); ++i) {
        const double o = out.get(i);
        if (!std::isfinite(o)) finite = false;
        num += (o - ref[i]) * (o - ref[i]);
        den += ref[i] * ref[i];
        maxabs = std::max(maxabs, std::fabs(o - ref[i]));
    }
    for (size_t i = 0; i < lse.size(); ++i) {
        if (!std::isfinite(lse[i])) finite = false;
        lse_err = std::max(lse_err, std::fabs(double(lse[i]) - ref_lse[i]));
    }
    const double rel = std::sqrt(num / std::max(den, 1e-300));
    // f16 operands in the mma (q, dequantized K/V, P): ~1e-3; bf16 output adds ~2e-3.
    const double tol = c.out == ATTN4J_DTYPE_BF16 ? 8e-3 : 5e-3;
    const bool ok = finite && rel <= tol && lse_err <= 2e-2;
    g_worst = std::max(g_worst, rel);
    std::printf("%s rel=%.2e maxabs=%.2e lse_err=%.1e chunks=%d %s\n", ok ? "ok  " : "FAIL", rel, maxabs, lse_err,
                kernel->num_chunks(B), describe(c).c_str());
    if (!ok) ++g_failures;

    CK(cudaStreamDestroy(s));
    for (void* p : {(void*)dk, (void*)dv, (void*)drk, (void*)drv, (void*)d_indptr, (void*)d_indices, (void*)d_last,
                    (void*)dq, dout, (void*)dlse})
        if (p) CK(cudaFree(p));
}

}  // namespace

int main(int argc, char** argv) {
    if (a4j_test::no_cuda_device("test_cuda_quant_decode")) return 0;
    uint64_t seed = 20261123;
    int cases = 40, max_len = 5000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--seed")) seed = std::strtoull(argv[i + 1], nullptr, 10);
        else if (!std::strcmp(argv[i], "--cases")) cases = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--max-len")) max_len = std::atoi(argv[i + 1]);
    }
    cudaDeviceProp prop{};
    CK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device %s, seed %llu\n", prop.name, (unsigned long long)seed);

    std::vector<Case> list;
    // fixed: the benchmark's shape (32 q / 8 kv heads, d128, G128, F32 meta, Hadamard) per format
    for (int bits : {8, 4, 2})
        list.push_back({128, 128, bits, ATTN4J_DTYPE_F32, ATTN4J_ROTATION_HADAMARD, ATTN4J_ROTATION_HADAMARD, 8, 4, 16,
                        {std::min(max_len, 4096), std::min(max_len, 1000)}, ATTN4J_DTYPE_BF16, ATTN4J_DTYPE_BF16, true,
                        0, bits == 2});
    // fixed: several head tiles (group 12, 16), odd page size, page size 1 with 4-byte copies
    list.push_back({128, 32, 4, ATTN4J_DTYPE_F16, ATTN4J_ROTATION_MATRIX, ATTN4J_ROTATION_HADAMARD, 1, 12, 7,
                    {std::min(max_len, 777), 5}, ATTN4J_DTYPE_F32, ATTN4J_DTYPE_F32, true, 3, false});
    list.push_back({64, 32, 2, ATTN4J_DTYPE_F16, ATTN4J_ROTATION_NONE, ATTN4J_ROTATION_MATRIX, 2, 16, 1,
                    {std::min(max_len, 300), 1, 64}, ATTN4J_DTYPE_F16, ATTN4J_DTYPE_F32, true, 0, false});
    // fixed, page-major kernel: kv heads not a multiple of 8 (tiles of 8 + 4), per-head matrix
    // rotations past the first tile, page 64 (sub-pages of a stage), page 1 (4-byte copies), 5 heads
    list.push_back({128, 128, 2, ATTN4J_DTYPE_F32, ATTN4J_ROTATION_MATRIX, ATTN4J_ROTATION_MATRIX, 12, 4, 16,
                    {std::min(max_len, 2000), 37}, ATTN4J_DTYPE_BF16, ATTN4J_DTYPE_F32, true, 0, false});
    list.push_back({128, 64, 4, ATTN4J_DTYPE_F16, ATTN4J_ROTATION_HADAMARD, ATTN4J_ROTATION_NONE, 8, 4, 64,
                    {std::min(max_len, 3000), 200, 65}, ATTN4J_DTYPE_F16, ATTN4J_DTYPE_BF16, true, 0, false});
    list.push_back({128, 128, 8, ATTN4J_DTYPE_F32, ATTN4J_ROTATION_HADAMARD, ATTN4J_ROTATION_HADAMARD, 8, 4, 1,
                    {std::min(max_len, 500), 3}, ATTN4J_DTYPE_BF16, ATTN4J_DTYPE_BF16, false, 0, false});
    list.push_back({64, 64, 2, ATTN4J_DTYPE_F16, ATTN4J_ROTATION_NONE, ATTN4J_ROTATION_HADAMARD, 5, 8, 2,
                    {std::min(max_len, 900), 17, 1}, ATTN4J_DTYPE_F32, ATTN4J_DTYPE_F16, true, 5, false});
    // fixed, page-major kernel requested (the default is the per-kv-head kernel)
    for (int bits : {4, 2}) {
        Case c{128, 128, bits, ATTN4J_DTYPE_F32, ATTN4J_ROTATION_HADAMARD, ATTN4J_ROTATION_HADAMARD, 8, 4, 16,
               {std::min(max_len, 3000), 100}, ATTN4J_DTYPE_BF16, ATTN4J_DTYPE_BF16, true, 0, false};
        c.mode = "pages";
        list.push_back(c);
    }
    {  // page-major kernel, generic dequantization (G < D) and per-head matrix rotations on both sides
        Case c{64, 32, 8, ATTN4J_DTYPE_F16, ATTN4J_ROTATION_MATRIX, ATTN4J_ROTATION_MATRIX, 3, 8, 16,
               {std::min(max_len, 1500), 33}, ATTN4J_DTYPE_F16, ATTN4J_DTYPE_F32, true, 0, false};
        c.mode = "pages";
        list.push_back(c);
    }
    std::mt19937_64 rng(seed);
    auto pick = [&](int k) { return int(rng() % uint64_t(k)); };
    const attn4j_dtype fl[3] = {ATTN4J_DTYPE_F32, ATTN4J_DTYPE_F16, ATTN4J_DTYPE_BF16};
    const attn4j_rotation rots[3] = {ATTN4J_ROTATION_NONE, ATTN4J_ROTATION_HADAMARD, ATTN4J_ROTATION_MATRIX};
    for (int i = 0; i < cases; ++i) {
        Case c{};
        c.D = pick(2) ? 128 : 64;
        const int gs[3] = {32, 64, 128};
        do c.G = gs[pick(3)];
        while (c.G > c.D);
        c.bits = (8 >> pick(3));
        c.meta = pick(2) ? ATTN4J_DTYPE_F32 : ATTN4J_DTYPE_F16;
        c.krot = rots[pick(3)];
        c.vrot = rots[pick(3)];
        const int hkvs[6] = {1, 2, 3, 5, 8, 9};
        c.hkv = hkvs[pick(6)];
        const int groups[3] = {1, 4, 8};
        c.group = groups[pick(3)];
        const int pss[3] = {1, 16, 64};
        c.ps = pss[pick(3)];
        const int B = 1 + pick(16);
        for (int b = 0; b < B; ++b) c.lens.push_back(1 + pick(pick(4) == 0 ? 64 : max_len));
        c.q = fl[pick(3)];
        c.out = fl[pick(3)];
        c.lse = pick(2);
        c.force_chunks = pick(3) == 0 ? 1 + pick(9) : 0;
        c.graph = pick(8) == 0;
        list.push_back(c);
    }
    for (size_t i = 0; i < list.size(); ++i) run_case(list[i], seed * 1000 + i);
    std::printf("%s: %zu cases, %d failed, worst relative error %.2e\n", g_failures ? "FAILED" : "PASSED",
                list.size(), g_failures, g_worst);
    return g_failures ? 1 : 0;
}
