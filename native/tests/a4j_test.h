// Tiny test helpers for the ctest executables (no framework): CHECK records a failure and goes
// on; the test's main returns a4j_test::finish(). Tensor builders for the C ABI.
#pragma once

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
