#include "core/validate.h"

#include <omp.h>

#include <cinttypes>
#include <cstdarg>
#include <cmath>
#include <cstdio>
#include <limits>

#include "core/dtype.h"
#include "core/error.h"

namespace attn4j {
namespace {

std::string fmt(const char* format, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* format, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, format);
    std::vsnprintf(buf, sizeof buf, format, ap);
    va_end(ap);
    return buf;
}

std::string dtype_str(attn4j_dtype d) {
    const char* n = dtype_name(d);
    if (dtype_size(d) == 0 && d != ATTN4J_DTYPE_INT8 && d != ATTN4J_DTYPE_INT4 &&
        d != ATTN4J_DTYPE_INT2)
        return fmt("%s (%d)", n, int(d));
    return n;
}

const char* nonfinite_kind(float v) {
    if (std::isnan(v)) return "NaN";
    return v > 0 ? "+Inf" : "-Inf";
}

}  // namespace

std::string shape_string(const attn4j_tensor& t) {
    std::string s = "[";
    for (int i = 0; i < t.rank && i < ATTN4J_MAX_RANK; ++i) {
        if (i) s += ", ";
        s += std::to_string(t.shape[i]);
    }
    return s + "]";
}

void require_non_null(const void* p, const char* name) {
    if (!p) invalid(fmt("%s: is NULL", name));
}

void check_struct_size(uint32_t struct_size, uint64_t expected, const char* name,
                       const char* struct_name) {
    if (struct_size < expected)
        invalid(fmt("%s: struct_size is %u, expected at least %" PRIu64 " (sizeof(%s)); set it to "
                    "sizeof(%s)",
                    name, struct_size, expected, struct_name, struct_name));
}

const attn4j_tensor& check_tensor(const attn4j_tensor* tp, const char* name) {
    require_non_null(tp, name);
    const attn4j_tensor& t = *tp;
    const int esize = dtype_size(t.dtype);
    if (esize == 0) {
        if (t.dtype >= 16)
            fail(ATTN4J_ERR_UNSUPPORTED,
                 fmt("%s: dtype %d is a reserved quantized format, not supported here", name,
                     int(t.dtype)));
        invalid(fmt("%s: dtype %d is not an attn4j dtype", name, int(t.dtype)));
    }
    if (t.device_type != ATTN4J_DEVICE_CPU && t.device_type != ATTN4J_DEVICE_CUDA)
        invalid(fmt("%s: device_type %d is not an attn4j device type", name, int(t.device_type)));
    if (t.device_id < 0) invalid(fmt("%s: device_id is %d, expected >= 0", name, int(t.device_id)));
    if (t.rank < 1 || t.rank > ATTN4J_MAX_RANK)
        invalid(fmt("%s: rank is %d, expected 1..%d", name, int(t.rank), ATTN4J_MAX_RANK));
    bool empty = false;
    for (int i = 0; i < t.rank; ++i) {
        if (t.shape[i] < 0)
            invalid(fmt("%s: shape[%d] is %" PRId64 ", expected >= 0", name, i, t.shape[i]));
        if (t.shape[i] == 0) empty = true;
        if (t.strides[i] <= 0)
            invalid(fmt("%s: strides[%d] is %" PRId64 ", expected > 0", name, i, t.strides[i]));
    }
    if (t.strides[t.rank - 1] != 1)
        invalid(fmt("%s: strides[%d] (last dimension) is %" PRId64
                    ", expected 1: the last dimension must be contiguous",
                    name, t.rank - 1, t.strides[t.rank - 1]));
    if (t.size_bytes < 0)
        invalid(fmt("%s: size_bytes is %" PRId64 ", expected >= 0", name, t.size_bytes));
    if (empty) return t;
    if (!t.data) invalid(fmt("%s: data is NULL", name));
    if (reinterpret_cast<uintptr_t>(t.data) % uintptr_t(esize) != 0)
        invalid(fmt("%s: data pointer %p is not aligned to %d bytes (dtype %s)", name, t.data,
                    esize, dtype_name(t.dtype)));
    unsigned __int128 last = 0;
    for (int i = 0; i < t.rank; ++i)
        last += (unsigned __int128)(uint64_t)(t.shape[i] - 1) * (uint64_t)t.strides[i];
    const unsigned __int128 need = (last + 1) * (unsigned)esize;
    if (need > (unsigned __int128)std::numeric_limits<int64_t>::max())
        invalid(fmt("%s: shape %s with its strides reaches beyond 2^63 bytes", name,
                    shape_string(t).c_str()));
    if ((int64_t)need > t.size_bytes)
        invalid(fmt("%s: size_bytes is %" PRId64 " but shape %s with its strides reaches %" PRId64
                    " bytes",
                    name, t.size_bytes, shape_string(t).c_str(), (int64_t)need));
    return t;
}

