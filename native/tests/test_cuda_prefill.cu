// CUDA prefill through the C ABI (attn4j_prefill_plan_create / _run / _paged_run on a CUDA
// context) against a float64 reference on the same (rounded) inputs: random ragged batches with
// n_q = 1, n_q = n_kv, n_q < n_kv and lengths off the tile sizes, causal and not, GQA 1/4/8,
// head_dim 64/128, BF16 and F16 inputs, F32/F16/BF16 outputs, with and without LSE, contiguous K/V
// with padded q rows, paged K/V with page sizes 1/16/64 over permuted pages whose spare pages hold
// NaN, outputs poisoned with NaN. Then bad input (host q, q rows not 16-byte aligned, device indptr, page id out of range,
// causal n_kv < n_q in the table, capture), each followed by a correct run.
// Without a CUDA device it prints "SKIP: no CUDA device" and exits 0.
// Usage: test_cuda_prefill [seed [random_cases]]   (fewer random cases for the slow sanitizers)
#include <cuda_runtime.h>

#include "cuda_test.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "a4j_test.h"
#include "attn4j.h"
#include "core/dtype.h"

namespace {

using namespace attn4j;

using a4j_test::dev_tensor;

uint16_t to16(attn4j_dtype dt, float x) { return dt == ATTN4J_DTYPE_F16 ? f32_to_f16(x) : f32_to_bf16(x); }
float from16(attn4j_dtype dt, uint16_t x) { return dt == ATTN4J_DTYPE_F16 ? f16_to_f32(x) : bf16_to_f32(x); }

struct Case {
    int hq, hkv, d;
    bool causal, paged, with_lse;
    int page_size;
    attn4j_dtype in_dt, out_dt;
    std::vector<int> nq, nkv;
};

// One prefill problem: host data (rounded to the input dtype), device copies, descriptors.
struct Problem {
    Case c;
    int batch = 0, nnz_q = 0, nnz_kv = 0;
    int64_t q_row = 0;  // q rows are padded by 2 heads (a slice of a fused QKV buffer)
    std::vector<int32_t> qo, kvp;
    std::vector<uint16_t> q, k, v;  // q [nnz_q][q_row]; k, v [nnz_kv][hkv][d] (logical order)
    // paged
    int pages = 0;
    std::vector<int32_t> pindptr, pindices, plast;
    void *dq = nullptr, *dk = nullptr, *dv = nullptr, *dout = nullptr;
    float* dlse = nullptr;
    int32_t *dpindptr = nullptr, *dpindices = nullptr, *dplast = nullptr;
    attn4j_tensor tq{}, tk{}, tv{}, tout{}, tlse{}, tqo{}, tkvp{};
    attn4j_paged_kv cache{};
    attn4j_page_table table{};

