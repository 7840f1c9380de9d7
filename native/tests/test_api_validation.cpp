// The bad-input matrix through the C ABI: every rejected input returns the expected status, the
// thread's last error names the offending argument, nothing crashes, and valid calls still work
// afterwards (and a rejected append writes nothing).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "a4j_test.h"
#include "attn4j.h"
#include "core/dtype.h"

using a4j_test::tensor;

namespace {

constexpr int H = 8, KVH = 2, D = 64, PS = 16, PAGES = 16;
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

int g_cases = 0;

void expect(const char* name, attn4j_status got, attn4j_status want, const char* needle) {
    ++g_cases;
    const std::string err = attn4j_last_error();
    CHECK_MSG(got == want, std::string(name) + ": status " + attn4j_status_name(got) + ", expected " +
                               attn4j_status_name(want) + " (last error: " + err + ")");
    if (got != ATTN4J_OK && needle)
        CHECK_MSG(err.find(needle) != std::string::npos,
                  std::string(name) + ": last error \"" + err + "\" does not contain \"" + needle + "\"");
}

struct Fixture {
    std::mt19937 rng{1234};
    attn4j_context* ctx = nullptr;
    // cache (BF16)
    std::vector<uint16_t> kc = std::vector<uint16_t>(size_t(PAGES) * KVH * PS * D);
    std::vector<uint16_t> vc = std::vector<uint16_t>(size_t(PAGES) * KVH * PS * D);
    attn4j_paged_kv cache{};
    // table: seq 0 = pages 0,1,2 (40 tokens), seq 1 = page 3 (5 tokens)
    std::vector<int32_t> indptr{0, 3, 4}, indices{0, 1, 2, 3}, last{8, 5};
    attn4j_page_table table{};
    // decode
    attn4j_plan* dplan = nullptr;
    std::vector<float> q = std::vector<float>(2 * H * D), out = std::vector<float>(2 * H * D),
                       lse = std::vector<float>(2 * H);
    attn4j_tensor tq{}, tout{}, tlse{};
    // prefill (contiguous)
    attn4j_plan* pplan = nullptr;
    std::vector<float> pq = std::vector<float>(10 * H * D), pk = std::vector<float>(21 * KVH * D),
                       pv = std::vector<float>(21 * KVH * D), pout = std::vector<float>(10 * H * D),
                       plse = std::vector<float>(10 * H);
    std::vector<int32_t> qo{0, 4, 10}, kvi{0, 8, 21};
    attn4j_tensor tpq{}, tpk{}, tpv{}, tpout{}, tplse{}, tqo{}, tkvi{};
    // merge
    std::vector<float> mv = std::vector<float>(3 * 2 * H * D), ms = std::vector<float>(3 * 2 * H),
                       mo = std::vector<float>(3 * H * D), mso = std::vector<float>(3 * H);
    attn4j_tensor tmv{}, tms{}, tmo{}, tmso{};

    void fill(std::vector<float>& v) {
        std::normal_distribution<float> n(0.f, 1.f);
        for (float& x : v) x = n(rng);
    }

    attn4j_page_table make_table(std::vector<int32_t>& ip, std::vector<int32_t>& ix,
                                 std::vector<int32_t>& lp) {
        attn4j_page_table t{};
        t.struct_size = sizeof t;
        t.indptr = tensor(ip.data(), ATTN4J_DTYPE_I32, {int64_t(ip.size())});
        t.indices = tensor(ix.data(), ATTN4J_DTYPE_I32, {int64_t(ix.size())});
        t.last_page_len = tensor(lp.data(), ATTN4J_DTYPE_I32, {int64_t(lp.size())});
        return t;
    }

