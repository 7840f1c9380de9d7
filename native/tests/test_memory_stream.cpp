// Memory, streams and graphs through the C ABI on a CPU context: aligned allocations, memcpy
// round trips, streams that are no-ops but track the current stream, graphs UNSUPPORTED, and every
// bad input answered with its status and a message naming the argument.
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "a4j_test.h"
#include "attn4j.h"
#include "quant_test.h"

namespace {

using a4j_test::expect_status;

constexpr attn4j_status OK = ATTN4J_OK, INV = ATTN4J_ERR_INVALID_ARGUMENT, UNS = ATTN4J_ERR_UNSUPPORTED;

bool aligned64(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 63) == 0; }

void memory(attn4j_context* ctx) {
    const int64_t n = 1000;
    void* a = nullptr;
    void* pinned = nullptr;
    expect_status("memory_alloc 1000", attn4j_memory_alloc(ctx, n, &a), OK, "");
    expect_status("host_alloc_pinned 1000", attn4j_host_alloc_pinned(ctx, n, &pinned), OK, "");
    CHECK(a && aligned64(a));
    CHECK(pinned && aligned64(pinned));
    if (!a || !pinned) return;
    for (int64_t i = 0; i < n; ++i) static_cast<uint8_t*>(pinned)[i] = uint8_t(i * 7 + 1);
    expect_status("memcpy pinned -> memory", attn4j_memcpy(ctx, a, pinned, n, 0), OK, "");
    std::memset(pinned, 0, size_t(n));
    expect_status("memcpy memory -> pinned (async)", attn4j_memcpy(ctx, pinned, a, n, 1), OK, "");
    bool same = true;
    for (int64_t i = 0; i < n; ++i) same &= static_cast<uint8_t*>(pinned)[i] == uint8_t(i * 7 + 1);
    CHECK_MSG(same, "memcpy round trip");

    expect_status("memcpy overlapping", attn4j_memcpy(ctx, static_cast<char*>(a) + 10, a, 20, 0), INV, "overlaps");
    expect_status("memcpy adjacent (no overlap)", attn4j_memcpy(ctx, static_cast<char*>(a) + 20, a, 20, 0), OK, "");
    expect_status("memcpy NULL dst", attn4j_memcpy(ctx, nullptr, a, 8, 0), INV, "dst: is NULL");
    expect_status("memcpy NULL src", attn4j_memcpy(ctx, a, nullptr, 8, 0), INV, "src: is NULL");
    expect_status("memcpy bytes 0", attn4j_memcpy(ctx, pinned, a, 0, 0), INV, "bytes: 0");
    expect_status("memcpy NULL ctx", attn4j_memcpy(nullptr, pinned, a, 8, 0), INV, "ctx: is NULL");

    expect_status("memory_free", attn4j_memory_free(ctx, a), OK, "");
    expect_status("host_free_pinned", attn4j_host_free_pinned(ctx, pinned), OK, "");
    expect_status("memory_free NULL ptr", attn4j_memory_free(ctx, nullptr), OK, "");
    expect_status("host_free_pinned NULL ptr", attn4j_host_free_pinned(ctx, nullptr), OK, "");
    expect_status("memory_free NULL ctx", attn4j_memory_free(nullptr, nullptr), INV, "ctx: is NULL");
    expect_status("host_free_pinned NULL ctx", attn4j_host_free_pinned(nullptr, nullptr), INV, "ctx: is NULL");

    void* p = &p;
    expect_status("memory_alloc bytes 0", attn4j_memory_alloc(ctx, 0, &p), INV, "bytes: 0");
    CHECK(p == nullptr);  // out pointers are cleared on failure
    expect_status("memory_alloc bytes -5", attn4j_memory_alloc(ctx, -5, &p), INV, "bytes: -5");
    expect_status("memory_alloc NULL out_ptr", attn4j_memory_alloc(ctx, 8, nullptr), INV, "out_ptr: is NULL");
    expect_status("memory_alloc NULL ctx", attn4j_memory_alloc(nullptr, 8, &p), INV, "ctx: is NULL");
    expect_status("host_alloc_pinned bytes 0", attn4j_host_alloc_pinned(ctx, 0, &p), INV, "bytes: 0");
    expect_status("host_alloc_pinned NULL out_ptr", attn4j_host_alloc_pinned(ctx, 8, nullptr), INV, "out_ptr");
    expect_status("host_alloc_pinned NULL ctx", attn4j_host_alloc_pinned(nullptr, 8, &p), INV, "ctx: is NULL");
    const int64_t pib = int64_t(1) << 50;
    expect_status("memory_alloc 1 PiB", attn4j_memory_alloc(ctx, pib, &p), ATTN4J_ERR_OUT_OF_MEMORY,
                  "1125899906842624 bytes");
    expect_status("host_alloc_pinned 1 PiB", attn4j_host_alloc_pinned(ctx, pib, &p), ATTN4J_ERR_OUT_OF_MEMORY,
                  "1125899906842624 bytes");
    expect_status("memory_alloc after OOM", attn4j_memory_alloc(ctx, 64, &p), OK, "");
    attn4j_memory_free(ctx, p);
}