    Problem(Case cs, uint64_t seed) : c(std::move(cs)) {
        std::mt19937_64 rng(seed);
        std::normal_distribution<float> gauss(0.f, 1.f);
        batch = int(c.nq.size());
        qo.assign(batch + 1, 0);
        kvp.assign(batch + 1, 0);
        for (int i = 0; i < batch; ++i) {
            qo[i + 1] = qo[i] + c.nq[i];
            kvp[i + 1] = kvp[i] + c.nkv[i];
        }
        nnz_q = qo[batch];
        nnz_kv = kvp[batch];
        const int D = c.d;
        q_row = int64_t(c.hq + 2) * D;
        q.resize(size_t(nnz_q) * q_row);
        for (auto& x : q) x = to16(c.in_dt, gauss(rng));
        // keys with a few outlier channels and a sink at position 0; values with a shifted sink
        std::vector<float> outlier(D, 1.f);
        for (int i = 0; i < 3; ++i) outlier[rng() % D] = 5.f;
        k.resize(size_t(nnz_kv) * c.hkv * D);
        v.resize(k.size());
        for (int i = 0; i < batch; ++i)
            for (int j = 0; j < c.nkv[i]; ++j)
                for (int h = 0; h < c.hkv; ++h)
                    for (int e = 0; e < D; ++e) {
                        const size_t x = (size_t(kvp[i] + j) * c.hkv + h) * D + e;
                        k[x] = to16(c.in_dt, gauss(rng) * outlier[e] * (j == 0 ? 2.f : 1.f));
                        v[x] = to16(c.in_dt, gauss(rng) + (j == 0 ? 3.f : 0.f));
                    }
        dq = a4j_test::to_device(q);
        const size_t out_es = c.out_dt == ATTN4J_DTYPE_F32 ? 4 : 2;
        CK(cudaMalloc(&dout, std::max<size_t>(1, size_t(nnz_q) * c.hq * D * out_es)));
        CK(cudaMalloc(&dlse, std::max<size_t>(1, size_t(nnz_q) * c.hq) * sizeof(float)));
        tq = dev_tensor(dq, c.in_dt, {nnz_q, c.hq, D});
        tq.strides[0] = q_row;
        tq.size_bytes = int64_t(q.size()) * 2;
        tout = dev_tensor(dout, c.out_dt, {nnz_q, c.hq, D});
        tlse = dev_tensor(dlse, ATTN4J_DTYPE_F32, {nnz_q, c.hq});
        tqo = a4j_test::tensor(qo.data(), ATTN4J_DTYPE_I32, {batch + 1});
        if (!c.paged) {
            dk = a4j_test::to_device(k);
            dv = a4j_test::to_device(v);
            tk = dev_tensor(dk, c.in_dt, {nnz_kv, c.hkv, D});
            tv = dev_tensor(dv, c.in_dt, {nnz_kv, c.hkv, D});
            tkvp = a4j_test::tensor(kvp.data(), ATTN4J_DTYPE_I32, {batch + 1});
            return;
        }
        // Pages in shuffled order; spare pages full of NaN (reading one shows in the output).
        const int PS = c.page_size;
        int need = 0;
        for (int L : c.nkv) need += (L + PS - 1) / PS;
        pages = need + 3;
        std::vector<int> perm(pages);
        for (int i = 0; i < pages; ++i) perm[i] = i;
        std::shuffle(perm.begin(), perm.end(), rng);
        const uint16_t nan16 = c.in_dt == ATTN4J_DTYPE_F16 ? 0x7e00 : 0x7fc0;
        std::vector<uint16_t> pk(size_t(pages) * c.hkv * PS * D, nan16), pv(pk.size(), nan16);
        pindptr.push_back(0);
        int next = 0;
        for (int i = 0; i < batch; ++i) {
            const int np = (c.nkv[i] + PS - 1) / PS;
            for (int p = 0; p < np; ++p) pindices.push_back(perm[next++]);
            pindptr.push_back(int32_t(pindices.size()));
            plast.push_back(np == 0 ? 0 : c.nkv[i] - (np - 1) * PS);
            for (int j = 0; j < c.nkv[i]; ++j) {
                const int page = pindices[size_t(pindptr[i] + j / PS)];
                for (int h = 0; h < c.hkv; ++h)
                    for (int e = 0; e < D; ++e) {
                        const size_t src = (size_t(kvp[i] + j) * c.hkv + h) * D + e;
                        const size_t dst = ((size_t(page) * c.hkv + h) * PS + j % PS) * D + e;
                        pk[dst] = k[src];
                        pv[dst] = v[src];
                    }
            }
        }
        dk = a4j_test::to_device(pk);
        dv = a4j_test::to_device(pv);
        dpindptr = a4j_test::to_device(pindptr);
        dpindices = a4j_test::to_device(pindices);
        dplast = a4j_test::to_device(plast);
        cache = a4j_test::paged_kv(c.in_dt, c.hkv, D, PS, pages, dk, dv, int64_t(pk.size()) * 2, ATTN4J_DEVICE_CUDA);
        table.struct_size = sizeof table;
        table.indptr = dev_tensor(dpindptr, ATTN4J_DTYPE_I32, {batch + 1});
        table.indices = dev_tensor(dpindices, ATTN4J_DTYPE_I32, {int64_t(pindices.size())});
        table.last_page_len = dev_tensor(dplast, ATTN4J_DTYPE_I32, {batch});
    }
    ~Problem() {
        for (void* p : {dq, dk, dv, dout, static_cast<void*>(dlse), static_cast<void*>(dpindptr),
                        static_cast<void*>(dpindices), static_cast<void*>(dplast)})
            if (p) cudaFree(p);
    }
    Problem(const Problem&) = delete;
    Problem& operator=(const Problem&) = delete;

    attn4j_attention_desc desc() const {
        attn4j_attention_desc d = a4j_test::attention_desc(c.hq, c.hkv, c.d, c.in_dt, c.in_dt,
                                                           c.paged ? c.page_size : 0, std::max(batch, 1), c.causal);
        d.out_dtype = c.out_dt;
        return d;
    }

