// Quantized decode through the C ABI on a CUDA context: an INT8 / INT4 / INT2 cache (Hadamard,
// quantized on the host by the CPU append) decoded by a CUDA plan must match the CPU plan on the
// same bytes, alone and as segment 0 of a three-segment run with two BF16 caches (a tiered cache's
// parts; sequences with no tokens in a segment); format mismatches are rejected with the argument
// named.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "a4j_test.h"
#include "attn4j.h"
#include "cuda_test.h"
#include "quant_test.h"

namespace {

attn4j_tensor on_device(attn4j_tensor t, void* data) {
    t.data = data;
    t.device_type = ATTN4J_DEVICE_CUDA;
    t.device_id = 0;
    return t;
}

uint16_t bf16(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return uint16_t(u >> 16);
}

// Segments: `cache` (quantized) plus two BF16 caches of random values, lengths per sequence
// {40, 0, 70} and {16, 5, 0}; out and LSE of the CUDA plan against the CPU plan's.
void check_segments(attn4j_context* cpu, attn4j_context* gpu, const attn4j_attention_desc& desc,
                    const attn4j_paged_kv& cache, const attn4j_page_table& table, const attn4j_paged_kv& gcache,
                    const attn4j_page_table& gtable, const std::vector<float>& q, const attn4j_tensor& gq,
                    const std::string& name, std::mt19937& rng) {
    const int KVH = desc.num_kv_heads, D = desc.head_dim, PS = desc.page_size, H = desc.num_qo_heads;
    const int batch = desc.max_batch_size;
    const int pages = 10;
    std::normal_distribution<float> nd;
    std::vector<uint16_t> kb(size_t(pages) * KVH * PS * D), vb(kb.size());
    for (size_t i = 0; i < kb.size(); ++i) {
        kb[i] = bf16(nd(rng));
        vb[i] = bf16(nd(rng));
    }
    const int64_t bytes = int64_t(kb.size()) * 2;
    const attn4j_paged_kv bcache = a4j_test::paged_kv(ATTN4J_DTYPE_BF16, KVH, D, PS, pages, kb.data(), vb.data(), bytes);
    // Segment 1: sequences of 40, 0, 70 tokens on pages 0-2 and 3-7; segment 2: 16, 5, 0 on pages 8, 9.
    std::vector<int32_t> ip1{0, 3, 3, 8}, ix1{2, 0, 1, 7, 3, 6, 4, 5}, l1{8, 0, 6};
    std::vector<int32_t> ip2{0, 1, 2, 2}, ix2{9, 8}, l2{16, 5, 0};
    auto host_table = [&](std::vector<int32_t>& ip, std::vector<int32_t>& ix, std::vector<int32_t>& l) {
        attn4j_page_table t{};
        t.struct_size = sizeof t;
        t.indptr = a4j_test::tensor(ip.data(), ATTN4J_DTYPE_I32, {batch + 1});
        t.indices = a4j_test::tensor(ix.data(), ATTN4J_DTYPE_I32, {int64_t(ix.size())});
        t.last_page_len = a4j_test::tensor(l.data(), ATTN4J_DTYPE_I32, {batch});
        return t;
    };
    const attn4j_page_table t1 = host_table(ip1, ix1, l1), t2 = host_table(ip2, ix2, l2);
    std::vector<float> out_cpu(q.size(), NAN), out_gpu(q.size(), NAN), lse_cpu(size_t(batch) * H, NAN),
        lse_gpu(lse_cpu.size(), NAN);
    attn4j_plan* cp = nullptr;
    CHECK_MSG(attn4j_decode_plan_create(cpu, &desc, &cp) == ATTN4J_OK, attn4j_last_error());
    attn4j_tensor qt = a4j_test::tensor(const_cast<float*>(q.data()), ATTN4J_DTYPE_F32, {batch, H, D});
    attn4j_tensor ot = a4j_test::tensor(out_cpu.data(), ATTN4J_DTYPE_F32, {batch, H, D});
    attn4j_tensor lt = a4j_test::tensor(lse_cpu.data(), ATTN4J_DTYPE_F32, {batch, H});
    const attn4j_paged_kv cs[3] = {cache, bcache, bcache};
    const attn4j_page_table ts[3] = {table, t1, t2};
    CHECK_MSG(attn4j_decode_run_segments(cp, &qt, 3, cs, ts, &ot, &lt) == ATTN4J_OK, attn4j_last_error());
    attn4j_plan_destroy(cp);

    uint16_t* dkb = a4j_test::to_device(kb);
    uint16_t* dvb = a4j_test::to_device(vb);
    std::vector<int32_t*> dev;
    auto device_table = [&](const attn4j_page_table& t, std::vector<int32_t>& ip, std::vector<int32_t>& ix,
                            std::vector<int32_t>& l) {
        attn4j_page_table g = t;
        dev.push_back(a4j_test::to_device(ip));
        g.indptr = on_device(t.indptr, dev.back());
        dev.push_back(a4j_test::to_device(ix));
        g.indices = on_device(t.indices, dev.back());
        dev.push_back(a4j_test::to_device(l));
        g.last_page_len = on_device(t.last_page_len, dev.back());
        return g;
    };
    attn4j_paged_kv gb = bcache;
    gb.device_type = ATTN4J_DEVICE_CUDA;
    gb.k_data = dkb;
    gb.v_data = dvb;
    const attn4j_paged_kv gcs[3] = {gcache, gb, gb};
    const attn4j_page_table gts[3] = {gtable, device_table(t1, ip1, ix1, l1), device_table(t2, ip2, ix2, l2)};
    float* dout = a4j_test::to_device(out_gpu);
    float* dlse = a4j_test::to_device(lse_gpu);
    attn4j_tensor go = on_device(ot, dout);
    attn4j_tensor gl = on_device(lt, dlse);
    attn4j_plan* gp = nullptr;
    CHECK_MSG(attn4j_decode_plan_create(gpu, &desc, &gp) == ATTN4J_OK, attn4j_last_error());
    CHECK_MSG(attn4j_decode_run_segments(gp, &gq, 3, gcs, gts, &go, &gl) == ATTN4J_OK,
              name + " segments: " + attn4j_last_error());
    CK(cudaMemcpy(out_gpu.data(), dout, out_gpu.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(lse_gpu.data(), dlse, lse_gpu.size() * 4, cudaMemcpyDeviceToHost));
    double num = 0, den = 0, lse_err = 0;
    for (size_t i = 0; i < q.size(); ++i) {
        num += double(out_gpu[i] - out_cpu[i]) * (out_gpu[i] - out_cpu[i]);
        den += double(out_cpu[i]) * out_cpu[i];
    }
    for (size_t i = 0; i < lse_cpu.size(); ++i) lse_err = std::max(lse_err, double(std::fabs(lse_gpu[i] - lse_cpu[i])));
    const double rel = std::isfinite(num) ? std::sqrt(num / den) : 1e9;
    std::printf("%s, 3 segments: CUDA vs CPU rel %.2e, LSE max diff %.2e\n", name.c_str(), rel, lse_err);
    CHECK_MSG(rel <= 1e-2, name + " segments: CUDA vs CPU rel " + std::to_string(rel));
    CHECK_MSG(std::isfinite(lse_err) && lse_err <= 1e-2, name + " segments: LSE diff " + std::to_string(lse_err));
    // A segment of a dtype no CUDA kernel pairs with this plan.
    attn4j_paged_kv f32 = gb;
    f32.dtype = ATTN4J_DTYPE_F32;
    f32.num_pages = pages / 2;
    const attn4j_paged_kv bad[3] = {gcache, gb, f32};
    CHECK(attn4j_decode_run_segments(gp, &gq, 3, bad, gts, &go, &gl) == ATTN4J_ERR_UNSUPPORTED);
    CHECK_MSG(std::string(attn4j_last_error()).find("caches[2]") != std::string::npos, attn4j_last_error());
    attn4j_plan_destroy(gp);
    for (void* p : {(void*)dkb, (void*)dvb, (void*)dout, (void*)dlse}) CK(cudaFree(p));
    for (int32_t* p : dev) CK(cudaFree(p));
}

void run_case(attn4j_context* cpu, attn4j_context* gpu, attn4j_dtype dtype, int group, uint32_t seed) {
    const int KVH = 8, H = 32, D = 128, PS = 16;
    const std::vector<int32_t> lens{3000, 17, 1200};
    const int batch = int(lens.size());
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd;
    int pages = 0;
    for (int32_t l : lens) pages += (l + PS - 1) / PS;
    const int64_t tb = attn4j_kv_token_bytes(dtype, D, group, ATTN4J_DTYPE_F32);
    const size_t bytes = size_t(pages) * KVH * PS * size_t(tb);
    std::vector<uint8_t> kc(bytes, 0), vc(bytes, 0);
    const attn4j_paged_kv cache = a4j_test::paged_kv(dtype, KVH, D, PS, pages, kc.data(), vc.data(), int64_t(bytes),
                                                     ATTN4J_DEVICE_CPU, group, ATTN4J_DTYPE_F32,
                                                     ATTN4J_ROTATION_HADAMARD);
    // Page table: shuffled pages.
    std::vector<int32_t> perm(static_cast<size_t>(pages));
    for (int i = 0; i < pages; ++i) perm[size_t(i)] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> indptr{0}, last, ap{0};
    for (int32_t l : lens) {
        indptr.push_back(indptr.back() + (l + PS - 1) / PS);
        last.push_back(l - ((l + PS - 1) / PS - 1) * PS);
        ap.push_back(ap.back() + l);
    }
    attn4j_page_table table{};
    table.struct_size = sizeof table;
    table.indptr = a4j_test::tensor(indptr.data(), ATTN4J_DTYPE_I32, {batch + 1});
    table.indices = a4j_test::tensor(perm.data(), ATTN4J_DTYPE_I32, {pages});
    table.last_page_len = a4j_test::tensor(last.data(), ATTN4J_DTYPE_I32, {batch});
    const int64_t nnz = ap.back();
    std::vector<float> k(size_t(nnz) * KVH * D), v(k.size());
    for (size_t i = 0; i < k.size(); ++i) {
        const bool outlier = i % D == 5;
        k[i] = outlier ? 8.f + 4.f * nd(rng) : nd(rng);
        v[i] = nd(rng);
    }
    attn4j_tensor kt = a4j_test::tensor(k.data(), ATTN4J_DTYPE_F32, {nnz, KVH, D});
    attn4j_tensor vt = a4j_test::tensor(v.data(), ATTN4J_DTYPE_F32, {nnz, KVH, D});
    attn4j_tensor apt = a4j_test::tensor(ap.data(), ATTN4J_DTYPE_I32, {batch + 1});
    CHECK_MSG(attn4j_paged_kv_append(cpu, &cache, &table, &apt, &kt, &vt) == ATTN4J_OK, attn4j_last_error());

    const attn4j_attention_desc desc = a4j_test::attention_desc(H, KVH, D, ATTN4J_DTYPE_F32, dtype, PS, batch);
    std::vector<float> q(size_t(batch) * H * D), out_cpu(q.size(), NAN), out_gpu(q.size(), NAN);
    for (float& x : q) x = nd(rng);
    // CPU reference run.
    attn4j_plan* cp = nullptr;
    CHECK_MSG(attn4j_decode_plan_create(cpu, &desc, &cp) == ATTN4J_OK, attn4j_last_error());
    attn4j_tensor qt = a4j_test::tensor(q.data(), ATTN4J_DTYPE_F32, {batch, H, D});
    attn4j_tensor oc = a4j_test::tensor(out_cpu.data(), ATTN4J_DTYPE_F32, {batch, H, D});
    CHECK_MSG(attn4j_decode_run(cp, &qt, &cache, &table, &oc, nullptr) == ATTN4J_OK, attn4j_last_error());
    attn4j_plan_destroy(cp);
    // The same bytes on the GPU.
    uint8_t* dk = a4j_test::to_device(kc);
    uint8_t* dv = a4j_test::to_device(vc);
    int32_t* dip = a4j_test::to_device(indptr);
    int32_t* dix = a4j_test::to_device(perm);
    int32_t* dl = a4j_test::to_device(last);
    float* dq = a4j_test::to_device(q);
    float* dout = a4j_test::to_device(out_gpu);
    attn4j_paged_kv gcache = cache;
    gcache.device_type = ATTN4J_DEVICE_CUDA;
    gcache.k_data = dk;
    gcache.v_data = dv;
    attn4j_page_table gtable = table;
    gtable.indptr = on_device(table.indptr, dip);
    gtable.indices = on_device(table.indices, dix);
    gtable.last_page_len = on_device(table.last_page_len, dl);
    attn4j_tensor gq = on_device(qt, dq);
    attn4j_tensor go = on_device(oc, dout);
    attn4j_plan* gp = nullptr;
    CHECK_MSG(attn4j_decode_plan_create(gpu, &desc, &gp) == ATTN4J_OK, attn4j_last_error());
    const std::string name = std::string("INT") + std::to_string(dtype == ATTN4J_DTYPE_INT8 ? 8 : dtype == ATTN4J_DTYPE_INT4 ? 4 : 2) +
                             " G" + std::to_string(group) + " seed " + std::to_string(seed);
    if (gp) {
        CHECK_MSG(attn4j_decode_run(gp, &gq, &gcache, &gtable, &go, nullptr) == ATTN4J_OK,
                  name + ": " + attn4j_last_error());
        CK(cudaMemcpy(out_gpu.data(), dout, out_gpu.size() * 4, cudaMemcpyDeviceToHost));
        double num = 0, den = 0;
        for (size_t i = 0; i < q.size(); ++i) {
            num += double(out_gpu[i] - out_cpu[i]) * (out_gpu[i] - out_cpu[i]);
            den += double(out_cpu[i]) * out_cpu[i];
        }
        const double rel = std::isfinite(num) ? std::sqrt(num / den) : 1e9;
        std::printf("%s: CUDA vs CPU rel %.2e\n", name.c_str(), rel);
        // Both kernels approximate the same dequantized attention within ~3e-3 each.
        CHECK_MSG(rel <= 1e-2, name + ": CUDA vs CPU rel " + std::to_string(rel));
        check_segments(cpu, gpu, desc, cache, table, gcache, gtable, q, gq, name, rng);
        // A cache of another format.
        attn4j_paged_kv other = gcache;
        other.dtype = dtype == ATTN4J_DTYPE_INT2 ? ATTN4J_DTYPE_INT4 : ATTN4J_DTYPE_INT2;
        // (INT4 over INT2-sized buffers fails the size check first; both name the cache.)
        CHECK(attn4j_decode_run(gp, &gq, &other, &gtable, &go, nullptr) == ATTN4J_ERR_INVALID_ARGUMENT);
        const std::string err = attn4j_last_error();
        CHECK_MSG(err.find("does not match plan kv_dtype") != std::string::npos ||
                      err.find("cache: k_size_bytes") != std::string::npos,
                  err);
        attn4j_plan_destroy(gp);
    }
    for (void* p : {(void*)dk, (void*)dv, (void*)dip, (void*)dix, (void*)dl, (void*)dq, (void*)dout}) CK(cudaFree(p));
}

}  // namespace

int main() {
    if (a4j_test::no_cuda_device("test_cuda_quant_api")) return 0;
    attn4j_context* cpu = a4j_test::make_context(ATTN4J_DEVICE_CPU, 2);
    attn4j_context* gpu = a4j_test::make_context(ATTN4J_DEVICE_CUDA, 2);
    uint32_t seed = 11;
    for (attn4j_dtype dt : {ATTN4J_DTYPE_INT8, ATTN4J_DTYPE_INT4, ATTN4J_DTYPE_INT2})
        for (int g : {32, 128}) run_case(cpu, gpu, dt, g, seed++);
    attn4j_context_destroy(gpu);
    attn4j_context_destroy(cpu);
    return a4j_test::finish("test_cuda_quant_api");
}
