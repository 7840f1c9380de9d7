// CUDA decode through the C ABI only (attn4j_decode_plan_create / attn4j_decode_run on a CUDA
// context) with cudaMalloc'd tensors: correctness against a float64 reference (GQA 4, head_dim
// 128 and 64, BF16 KV, page 16, ragged batches, poisoned outputs and unreferenced pages), then bad
// inputs that must come back as statuses naming the argument (host q, cache on another device,
// out-of-range page id, empty sequence, misaligned out / cache, wrong dtype, host memory labelled
// CUDA), each followed by a correct run; a prefill plan with F32 q is UNSUPPORTED on CUDA.
// Without a CUDA device it prints "SKIP: no CUDA device" and exits 0.
#include <cuda_runtime.h>

#include "cuda_test.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "a4j_test.h"
#include "core/dtype.h"
#include "attn4j.h"

namespace {

using attn4j::bf16_to_f32;
using attn4j::f32_to_bf16;



using a4j_test::dev_tensor;


// One decode problem: host data, device copies, descriptors.
struct Problem {
    int H, KVH, D, PS, pages;
    attn4j_dtype q_dt, out_dt;
    std::vector<int> lens;
    std::vector<int32_t> indptr, indices, last;
    std::vector<uint16_t> k, v;  // BF16 [pages][KVH][PS][D]
    std::vector<float> qf;       // q values (exactly representable in q_dt)
    void* dq = nullptr;
    void* dout = nullptr;
    float* dlse = nullptr;
    void* dk = nullptr;
    void* dv = nullptr;
    int32_t *dindptr = nullptr, *dindices = nullptr, *dlast = nullptr;
    attn4j_paged_kv cache{};
    attn4j_page_table table{};
    attn4j_tensor tq{}, tout{}, tlse{};

    int batch() const { return int(lens.size()); }
    int esize(attn4j_dtype t) const { return t == ATTN4J_DTYPE_F32 ? 4 : 2; }

    Problem(int H_, int KVH_, int D_, std::vector<int> lens_, attn4j_dtype qd, attn4j_dtype od,
            uint32_t seed)
        : H(H_), KVH(KVH_), D(D_), PS(16), q_dt(qd), out_dt(od), lens(std::move(lens_)) {
        std::mt19937 rng(seed);
        std::uniform_real_distribution<float> U(-1.f, 1.f);
        int need = 0;
        for (int L : lens) need += (L + PS - 1) / PS;
        pages = need + 5;  // spare pages hold NaN: reading them shows
        std::vector<int> perm(pages);
        for (int i = 0; i < pages; ++i) perm[i] = i;
        std::shuffle(perm.begin(), perm.end(), rng);
        indptr.push_back(0);
        int next = 0;
        for (int L : lens) {
            const int np = (L + PS - 1) / PS;
            for (int j = 0; j < np; ++j) indices.push_back(perm[next++]);
            indptr.push_back(int32_t(indices.size()));
            last.push_back(L - (np - 1) * PS);
        }
        const size_t kv_elems = size_t(pages) * KVH * PS * D;
        k.assign(kv_elems, 0x7FC0);
        v.assign(kv_elems, 0x7FC0);
        for (int b = 0; b < batch(); ++b)
            for (int t = 0; t < lens[b]; ++t) {
                const int page = indices[indptr[b] + t / PS], slot = t % PS;
                for (int h = 0; h < KVH; ++h)
                    for (int d = 0; d < D; ++d) {
                        const size_t i = ((size_t(page) * KVH + h) * PS + slot) * D + d;
                        k[i] = f32_to_bf16(U(rng));
                        v[i] = f32_to_bf16(U(rng));
                    }
            }
        qf.resize(size_t(batch()) * H * D);
        for (auto& x : qf) x = q_dt == ATTN4J_DTYPE_F32 ? U(rng) : bf16_to_f32(f32_to_bf16(U(rng)));

        // device
        if (q_dt == ATTN4J_DTYPE_F32) {
            dq = a4j_test::to_device(qf);
        } else {  // BF16
            std::vector<uint16_t> qb(qf.size());
            for (size_t i = 0; i < qf.size(); ++i) qb[i] = f32_to_bf16(qf[i]);
            dq = a4j_test::to_device(qb);
        }
        CK(cudaMalloc(&dout, qf.size() * esize(out_dt) + 64));
        CK(cudaMalloc(reinterpret_cast<void**>(&dlse), size_t(batch()) * H * 4));
        dk = a4j_test::to_device(k);
        dv = a4j_test::to_device(v);
        dindptr = a4j_test::to_device(indptr);
        dindices = a4j_test::to_device(indices);
        dlast = a4j_test::to_device(last);

        cache = a4j_test::paged_kv(ATTN4J_DTYPE_BF16, KVH, D, PS, pages, dk, dv, int64_t(kv_elems) * 2,
                                   ATTN4J_DEVICE_CUDA);
        table.struct_size = sizeof table;
        table.indptr = dev_tensor(dindptr, ATTN4J_DTYPE_I32, {int64_t(indptr.size())});
        table.indices = dev_tensor(dindices, ATTN4J_DTYPE_I32, {int64_t(indices.size())});
        table.last_page_len = dev_tensor(dlast, ATTN4J_DTYPE_I32, {int64_t(last.size())});
        tq = dev_tensor(dq, q_dt, {batch(), H, D});
        tout = dev_tensor(dout, out_dt, {batch(), H, D});
        tlse = dev_tensor(dlse, ATTN4J_DTYPE_F32, {batch(), H});
    }
    ~Problem() {
        for (void* p : {dq, dout, static_cast<void*>(dlse), dk, dv, static_cast<void*>(dindptr),
                        static_cast<void*>(dindices), static_cast<void*>(dlast)})
            cudaFree(p);
    }