    void poison() {
        CK(cudaMemset(dout, 0xff, size_t(std::max(nnz_q, 1)) * c.hq * c.d * (c.out_dt == ATTN4J_DTYPE_F32 ? 4 : 2)));
        CK(cudaMemset(dlse, 0xff, size_t(std::max(nnz_q, 1)) * c.hq * sizeof(float)));
    }

    attn4j_status run(attn4j_plan* plan, bool with_lse) {
        attn4j_tensor* lse = with_lse ? &tlse : nullptr;
        return c.paged ? attn4j_prefill_paged_run(plan, &tq, &tqo, &cache, &table, &tout, lse)
                       : attn4j_prefill_run(plan, &tq, &tqo, &tk, &tv, &tkvp, &tout, lse);
    }

    // Relative L2 error of out (and max abs LSE error) against float64; false when anything is
    // non-finite or an output row was left unwritten.
    bool check(const char* label) const {
        const int D = c.d, G = c.hq / c.hkv;
        const size_t n = size_t(nnz_q) * c.hq * D;
        std::vector<float> out(n);
        if (c.out_dt == ATTN4J_DTYPE_F32) {
            CK(cudaMemcpy(out.data(), dout, n * 4, cudaMemcpyDeviceToHost));
        } else {
            std::vector<uint16_t> o16(n);
            CK(cudaMemcpy(o16.data(), dout, n * 2, cudaMemcpyDeviceToHost));
            for (size_t i = 0; i < n; ++i) out[i] = from16(c.out_dt, o16[i]);
        }
        std::vector<float> lse(size_t(nnz_q) * c.hq);
        CK(cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost));
        const double scale = 1.0 / std::sqrt(double(D));
        double err2 = 0, ref2 = 0, lse_err = 0;
        bool finite = true;
        std::vector<double> s, o(static_cast<size_t>(D));
        for (int b = 0; b < batch; ++b) {
            const int nq = c.nq[b], nk = c.nkv[b];
            for (int i = 0; i < nq; ++i)
                for (int h = 0; h < c.hq; ++h) {
                    const int kvh = h / G;
                    const int visible = c.causal ? i + nk - nq + 1 : nk;
                    s.assign(size_t(visible), 0.0);
                    double mx = -INFINITY;
                    for (int j = 0; j < visible; ++j) {
                        double acc = 0;
                        for (int e = 0; e < D; ++e)
                            acc += double(from16(c.in_dt, q[size_t(qo[b] + i) * q_row + size_t(h) * D + e])) *
                                   from16(c.in_dt, k[(size_t(kvp[b] + j) * c.hkv + kvh) * D + e]);
                        s[size_t(j)] = acc * scale;
                        mx = std::max(mx, s[size_t(j)]);
                    }
                    double l = 0;
                    std::fill(o.begin(), o.end(), 0.0);
                    for (int j = 0; j < visible; ++j) {
                        const double p = std::exp(s[size_t(j)] - mx);
                        l += p;
                        for (int e = 0; e < D; ++e)
                            o[size_t(e)] += p * from16(c.in_dt, v[(size_t(kvp[b] + j) * c.hkv + kvh) * D + e]);
                    }
                    const size_t row = size_t(qo[b] + i) * c.hq + h;
                    for (int e = 0; e < D; ++e) {
                        const double r = o[size_t(e)] / l, got = out[row * D + e];
                        finite &= std::isfinite(got);
                        err2 += (got - r) * (got - r);
                        ref2 += r * r;
                    }
                    if (c.with_lse) {
                        finite &= std::isfinite(lse[row]);
                        lse_err = std::max(lse_err, std::abs(double(lse[row]) - (mx + std::log(l))));
                    }
                }
        }
        const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
        // Inputs are exact in the reference; the error is P rounded to 16 bits for the PV MMA
        // (and the output rounding): ~2^-8 relative for BF16, ~2^-11 for F16.
        const double tol = c.in_dt == ATTN4J_DTYPE_BF16 || c.out_dt == ATTN4J_DTYPE_BF16 ? 1.2e-2 : 3e-3;
        const bool ok = finite && rel <= tol && lse_err <= 2e-3;
        std::printf("  %-58s rel %.2e lse %.1e %s\n", label, rel, lse_err, ok ? "ok" : "FAIL");
        return ok;
    }
};