    Fixture() {
        attn4j_context_options o{};
        o.struct_size = sizeof o;
        o.device_type = ATTN4J_DEVICE_CPU;
        o.num_threads = 2;
        CHECK(attn4j_context_create(&o, &ctx) == ATTN4J_OK);
        cache = a4j_test::paged_kv(ATTN4J_DTYPE_BF16, KVH, D, PS, PAGES, kc.data(), vc.data(), int64_t(kc.size()) * 2);
        table = make_table(indptr, indices, last);
        // fill the cache through append: 40 + 5 tokens
        std::vector<float> k(45 * KVH * D), v(45 * KVH * D);
        fill(k);
        fill(v);
        std::vector<int32_t> ap{0, 40, 45};
        attn4j_tensor tap = tensor(ap.data(), ATTN4J_DTYPE_I32, {3});
        attn4j_tensor tk = tensor(k.data(), ATTN4J_DTYPE_F32, {45, KVH, D});
        attn4j_tensor tv = tensor(v.data(), ATTN4J_DTYPE_F32, {45, KVH, D});
        CHECK(attn4j_paged_kv_append(ctx, &cache, &table, &tap, &tk, &tv) == ATTN4J_OK);

        attn4j_attention_desc d = desc(false);
        CHECK(attn4j_decode_plan_create(ctx, &d, &dplan) == ATTN4J_OK);
        fill(q);
        tq = tensor(q.data(), ATTN4J_DTYPE_F32, {2, H, D});
        tout = tensor(out.data(), ATTN4J_DTYPE_F32, {2, H, D});
        tlse = tensor(lse.data(), ATTN4J_DTYPE_F32, {2, H});

        attn4j_attention_desc pd = desc(true);
        pd.out_dtype = pd.kv_dtype = ATTN4J_DTYPE_F32;
        CHECK(attn4j_prefill_plan_create(ctx, &pd, &pplan) == ATTN4J_OK);
        fill(pq);
        fill(pk);
        fill(pv);
        tpq = tensor(pq.data(), ATTN4J_DTYPE_F32, {10, H, D});
        tpk = tensor(pk.data(), ATTN4J_DTYPE_F32, {21, KVH, D});
        tpv = tensor(pv.data(), ATTN4J_DTYPE_F32, {21, KVH, D});
        tpout = tensor(pout.data(), ATTN4J_DTYPE_F32, {10, H, D});
        tplse = tensor(plse.data(), ATTN4J_DTYPE_F32, {10, H});
        tqo = tensor(qo.data(), ATTN4J_DTYPE_I32, {3});
        tkvi = tensor(kvi.data(), ATTN4J_DTYPE_I32, {3});

        fill(mv);
        fill(ms);
        tmv = tensor(mv.data(), ATTN4J_DTYPE_F32, {3, 2, H, D});
        tms = tensor(ms.data(), ATTN4J_DTYPE_F32, {3, 2, H});
        tmo = tensor(mo.data(), ATTN4J_DTYPE_F32, {3, H, D});
        tmso = tensor(mso.data(), ATTN4J_DTYPE_F32, {3, H});
    }
    ~Fixture() {
        attn4j_plan_destroy(dplan);
        attn4j_plan_destroy(pplan);
        attn4j_context_destroy(ctx);
    }

    static attn4j_attention_desc desc(bool causal) {
        return a4j_test::attention_desc(H, KVH, D, ATTN4J_DTYPE_F32, ATTN4J_DTYPE_BF16, PS, 4, causal, 0.125f);
    }

    attn4j_status decode(const attn4j_tensor* q_, const attn4j_paged_kv* c_,
                         const attn4j_page_table* t_, attn4j_tensor* o_, attn4j_tensor* l_) {
        return attn4j_decode_run(dplan, q_, c_, t_, o_, l_);
    }
    attn4j_status decode_ok() { return decode(&tq, &cache, &table, &tout, &tlse); }
};

using T = attn4j_tensor;

}  // namespace

