// Attention plans and runs: decode (paged), prefill (contiguous ragged K/V or paged).
#include "api/guard.h"

#include <cmath>
#include <memory>
#include <string>

#include "api/cuda_decode.h"
#include "api/cuda_prefill.h"
#include "core/dtype.h"
#include "core/validate.h"
#include "cpu/decode.h"
#include "cpu/prefill.h"

using namespace attn4j;

namespace {

using S = std::string;

void check_desc_dtype(attn4j_dtype d, const char* field, bool quantized_ok) {
    if (is_float_dtype(d)) return;
    if (quant_bits(d) != 0) {
        if (quantized_ok) return;
        invalid(S("desc.") + field + ": " + dtype_name(d) +
                " is a quantized KV cache format; q and out are F32, F16 or BF16");
    }
    invalid(S("desc.") + field + ": " + dtype_name(d) + " (" + std::to_string(d) + "), expected " +
            (quantized_ok ? "F32, F16, BF16, INT8, INT4 or INT2" : "F32, F16 or BF16"));
}

attn4j_attention_desc check_desc(const attn4j_attention_desc* desc, bool decode,
                                 attn4j_device_type device) {
    require_non_null(desc, "desc");
    check_struct_size(desc->struct_size, sizeof(attn4j_attention_desc), "desc",
                      "attn4j_attention_desc");
    const attn4j_attention_desc& d = *desc;
    if (d.num_kv_heads <= 0)
        invalid("desc.num_kv_heads: " + std::to_string(d.num_kv_heads) + ", expected > 0");
    if (d.num_qo_heads <= 0)
        invalid("desc.num_qo_heads: " + std::to_string(d.num_qo_heads) + ", expected > 0");
    if (d.num_qo_heads % d.num_kv_heads != 0)
        invalid("desc.num_qo_heads: " + std::to_string(d.num_qo_heads) +
                " is not a multiple of num_kv_heads " + std::to_string(d.num_kv_heads));
    if (d.head_dim <= 0) invalid("desc.head_dim: " + std::to_string(d.head_dim) + ", expected > 0");
    if (device == ATTN4J_DEVICE_CPU && (d.head_dim % 16 != 0 || d.head_dim > 256))
        fail(ATTN4J_ERR_UNSUPPORTED, "desc.head_dim: " + std::to_string(d.head_dim) +
                                         " is not supported on CPU (a multiple of 16 up to 256)");
    check_desc_dtype(d.q_dtype, "q_dtype", false);
    check_desc_dtype(d.kv_dtype, "kv_dtype", true);
    check_desc_dtype(d.out_dtype, "out_dtype", false);
    if (d.causal != 0 && d.causal != 1)
        invalid("desc.causal: " + std::to_string(d.causal) + ", expected 0 or 1");
    if (!(d.sm_scale > 0.f) || !std::isfinite(d.sm_scale))
        invalid("desc.sm_scale: " + std::to_string(d.sm_scale) + ", expected a finite value > 0");
    if (decode ? d.page_size <= 0 : d.page_size < 0)
        invalid("desc.page_size: " + std::to_string(d.page_size) +
                (decode ? ", expected > 0 (decode reads a paged cache)"
                        : ", expected >= 0 (0 = contiguous K/V only)"));
    if (d.max_batch_size <= 0)
        invalid("desc.max_batch_size: " + std::to_string(d.max_batch_size) + ", expected > 0");
    attn4j_attention_desc copy{};
    copy = d;  // only the fields this version knows
    copy.struct_size = sizeof(attn4j_attention_desc);
    return copy;
}

attn4j_plan* make_plan(attn4j_context* ctx, const attn4j_attention_desc* desc, bool decode) {
    Context& c = api::context_of(ctx);
    const attn4j_attention_desc d = check_desc(desc, decode, c.device_type);
    auto plan = std::make_unique<attn4j_plan>();
    plan->kind = decode ? attn4j_plan::Kind::decode : attn4j_plan::Kind::prefill;
    plan->ctx = ctx->state;
    plan->desc = d;
    if (c.device_type == ATTN4J_DEVICE_CUDA && decode)
        plan->cuda_decode = make_cuda_decode_plan(d, c);
    else if (c.device_type == ATTN4J_DEVICE_CUDA)
        plan->cuda_prefill = make_cuda_prefill_plan(d, c);
    else if (decode)
        plan->decode = cpu::make_decode_kernel(d, c.num_threads);
    else
        plan->prefill = cpu::make_prefill_kernel(d, c.num_threads);
    return plan.release();
}

attn4j_plan& plan_of(attn4j_plan* plan, attn4j_plan::Kind kind) {
    if (!plan) invalid("plan: is NULL");
    if (plan->kind != kind)
        invalid(kind == attn4j_plan::Kind::decode
                    ? "plan: is a prefill plan; decode runs need a plan from attn4j_decode_plan_create"
                    : "plan: is a decode plan; prefill runs need a plan from "
                      "attn4j_prefill_plan_create");
    if (plan->ctx->device_type != ATTN4J_DEVICE_CPU && !plan->cuda_decode && !plan->cuda_prefill)
        fail(ATTN4J_ERR_INTERNAL, "plan: CUDA plan without a CUDA kernel (please report)");
    return *plan;
}

// q / out style [rows, heads, head_dim] tensor of the plan's device.
const attn4j_tensor& check_rows_heads(const attn4j_tensor* t, const char* name, int64_t rows,
                                      const char* rows_what, int64_t heads, const char* heads_what,
                                      int64_t head_dim, attn4j_dtype dtype, const char* dtype_what,
                                      const Context& c) {
    const attn4j_tensor& x = check_tensor(t, name);
    expect_rank(x, name, 3);
    expect_dtype(x, name, dtype, dtype_what);
    expect_device(x, name, c.device_type, c.device_id, "plan");
    if (rows >= 0) expect_dim(x, name, 0, rows, rows_what);
    expect_dim(x, name, 1, heads, heads_what);
    expect_dim(x, name, 2, head_dim, "plan head_dim");
    return x;
}

void check_lse(const attn4j_tensor* lse, int64_t rows, const char* rows_what, int64_t heads,
               const Context& c) {
    if (!lse) return;
    const attn4j_tensor& x = check_tensor(lse, "lse");
    expect_rank(x, "lse", 2);
    expect_dtype(x, "lse", ATTN4J_DTYPE_F32, "the required LSE dtype");
    expect_device(x, "lse", c.device_type, c.device_id, "plan");
    expect_dim(x, "lse", 0, rows, rows_what);
    expect_dim(x, "lse", 1, heads, "plan num_qo_heads");
}

// The cache against the plan; `any_dtype`: the extra segments of a segmented decode.
PagedKvView check_cache_for_plan(const attn4j_paged_kv* cache, const attn4j_attention_desc& d,
                                 const Context& c, const char* name = "cache",
                                 bool any_dtype = false) {
    const PagedKvView kv = check_paged_kv(cache, name);
    if (cache->device_type != c.device_type || cache->device_id != c.device_id)
        invalid(S(name) + ": device " + device_name(cache->device_type) + ":" +
                std::to_string(cache->device_id) + " but plan runs on " + device_name(c.device_type) +
                ":" + std::to_string(c.device_id) +
                (c.device_type == ATTN4J_DEVICE_CUDA
                     ? "; the pages must be in device memory of the plan's GPU (cudaMalloc)"
                     : "; CPU plans read pages from host memory"));
    if (!any_dtype && kv.dtype != d.kv_dtype)
        invalid(S(name) + ": dtype " + dtype_name(kv.dtype) + " does not match plan kv_dtype " +
                dtype_name(d.kv_dtype));
    if (kv.num_kv_heads != d.num_kv_heads)
        invalid(S(name) + ": num_kv_heads " + std::to_string(kv.num_kv_heads) +
                " does not match plan num_kv_heads " + std::to_string(d.num_kv_heads));
    if (kv.head_dim != d.head_dim)
        invalid(S(name) + ": head_dim " + std::to_string(kv.head_dim) + " does not match plan head_dim " +
                std::to_string(d.head_dim));
    if (d.page_size == 0)
        invalid("plan: page_size is 0 (a contiguous-only prefill plan); create it with the cache's "
                "page_size " + std::to_string(kv.page_size) + " to run on a paged cache");
    if (kv.page_size != d.page_size)
        invalid(S(name) + ": page_size " + std::to_string(kv.page_size) +
                " does not match plan page_size " + std::to_string(d.page_size));
    return kv;
}

void check_batch(int64_t batch, const attn4j_attention_desc& d, const char* from) {
    if (batch > d.max_batch_size)
        invalid(S(from) + ": batch " + std::to_string(batch) + " exceeds the plan's max_batch_size " +
                std::to_string(d.max_batch_size));
}

AttentionShape shape_of(const attn4j_attention_desc& d) {
    AttentionShape s;
    s.num_qo_heads = d.num_qo_heads;
    s.num_kv_heads = d.num_kv_heads;
    s.head_dim = d.head_dim;
    s.sm_scale = d.sm_scale;
    s.causal = d.causal != 0;
    return s;
}

// qo_indptr [batch + 1] over nnz_q rows; returns batch.
const int32_t* check_qo_indptr(const attn4j_tensor* qo_indptr, int64_t nnz_q, int64_t* batch) {
    int64_t n = 0;
    const int32_t* p = check_i32_vector(qo_indptr, "qo_indptr", 0, &n);
    if (n < 2) invalid("qo_indptr: has " + std::to_string(n) + " elements, expected batch + 1 >= 2");
    *batch = n - 1;
    check_indptr(p, *batch, "qo_indptr");
    if (p[*batch] != nnz_q)
        invalid("qo_indptr: qo_indptr[" + std::to_string(*batch) + "] is " +
                std::to_string(p[*batch]) + " but q has " + std::to_string(nnz_q) + " rows");
    return p;
}

// attn4j_decode_run (one cache) and attn4j_decode_run_segments (several, `segmented`).
void decode_run(attn4j_plan* plan, const attn4j_tensor* q, int32_t num_segments,
                const attn4j_paged_kv* caches, const attn4j_page_table* tables, attn4j_tensor* out,
                attn4j_tensor* lse, bool segmented) {
    attn4j_plan& p = plan_of(plan, attn4j_plan::Kind::decode);
    const attn4j_attention_desc& d = p.desc;
    const Context& c = *p.ctx;
    const bool on_cuda = c.device_type == ATTN4J_DEVICE_CUDA;
    if (segmented) {
        if (num_segments < 1 || num_segments > kMaxKvSegments)
            invalid("num_segments: " + std::to_string(num_segments) + ", expected 1.." +
                    std::to_string(kMaxKvSegments));
        require_non_null(caches, "caches");
        require_non_null(tables, "tables");
    }
    const attn4j_paged_kv* cache = caches;
    const attn4j_page_table* table = tables;
    const PagedKvView kv = check_cache_for_plan(cache, d, c, segmented ? "caches[0]" : "cache");
    // CPU: the table is read here. CUDA: only its tensors are checked here; the contents
    // are copied back and checked in cuda_decode_run, after every other argument.
    PageTableView tv;
    PageTableDims td;
    PageTableDims seg_dims[kMaxKvSegments];
    if (on_cuda) {
        td = check_page_table_tensors(table, c.device_type, c.device_id, "plan");
        tv.batch = int32_t(td.batch);
    } else {
        tv = check_page_table(table, kv, segmented && num_segments > 1);
    }
    check_batch(tv.batch, d, "table");
    DecodeArgs a;
    a.kv = kv;
    a.table = tv;
    if (segmented && num_segments > 1) {
        static const char* const names[kMaxKvSegments] = {"caches[0]", "caches[1]", "caches[2]", "caches[3]"};
        static const char* const tnames[kMaxKvSegments] = {"tables[0]", "tables[1]", "tables[2]", "tables[3]"};
        a.num_extra_segments = num_segments - 1;
        for (int s = 1; s < num_segments; ++s) {
            KvSegment& seg = a.extra[s - 1];
            seg.kv = check_cache_for_plan(&caches[s], d, c, names[s], true);
            try {
                // CUDA: the tensors here, the contents on the device (cuda_decode_run).
                if (on_cuda) {
                    seg_dims[s] = check_page_table_tensors(&tables[s], c.device_type, c.device_id, "plan");
                    seg.table.batch = int32_t(seg_dims[s].batch);
                } else {
                    seg.table = check_page_table(&tables[s], seg.kv, true);
                }
            } catch (const Error& e) {
                // Name the segment: "tables[1]: table.indices[3]: ..."
                fail(e.status, S(tnames[s]) + ": " + e.message);
            }
            if (seg.table.batch != tv.batch)
                invalid(S(tnames[s]) + ": batch " + std::to_string(seg.table.batch) +
                        " but tables[0] has batch " + std::to_string(tv.batch));
        }
        // CUDA: a sequence empty in every segment is found on the host only on the default
        // stream (cuda_decode_run); otherwise it gets output 0 and LSE -inf.
        for (int32_t i = 0; !on_cuda && i < tv.batch; ++i) {
            int64_t len = tv.seq_len(i, kv.page_size);
            for (int s = 0; s < a.num_extra_segments; ++s)
                len += a.extra[s].table.seq_len(i, a.extra[s].kv.page_size);
            if (len == 0)
                invalid("tables: sequence " + std::to_string(i) +
                        " has no tokens in any segment; every sequence needs at least one");
        }
    }
    const attn4j_tensor& tq = check_rows_heads(q, "q", tv.batch, "table batch", d.num_qo_heads,
                                               "plan num_qo_heads", d.head_dim, d.q_dtype,
                                               "plan q_dtype", c);
    const attn4j_tensor& to = check_rows_heads(out, "out", tv.batch, "table batch",
                                               d.num_qo_heads, "plan num_qo_heads", d.head_dim,
                                               d.out_dtype, "plan out_dtype", c);
    check_lse(lse, tv.batch, "table batch", d.num_qo_heads, c);
    // CUDA: q stays on the device and is not scanned for NaN / Inf (a non-finite q gives a
    // non-finite output row). The KV cache is not scanned per call on either device: append
    // rejects non-finite values on write.
    if (!on_cuda) check_finite(tq, "q", c.num_threads);

    a.shape = shape_of(d);
    a.q = rows_heads_view(tq);
    a.out = rows_heads_view(to);
    a.lse = lse_view(lse);
    if (on_cuda) {
        seg_dims[0] = td;
        cuda_decode_run(*p.cuda_decode, a, tables ? tables : table, seg_dims, segmented ? num_segments : 1);
    }
    else
        p.decode->run(a);
}

}  // namespace