std::string label_of(const Case& c) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s %s->%s h%d/%d d%d %s%s b%zu nq0=%d nkv0=%d%s", c.causal ? "causal" : "full",
                  dtype_name(c.in_dt), dtype_name(c.out_dt), c.hq, c.hkv, c.d,
                  c.paged ? "paged ps" : "contig", c.paged ? std::to_string(c.page_size).c_str() : "", c.nq.size(),
                  c.nq[0], c.nkv[0], c.with_lse ? " lse" : "");
    return buf;
}

void run_case(attn4j_context* ctx, const Case& c, uint64_t seed) {
    Problem P(c, seed);
    attn4j_attention_desc d = P.desc();
    attn4j_plan* plan = nullptr;
    if (attn4j_prefill_plan_create(ctx, &d, &plan) != ATTN4J_OK) {
        CHECK_MSG(false, attn4j_last_error());
        return;
    }
    P.poison();
    const attn4j_status st = P.run(plan, c.with_lse);
    CHECK_MSG(st == ATTN4J_OK, st == ATTN4J_OK ? "" : attn4j_last_error());
    CK(cudaDeviceSynchronize());
    CHECK_MSG(P.check(label_of(c).c_str()), label_of(c));
    attn4j_plan_destroy(plan);
}

}  // namespace