void streams(attn4j_context* ctx, attn4j_context* other) {
    attn4j_stream* s = nullptr;
    attn4j_stream* w = nullptr;
    expect_status("stream_create", attn4j_stream_create(ctx, &s), OK, "");
    expect_status("stream_wrap NULL", attn4j_stream_wrap(ctx, nullptr, &w), OK, "");
    if (!s || !w) return;
    void* h = &h;
    expect_status("stream_native_handle", attn4j_stream_native_handle(s, &h), OK, "");
    CHECK(h == nullptr);  // no cudaStream_t on a CPU context
    expect_status("stream_synchronize", attn4j_stream_synchronize(s), OK, "");
    expect_status("context_set_stream", attn4j_context_set_stream(ctx, s), OK, "");
    // Work runs inside the calls as before.
    uint64_t x = 42, y = 0;
    expect_status("memcpy on a stream", attn4j_memcpy(ctx, &y, &x, sizeof x, 1), OK, "");
    CHECK(y == 42);
    expect_status("stream_destroy while current", attn4j_stream_destroy(s), INV, "attn4j_context_set_stream(ctx, NULL)");
    expect_status("context_set_stream other stream", attn4j_context_set_stream(ctx, w), OK, "");
    expect_status("stream_destroy former current", attn4j_stream_destroy(s), OK, "");
    expect_status("context_set_stream NULL", attn4j_context_set_stream(ctx, nullptr), OK, "");

    attn4j_stream* so = nullptr;
    expect_status("stream_create (other context)", attn4j_stream_create(other, &so), OK, "");
    expect_status("set_stream of another context", attn4j_context_set_stream(ctx, so), INV, "another context");
    attn4j_stream_destroy(so);

    attn4j_stream* bad = w;
    expect_status("stream_wrap a cudaStream_t", attn4j_stream_wrap(ctx, reinterpret_cast<void*>(0x1234), &bad), INV,
                  "cuda_stream");
    CHECK(bad == nullptr);
    expect_status("stream_create NULL ctx", attn4j_stream_create(nullptr, &bad), INV, "ctx: is NULL");
    expect_status("stream_create NULL out", attn4j_stream_create(ctx, nullptr), INV, "out_stream: is NULL");
    expect_status("stream_wrap NULL ctx", attn4j_stream_wrap(nullptr, nullptr, &bad), INV, "ctx: is NULL");
    expect_status("stream_wrap NULL out", attn4j_stream_wrap(ctx, nullptr, nullptr), INV, "out_stream: is NULL");
    expect_status("native_handle NULL stream", attn4j_stream_native_handle(nullptr, &h), INV, "stream: is NULL");
    expect_status("native_handle NULL out", attn4j_stream_native_handle(w, nullptr), INV, "out_handle: is NULL");
    expect_status("synchronize NULL", attn4j_stream_synchronize(nullptr), INV, "stream: is NULL");
    expect_status("set_stream NULL ctx", attn4j_context_set_stream(nullptr, w), INV, "ctx: is NULL");
    expect_status("stream_destroy NULL", attn4j_stream_destroy(nullptr), OK, "");

    // Graphs: none on a CPU context.
    attn4j_graph* g = nullptr;
    expect_status("graph_capture_begin", attn4j_graph_capture_begin(w), UNS, "CUDA context");
    expect_status("graph_capture_end", attn4j_graph_capture_end(w, &g), UNS, "CUDA context");
    CHECK(g == nullptr);
    expect_status("graph_capture_begin NULL", attn4j_graph_capture_begin(nullptr), INV, "stream: is NULL");
    expect_status("graph_capture_end NULL out", attn4j_graph_capture_end(w, nullptr), INV, "out_graph: is NULL");
    expect_status("graph_launch NULL graph", attn4j_graph_launch(nullptr, w), INV, "graph: is NULL");
    expect_status("graph_destroy NULL", attn4j_graph_destroy(nullptr), OK, "");
    attn4j_stream_destroy(w);
}

// A stream keeps its context alive; once it holds the last reference it may be destroyed while
// current.
void stream_outlives_context() {
    attn4j_context* ctx = a4j_test::make_context(ATTN4J_DEVICE_CPU, 1);
    attn4j_stream* s = nullptr;
    expect_status("stream_create", attn4j_stream_create(ctx, &s), OK, "");
    expect_status("context_set_stream", attn4j_context_set_stream(ctx, s), OK, "");
    attn4j_context_destroy(ctx);
    expect_status("synchronize after context_destroy", attn4j_stream_synchronize(s), OK, "");
    expect_status("destroy current, last reference", attn4j_stream_destroy(s), OK, "");
}

}  // namespace

int main() {
    attn4j_context* ctx = a4j_test::make_context(ATTN4J_DEVICE_CPU, 1);
    attn4j_context* other = a4j_test::make_context(ATTN4J_DEVICE_CPU, 1);
    if (!ctx || !other) return a4j_test::finish("test_memory_stream");
    std::printf("memory:\n");
    memory(ctx);
    std::printf("streams and graphs:\n");
    streams(ctx, other);
    stream_outlives_context();
    attn4j_context_destroy(other);
    attn4j_context_destroy(ctx);
    return a4j_test::finish("test_memory_stream");
}
