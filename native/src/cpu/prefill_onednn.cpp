// oneDNN matmul tile GEMMs for the BF16 prefill path. Both primitives are created once per plan
// for the plan's fixed tile shape (ragged edges are padded by the caller); each thread owns its
// stream and memory objects, and execution goes through the C API so a call allocates nothing.
// Called from inside an OpenMP parallel region, oneDNN (OpenMP runtime) runs each call on the
// calling thread only.
#include <memory>
#include <string>
#include <vector>

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl.hpp>

#include "core/error.h"
#include "cpu/prefill_internal.h"

namespace attn4j::cpu::prefill_detail {

struct OnednnGemms {
    dnnl::engine eng{dnnl::engine::kind::cpu, 0};
    dnnl::matmul qk, pv;
    struct PerThread {
        dnnl::stream stream;
        dnnl::memory q, k, s, p, v, o;
        dnnl::memory qk_scratch, pv_scratch;  // user scratchpads: concurrent execution is safe
    };
    std::vector<PerThread> threads;
    std::string impl;  // oneDNN implementation names, for diagnostics
};

namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

void exec(const dnnl::matmul& prim, const dnnl::stream& st, const dnnl::memory& src,
          const dnnl::memory& wei, const dnnl::memory& dst, const dnnl::memory& scratch) {
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, src.get()},
                               {DNNL_ARG_WEIGHTS, wei.get()},
                               {DNNL_ARG_DST, dst.get()},
                               {DNNL_ARG_SCRATCHPAD, scratch.get()}};
    dnnl_status_t st_ = dnnl_primitive_execute(prim.get(), st.get(), 4, args);
    if (st_ != dnnl_success) fail(ATTN4J_ERR_INTERNAL, "oneDNN matmul execution failed");
}

void qk_call(void* ctx, int tid, const uint16_t* q, const uint16_t* k, float* s) {
    auto* g = static_cast<OnednnGemms*>(ctx);
    auto& t = g->threads[tid];
    t.q.set_data_handle(const_cast<uint16_t*>(q));
    t.k.set_data_handle(const_cast<uint16_t*>(k));
    t.s.set_data_handle(s);
    exec(g->qk, t.stream, t.q, t.k, t.s, t.qk_scratch);
}

void pv_call(void* ctx, int tid, const uint16_t* p, const uint16_t* v, float* o) {
    auto* g = static_cast<OnednnGemms*>(ctx);
    auto& t = g->threads[tid];
    t.p.set_data_handle(const_cast<uint16_t*>(p));
    t.v.set_data_handle(const_cast<uint16_t*>(v));
    t.o.set_data_handle(o);
    exec(g->pv, t.stream, t.p, t.v, t.o, t.pv_scratch);
}

}  // namespace

OnednnGemms* onednn_gemms_create(const Bf16Geometry& geo, int num_threads) {
    try {
        auto g = std::make_unique<OnednnGemms>();
        const dnnl::memory::dim M = geo.rows, D = geo.dpad, N = geo.kv_tile;
        // s[M][N] = q[M][D] * k^T, k stored [N][D] row-major = weights {D, N} with strides {1, D}
        dnnl::memory::desc q_md({M, D}, dt::bf16, tag::ab);
        dnnl::memory::desc k_md({D, N}, dt::bf16, tag::ba);
        dnnl::memory::desc s_md({M, N}, dt::f32, tag::ab);
        // o[M][D] += p[M][N] * v[N][D]
        dnnl::memory::desc p_md({M, N}, dt::bf16, tag::ab);
        dnnl::memory::desc v_md({N, D}, dt::bf16, tag::ab);
        dnnl::memory::desc o_md({M, D}, dt::f32, tag::ab);
        // The library-managed scratchpad is shared by all executions of a primitive unless oneDNN
        // was built for concurrent execution (Debian's is not): give each thread its own.
        dnnl::primitive_attr qk_attr;
        qk_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        dnnl::matmul::primitive_desc qk_pd(dnnl::matmul::desc(q_md, k_md, s_md), qk_attr, g->eng);
        dnnl::post_ops po;
        po.append_sum(1.f);
        dnnl::primitive_attr pv_attr;
        pv_attr.set_post_ops(po);
        pv_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        dnnl::matmul::primitive_desc pv_pd(dnnl::matmul::desc(p_md, v_md, o_md), pv_attr, g->eng);
        g->qk = dnnl::matmul(qk_pd);
        g->pv = dnnl::matmul(pv_pd);
        g->impl = std::string(qk_pd.impl_info_str()) + " / " + pv_pd.impl_info_str();
        g->threads.resize(num_threads);
        for (auto& t : g->threads) {
            t.stream = dnnl::stream(g->eng);
            t.q = dnnl::memory(q_md, g->eng, nullptr);
            t.k = dnnl::memory(k_md, g->eng, nullptr);
            t.s = dnnl::memory(s_md, g->eng, nullptr);
            t.p = dnnl::memory(p_md, g->eng, nullptr);
            t.v = dnnl::memory(v_md, g->eng, nullptr);
            t.o = dnnl::memory(o_md, g->eng, nullptr);
            t.qk_scratch = dnnl::memory(qk_pd.scratchpad_desc(), g->eng);
            t.pv_scratch = dnnl::memory(pv_pd.scratchpad_desc(), g->eng);
        }
        return g.release();
    } catch (const dnnl::error& e) {
        fail(ATTN4J_ERR_INTERNAL, std::string("oneDNN matmul creation failed: ") + e.what());
    }
}

void onednn_gemms_destroy(OnednnGemms* g) { delete g; }

const char* onednn_gemms_impl(const OnednnGemms* g) { return g->impl.c_str(); }

TileGemms onednn_gemms_table(OnednnGemms* g) {
    TileGemms t;
    t.ctx = g;
    t.qk = qk_call;
    t.pv = pv_call;
    return t;
}

}  // namespace attn4j::cpu::prefill_detail
