// Tiny test helpers for the ctest executables (no framework): CHECK records a failure and goes
// on; the test's main returns a4j_test::finish(). Tensor builders for the C ABI.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "attn4j.h"

namespace a4j_test {

inline int& failures() {
    static int n = 0;
    return n;
}

inline void report(bool ok, const char* expr, const char* file, int line, const std::string& msg) {
    if (ok) return;
    ++failures();
    std::fprintf(stderr, "%s:%d: CHECK failed: %s %s\n", file, line, expr, msg.c_str());
}

inline int finish(const char* name) {
    if (failures()) {
        std::fprintf(stderr, "%s: %d check(s) failed\n", name, failures());
        return 1;
    }
    std::printf("%s: all checks passed\n", name);
    return 0;
}

// Dense row-major tensor over a caller-owned buffer.
inline attn4j_tensor tensor(void* data, attn4j_dtype dtype, std::vector<int64_t> shape,
                            int esize = 0) {
    attn4j_tensor t{};
    t.data = data;
    t.dtype = dtype;
    t.device_type = ATTN4J_DEVICE_CPU;
    t.device_id = 0;
    t.rank = int32_t(shape.size());
    int64_t stride = 1;
    for (int i = t.rank - 1; i >= 0; --i) {
        t.shape[i] = shape[size_t(i)];
        t.strides[i] = stride;
        stride *= shape[size_t(i)];
    }
    if (!esize) esize = (dtype == ATTN4J_DTYPE_F16 || dtype == ATTN4J_DTYPE_BF16) ? 2 : 4;
    t.size_bytes = stride * esize;
    return t;
}

// The same over device memory of cuda:0 (CUDA tests).
inline attn4j_tensor dev_tensor(void* data, attn4j_dtype dtype, std::vector<int64_t> shape) {
    attn4j_tensor t = tensor(data, dtype, std::move(shape));
    t.device_type = ATTN4J_DEVICE_CUDA;
    t.device_id = 0;
    return t;
}

// An attention descriptor with q and out of `io_dtype` and sm_scale 1 / sqrt(head_dim) (or `sm_scale`
// when > 0): decode and prefill plans in many tests; a case changes the fields it varies.
inline attn4j_attention_desc attention_desc(int32_t num_qo_heads, int32_t num_kv_heads, int32_t head_dim,
                                            attn4j_dtype io_dtype, attn4j_dtype kv_dtype, int32_t page_size,
                                            int32_t max_batch_size, bool causal = false, float sm_scale = 0.f) {
    attn4j_attention_desc d{};
    d.struct_size = sizeof d;
    d.num_qo_heads = num_qo_heads;
    d.num_kv_heads = num_kv_heads;
    d.head_dim = head_dim;
    d.q_dtype = d.out_dtype = io_dtype;
    d.kv_dtype = kv_dtype;
    d.causal = causal ? 1 : 0;
    d.sm_scale = sm_scale > 0.f ? sm_scale : float(1.0 / std::sqrt(double(head_dim)));
    d.page_size = page_size;
    d.max_batch_size = max_batch_size;
    return d;
}

// One layer's paged KV cache over caller-owned K and V pages of `size_bytes` each, on device 0
// of `device`: the tests need this descriptor in many places. The quantized dtypes pass their
// format (one rotation for K and V); the caller sets rotation matrices and clip ratios, and a
// bad-input case changes one field of the valid descriptor returned here.
inline attn4j_paged_kv paged_kv(attn4j_dtype dtype, int32_t num_kv_heads, int32_t head_dim, int32_t page_size,
                                int32_t num_pages, void* k, void* v, int64_t size_bytes,
                                attn4j_device_type device = ATTN4J_DEVICE_CPU, int32_t group_size = 0,
                                attn4j_dtype meta_dtype = 0, attn4j_rotation rotation = ATTN4J_ROTATION_NONE) {
    attn4j_paged_kv c{};
    c.struct_size = sizeof c;
    c.dtype = dtype;
    c.num_kv_heads = num_kv_heads;
    c.head_dim = head_dim;
    c.page_size = page_size;
    c.num_pages = num_pages;
    c.device_type = device;
    c.device_id = 0;
    c.k_data = k;
    c.v_data = v;
    c.k_size_bytes = c.v_size_bytes = size_bytes;
    c.quant.group_size = group_size;
    c.quant.meta_dtype = meta_dtype;
    c.quant.k_rotation = c.quant.v_rotation = rotation;
    return c;
}

// A C ABI call's status is `want`, and on failure attn4j_last_error() contains `needle` (e.g. the
// argument's name); prints the message.
inline void expect_status(const char* what, attn4j_status got, attn4j_status want, const char* needle) {
    const std::string msg = got == ATTN4J_OK ? "" : attn4j_last_error();
    std::printf("  %-44s -> %s %s\n", what, attn4j_status_name(got), msg.c_str());
    report(got == want && (got == ATTN4J_OK || msg.find(needle) != std::string::npos), what, __FILE__, __LINE__,
           std::string("got ") + attn4j_status_name(got) + " '" + msg + "', wanted " + attn4j_status_name(want) +
               " with '" + needle + "'");
}

}  // namespace a4j_test

#define CHECK(cond) a4j_test::report((cond), #cond, __FILE__, __LINE__, "")
#define CHECK_MSG(cond, msg) a4j_test::report((cond), #cond, __FILE__, __LINE__, (msg))

namespace a4j_test {

// A context on `type` (device 0) with `threads` CPU threads; records a failure and returns
// NULL when creation fails.
inline attn4j_context* make_context(attn4j_device_type type, int threads) {
    attn4j_context_options o{};
    o.struct_size = sizeof o;
    o.device_type = type;
    o.num_threads = threads;
    attn4j_context* c = nullptr;
    CHECK_MSG(attn4j_context_create(&o, &c) == ATTN4J_OK, attn4j_last_error());
    return c;
}

}  // namespace a4j_test