void expect_rank(const attn4j_tensor& t, const char* name, int rank) {
    if (t.rank != rank)
        invalid(fmt("%s: rank is %d (shape %s), expected %d", name, int(t.rank),
                    shape_string(t).c_str(), rank));
}

void expect_dtype(const attn4j_tensor& t, const char* name, attn4j_dtype dtype, const char* what) {
    if (t.dtype != dtype)
        invalid(fmt("%s: dtype %s does not match %s %s", name, dtype_str(t.dtype).c_str(), what,
                    dtype_name(dtype)));
}

void expect_float_dtype(const attn4j_tensor& t, const char* name) {
    if (!is_float_dtype(t.dtype))
        invalid(fmt("%s: dtype %s, expected F32, F16 or BF16", name, dtype_str(t.dtype).c_str()));
}

void expect_dim(const attn4j_tensor& t, const char* name, int dim, int64_t value, const char* what) {
    if (t.shape[dim] != value)
        invalid(fmt("%s: shape[%d] is %" PRId64 ", expected %s %" PRId64 " (shape %s)", name, dim,
                    t.shape[dim], what, value, shape_string(t).c_str()));
}

void expect_device(const attn4j_tensor& t, const char* name, attn4j_device_type type, int32_t id,
                   const char* runner) {
    if (t.device_type != type)
        invalid(fmt("%s: device %s but %s runs on %s; %s", name, device_name(t.device_type), runner,
                    device_name(type),
                    type == ATTN4J_DEVICE_CUDA
                        ? "copy it to device memory first (cudaMalloc + cudaMemcpy)"
                        : "copy it to host memory first (CPU plans read host memory)"));
    if (t.device_id != id)
        invalid(fmt("%s: device_id %d but %s runs on %s:%d", name, int(t.device_id), runner,
                    device_name(type), int(id)));
}

const int32_t* check_i32_vector(const attn4j_tensor* tp, const char* name, int64_t min_len,
                                int64_t* out_len) {
    const attn4j_tensor& t = check_tensor(tp, name);
    expect_rank(t, name, 1);
    expect_dtype(t, name, ATTN4J_DTYPE_I32, "the required");
    if (t.device_type != ATTN4J_DEVICE_CPU)
        invalid(fmt("%s: device %s, expected CPU (index arrays of CPU operations are read on the "
                    "host; copy it to host memory first)",
                    name, device_name(t.device_type)));
    if (t.shape[0] < min_len)
        invalid(fmt("%s: has %" PRId64 " elements, expected at least %" PRId64, name, t.shape[0],
                    min_len));
    if (out_len) *out_len = t.shape[0];
    return static_cast<const int32_t*>(t.data);
}

void check_indptr(const int32_t* indptr, int64_t batch, const char* name) {
    if (indptr[0] != 0) invalid(fmt("%s: indptr[0] is %d, expected 0", name, indptr[0]));
    for (int64_t i = 0; i < batch; ++i)
        if (indptr[i + 1] < indptr[i])
            invalid(fmt("%s: decreasing at %" PRId64 ": [%" PRId64 "] = %d > [%" PRId64 "] = %d",
                        name, i, i, indptr[i], i + 1, indptr[i + 1]));
}