    attn4j_attention_desc desc() const {
        attn4j_attention_desc d = a4j_test::attention_desc(H, KVH, D, q_dt, ATTN4J_DTYPE_BF16, PS, 8);
        d.out_dtype = out_dt;
        return d;
    }

    void poison() {
        CK(cudaMemset(dout, 0xFF, qf.size() * esize(out_dt)));  // NaN in F32 / BF16
        CK(cudaMemset(dlse, 0xFF, size_t(batch()) * H * 4));
    }

    // Compares the device output with a float64 reference; returns the max abs error.
    double check(const char* what) {
        CK(cudaDeviceSynchronize());
        std::vector<unsigned char> ob(qf.size() * esize(out_dt));
        std::vector<float> lse(size_t(batch()) * H);
        CK(cudaMemcpy(ob.data(), dout, ob.size(), cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost));
        const double scale = 1.0 / std::sqrt(double(D));
        const double tol = out_dt == ATTN4J_DTYPE_F32 ? 2e-3 : 1.6e-2;
        double worst = 0, worst_lse = 0;
        const int group = H / KVH;
        for (int b = 0; b < batch(); ++b)
            for (int h = 0; h < H; ++h) {
                const int kh = h / group;
                std::vector<double> s(lens[b], 0.0);
                double m = -INFINITY;
                for (int t = 0; t < lens[b]; ++t) {
                    const int page = indices[indptr[b] + t / PS], slot = t % PS;
                    const size_t base = ((size_t(page) * KVH + kh) * PS + slot) * D;
                    double acc = 0;
                    for (int d = 0; d < D; ++d)
                        acc += double(qf[(size_t(b) * H + h) * D + d]) * bf16_to_f32(k[base + d]);
                    s[t] = acc * scale;
                    m = std::max(m, s[t]);
                }
                double l = 0;
                std::vector<double> o(size_t(D), 0.0);
                for (int t = 0; t < lens[b]; ++t) {
                    const double p = std::exp(s[t] - m);
                    l += p;
                    const int page = indices[indptr[b] + t / PS], slot = t % PS;
                    const size_t base = ((size_t(page) * KVH + kh) * PS + slot) * D;
                    for (int d = 0; d < D; ++d) o[d] += p * bf16_to_f32(v[base + d]);
                }
                for (int d = 0; d < D; ++d) {
                    const size_t i = (size_t(b) * H + h) * D + d;
                    float got;
                    if (out_dt == ATTN4J_DTYPE_F32) std::memcpy(&got, ob.data() + 4 * i, 4);
                    else {
                        uint16_t u;
                        std::memcpy(&u, ob.data() + 2 * i, 2);
                        got = bf16_to_f32(u);
                    }
                    const double err = std::isfinite(got) ? std::fabs(got - o[d] / l) : INFINITY;
                    worst = std::max(worst, err);
                }
                const double ref_lse = m + std::log(l);
                const float g = lse[size_t(b) * H + h];
                worst_lse = std::max(worst_lse, std::isfinite(g) ? std::fabs(g - ref_lse) : INFINITY);
            }
        std::printf("  %s: max |out - ref| = %.3g (tol %.1g), max |lse - ref| = %.3g\n", what,
                    worst, tol, worst_lse);
        CHECK_MSG(worst <= tol, what);
        CHECK_MSG(worst_lse <= 1e-3, what);
        return worst;
    }
};

void expect(const char* what, attn4j_status got, attn4j_status want, const char* needle) {
    const char* msg = attn4j_last_error();
    const bool ok = got == want && (got == ATTN4J_OK || std::strstr(msg, needle) != nullptr);
    std::printf("  %-34s -> %s: %s\n", what, attn4j_status_name(got), got == ATTN4J_OK ? "" : msg);
    CHECK_MSG(ok, std::string(what) + ": got " + attn4j_status_name(got) + " '" + msg +
                      "', wanted " + attn4j_status_name(want) + " with '" + needle + "'");
}

}  // namespace