int main(int argc, char** argv) {
    if (a4j_test::no_cuda_device("test_cuda_prefill")) return 0;
    const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 20261202;
    const int random_cases = argc > 2 ? std::atoi(argv[2]) : 16;
    attn4j_context* ctx = a4j_test::make_context(ATTN4J_DEVICE_CUDA, 0);
    if (!ctx) return a4j_test::finish("test_cuda_prefill");
    const attn4j_dtype BF = ATTN4J_DTYPE_BF16, F16 = ATTN4J_DTYPE_F16, F32 = ATTN4J_DTYPE_F32;

    std::printf("fixed cases:\n");
    // Multi-tile causal (several query tiles, diagonal tiles, n_q = n_kv and n_q < n_kv).
    run_case(ctx, {8, 2, 128, true, false, true, 0, BF, F32, {300, 77}, {300, 200}}, seed);
    run_case(ctx, {8, 8, 64, true, false, true, 0, F16, F16, {257, 1}, {600, 1}}, seed + 1);
    run_case(ctx, {16, 2, 128, false, false, false, 0, BF, BF, {129, 5, 64}, {129, 1000, 3}}, seed + 2);
    run_case(ctx, {8, 1, 64, false, true, true, 1, BF, F32, {33, 2}, {70, 9}}, seed + 3);
    run_case(ctx, {8, 2, 128, true, true, true, 16, F16, F32, {190, 7}, {400, 7}}, seed + 4);
    run_case(ctx, {32, 8, 128, true, true, false, 64, BF, BF, {130}, {513}}, seed + 5);

    std::printf("random cases:\n");
    std::mt19937_64 rng(seed);
    const int gqa[3][2] = {{4, 4}, {8, 2}, {16, 2}};
    const int page_sizes[3] = {1, 16, 64};
    const attn4j_dtype outs[3] = {F32, F16, BF};
    for (int t = 0; t < random_cases; ++t) {
        Case c;
        const int* g = gqa[rng() % 3];
        c.hq = g[0];
        c.hkv = g[1];
        c.d = rng() % 2 ? 64 : 128;
        c.causal = rng() % 2;
        c.paged = rng() % 2;
        c.with_lse = rng() % 2;
        c.page_size = page_sizes[rng() % 3];
        c.in_dt = rng() % 2 ? BF : F16;
        c.out_dt = outs[rng() % 3];
        const int batch = 1 + int(rng() % 4);
        for (int i = 0; i < batch; ++i) {
            const int nq = 1 + int(rng() % 200);
            c.nq.push_back(nq);
            c.nkv.push_back(nq + int(rng() % 300));
        }
        run_case(ctx, c, seed + 100 + t);
    }

    std::printf("bad input (each followed by a correct run):\n");
    {
        Problem P({8, 2, 128, true, true, true, 16, BF, F32, {40, 9}, {100, 9}}, seed + 7);
        attn4j_attention_desc d = P.desc();
        attn4j_plan* plan = nullptr;
        CHECK(attn4j_prefill_plan_create(ctx, &d, &plan) == ATTN4J_OK);
        const attn4j_status INV = ATTN4J_ERR_INVALID_ARGUMENT;
        auto again = [&] {
            P.poison();
            CHECK(P.run(plan, true) == ATTN4J_OK);
            CK(cudaDeviceSynchronize());
            CHECK(P.check("  correct run after the error"));
        };
        // host q on a CUDA plan
        std::vector<uint16_t> hq(P.q);
        attn4j_tensor keep = P.tq;
        P.tq = a4j_test::tensor(hq.data(), BF, {P.nnz_q, 8, 128});
        a4j_test::expect_status("host q", P.run(plan, true), INV, "q:");
        P.tq = keep;
        again();
        // page id out of range
        std::vector<int32_t> bad = P.pindices;
        bad[1] = P.pages + 5;
        CK(cudaMemcpy(P.dpindices, bad.data(), bad.size() * 4, cudaMemcpyHostToDevice));
        a4j_test::expect_status("page id out of range", P.run(plan, true), INV, "table.indices[1]");
        CK(cudaMemcpy(P.dpindices, P.pindices.data(), bad.size() * 4, cudaMemcpyHostToDevice));
        again();
        // causal: a sequence with fewer keys than queries (last page shortened)
        std::vector<int32_t> last = P.plast;
        last[1] = 3;  // 9 queries, 3 keys
        CK(cudaMemcpy(P.dplast, last.data(), last.size() * 4, cudaMemcpyHostToDevice));
        a4j_test::expect_status("causal n_kv < n_q", P.run(plan, true), INV, "a causal plan needs n_kv >= n_q");
        CK(cudaMemcpy(P.dplast, P.plast.data(), last.size() * 4, cudaMemcpyHostToDevice));
        again();
        // not capturable
        attn4j_stream* stream = nullptr;
        CHECK(attn4j_stream_create(ctx, &stream) == ATTN4J_OK);
        CHECK(attn4j_context_set_stream(ctx, stream) == ATTN4J_OK);
        CHECK(attn4j_graph_capture_begin(stream) == ATTN4J_OK);
        a4j_test::expect_status("prefill while capturing", P.run(plan, true), INV, "cannot be captured");
        attn4j_graph* g = nullptr;
        CHECK(attn4j_graph_capture_end(stream, &g) == INV && g == nullptr);
        // on the non-default stream it runs (ordered on that stream)
        P.poison();
        CHECK(P.run(plan, true) == ATTN4J_OK);
        CHECK(attn4j_stream_synchronize(stream) == ATTN4J_OK);
        CHECK(P.check("  on a created stream"));
        CHECK(attn4j_context_set_stream(ctx, nullptr) == ATTN4J_OK);
        CHECK(attn4j_stream_destroy(stream) == ATTN4J_OK);
        attn4j_plan_destroy(plan);
    }
    {
        Problem P({8, 2, 128, false, false, false, 0, BF, F32, {16}, {16}}, seed + 8);
        const attn4j_status INV = ATTN4J_ERR_INVALID_ARGUMENT;
        attn4j_attention_desc d = P.desc();
        attn4j_plan* plan = nullptr;
        CHECK(attn4j_prefill_plan_create(ctx, &d, &plan) == ATTN4J_OK);
        // q with a row stride that is not a multiple of 8 elements: rows not 16-byte aligned
        P.tq.strides[0] = int64_t(8) * 128 + 4;
        a4j_test::expect_status("q rows not 16-byte aligned", P.run(plan, false), INV, "16-byte aligned rows");
        // device indptr: index arrays of prefill are host arrays
        int32_t* dqo = a4j_test::to_device(P.qo);
        attn4j_tensor tq_ok = dev_tensor(P.dq, BF, {P.nnz_q, 8, 128});
        tq_ok.strides[0] = P.q_row;
        tq_ok.size_bytes = int64_t(P.q.size()) * 2;
        P.tq = tq_ok;
        attn4j_tensor keep = P.tqo;
        P.tqo = dev_tensor(dqo, ATTN4J_DTYPE_I32, {P.batch + 1});
        a4j_test::expect_status("qo_indptr in device memory", P.run(plan, false), INV, "qo_indptr: device CUDA");
        P.tqo = keep;
        P.poison();
        CHECK(P.run(plan, false) == ATTN4J_OK);
        CK(cudaDeviceSynchronize());
        CHECK(P.check("  correct run after the errors"));
        cudaFree(dqo);
        attn4j_plan_destroy(plan);
    }
    attn4j_context_destroy(ctx);
    return a4j_test::finish("test_cuda_prefill");
}