void check_causal_table_fit(int64_t seq, int64_t n_kv, int64_t n_q) {
    if (n_kv < n_q)
        invalid(fmt("table: sequence %" PRId64 " has %" PRId64 " tokens but qo_indptr gives it %" PRId64
                    " queries; a causal plan needs n_kv >= n_q",
                    seq, n_kv, n_q));
}

namespace {

template <class Bits, bool (*Bad)(Bits)>
int64_t first_bad_row(const attn4j_tensor& t, int64_t outer, int64_t inner, int threads) {
    const int rank = t.rank;
    auto row_base = [&](int64_t o) {
        int64_t off = 0;
        for (int d = rank - 2; d >= 0; --d) {
            off += (o % t.shape[d]) * t.strides[d];
            o /= t.shape[d];
        }
        return static_cast<const Bits*>(t.data) + off;
    };
    int64_t first = outer;
    const bool par = outer * inner >= (int64_t(1) << 18) && threads > 1;
#pragma omp parallel for num_threads(threads) if (par) reduction(min : first) schedule(static)
    for (int64_t o = 0; o < outer; ++o) {
        const Bits* p = row_base(o);
        bool bad = false;
        for (int64_t j = 0; j < inner; ++j) bad |= Bad(p[j]);
        if (bad && o < first) first = o;
    }
    return first;
}

bool bad32(uint32_t u) { return bits_nonfinite_f32(u); }
bool bad16(uint16_t u) { return bits_nonfinite_f16(u); }
bool badb16(uint16_t u) { return bits_nonfinite_bf16(u); }

}  // namespace

void check_finite(const attn4j_tensor& t, const char* name, int threads) {
    int64_t outer = 1;
    for (int d = 0; d + 1 < t.rank; ++d) outer *= t.shape[d];
    const int64_t inner = t.shape[t.rank - 1];
    if (outer == 0 || inner == 0) return;
    int64_t bad = outer;
    switch (t.dtype) {
        case ATTN4J_DTYPE_F32: bad = first_bad_row<uint32_t, bad32>(t, outer, inner, threads); break;
        case ATTN4J_DTYPE_F16: bad = first_bad_row<uint16_t, bad16>(t, outer, inner, threads); break;
        case ATTN4J_DTYPE_BF16: bad = first_bad_row<uint16_t, badb16>(t, outer, inner, threads); break;
        default: return;
    }
    if (bad == outer) return;
    // Locate the element for the message.
    int64_t idx[ATTN4J_MAX_RANK] = {0, 0, 0, 0};
    int64_t o = bad, off = 0;
    for (int d = t.rank - 2; d >= 0; --d) {
        idx[d] = o % t.shape[d];
        o /= t.shape[d];
        off += idx[d] * t.strides[d];
    }
    float value = 0.f;
    for (int64_t j = 0; j < inner; ++j) {
        const float v = load_f32(t.data, t.dtype, off + j);
        if (!std::isfinite(v)) {
            idx[t.rank - 1] = j;
            value = v;
            break;
        }
    }
    std::string where = "[";
    for (int d = 0; d < t.rank; ++d) {
        if (d) where += ", ";
        where += std::to_string(idx[d]);
    }
    where += "]";
    if (t.rank == 3)
        invalid(fmt("%s: contains a non-finite value (%s) at row %" PRId64 " head %" PRId64
                    " (element %s)",
                    name, nonfinite_kind(value), idx[0], idx[1], where.c_str()));
    invalid(fmt("%s: contains a non-finite value (%s) at element %s", name, nonfinite_kind(value),
                where.c_str()));
}

RowsHeadsView rows_heads_view(const attn4j_tensor& t) {
    RowsHeadsView v;
    v.data = t.data;
    v.dtype = t.dtype;
    v.row_stride = t.strides[0];
    v.head_stride = t.strides[1];
    return v;
}