extern "C" {

attn4j_status attn4j_decode_plan_create(attn4j_context* ctx, const attn4j_attention_desc* desc,
                                        attn4j_plan** out_plan) {
    return api::guard("attn4j_decode_plan_create", [&] {
        require_non_null(out_plan, "out_plan");
        *out_plan = nullptr;
        *out_plan = make_plan(ctx, desc, true);
    });
}

attn4j_status attn4j_prefill_plan_create(attn4j_context* ctx, const attn4j_attention_desc* desc,
                                         attn4j_plan** out_plan) {
    return api::guard("attn4j_prefill_plan_create", [&] {
        require_non_null(out_plan, "out_plan");
        *out_plan = nullptr;
        *out_plan = make_plan(ctx, desc, false);
    });
}

attn4j_status attn4j_plan_destroy(attn4j_plan* plan) {
    return api::guard("attn4j_plan_destroy", [&] { delete plan; });
}

attn4j_status attn4j_decode_run(attn4j_plan* plan, const attn4j_tensor* q,
                                const attn4j_paged_kv* cache, const attn4j_page_table* table,
                                attn4j_tensor* out, attn4j_tensor* lse) {
    return api::guard("attn4j_decode_run", [&] { decode_run(plan, q, 1, cache, table, out, lse, false); });
}

attn4j_status attn4j_decode_run_segments(attn4j_plan* plan, const attn4j_tensor* q,
                                         int32_t num_segments, const attn4j_paged_kv* caches,
                                         const attn4j_page_table* tables, attn4j_tensor* out,
                                         attn4j_tensor* lse) {
    return api::guard("attn4j_decode_run_segments", [&] {
        decode_run(plan, q, num_segments, caches, tables, out, lse, true);
    });
}

attn4j_status attn4j_prefill_run(attn4j_plan* plan, const attn4j_tensor* q,
                                 const attn4j_tensor* qo_indptr, const attn4j_tensor* k,
                                 const attn4j_tensor* v, const attn4j_tensor* kv_indptr,
                                 attn4j_tensor* out, attn4j_tensor* lse) {
    return api::guard("attn4j_prefill_run", [&] {
        attn4j_plan& p = plan_of(plan, attn4j_plan::Kind::prefill);
        const attn4j_attention_desc& d = p.desc;
        const Context& c = *p.ctx;
        const attn4j_tensor& tq = check_rows_heads(q, "q", -1, "", d.num_qo_heads,
                                                   "plan num_qo_heads", d.head_dim, d.q_dtype,
                                                   "plan q_dtype", c);
        const int64_t nnz_q = tq.shape[0];
        int64_t batch = 0;
        const int32_t* qo = check_qo_indptr(qo_indptr, nnz_q, &batch);
        check_batch(batch, d, "qo_indptr");
        if (quant_bits(d.kv_dtype) != 0)
            invalid(S("plan: kv_dtype ") + dtype_name(d.kv_dtype) +
                    " is a quantized cache format; such plans run on pages only "
                    "(attn4j_prefill_paged_run)");
        const attn4j_tensor& tk = check_rows_heads(k, "k", -1, "", d.num_kv_heads,
                                                   "plan num_kv_heads", d.head_dim, d.kv_dtype,
                                                   "plan kv_dtype", c);
        const int64_t nnz_kv = tk.shape[0];
        const attn4j_tensor& tvv = check_rows_heads(v, "v", nnz_kv, "k's rows =", d.num_kv_heads,
                                                    "plan num_kv_heads", d.head_dim, d.kv_dtype,
                                                    "plan kv_dtype", c);
        int64_t n_kvi = 0;
        const int32_t* kvp = check_i32_vector(kv_indptr, "kv_indptr", 0, &n_kvi);
        if (n_kvi != batch + 1)
            invalid("kv_indptr: has " + std::to_string(n_kvi) + " elements but qo_indptr has " +
                    std::to_string(batch + 1) + ": both must be batch + 1");
        check_indptr(kvp, batch, "kv_indptr");
        if (kvp[batch] > nnz_kv)
            invalid("kv_indptr: kv_indptr[" + std::to_string(batch) + "] is " +
                    std::to_string(kvp[batch]) + " but k has only " + std::to_string(nnz_kv) +
                    " rows");
        for (int64_t i = 0; i < batch; ++i) {
            const int64_t nq = qo[i + 1] - qo[i], nk = kvp[i + 1] - kvp[i];
            if (nq > 0 && nk == 0)
                invalid("kv_indptr: sequence " + std::to_string(i) + " has no keys but " +
                        std::to_string(nq) + " queries (qo_indptr)");
            if (d.causal && nk < nq)
                invalid("kv_indptr: sequence " + std::to_string(i) + " has " + std::to_string(nk) +
                        " keys but " + std::to_string(nq) +
                        " queries (qo_indptr); a causal plan needs n_kv >= n_q");
        }
        const attn4j_tensor& to = check_rows_heads(out, "out", nnz_q, "q's rows =", d.num_qo_heads,
                                                   "plan num_qo_heads", d.head_dim, d.out_dtype,
                                                   "plan out_dtype", c);
        check_lse(lse, nnz_q, "q's rows =", d.num_qo_heads, c);
        const bool on_cuda = c.device_type == ATTN4J_DEVICE_CUDA;
        if (!on_cuda) {  // CUDA: values are not scanned (they stay on the device); see attn4j.h
            check_finite(tq, "q", c.num_threads);
            check_finite(tk, "k", c.num_threads);
            check_finite(tvv, "v", c.num_threads);
        }

        PrefillArgs a;
        a.shape = shape_of(d);
        a.batch = int32_t(batch);
        a.qo_indptr = qo;
        a.q = rows_heads_view(tq);
        a.out = rows_heads_view(to);
        a.lse = lse_view(lse);
        a.paged = false;
        a.k = rows_heads_view(tk);
        a.v = rows_heads_view(tvv);
        a.kv_indptr = kvp;
        if (nnz_q == 0) return;
        if (on_cuda)
            cuda_prefill_run(*p.cuda_prefill, a);
        else
            p.prefill->run(a);
    });
}

attn4j_status attn4j_prefill_paged_run(attn4j_plan* plan, const attn4j_tensor* q,
                                       const attn4j_tensor* qo_indptr,
                                       const attn4j_paged_kv* cache,
                                       const attn4j_page_table* table, attn4j_tensor* out,
                                       attn4j_tensor* lse) {
    return api::guard("attn4j_prefill_paged_run", [&] {
        attn4j_plan& p = plan_of(plan, attn4j_plan::Kind::prefill);
        const attn4j_attention_desc& d = p.desc;
        const Context& c = *p.ctx;
        const attn4j_tensor& tq = check_rows_heads(q, "q", -1, "", d.num_qo_heads,
                                                   "plan num_qo_heads", d.head_dim, d.q_dtype,
                                                   "plan q_dtype", c);
        const int64_t nnz_q = tq.shape[0];
        int64_t batch = 0;
        const int32_t* qo = check_qo_indptr(qo_indptr, nnz_q, &batch);
        check_batch(batch, d, "qo_indptr");
        const PagedKvView kv = check_cache_for_plan(cache, d, c);
        const bool on_cuda = c.device_type == ATTN4J_DEVICE_CUDA;
        PageTableView tv;
        PageTableDims dims;
        if (on_cuda) {  // contents are read back and checked by the CUDA plan
            dims = check_page_table_tensors(table, c.device_type, c.device_id, "plan");
            tv.batch = int32_t(dims.batch);
        } else {
            tv = check_page_table(table, kv);
        }
        if (tv.batch != batch)
            invalid("table: batch " + std::to_string(tv.batch) + " but qo_indptr gives batch " +
                    std::to_string(batch));
        if (d.causal && !on_cuda)  // CUDA: checked once the plan has read the table back
            for (int64_t i = 0; i < batch; ++i)
                check_causal_table_fit(i, tv.seq_len(int32_t(i), kv.page_size), qo[i + 1] - qo[i]);
        const attn4j_tensor& to = check_rows_heads(out, "out", nnz_q, "q's rows =", d.num_qo_heads,
                                                   "plan num_qo_heads", d.head_dim, d.out_dtype,
                                                   "plan out_dtype", c);
        check_lse(lse, nnz_q, "q's rows =", d.num_qo_heads, c);
        if (!on_cuda) check_finite(tq, "q", c.num_threads);

        PrefillArgs a;
        a.shape = shape_of(d);
        a.batch = int32_t(batch);
        a.qo_indptr = qo;
        a.q = rows_heads_view(tq);
        a.out = rows_heads_view(to);
        a.lse = lse_view(lse);
        a.paged = true;
        a.kv = kv;
        a.table = tv;
        if (nnz_q == 0) return;
        if (on_cuda)
            cuda_prefill_paged_run(*p.cuda_prefill, a, *table, dims);
        else
            p.prefill->run(a);
    });
}

}  // extern "C"