int main() {
    if (a4j_test::no_cuda_device("test_cuda_api")) return 0;
    int n = 0;
    CK(cudaGetDeviceCount(&n));
    int32_t count = 0;
    CHECK(attn4j_device_count(ATTN4J_DEVICE_CUDA, &count) == ATTN4J_OK && count == n);

    attn4j_context* ctx = a4j_test::make_context(ATTN4J_DEVICE_CUDA, 0);
    if (!ctx) return a4j_test::finish("test_cuda_api");

    // ---- correctness -------------------------------------------------------------------------
    struct Case {
        int H, KVH, D;
        std::vector<int> lens;
        attn4j_dtype q, out;
        const char* name;
    };
    const Case cases[] = {
        {32, 8, 128, {1000, 37, 4096}, ATTN4J_DTYPE_BF16, ATTN4J_DTYPE_BF16, "32/8 heads d128 bf16"},
        {16, 4, 64, {513, 16}, ATTN4J_DTYPE_F32, ATTN4J_DTYPE_F32, "16/4 heads d64 f32 q/out"},
        {8, 2, 128, {1, 300, 17}, ATTN4J_DTYPE_F32, ATTN4J_DTYPE_BF16, "8/2 heads d128 f32->bf16"},
    };
    uint32_t seed = 1;
    for (const Case& cs : cases) {
        Problem P(cs.H, cs.KVH, cs.D, cs.lens, cs.q, cs.out, seed++);
        attn4j_attention_desc d = P.desc();
        attn4j_plan* plan = nullptr;
        const attn4j_status st = attn4j_decode_plan_create(ctx, &d, &plan);
        CHECK_MSG(st == ATTN4J_OK, attn4j_last_error());
        if (!plan) continue;
        for (int rep = 0; rep < 2; ++rep) {
            P.poison();
            const attn4j_status r = attn4j_decode_run(plan, &P.tq, &P.cache, &P.table, &P.tout, &P.tlse);
            CHECK_MSG(r == ATTN4J_OK, attn4j_last_error());
            P.check(cs.name);
        }
        attn4j_plan_destroy(plan);
    }

    // ---- bad inputs: each a status naming the argument, then a correct run -------------------
    {
        Problem P(32, 8, 128, {700, 33}, ATTN4J_DTYPE_BF16, ATTN4J_DTYPE_BF16, 99);
        attn4j_attention_desc d = P.desc();
        attn4j_plan* plan = nullptr;
        CHECK(attn4j_decode_plan_create(ctx, &d, &plan) == ATTN4J_OK);
        const auto ok_run = [&](const char* after) {
            P.poison();
            const attn4j_status r = attn4j_decode_run(plan, &P.tq, &P.cache, &P.table, &P.tout, &P.tlse);
            CHECK_MSG(r == ATTN4J_OK, std::string("run after ") + after + ": " + attn4j_last_error());
            P.check((std::string("correct run after ") + after).c_str());
        };
        const attn4j_status INV = ATTN4J_ERR_INVALID_ARGUMENT;
        const auto run = [&](const attn4j_tensor* q, const attn4j_paged_kv* c,
                             const attn4j_page_table* t, attn4j_tensor* out, attn4j_tensor* lse) {
            return attn4j_decode_run(plan, q, c, t, out, lse);
        };

        {  // host q (a host copy, labelled CPU) to a CUDA plan
            std::vector<uint16_t> hq(P.qf.size());
            attn4j_tensor t = a4j_test::tensor(hq.data(), ATTN4J_DTYPE_BF16, {P.batch(), P.H, P.D});
            expect("host q", run(&t, &P.cache, &P.table, &P.tout, &P.tlse), INV,
                   "q: device CPU but plan runs on CUDA; copy it to device memory");
            ok_run("host q");
        }
        {  // host memory labelled CUDA
            std::vector<uint16_t> hq(P.qf.size());
            attn4j_tensor t = dev_tensor(hq.data(), ATTN4J_DTYPE_BF16, {P.batch(), P.H, P.D});
            expect("host memory labelled CUDA", run(&t, &P.cache, &P.table, &P.tout, &P.tlse), INV,
                   "q: pointer");
            ok_run("host memory labelled CUDA");
        }
        {  // host table to a CUDA plan
            attn4j_page_table t = P.table;
            t.indptr = a4j_test::tensor(P.indptr.data(), ATTN4J_DTYPE_I32, {int64_t(P.indptr.size())});
            expect("host table.indptr", run(&P.tq, &P.cache, &t, &P.tout, &P.tlse), INV,
                   "table.indptr: device CPU but plan runs on CUDA");
        }
        {  // cache on another device id
            attn4j_paged_kv c = P.cache;
            c.device_id = 1;
            expect("cache on cuda:1", run(&P.tq, &c, &P.table, &P.tout, &P.tlse), INV,
                   "cache: device CUDA:1 but plan runs on CUDA:0");
            ok_run("cache on cuda:1");
        }
        {  // out on another device id
            attn4j_tensor t = P.tout;
            t.device_id = 3;
            expect("out on cuda:3", run(&P.tq, &P.cache, &P.table, &t, &P.tlse), INV,
                   "out: device_id 3 but plan runs on CUDA:0");
        }
        {  // out-of-range page id (device contents)
            std::vector<int32_t> bad = P.indices;
            bad[bad.size() - 1] = P.pages + 7;
            int32_t* dbad = a4j_test::to_device(bad);
            attn4j_page_table t = P.table;
            t.indices.data = dbad;
            expect("page id out of range", run(&P.tq, &P.cache, &t, &P.tout, &P.tlse), INV,
                   "table.indices[");
            bad[0] = -1;
            CK(cudaMemcpy(dbad, bad.data(), bad.size() * 4, cudaMemcpyHostToDevice));
            expect("negative page id", run(&P.tq, &P.cache, &t, &P.tout, &P.tlse), INV,
                   "table.indices[0]: page id -1 out of range");
            cudaFree(dbad);
            ok_run("page id out of range");
        }
        {  // empty sequence: indptr [0, n, n]
            std::vector<int32_t> ip = {0, P.indptr[2], P.indptr[2]};
            int32_t* dip = a4j_test::to_device(ip);
            attn4j_page_table t = P.table;
            t.indptr.data = dip;
            expect("empty sequence", run(&P.tq, &P.cache, &t, &P.tout, &P.tlse), INV,
                   "table: sequence 1 is empty");
            // indptr past indices, and decreasing
            ip = {0, int32_t(P.indices.size()) + 4, int32_t(P.indices.size()) + 4};
            CK(cudaMemcpy(dip, ip.data(), ip.size() * 4, cudaMemcpyHostToDevice));
            expect("indptr beyond indices", run(&P.tq, &P.cache, &t, &P.tout, &P.tlse), INV,
                   "table.indptr: indptr[2]");
            cudaFree(dip);
            ok_run("empty sequence");
        }
        {  // last_page_len out of range
            std::vector<int32_t> lp = P.last;
            lp[1] = 17;
            int32_t* dlp = a4j_test::to_device(lp);
            attn4j_page_table t = P.table;
            t.last_page_len.data = dlp;
            expect("last_page_len 17", run(&P.tq, &P.cache, &t, &P.tout, &P.tlse), INV,
                   "table.last_page_len[1]: 17 out of range");
            cudaFree(dlp);
        }
        {  // misaligned out pointer (BF16 out at an odd byte address)
            attn4j_tensor t = P.tout;
            t.data = static_cast<char*>(P.dout) + 1;
            expect("misaligned out", run(&P.tq, &P.cache, &P.table, &t, &P.tlse), INV,
                   "out: data pointer");
            ok_run("misaligned out");
        }
        {  // cache pages not 16-byte aligned (element-aligned: 8 bytes in)
            attn4j_paged_kv c = P.cache;
            c.k_data = static_cast<char*>(P.dk) + 8;
            c.k_size_bytes -= 8;
            c.num_pages -= 1;
            c.v_size_bytes = c.k_size_bytes;
            expect("cache.k_data not 16-aligned", run(&P.tq, &c, &P.table, &P.tout, &P.tlse), INV,
                   "cache: k_data pointer");
        }
        {  // wrong dtypes
            attn4j_tensor t = P.tq;
            t.dtype = ATTN4J_DTYPE_F16;
            expect("q dtype F16", run(&t, &P.cache, &P.table, &P.tout, &P.tlse), INV,
                   "q: dtype F16 does not match plan q_dtype BF16");
            attn4j_paged_kv c = P.cache;
            c.dtype = ATTN4J_DTYPE_F16;
            expect("cache dtype F16", run(&P.tq, &c, &P.table, &P.tout, &P.tlse), INV,
                   "cache: dtype F16 does not match plan kv_dtype BF16");
            attn4j_page_table tt = P.table;
            tt.indices.dtype = ATTN4J_DTYPE_F32;
            expect("indices dtype F32", run(&P.tq, &P.cache, &tt, &P.tout, &P.tlse), INV,
                   "table.indices: dtype F32");
            ok_run("wrong dtypes");
        }
        {  // shape and size
            attn4j_tensor t = P.tout;
            t.size_bytes -= 2;
            expect("out size_bytes short", run(&P.tq, &P.cache, &P.table, &t, &P.tlse), INV,
                   "out: size_bytes");
            attn4j_tensor q = P.tq;
            q.shape[1] = 16;
            expect("q heads 16", run(&q, &P.cache, &P.table, &P.tout, &P.tlse), INV,
                   "q: shape[1] is 16");
        }
        ok_run("all bad inputs");
        // Without LSE.
        P.poison();
        CHECK(attn4j_decode_run(plan, &P.tq, &P.cache, &P.table, &P.tout, nullptr) == ATTN4J_OK);
        attn4j_plan_destroy(plan);
    }

    // ---- what CUDA does not support in this release ----------------------------------------
    {
        Problem P(8, 2, 64, {5}, ATTN4J_DTYPE_F32, ATTN4J_DTYPE_F32, 7);
        attn4j_attention_desc d = P.desc();
        attn4j_plan* plan = nullptr;
        const attn4j_status UNS = ATTN4J_ERR_UNSUPPORTED;
        expect("prefill plan, q F32", attn4j_prefill_plan_create(ctx, &d, &plan), UNS,
               "CUDA prefill supports head_dim 64 or 128 with q and K/V both BF16 or both F16");
        attn4j_attention_desc d2 = d;
        d2.head_dim = 96;
        expect("decode head_dim 96", attn4j_decode_plan_create(ctx, &d2, &plan), UNS,
               "CUDA decode supports head_dim 64 or 128");
        d2 = d;
        d2.kv_dtype = ATTN4J_DTYPE_F32;
        expect("decode kv F32", attn4j_decode_plan_create(ctx, &d2, &plan), UNS,
               "kv_dtype BF16, F16, INT8, INT4 or INT2");
        CHECK(plan == nullptr);
        attn4j_tensor ai = dev_tensor(P.dindptr, ATTN4J_DTYPE_I32, {2});
        // Append runs on CUDA (test_cuda_append); here k and v have the query's head count.
        expect("append k heads", attn4j_paged_kv_append(ctx, &P.cache, &P.table, &ai, &P.tq, &P.tq),
               ATTN4J_ERR_INVALID_ARGUMENT, "k: shape[1]");
    }

    // A CPU plan given device tensors says so.
    {
        attn4j_context* cpu = a4j_test::make_context(ATTN4J_DEVICE_CPU, 1);
        Problem P(8, 2, 64, {40}, ATTN4J_DTYPE_F32, ATTN4J_DTYPE_F32, 8);
        attn4j_attention_desc d = P.desc();
        attn4j_plan* plan = nullptr;
        CHECK(attn4j_decode_plan_create(cpu, &d, &plan) == ATTN4J_OK);
        std::vector<float> hq(P.qf), ho(P.qf.size());
        attn4j_tensor tq = a4j_test::tensor(hq.data(), ATTN4J_DTYPE_F32, {1, 8, 64});
        attn4j_tensor to = a4j_test::tensor(ho.data(), ATTN4J_DTYPE_F32, {1, 8, 64});
        expect("CPU plan, device cache", attn4j_decode_run(plan, &tq, &P.cache, &P.table, &to, nullptr),
               ATTN4J_ERR_INVALID_ARGUMENT, "cache: device CUDA:0 but plan runs on CPU");
        expect("CPU plan, device q", attn4j_decode_run(plan, &P.tq, &P.cache, &P.table, &to, nullptr),
               ATTN4J_ERR_INVALID_ARGUMENT, "device CUDA");
        attn4j_plan_destroy(plan);
        attn4j_context_destroy(cpu);
    }

    CK(cudaDeviceSynchronize());
    attn4j_context_destroy(ctx);
    return a4j_test::finish("test_cuda_api");
}