LseView lse_view(const attn4j_tensor* t) {
    LseView v;
    if (!t) return v;
    v.data = static_cast<float*>(t->data);
    v.row_stride = t->strides[0];
    v.head_stride = t->strides[1];
    return v;
}

namespace {

bool is_power_of_two(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

void check_rotation(const attn4j_paged_kv* c, const char* name, const char* which,
                    attn4j_rotation kind, const float* matrix, const float* clip) {
    if (kind != ATTN4J_ROTATION_NONE && kind != ATTN4J_ROTATION_HADAMARD &&
        kind != ATTN4J_ROTATION_MATRIX)
        invalid(fmt("%s: quant.%s_rotation is %d, expected NONE (0), HADAMARD (1) or MATRIX (2)",
                    name, which, int(kind)));
    if (kind == ATTN4J_ROTATION_HADAMARD && !is_power_of_two(c->head_dim))
        invalid(fmt("%s: quant.%s_rotation HADAMARD needs a power-of-two head_dim, got %d", name,
                    which, c->head_dim));
    if (kind == ATTN4J_ROTATION_MATRIX && !matrix)
        invalid(fmt("%s: quant.%s_matrix is NULL but quant.%s_rotation is MATRIX", name, which,
                    which));
    if (kind != ATTN4J_ROTATION_MATRIX && matrix)
        invalid(fmt("%s: quant.%s_matrix is set but quant.%s_rotation is not MATRIX", name, which,
                    which));
    if (clip)
        for (int32_t h = 0; h < c->num_kv_heads; ++h)
            if (!(clip[h] > 0.f && clip[h] <= 1.f))
                invalid(fmt("%s: quant.%s_clip[%d] is %g, expected a ratio in (0, 1]", name, which,
                            h, double(clip[h])));
}

}  // namespace

int64_t kv_token_bytes(attn4j_dtype dtype, int32_t head_dim, int32_t group_size,
                       attn4j_dtype meta_dtype) {
    if (head_dim <= 0) return 0;
    if (is_float_dtype(dtype)) return int64_t(head_dim) * dtype_size(dtype);
    const int bits = quant_bits(dtype);
    if (bits == 0 || group_size <= 0 || head_dim % group_size != 0 ||
        (group_size * bits) % 8 != 0 ||
        (meta_dtype != ATTN4J_DTYPE_F32 && meta_dtype != ATTN4J_DTYPE_F16))
        return 0;
    QuantFormat f;
    f.bits = bits;
    f.head_dim = head_dim;
    f.group_size = group_size;
    f.meta_dtype = meta_dtype;
    return f.token_bytes();
}

PagedKvView check_paged_kv(const attn4j_paged_kv* c, const char* name) {
    require_non_null(c, name);
    check_struct_size(c->struct_size, sizeof(attn4j_paged_kv), name, "attn4j_paged_kv");
    const int bits = quant_bits(c->dtype);
    if (!is_float_dtype(c->dtype) && bits == 0)
        invalid(fmt("%s: dtype %s, expected F32, F16, BF16, INT8, INT4 or INT2", name,
                    dtype_str(c->dtype).c_str()));
    if (c->num_kv_heads <= 0) invalid(fmt("%s: num_kv_heads is %d, expected > 0", name, c->num_kv_heads));
    if (c->head_dim <= 0) invalid(fmt("%s: head_dim is %d, expected > 0", name, c->head_dim));
    if (c->page_size <= 0) invalid(fmt("%s: page_size is %d, expected > 0", name, c->page_size));
    if (c->num_pages <= 0) invalid(fmt("%s: num_pages is %d, expected > 0", name, c->num_pages));
    if (c->device_type != ATTN4J_DEVICE_CPU && c->device_type != ATTN4J_DEVICE_CUDA)
        invalid(fmt("%s: device_type %d is not an attn4j device type", name, int(c->device_type)));
    PagedKvView v;
    v.dtype = c->dtype;
    v.num_kv_heads = c->num_kv_heads;
    v.head_dim = c->head_dim;
    v.page_size = c->page_size;
    v.num_pages = c->num_pages;
    v.k = c->k_data;
    v.v = c->v_data;
    int align = bits ? 4 : dtype_size(c->dtype);
    if (bits) {
        const attn4j_kv_quant& q = c->quant;
        if (q.group_size != 32 && q.group_size != 64 && q.group_size != 128)
            invalid(fmt("%s: quant.group_size is %d, expected 32, 64 or 128", name, q.group_size));
        if (c->head_dim % q.group_size != 0)
            invalid(fmt("%s: quant.group_size %d does not divide head_dim %d", name, q.group_size,
                        c->head_dim));
        if (q.meta_dtype != ATTN4J_DTYPE_F32 && q.meta_dtype != ATTN4J_DTYPE_F16)
            invalid(fmt("%s: quant.meta_dtype %s, expected F32 or F16", name,
                        dtype_str(q.meta_dtype).c_str()));
        check_rotation(c, name, "k", q.k_rotation, q.k_matrix, q.k_clip);
        check_rotation(c, name, "v", q.v_rotation, q.v_matrix, q.v_clip);
        v.quant.bits = bits;
        v.quant.head_dim = c->head_dim;
        v.quant.group_size = q.group_size;
        v.quant.meta_dtype = q.meta_dtype;
        v.k_rot = RotationView{q.k_rotation, q.k_matrix, q.k_clip};
        v.v_rot = RotationView{q.v_rotation, q.v_matrix, q.v_clip};
        align = v.quant.meta_size();
    }
    const unsigned __int128 need = (unsigned __int128)(uint64_t)c->num_pages *
                                   (uint64_t)c->num_kv_heads * (uint64_t)c->page_size *
                                   (uint64_t)v.token_bytes();
    const void* bufs[2] = {c->k_data, c->v_data};
    const int64_t sizes[2] = {c->k_size_bytes, c->v_size_bytes};
    const char* which[2] = {"k", "v"};
    for (int i = 0; i < 2; ++i) {
        if (!bufs[i]) invalid(fmt("%s: %s_data is NULL", name, which[i]));
        if (reinterpret_cast<uintptr_t>(bufs[i]) % uintptr_t(align) != 0)
            invalid(fmt("%s: %s_data pointer %p is not aligned to %d bytes (dtype %s)", name,
                        which[i], bufs[i], align, dtype_name(c->dtype)));
        if (need > (unsigned __int128)sizes[i] || sizes[i] < 0)
            invalid(fmt("%s: %s_size_bytes is %" PRId64 " but %d pages x %d heads x %d tokens x %"
                        PRId64 " bytes a token (%s) need %.0f bytes",
                        name, which[i], sizes[i], c->num_pages, c->num_kv_heads, c->page_size,
                        v.token_bytes(), dtype_name(c->dtype), double(need)));
    }
    if (c->k_data == c->v_data) invalid(fmt("%s: k_data and v_data are the same buffer", name));
    return v;
}

namespace {

// A rank-1 I32 vector on `type:id` whose contents are not read here (device memory).
const attn4j_tensor& check_i32_device_vector(const attn4j_tensor* tp, const char* name,
                                             int64_t min_len, attn4j_device_type type, int32_t id,
                                             const char* runner) {
    const attn4j_tensor& t = check_tensor(tp, name);
    expect_rank(t, name, 1);
    expect_dtype(t, name, ATTN4J_DTYPE_I32, "the required");
    expect_device(t, name, type, id, runner);
    if (t.shape[0] < min_len)
        invalid(fmt("%s: has %" PRId64 " elements, expected at least %" PRId64, name, t.shape[0],
                    min_len));
    return t;
}

}  // namespace

PageTableDims check_page_table_tensors(const attn4j_page_table* table, attn4j_device_type type,
                                       int32_t id, const char* runner) {
    require_non_null(table, "table");
    check_struct_size(table->struct_size, sizeof(attn4j_page_table), "table", "attn4j_page_table");
    int64_t n_indptr = 0, n_indices = 0, n_last = 0;
    if (type == ATTN4J_DEVICE_CPU) {
        check_i32_vector(&table->indptr, "table.indptr", 1, &n_indptr);
        check_i32_vector(&table->indices, "table.indices", 0, &n_indices);
        check_i32_vector(&table->last_page_len, "table.last_page_len", 0, &n_last);
    } else {
        n_indptr = check_i32_device_vector(&table->indptr, "table.indptr", 1, type, id, runner).shape[0];
        n_indices = check_i32_device_vector(&table->indices, "table.indices", 0, type, id, runner).shape[0];
        n_last = check_i32_device_vector(&table->last_page_len, "table.last_page_len", 0, type, id,
                                         runner).shape[0];
    }
    if (n_indptr < 2)
        invalid("table.indptr: has 1 element (batch 0), expected batch + 1 >= 2 elements");
    if (n_indptr - 1 > INT32_MAX - 1) invalid("table.indptr: batch exceeds 2^31 - 2");
    const int64_t batch = n_indptr - 1;
    if (n_last != batch)
        invalid(fmt("table.last_page_len: has %" PRId64 " elements, expected batch %" PRId64
                    " (table.indptr has %" PRId64 ")",
                    n_last, batch, n_indptr));
    PageTableDims d;
    d.batch = batch;
    d.n_indices = n_indices;
    return d;
}

void check_page_table_indptr(const int32_t* indptr, const PageTableDims& d) {
    check_indptr(indptr, d.batch, "table.indptr");
    if (indptr[d.batch] > d.n_indices)
        invalid(fmt("table.indptr: indptr[%" PRId64 "] is %d but table.indices has only %" PRId64
                    " elements",
                    d.batch, indptr[d.batch], d.n_indices));
}

void check_page_table_pages(const int32_t* indptr, const int32_t* indices, const int32_t* last,
                            int64_t batch, const PagedKvView& kv, bool allow_empty) {
    for (int64_t i = 0; i < batch; ++i) {
        if (indptr[i + 1] == indptr[i] && allow_empty) {
            if (last[i] != 0)
                invalid(fmt("table.last_page_len[%" PRId64 "]: %d for a sequence without pages in "
                            "this segment, expected 0",
                            i, last[i]));
            continue;
        }
        if (indptr[i + 1] == indptr[i])
            invalid(fmt("table: sequence %" PRId64 " is empty (no pages); empty sequences are not "
                        "allowed",
                        i));
        if (last[i] < 1 || last[i] > kv.page_size)
            invalid(fmt("table.last_page_len[%" PRId64 "]: %d out of range [1, %d] (page_size)", i,
                        last[i], kv.page_size));
    }
    for (int64_t j = 0; j < indptr[batch]; ++j)
        if (indices[j] < 0 || indices[j] >= kv.num_pages)
            invalid(fmt("table.indices[%" PRId64 "]: page id %d out of range [0, %d)", j, indices[j],
                        kv.num_pages));
}

PageTableView check_page_table(const attn4j_page_table* table, const PagedKvView& kv,
                               bool allow_empty) {
    const PageTableDims d = check_page_table_tensors(table, ATTN4J_DEVICE_CPU, 0, "plan");
    const int32_t* indptr = static_cast<const int32_t*>(table->indptr.data);
    const int32_t* indices = static_cast<const int32_t*>(table->indices.data);
    const int32_t* last = static_cast<const int32_t*>(table->last_page_len.data);
    check_page_table_indptr(indptr, d);
    check_page_table_pages(indptr, indices, last, d.batch, kv, allow_empty);
    PageTableView v;
    v.batch = int32_t(d.batch);
    v.indptr = indptr;
    v.indices = indices;
    v.last_page_len = last;
    return v;
}

}  // namespace attn4j
