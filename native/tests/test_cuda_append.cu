// attn4j_paged_kv_append on a CUDA context: pages written on the GPU must hold the same bytes as
// pages written by the CPU append from the same rows (float formats and quantize-on-write for
// INT8 / INT4 / INT2 with every rotation and meta dtype), and bad input must be a status naming
// the argument with the cache left as it was.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "a4j_test.h"
#include "attn4j.h"
#include "core/dtype.h"
#include "cuda_test.h"
#include "quant_test.h"

namespace {

attn4j_tensor on_device(attn4j_tensor t, void* data) {
    t.data = data;
    t.device_type = ATTN4J_DEVICE_CUDA;
    t.device_id = 0;
    return t;
}

struct Setup {
    attn4j_dtype dtype, meta, in;
    int group;
    attn4j_rotation rot;
    int d;
};

int g_cases = 0;

void run_case(attn4j_context* cpu, attn4j_context* gpu, const Setup& s, uint32_t seed) {
    const int KVH = 2, PS = 16;
    const std::vector<int32_t> lens{40, 7, 0, 33};  // sequence 2 appends nothing
    const int batch = int(lens.size());
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd;
    int pages = 0;
    for (int32_t l : lens) pages += (l + PS - 1) / PS;
    const int64_t tb = attn4j_kv_token_bytes(s.dtype, s.d, s.group, s.meta);
    const size_t bytes = size_t(pages + 1) * KVH * PS * size_t(tb);
    std::vector<uint8_t> kc(bytes, 0x5A), vc(bytes, 0xA5);
    attn4j_paged_kv cache = a4j_test::paged_kv(s.dtype, KVH, s.d, PS, pages + 1, kc.data(), vc.data(), int64_t(bytes));
    std::vector<float> kmat, vmat, clip{0.97f, 0.9f};
    float* dkmat = nullptr;
    float* dvmat = nullptr;
    float* dclip = nullptr;
    if (s.dtype >= 16) {
        cache.quant.group_size = s.group;
        cache.quant.meta_dtype = s.meta;
        cache.quant.k_rotation = cache.quant.v_rotation = s.rot;
        cache.quant.k_clip = clip.data();
        cache.quant.v_clip = clip.data();
        if (s.rot == ATTN4J_ROTATION_MATRIX) {
            for (int h = 0; h < KVH; ++h) {
                auto a = a4j_test::random_orthogonal(s.d, rng), b = a4j_test::random_orthogonal(s.d, rng);
                kmat.insert(kmat.end(), a.begin(), a.end());
                vmat.insert(vmat.end(), b.begin(), b.end());
            }
            cache.quant.k_matrix = kmat.data();
            cache.quant.v_matrix = vmat.data();
            dkmat = a4j_test::to_device(kmat);
            dvmat = a4j_test::to_device(vmat);
        }
    }
    // Table: pages in shuffled order, a sequence without pages.
    std::vector<int32_t> perm(static_cast<size_t>(pages));
    for (int i = 0; i < pages; ++i) perm[size_t(i)] = i + 1;
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> indptr{0}, last, ap{0};
    for (int32_t l : lens) {
        const int np = (l + PS - 1) / PS;
        indptr.push_back(indptr.back() + np);
        last.push_back(l == 0 ? 0 : l - (np - 1) * PS);
        ap.push_back(ap.back() + l);
    }
    attn4j_page_table table{};
    table.struct_size = sizeof table;
    table.indptr = a4j_test::tensor(indptr.data(), ATTN4J_DTYPE_I32, {batch + 1});
    table.indices = a4j_test::tensor(perm.data(), ATTN4J_DTYPE_I32, {pages});
    table.last_page_len = a4j_test::tensor(last.data(), ATTN4J_DTYPE_I32, {batch});
    const int64_t nnz = ap.back();
    // Rows with outlier channels, strided (row stride padded by 8 elements).
    const int64_t rs = int64_t(KVH) * s.d + 8;
    const int es = s.in == ATTN4J_DTYPE_F32 ? 4 : 2;
    std::vector<uint8_t> kraw(size_t(nnz * rs) * es), vraw(kraw.size());
    for (int64_t i = 0; i < nnz * rs; ++i) {
        const float kx = (i % s.d == 3) ? 9.f + 3.f * nd(rng) : nd(rng), vx = nd(rng);
        if (s.in == ATTN4J_DTYPE_F32) {
            std::memcpy(&kraw[size_t(i) * 4], &kx, 4);
            std::memcpy(&vraw[size_t(i) * 4], &vx, 4);
        } else {
            const uint16_t kh = s.in == ATTN4J_DTYPE_BF16 ? attn4j::f32_to_bf16(kx) : attn4j::f32_to_f16(kx);
            const uint16_t vh = s.in == ATTN4J_DTYPE_BF16 ? attn4j::f32_to_bf16(vx) : attn4j::f32_to_f16(vx);
            std::memcpy(&kraw[size_t(i) * 2], &kh, 2);
            std::memcpy(&vraw[size_t(i) * 2], &vh, 2);
        }
    }
    attn4j_tensor kt = a4j_test::tensor(kraw.data(), s.in, {nnz, KVH, s.d});
    kt.strides[0] = rs;
    kt.size_bytes = int64_t(kraw.size());
    attn4j_tensor vt = kt;
    vt.data = vraw.data();
    attn4j_tensor apt = a4j_test::tensor(ap.data(), ATTN4J_DTYPE_I32, {batch + 1});
    const std::vector<uint8_t> k0 = kc, v0 = vc;
    CHECK_MSG(attn4j_paged_kv_append(cpu, &cache, &table, &apt, &kt, &vt) == ATTN4J_OK, attn4j_last_error());

    // The same on the GPU, starting from the same poisoned bytes.
    uint8_t* dk = a4j_test::to_device(k0);
    uint8_t* dv = a4j_test::to_device(v0);
    int32_t* dip = a4j_test::to_device(indptr);
    int32_t* dix = a4j_test::to_device(perm);
    int32_t* dl = a4j_test::to_device(last);
    int32_t* dap = a4j_test::to_device(ap);
    uint8_t* dkr = a4j_test::to_device(kraw);
    uint8_t* dvr = a4j_test::to_device(vraw);
    attn4j_paged_kv g = cache;
    g.device_type = ATTN4J_DEVICE_CUDA;
    g.k_data = dk;
    g.v_data = dv;
    if (dkmat) {
        g.quant.k_matrix = dkmat;
        g.quant.v_matrix = dvmat;
    }
    attn4j_page_table gt = table;
    gt.indptr = on_device(table.indptr, dip);
    gt.indices = on_device(table.indices, dix);
    gt.last_page_len = on_device(table.last_page_len, dl);
    attn4j_tensor gk = on_device(kt, dkr), gv = on_device(vt, dvr), gap = on_device(apt, dap);
    char name[128];
    std::snprintf(name, sizeof name, "dtype %d G%d meta %d rot %d d%d in %d seed %u", int(s.dtype), s.group,
                  int(s.meta), int(s.rot), s.d, int(s.in), seed);
    ++g_cases;
    CHECK_MSG(attn4j_paged_kv_append(gpu, &g, &gt, &gap, &gk, &gv) == ATTN4J_OK,
              std::string(name) + ": " + attn4j_last_error());
    std::vector<uint8_t> gk_back(bytes), gv_back(bytes);
    CK(cudaMemcpy(gk_back.data(), dk, bytes, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(gv_back.data(), dv, bytes, cudaMemcpyDeviceToHost));
    size_t diff = 0;
    for (size_t i = 0; i < bytes; ++i) diff += (gk_back[i] != kc[i]) + (gv_back[i] != vc[i]);
    CHECK_MSG(diff == 0, std::string(name) + ": " + std::to_string(diff) + " bytes differ from the CPU append");

    if (s.dtype == ATTN4J_DTYPE_INT4 && s.rot == ATTN4J_ROTATION_HADAMARD) {  // bad inputs, once
        const attn4j_status INV = ATTN4J_ERR_INVALID_ARGUMENT;
        // NaN in v: rejected before anything is written.
        std::vector<uint8_t> bad = vraw;
        const float nan = NAN;
        if (s.in == ATTN4J_DTYPE_F32) std::memcpy(&bad[size_t(5 * rs + 2) * 4], &nan, 4);
        else {
            const uint16_t h = s.in == ATTN4J_DTYPE_BF16 ? 0x7FC0 : 0x7E00;
            std::memcpy(&bad[size_t(5 * rs + 2) * 2], &h, 2);
        }
        uint8_t* dbad = a4j_test::to_device(bad);
        attn4j_tensor gbad = on_device(vt, dbad);
        const std::vector<uint8_t> before = gk_back;
        CHECK(attn4j_paged_kv_append(gpu, &g, &gt, &gap, &gk, &gbad) == INV);
        CHECK_MSG(std::string(attn4j_last_error()).find("v: contains a non-finite value") != std::string::npos,
                  attn4j_last_error());
        CK(cudaMemcpy(gk_back.data(), dk, bytes, cudaMemcpyDeviceToHost));
        CHECK_MSG(gk_back == before, "NaN append wrote to the cache");
        // Host k to a CUDA context.
        CHECK(attn4j_paged_kv_append(gpu, &g, &gt, &gap, &kt, &gv) == INV);
        CHECK_MSG(std::string(attn4j_last_error()).find("k: device CPU") != std::string::npos, attn4j_last_error());
        // Page id out of range (device contents).
        std::vector<int32_t> badix = perm;
        badix[0] = pages + 5;
        int32_t* dbadix = a4j_test::to_device(badix);
        attn4j_page_table bt = gt;
        bt.indices.data = dbadix;
        CHECK(attn4j_paged_kv_append(gpu, &g, &bt, &gap, &gk, &gv) == INV);
        CHECK_MSG(std::string(attn4j_last_error()).find("table.indices[0]") != std::string::npos, attn4j_last_error());
        // Appending more tokens than the table gives sequence 1.
        std::vector<int32_t> big = ap;
        for (size_t i = 2; i < big.size(); ++i) big[i] += 10;
        int32_t* dbig = a4j_test::to_device(big);
        attn4j_tensor gbig = on_device(apt, dbig);
        CHECK(attn4j_paged_kv_append(gpu, &g, &gt, &gbig, &gk, &gv) == INV);
        CHECK_MSG(std::string(attn4j_last_error()).find("append_indptr: sequence 1 appends") != std::string::npos,
                  attn4j_last_error());
        // A correct append still works afterwards.
        CHECK_MSG(attn4j_paged_kv_append(gpu, &g, &gt, &gap, &gk, &gv) == ATTN4J_OK, attn4j_last_error());
        for (void* p : {(void*)dbad, (void*)dbadix, (void*)dbig}) CK(cudaFree(p));
    }
    for (void* p : {(void*)dk, (void*)dv, (void*)dip, (void*)dix, (void*)dl, (void*)dap, (void*)dkr, (void*)dvr,
                    (void*)dkmat, (void*)dvmat, (void*)dclip})
        if (p) CK(cudaFree(p));
}

}  // namespace

int main() {
    if (a4j_test::no_cuda_device("test_cuda_append")) return 0;
    attn4j_context* cpu = a4j_test::make_context(ATTN4J_DEVICE_CPU, 2);
    attn4j_context* gpu = a4j_test::make_context(ATTN4J_DEVICE_CUDA, 2);
    uint32_t seed = 100;
    for (attn4j_dtype f : {ATTN4J_DTYPE_BF16, ATTN4J_DTYPE_F16})
        for (attn4j_dtype in : {ATTN4J_DTYPE_F32, ATTN4J_DTYPE_BF16})
            run_case(cpu, gpu, Setup{f, ATTN4J_DTYPE_F32, in, 0, ATTN4J_ROTATION_NONE, 128}, seed++);
    for (attn4j_dtype f : {ATTN4J_DTYPE_INT8, ATTN4J_DTYPE_INT4, ATTN4J_DTYPE_INT2})
        for (int g : {32, 64, 128})
            for (attn4j_rotation r : {ATTN4J_ROTATION_NONE, ATTN4J_ROTATION_HADAMARD, ATTN4J_ROTATION_MATRIX}) {
                const attn4j_dtype meta = (seed % 2) ? ATTN4J_DTYPE_F16 : ATTN4J_DTYPE_F32;
                const attn4j_dtype in = (seed % 3) ? ATTN4J_DTYPE_BF16 : ATTN4J_DTYPE_F32;
                const int d = (g == 128 || seed % 2) ? 128 : 64;
                run_case(cpu, gpu, Setup{f, meta, in, g, r, d}, seed++);
            }
    std::printf("test_cuda_append: %d cases compared byte for byte with the CPU append\n", g_cases);
    attn4j_context_destroy(gpu);
    attn4j_context_destroy(cpu);
    return a4j_test::finish("test_cuda_append");
}