int main() {
    Fixture f;
    CHECK(f.decode_ok() == ATTN4J_OK);
    const attn4j_status INV = ATTN4J_ERR_INVALID_ARGUMENT, UNS = ATTN4J_ERR_UNSUPPORTED;

    // A case: mutate a copy of a valid tensor and run decode with it in place of q / out / lse.
    auto dq = [&](const char* name, std::function<void(T&)> m, attn4j_status want, const char* needle) {
        T t = f.tq;
        m(t);
        expect(name, f.decode(&t, &f.cache, &f.table, &f.tout, &f.tlse), want, needle);
    };
    auto dout = [&](const char* name, std::function<void(T&)> m, const char* needle) {
        T t = f.tout;
        m(t);
        expect(name, f.decode(&f.tq, &f.cache, &f.table, &t, &f.tlse), INV, needle);
    };
    auto dlse = [&](const char* name, std::function<void(T&)> m, const char* needle) {
        T t = f.tlse;
        m(t);
        expect(name, f.decode(&f.tq, &f.cache, &f.table, &f.tout, &t), INV, needle);
    };

    // ---- tensor descriptors (through q) ----
    expect("q null", f.decode(nullptr, &f.cache, &f.table, &f.tout, &f.tlse), INV, "q: is NULL");
    dq("q rank 0", [](T& t) { t.rank = 0; }, INV, "q: rank is 0");
    dq("q rank 5", [](T& t) { t.rank = 5; }, INV, "q: rank is 5");
    dq("q rank 2", [](T& t) { t.rank = 2; t.shape[1] = H * D; t.strides[1] = 1; }, INV, "q: rank is 2");
    dq("q negative dim", [](T& t) { t.shape[1] = -1; }, INV, "q: shape[1] is -1");
    dq("q zero stride", [](T& t) { t.strides[0] = 0; }, INV, "q: strides[0] is 0");
    dq("q negative stride", [](T& t) { t.strides[1] = -64; }, INV, "q: strides[1] is -64");
    dq("q last stride 2", [](T& t) { t.strides[2] = 2; }, INV, "q: strides[2]");
    dq("q size_bytes small", [](T& t) { t.size_bytes -= 4; }, INV, "q: size_bytes");
    dq("q size_bytes for strides", [](T& t) { t.strides[0] *= 2; }, INV, "q: size_bytes");
    dq("q null data", [](T& t) { t.data = nullptr; }, INV, "q: data is NULL");
    dq("q misaligned", [](T& t) { t.data = static_cast<char*>(t.data) + 2; t.size_bytes -= 4; },
       INV, "q: data pointer");
    dq("q dtype unknown", [](T& t) { t.dtype = 7; }, INV, "q: dtype 7");
    dq("q dtype quantized", [](T& t) { t.dtype = 16; }, UNS, "q: dtype 16");
    dq("q dtype reserved", [](T& t) { t.dtype = 99; }, UNS, "q: dtype 99");
    dq("q dtype BF16", [](T& t) { t.dtype = ATTN4J_DTYPE_BF16; }, INV,
       "q: dtype BF16 does not match plan q_dtype F32");
    dq("q dtype I32", [](T& t) { t.dtype = ATTN4J_DTYPE_I32; }, INV, "q: dtype I32");
    dq("q device CUDA", [](T& t) { t.device_type = ATTN4J_DEVICE_CUDA; }, INV,
       "q: device CUDA but plan runs on CPU");
    dq("q device type 9", [](T& t) { t.device_type = 9; }, INV, "q: device_type 9");
    dq("q batch 3", [](T& t) { t.shape[0] = 1; }, INV, "q: shape[0] is 1, expected table batch 2");
    dq("q heads", [](T& t) { t.shape[1] = H / 2; }, INV, "q: shape[1] is 4, expected plan num_qo_heads 8");
    dq("q head_dim", [](T& t) { t.shape[2] = D / 2; t.strides[1] = D / 2; }, INV, "q: shape[2] is 32");
    {
        std::vector<float> bad = f.q;
        for (float v : {kNaN, kInf, -kInf}) {
            bad[size_t(1 * H * D + 2 * D + 5)] = v;
            T t = f.tq;
            t.data = bad.data();
            expect("q non-finite", f.decode(&t, &f.cache, &f.table, &f.tout, &f.tlse), INV,
                   "q: contains a non-finite value");
            expect("q non-finite position", ATTN4J_ERR_INVALID_ARGUMENT, INV, "at row 1 head 2");
        }
    }
    // ---- out / lse ----
    expect("out null", f.decode(&f.tq, &f.cache, &f.table, nullptr, &f.tlse), INV, "out: is NULL");
    dout("out dtype", [](T& t) { t.dtype = ATTN4J_DTYPE_BF16; }, "out: dtype BF16 does not match plan out_dtype F32");
    dout("out shape", [](T& t) { t.shape[2] = D - 16; }, "out: shape[2]");
    dout("out rank", [](T& t) { t.rank = 2; t.shape[1] = H * D; t.strides[1] = 1; }, "out: rank");
    dout("out device", [](T& t) { t.device_type = ATTN4J_DEVICE_CUDA; }, "out: device CUDA but plan runs on CPU");
    dout("out size", [](T& t) { t.size_bytes = 8; }, "out: size_bytes");
    dlse("lse rank 3", [](T& t) { t.rank = 3; t.shape[2] = 1; t.strides[2] = 1; }, "lse: rank");
    dlse("lse dtype", [](T& t) { t.dtype = ATTN4J_DTYPE_F16; }, "lse: dtype F16");
    dlse("lse shape", [](T& t) { t.shape[1] = H / 2; }, "lse: shape[1]");
    CHECK(f.decode(&f.tq, &f.cache, &f.table, &f.tout, nullptr) == ATTN4J_OK);  // lse optional

    // ---- page table ----
    auto dtab = [&](const char* name, std::vector<int32_t> ip, std::vector<int32_t> ix,
                    std::vector<int32_t> lp, const char* needle) {
        attn4j_page_table t = f.make_table(ip, ix, lp);
        expect(name, f.decode(&f.tq, &f.cache, &t, &f.tout, &f.tlse), INV, needle);
    };
    dtab("page id out of range", {0, 3, 4}, {0, 1, PAGES, 3}, {8, 5},
         "table.indices[2]: page id 16 out of range [0, 16)");
    dtab("page id negative", {0, 3, 4}, {0, -1, 2, 3}, {8, 5}, "table.indices[1]: page id -1");
    dtab("indptr decreasing", {0, 3, 2}, {0, 1, 2, 3}, {8, 5}, "table.indptr: decreasing");
    dtab("indptr[0] != 0", {1, 3, 4}, {0, 1, 2, 3}, {8, 5}, "table.indptr: indptr[0] is 1");
    dtab("indptr end > indices", {0, 3, 5}, {0, 1, 2, 3}, {8, 5}, "table.indptr: indptr[2] is 5");
    dtab("last_page_len 0", {0, 3, 4}, {0, 1, 2, 3}, {0, 5}, "table.last_page_len[0]: 0 out of range");
    dtab("last_page_len > ps", {0, 3, 4}, {0, 1, 2, 3}, {8, PS + 1}, "table.last_page_len[1]: 17");
    dtab("last_page_len negative", {0, 3, 4}, {0, 1, 2, 3}, {8, -3}, "table.last_page_len[1]: -3");
    dtab("empty sequence", {0, 3, 3}, {0, 1, 2}, {8, 1}, "table: sequence 1 is empty");
    dtab("last_page_len count", {0, 3, 4}, {0, 1, 2, 3}, {8}, "table.last_page_len: has 1 elements");
    dtab("batch 0", {0}, {0}, {}, "table.indptr: has 1 element");
    dtab("batch > max", {0, 1, 2, 3, 4, 5}, {0, 1, 2, 3, 4}, {1, 1, 1, 1, 1},
         "table: batch 5 exceeds the plan's max_batch_size 4");
    expect("table null", f.decode(&f.tq, &f.cache, nullptr, &f.tout, &f.tlse), INV, "table: is NULL");
    {
        attn4j_page_table t = f.table;
        t.struct_size = 8;
        expect("table struct_size", f.decode(&f.tq, &f.cache, &t, &f.tout, &f.tlse), INV, "table: struct_size is 8");
        t = f.table;
        t.indptr.dtype = ATTN4J_DTYPE_F32;
        expect("table indptr F32", f.decode(&f.tq, &f.cache, &t, &f.tout, &f.tlse), INV, "table.indptr: dtype F32");
        t = f.table;
        t.indices.data = nullptr;
        expect("table indices null", f.decode(&f.tq, &f.cache, &t, &f.tout, &f.tlse), INV, "table.indices: data is NULL");
        t = f.table;
        t.indptr.device_type = ATTN4J_DEVICE_CUDA;
        expect("table indptr on CUDA", f.decode(&f.tq, &f.cache, &t, &f.tout, &f.tlse), INV, "table.indptr: device CUDA");
    }

    // ---- cache ----
    auto dcache = [&](const char* name, std::function<void(attn4j_paged_kv&)> m, attn4j_status want,
                      const char* needle) {
        attn4j_paged_kv c = f.cache;
        m(c);
        expect(name, f.decode(&f.tq, &c, &f.table, &f.tout, &f.tlse), want, needle);
    };
    expect("cache null", f.decode(&f.tq, nullptr, &f.table, &f.tout, &f.tlse), INV, "cache: is NULL");
    dcache("cache struct_size", [](attn4j_paged_kv& c) { c.struct_size = 4; }, INV, "cache: struct_size is 4");
    dcache("cache dtype", [](attn4j_paged_kv& c) { c.dtype = ATTN4J_DTYPE_F16; }, INV,
           "cache: dtype F16 does not match plan kv_dtype BF16");
    dcache("cache dtype quantized", [](attn4j_paged_kv& c) { c.dtype = ATTN4J_DTYPE_INT4; }, INV,
           "cache: quant.group_size is 0");
    dcache("cache dtype 20", [](attn4j_paged_kv& c) { c.dtype = 20; }, INV, "cache: dtype UNKNOWN (20)");
    dcache("cache dtype I32", [](attn4j_paged_kv& c) { c.dtype = ATTN4J_DTYPE_I32; }, INV, "cache: dtype I32");
    dcache("cache heads", [](attn4j_paged_kv& c) { c.num_kv_heads = 1; }, INV, "cache: num_kv_heads 1 does not match");
    dcache("cache head_dim", [](attn4j_paged_kv& c) { c.head_dim = 32; }, INV, "cache: head_dim 32 does not match");
    dcache("cache page_size", [](attn4j_paged_kv& c) { c.page_size = 8; }, INV, "cache: page_size 8 does not match");
    dcache("cache num_pages 0", [](attn4j_paged_kv& c) { c.num_pages = 0; }, INV, "cache: num_pages is 0");
    dcache("cache k null", [](attn4j_paged_kv& c) { c.k_data = nullptr; }, INV, "cache: k_data is NULL");
    dcache("cache v small", [](attn4j_paged_kv& c) { c.v_size_bytes -= 2; }, INV, "cache: v_size_bytes");
    dcache("cache k misaligned", [](attn4j_paged_kv& c) { c.k_data = static_cast<char*>(c.k_data) + 1; },
           INV, "cache: k_data pointer");
    dcache("cache device", [](attn4j_paged_kv& c) { c.device_type = ATTN4J_DEVICE_CUDA; }, INV,
           "cache: device CUDA:0 but plan runs on CPU");
    dcache("cache k == v", [](attn4j_paged_kv& c) { c.v_data = c.k_data; }, INV, "cache: k_data and v_data");
    {
        attn4j_paged_kv c = f.cache;
        c.num_pages = 2;  // page 2, 3 now out of range
        c.k_size_bytes = c.v_size_bytes = int64_t(2) * KVH * PS * D * 2;
        expect("page id vs small cache", f.decode(&f.tq, &c, &f.table, &f.tout, &f.tlse), INV,
               "table.indices[2]: page id 2 out of range [0, 2)");
    }

    // ---- plans ----
    expect("decode plan null", attn4j_decode_run(nullptr, &f.tq, &f.cache, &f.table, &f.tout, &f.tlse), INV, "plan: is NULL");
    expect("decode with prefill plan", attn4j_decode_run(f.pplan, &f.tq, &f.cache, &f.table, &f.tout, &f.tlse),
           INV, "plan: is a prefill plan");
    expect("prefill with decode plan",
           attn4j_prefill_run(f.dplan, &f.tpq, &f.tqo, &f.tpk, &f.tpv, &f.tkvi, &f.tpout, &f.tplse), INV,
           "plan: is a decode plan");
    auto mkplan = [&](const char* name, std::function<void(attn4j_attention_desc&)> m, bool decode,
                      attn4j_status want, const char* needle) {
        attn4j_attention_desc d = Fixture::desc(false);
        m(d);
        attn4j_plan* p = reinterpret_cast<attn4j_plan*>(&d);  // must be reset to NULL on failure
        attn4j_status s = decode ? attn4j_decode_plan_create(f.ctx, &d, &p) : attn4j_prefill_plan_create(f.ctx, &d, &p);
        expect(name, s, want, needle);
        if (s != ATTN4J_OK) CHECK_MSG(p == nullptr, name);
        attn4j_plan_destroy(s == ATTN4J_OK ? p : nullptr);
    };
    using AD = attn4j_attention_desc;
    mkplan("desc struct_size", [](AD& d) { d.struct_size = 4; }, true, INV, "desc: struct_size is 4");
    mkplan("desc qo heads 0", [](AD& d) { d.num_qo_heads = 0; }, true, INV, "desc.num_qo_heads: 0");
    mkplan("desc kv heads 0", [](AD& d) { d.num_kv_heads = 0; }, true, INV, "desc.num_kv_heads: 0");
    mkplan("desc group", [](AD& d) { d.num_qo_heads = 6; d.num_kv_heads = 4; }, true, INV,
           "desc.num_qo_heads: 6 is not a multiple of num_kv_heads 4");
    mkplan("desc head_dim 0", [](AD& d) { d.head_dim = 0; }, true, INV, "desc.head_dim: 0");
    mkplan("desc head_dim 72", [](AD& d) { d.head_dim = 72; }, true, UNS, "desc.head_dim: 72");
    mkplan("desc head_dim 512", [](AD& d) { d.head_dim = 512; }, false, UNS, "desc.head_dim: 512");
    mkplan("desc q_dtype I32", [](AD& d) { d.q_dtype = ATTN4J_DTYPE_I32; }, true, INV, "desc.q_dtype: I32");
    mkplan("desc kv_dtype 20", [](AD& d) { d.kv_dtype = 20; }, true, INV, "desc.kv_dtype: UNKNOWN (20)");
    mkplan("desc out_dtype INT2", [](AD& d) { d.out_dtype = ATTN4J_DTYPE_INT2; }, true, INV,
           "desc.out_dtype: INT2 is a quantized KV cache format");
    mkplan("desc out_dtype 0", [](AD& d) { d.out_dtype = 0; }, false, INV, "desc.out_dtype");
    mkplan("desc causal 2", [](AD& d) { d.causal = 2; }, false, INV, "desc.causal: 2");
    mkplan("desc scale negative", [](AD& d) { d.sm_scale = -1.f; }, true, INV, "desc.sm_scale");
    mkplan("desc scale inf", [](AD& d) { d.sm_scale = kInf; }, true, INV, "desc.sm_scale");
    mkplan("desc scale nan", [](AD& d) { d.sm_scale = kNaN; }, false, INV, "desc.sm_scale");
    mkplan("desc decode page 0", [](AD& d) { d.page_size = 0; }, true, INV, "desc.page_size: 0");
    mkplan("desc prefill page -1", [](AD& d) { d.page_size = -1; }, false, INV, "desc.page_size: -1");
    mkplan("desc max batch 0", [](AD& d) { d.max_batch_size = 0; }, true, INV, "desc.max_batch_size: 0");
    {
        AD d = Fixture::desc(false);
        attn4j_plan* p = nullptr;
        expect("desc null", attn4j_decode_plan_create(f.ctx, nullptr, &p), INV, "desc: is NULL");
        expect("ctx null", attn4j_decode_plan_create(nullptr, &d, &p), INV, "ctx: is NULL");
        expect("out_plan null", attn4j_prefill_plan_create(f.ctx, &d, nullptr), INV, "out_plan: is NULL");
    }

    // ---- prefill ----
    auto pre = [&](const char* name, std::vector<int32_t> qo, std::vector<int32_t> kv, const char* needle) {
        T tqo = tensor(qo.data(), ATTN4J_DTYPE_I32, {int64_t(qo.size())});
        T tkv = tensor(kv.data(), ATTN4J_DTYPE_I32, {int64_t(kv.size())});
        expect(name, attn4j_prefill_run(f.pplan, &f.tpq, &tqo, &f.tpk, &f.tpv, &tkv, &f.tpout, &f.tplse), INV, needle);
    };
    pre("causal n_kv < n_q", {0, 4, 10}, {0, 2, 20}, "kv_indptr: sequence 0 has 2 keys but 4 queries");
    pre("batch mismatch", {0, 10}, {0, 8, 21}, "kv_indptr: has 3 elements but qo_indptr has 2");
    pre("qo end != nnz_q", {0, 4, 11}, {0, 8, 21}, "qo_indptr: qo_indptr[2] is 11 but q has 10 rows");
    pre("qo decreasing", {0, 11, 10}, {0, 8, 21}, "qo_indptr: decreasing");
    pre("qo[0] != 0", {1, 4, 10}, {0, 8, 21}, "qo_indptr: indptr[0] is 1");
    pre("kv end > nnz_kv", {0, 4, 10}, {0, 8, 22}, "kv_indptr: kv_indptr[2] is 22 but k has only 21 rows");
    pre("kv decreasing", {0, 4, 10}, {0, 21, 20}, "kv_indptr: decreasing");
    pre("no keys", {0, 4, 10}, {0, 0, 21}, "kv_indptr: sequence 0 has no keys");
    {
        expect("qo_indptr F32", attn4j_prefill_run(f.pplan, &f.tpq, &f.tpq, &f.tpk, &f.tpv, &f.tkvi, &f.tpout, &f.tplse),
               INV, "qo_indptr: rank is 3");
        T k = f.tpk;
        k.shape[1] = 1;
        expect("prefill k heads", attn4j_prefill_run(f.pplan, &f.tpq, &f.tqo, &k, &f.tpv, &f.tkvi, &f.tpout, &f.tplse),
               INV, "k: shape[1] is 1, expected plan num_kv_heads 2");
        T v = f.tpv;
        v.shape[0] = 20;
        expect("prefill v rows", attn4j_prefill_run(f.pplan, &f.tpq, &f.tqo, &f.tpk, &v, &f.tkvi, &f.tpout, &f.tplse),
               INV, "v: shape[0] is 20, expected k's rows = 21");
        std::vector<float> bk = f.pk;
        bk[size_t(5 * KVH * D + 1 * D + 3)] = kNaN;
        k = f.tpk;
        k.data = bk.data();
        expect("prefill k NaN", attn4j_prefill_run(f.pplan, &f.tpq, &f.tqo, &k, &f.tpv, &f.tkvi, &f.tpout, &f.tplse),
               INV, "k: contains a non-finite value (NaN) at row 5 head 1");
        v = f.tpv;
        std::vector<float> bv = f.pv;
        bv[100] = kInf;
        v.data = bv.data();
        expect("prefill v Inf", attn4j_prefill_run(f.pplan, &f.tpq, &f.tqo, &f.tpk, &v, &f.tkvi, &f.tpout, &f.tplse),
               INV, "v: contains a non-finite value (+Inf)");
        T o = f.tpout;
        o.shape[0] = 9;
        expect("prefill out rows", attn4j_prefill_run(f.pplan, &f.tpq, &f.tqo, &f.tpk, &f.tpv, &f.tkvi, &o, &f.tplse),
               INV, "out: shape[0] is 9");
        T l = f.tplse;
        l.shape[1] = 3;
        expect("prefill lse", attn4j_prefill_run(f.pplan, &f.tpq, &f.tqo, &f.tpk, &f.tpv, &f.tkvi, &f.tpout, &l),
               INV, "lse: shape[1] is 3");
        // paged prefill
        std::vector<int32_t> qo1{0, 10};
        T tqo1 = tensor(qo1.data(), ATTN4J_DTYPE_I32, {2});
        attn4j_paged_kv c = f.cache;
        c.dtype = ATTN4J_DTYPE_BF16;
        AD pd = Fixture::desc(true);
        attn4j_plan* pp = nullptr;
        CHECK(attn4j_prefill_plan_create(f.ctx, &pd, &pp) == ATTN4J_OK);
        expect("paged table batch", attn4j_prefill_paged_run(pp, &f.tpq, &tqo1, &c, &f.table, &f.tpout, &f.tplse),
               INV, "table: batch 2 but qo_indptr gives batch 1");
        std::vector<int32_t> qo2{0, 4, 10};  // seq 1 has 5 tokens, 6 queries
        T tqo2 = tensor(qo2.data(), ATTN4J_DTYPE_I32, {3});
        expect("paged causal", attn4j_prefill_paged_run(pp, &f.tpq, &tqo2, &c, &f.table, &f.tpout, &f.tplse),
               INV, "table: sequence 1 has 5 tokens but qo_indptr gives it 6 queries");
        std::vector<int32_t> qo3{0, 8, 10};
        T tqo3 = tensor(qo3.data(), ATTN4J_DTYPE_I32, {3});
        expect("paged ok", attn4j_prefill_paged_run(pp, &f.tpq, &tqo3, &c, &f.table, &f.tpout, &f.tplse),
               ATTN4J_OK, nullptr);
        attn4j_plan_destroy(pp);
        pd.page_size = 0;
        CHECK(attn4j_prefill_plan_create(f.ctx, &pd, &pp) == ATTN4J_OK);
        expect("paged on contiguous plan", attn4j_prefill_paged_run(pp, &f.tpq, &tqo3, &c, &f.table, &f.tpout, &f.tplse),
               INV, "plan: page_size is 0");
        attn4j_plan_destroy(pp);
    }
    expect("prefill ok", attn4j_prefill_run(f.pplan, &f.tpq, &f.tqo, &f.tpk, &f.tpv, &f.tkvi, &f.tpout, &f.tplse),
           ATTN4J_OK, nullptr);

    // ---- merge_states ----
    auto merge = [&](const char* name, std::function<void(T&, T&, T&, T&)> m, const char* needle) {
        T v = f.tmv, s = f.tms, o = f.tmo, so = f.tmso;
        m(v, s, o, so);
        expect(name, attn4j_merge_states(f.ctx, &v, &s, &o, &so), INV, needle);
    };
    merge("merge v rank 3", [](T& v, T&, T&, T&) { v.rank = 3; v.shape[2] = H * D; v.strides[2] = 1; }, "v: rank is 3");
    merge("merge s shape", [](T&, T& s, T&, T&) { s.shape[1] = 1; }, "s: shape[1] is 1");
    merge("merge s F16", [](T&, T& s, T&, T&) { s.dtype = ATTN4J_DTYPE_F16; }, "s: dtype F16");
    merge("merge v I32", [](T& v, T&, T&, T&) { v.dtype = ATTN4J_DTYPE_I32; }, "v: dtype I32");
    merge("merge v_out shape", [](T&, T&, T& o, T&) { o.shape[2] = D / 2; o.strides[1] = D / 2; }, "v_out: shape[2]");
    merge("merge s_out shape", [](T&, T&, T&, T& so) { so.shape[0] = 2; }, "s_out: shape[0]");
    {
        std::vector<float> bs = f.ms;
        bs[3] = kNaN;
        T s = f.tms;
        s.data = bs.data();
        expect("merge s NaN", attn4j_merge_states(f.ctx, &f.tmv, &s, &f.tmo, &f.tmso), INV, "s: contains NaN");
        bs[3] = kInf;
        expect("merge s +Inf", attn4j_merge_states(f.ctx, &f.tmv, &s, &f.tmo, &f.tmso), INV, "s: contains +Inf");
        std::vector<float> bv = f.mv;
        bv[3] = kNaN;
        T v = f.tmv;
        v.data = bv.data();
        expect("merge v NaN", attn4j_merge_states(f.ctx, &v, &f.tms, &f.tmo, &f.tmso), INV,
               "v: contains a non-finite value (NaN) at element [0, 0, 0, 3]");
        bs = f.ms;
        bs[0] = -kInf;  // that part is empty: its v is not read
        s.data = bs.data();
        expect("merge v NaN in empty part", attn4j_merge_states(f.ctx, &v, &s, &f.tmo, &f.tmso), ATTN4J_OK, nullptr);
        expect("merge ctx null", attn4j_merge_states(nullptr, &f.tmv, &f.tms, &f.tmo, &f.tmso), INV, "ctx: is NULL");
        expect("merge s_out optional", attn4j_merge_states(f.ctx, &f.tmv, &f.tms, &f.tmo, nullptr), ATTN4J_OK, nullptr);
    }

    // ---- append ----
    {
        std::vector<float> k(2 * KVH * D), v(2 * KVH * D);
        f.fill(k);
        f.fill(v);
        std::vector<int32_t> ap{0, 0, 2};
        T tap = tensor(ap.data(), ATTN4J_DTYPE_I32, {3});
        T tk = tensor(k.data(), ATTN4J_DTYPE_F32, {2, KVH, D});
        T tv = tensor(v.data(), ATTN4J_DTYPE_F32, {2, KVH, D});
        const std::vector<uint16_t> kc0 = f.kc, vc0 = f.vc;
        auto app = [&](const char* name, const T& a, const T& kk, const T& vv, const char* needle) {
            expect(name, attn4j_paged_kv_append(f.ctx, &f.cache, &f.table, &a, &kk, &vv), INV, needle);
            CHECK_MSG(f.kc == kc0 && f.vc == vc0, std::string(name) + ": cache changed by a rejected append");
        };
        std::vector<float> bk = k;
        bk[size_t(1 * KVH * D + 1 * D + 7)] = kNaN;
        T t = tk;
        t.data = bk.data();
        app("append k NaN", tap, t, tv, "k: contains a non-finite value (NaN) at row 1 head 1");
        std::vector<float> bv = v;
        bv[0] = -kInf;
        t = tv;
        t.data = bv.data();
        app("append v -Inf", tap, tk, t, "v: contains a non-finite value (-Inf) at row 0 head 0");
        t = tk;
        t.dtype = ATTN4J_DTYPE_I32;
        app("append k I32", tap, t, tv, "k: dtype I32");
        t = tv;
        t.shape[1] = 1;
        app("append v shape", tap, tk, t, "v: shape[1] is 1, expected cache num_kv_heads 2");
        std::vector<int32_t> ap2{0, 2};
        T tap2 = tensor(ap2.data(), ATTN4J_DTYPE_I32, {2});
        app("append indptr length", tap2, tk, tv, "append_indptr: has 2 elements, expected batch + 1 = 3");
        std::vector<int32_t> ap3{0, 2, 1};
        T tap3 = tensor(ap3.data(), ATTN4J_DTYPE_I32, {3});
        app("append indptr decreasing", tap3, tk, tv, "append_indptr: decreasing");
        std::vector<int32_t> ap4{0, 0, 6};
        T tap4 = tensor(ap4.data(), ATTN4J_DTYPE_I32, {3});
        std::vector<float> k6(6 * KVH * D), v6(6 * KVH * D);
        T tk6 = tensor(k6.data(), ATTN4J_DTYPE_F32, {6, KVH, D}), tv6 = tensor(v6.data(), ATTN4J_DTYPE_F32, {6, KVH, D});
        app("append more than seq len", tap4, tk6, tv6, "append_indptr: sequence 1 appends 6 tokens but table gives it only 5");
        app("append k rows", tap, tk6, tv6, "k: shape[0] is 6, expected append_indptr[batch] = 2");
        expect("append ctx null", attn4j_paged_kv_append(nullptr, &f.cache, &f.table, &tap, &tk, &tv), INV, "ctx: is NULL");
        expect("append table null", attn4j_paged_kv_append(f.ctx, &f.cache, nullptr, &tap, &tk, &tv), INV, "table: is NULL");
        expect("append ok", attn4j_paged_kv_append(f.ctx, &f.cache, &f.table, &tap, &tk, &tv), ATTN4J_OK, nullptr);
    }

    // ---- context / library ----
    {
        attn4j_context* c = reinterpret_cast<attn4j_context*>(&f);
        attn4j_context_options o{};
        o.struct_size = sizeof o;
        o.device_type = ATTN4J_DEVICE_CPU;
        expect("options null", attn4j_context_create(nullptr, &c), INV, "options: is NULL");
        CHECK(c == nullptr);
        expect("out_ctx null", attn4j_context_create(&o, nullptr), INV, "out_ctx: is NULL");
        attn4j_context_options b = o;
        b.struct_size = 0;
        expect("options struct_size", attn4j_context_create(&b, &c), INV, "options: struct_size is 0");
        b = o;
        b.num_threads = -1;
        expect("num_threads -1", attn4j_context_create(&b, &c), INV, "options.num_threads: -1");
        b = o;
        b.device_id = 1;
        expect("cpu device 1", attn4j_context_create(&b, &c), INV, "options.device_id: 1");
        b = o;
        b.device_type = 7;
        expect("device type 7", attn4j_context_create(&b, &c), INV, "options.device_type: 7");
        int32_t n = -1;
        CHECK(attn4j_device_count(ATTN4J_DEVICE_CUDA, &n) == ATTN4J_OK && n >= 0);
        if (n == 0) {
            b = o;
            b.device_type = ATTN4J_DEVICE_CUDA;
            expect("cuda without device", attn4j_context_create(&b, &c), ATTN4J_ERR_DEVICE, "CUDA");
            expect("cuda message names device", ATTN4J_ERR_DEVICE, ATTN4J_ERR_DEVICE, "cuda:0");
            CHECK(c == nullptr);
        } else {
            std::printf("note: %d CUDA device(s) present: checking what CUDA plans do not support "
                        "(test_cuda_api covers CUDA decode)\n", n);
            b = o;
            b.device_type = ATTN4J_DEVICE_CUDA;
            CHECK(attn4j_context_create(&b, &c) == ATTN4J_OK);
            AD d = Fixture::desc(false);
            attn4j_plan* p = nullptr;
            expect("cuda prefill plan", attn4j_prefill_plan_create(c, &d, &p), UNS,
                   "prefill plan on CUDA device 0 is not implemented");
            AD d80 = d;
            d80.head_dim = 80;
            expect("cuda decode head_dim 80", attn4j_decode_plan_create(c, &d80, &p), UNS,
                   "CUDA decode supports head_dim 64 or 128");
            CHECK(p == nullptr);
            attn4j_context_destroy(c);
        }
        expect("device_count type", attn4j_device_count(5, &n), INV, "device_type: 5");
        expect("device_count null", attn4j_device_count(ATTN4J_DEVICE_CPU, nullptr), INV, "out_count: is NULL");
        double gbs = 0;
        expect("bandwidth bytes 0", attn4j_measure_read_bandwidth(f.ctx, 0, 1, &gbs), INV, "bytes: 0");
        expect("bandwidth repeats 0", attn4j_measure_read_bandwidth(f.ctx, 4096, 0, &gbs), INV, "repeats: 0");
        expect("bandwidth out null", attn4j_measure_read_bandwidth(f.ctx, 4096, 1, nullptr), INV, "out_gb_per_s: is NULL");
        expect("bandwidth ctx null", attn4j_measure_read_bandwidth(nullptr, 4096, 1, &gbs), INV, "ctx: is NULL");
        CHECK(attn4j_context_destroy(nullptr) == ATTN4J_OK);
        CHECK(attn4j_plan_destroy(nullptr) == ATTN4J_OK);
    }

    // Errors are per thread and success does not clear them.
    expect("last error kept", f.decode(nullptr, &f.cache, &f.table, &f.tout, &f.tlse), INV, "q: is NULL");
    CHECK(f.decode_ok() == ATTN4J_OK);
    CHECK(std::strstr(attn4j_last_error(), "q: is NULL") != nullptr);

    // Valid calls still work after all of the above.
    CHECK(f.decode_ok() == ATTN4J_OK);
    std::printf("%d rejection cases\n", g_cases);
    return a4j_test::finish("test_api_validation");
}
