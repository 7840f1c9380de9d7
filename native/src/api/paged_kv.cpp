// attn4j_paged_kv_append, attn4j_kv_token_bytes.
#include "api/guard.h"

#include "api/cuda_append.h"
#include "api/paged_kv_checks.h"

#include <string>

#include "core/dtype.h"
#include "core/validate.h"
#include "cpu/append.h"

using namespace attn4j;

namespace attn4j::api {

int64_t check_append_counts(const int32_t* ap, int64_t n_ap, const PageTableView& tv, const PagedKvView& kv) {
    if (n_ap != int64_t(tv.batch) + 1)
        invalid("append_indptr: has " + std::to_string(n_ap) + " elements, expected batch + 1 = " +
                std::to_string(tv.batch + 1) + " (table.indptr gives batch " + std::to_string(tv.batch) + ")");
    check_indptr(ap, tv.batch, "append_indptr");
    for (int32_t i = 0; i < tv.batch; ++i) {
        const int64_t n = ap[i + 1] - ap[i];
        const int64_t len = tv.seq_len(i, kv.page_size);
        if (n > len)
            invalid("append_indptr: sequence " + std::to_string(i) + " appends " + std::to_string(n) +
                    " tokens but table gives it only " + std::to_string(len) +
                    " (the table must already include the new tokens)");
    }
    return ap[tv.batch];
}

void check_append_rows(const attn4j_tensor* k, const attn4j_tensor* v, int64_t nnz, const PagedKvView& kv,
                       const Context& c) {
    const attn4j_tensor* tensors[2] = {k, v};
    const char* names[2] = {"k", "v"};
    for (int i = 0; i < 2; ++i) {
        const attn4j_tensor& t = check_tensor(tensors[i], names[i]);
        expect_rank(t, names[i], 3);
        expect_float_dtype(t, names[i]);
        expect_device(t, names[i], c.device_type, c.device_id, "ctx");
        expect_dim(t, names[i], 0, nnz, "append_indptr[batch] =");
        expect_dim(t, names[i], 1, kv.num_kv_heads, "cache num_kv_heads");
        expect_dim(t, names[i], 2, kv.head_dim, "cache head_dim");
    }
}

}  // namespace attn4j::api

extern "C" {

int64_t attn4j_kv_token_bytes(attn4j_dtype dtype, int32_t head_dim, int32_t group_size,
                              attn4j_dtype meta_dtype) {
    return kv_token_bytes(dtype, head_dim, group_size, meta_dtype);
}

attn4j_status attn4j_paged_kv_append(attn4j_context* ctx, const attn4j_paged_kv* cache,
                                     const attn4j_page_table* table,
                                     const attn4j_tensor* append_indptr, const attn4j_tensor* k,
                                     const attn4j_tensor* v) {
    return api::guard("attn4j_paged_kv_append", [&] {
        Context& c = api::context_of(ctx);
        const PagedKvView kv = check_paged_kv(cache, "cache");
        if (cache->device_type != c.device_type || cache->device_id != c.device_id)
            invalid(std::string("cache: device ") + device_name(cache->device_type) + ":" +
                    std::to_string(cache->device_id) + " but ctx runs on " +
                    device_name(c.device_type) + ":" + std::to_string(c.device_id));
        if (kv.quantized() && kv.head_dim > cpu::kMaxQuantHeadDim)
            fail(ATTN4J_ERR_UNSUPPORTED, "cache: head_dim " + std::to_string(kv.head_dim) +
                                             " of a quantized cache exceeds " +
                                             std::to_string(cpu::kMaxQuantHeadDim));
        if (c.device_type == ATTN4J_DEVICE_CUDA) {
            cuda_paged_kv_append(c, kv, table, append_indptr, k, v);
            return;
        }
        // Sequences without pages are allowed here (segments of a mixed-precision cache); they
        // can append nothing, which the length check enforces.
        const PageTableView tv = check_page_table(table, kv, true);
        int64_t n_ap = 0;
        const int32_t* ap = check_i32_vector(append_indptr, "append_indptr", 0, &n_ap);
        const int64_t nnz = api::check_append_counts(ap, n_ap, tv, kv);
        api::check_append_rows(k, v, nnz, kv, c);
        // Nothing is written unless every value is finite.
        check_finite(*k, "k", c.num_threads);
        check_finite(*v, "v", c.num_threads);

        cpu::AppendArgs a;
        a.kv = kv;
        a.table = tv;
        a.append_indptr = ap;
        a.nnz = nnz;
        a.k = rows_heads_view(*k);
        a.v = rows_heads_view(*v);
        cpu::paged_kv_append(a, c.num_threads);
    });
}

}  // extern "C"
