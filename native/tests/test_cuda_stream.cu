// Memory, streams and graphs through the C ABI on a CUDA context: device and pinned memory with
// memcpy round trips (synchronous and asynchronous), 1 PiB answered OUT_OF_MEMORY, a caller's
// stream wrapped; decode on a non-default stream bit for bit equal to decode on the default stream
// (BF16 and INT8 caches, filled by attn4j_paged_kv_append); a CUDA graph of a decode run replayed
// after changing the contents of q and of the page table; invalid page tables on a stream (NaN
// rows for the bad sequence only, the error reported by attn4j_stream_synchronize); calls that
// cannot be captured abort the capture. After each failure the context keeps working.
// Without a CUDA device it prints "SKIP: no CUDA device" and exits 0.
#include <cuda_runtime.h>

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

using a4j_test::expect_status;

constexpr attn4j_status OK = ATTN4J_OK, INV = ATTN4J_ERR_INVALID_ARGUMENT;

using a4j_test::dev_tensor;

// Device memory from attn4j_memory_alloc, filled from / read into host vectors with attn4j_memcpy
// (synchronous, on the context's current stream).
template <class T>
T* dev_copy(attn4j_context* ctx, const std::vector<T>& h) {
    void* p = nullptr;
    CHECK_MSG(attn4j_memory_alloc(ctx, int64_t(h.size() * sizeof(T)), &p) == OK, attn4j_last_error());
    CHECK_MSG(attn4j_memcpy(ctx, p, h.data(), int64_t(h.size() * sizeof(T)), 0) == OK, attn4j_last_error());
    return static_cast<T*>(p);
}
template <class T>
void upload(attn4j_context* ctx, T* d, const std::vector<T>& h) {
    CHECK_MSG(attn4j_memcpy(ctx, d, h.data(), int64_t(h.size() * sizeof(T)), 0) == OK, attn4j_last_error());
}
template <class T>
std::vector<T> download(attn4j_context* ctx, const T* d, size_t n) {
    std::vector<T> h(n);
    CHECK_MSG(attn4j_memcpy(ctx, h.data(), d, int64_t(n * sizeof(T)), 0) == OK, attn4j_last_error());
    return h;
}

// A decode problem on the device: a cache of `kv_dtype` filled by attn4j_paged_kv_append, a page
// table, q, out and lse, and a plan. Lengths are fixed; q and the table can be replaced in place
// (same addresses, as graph replays need).
struct Decode {
    static constexpr int H = 16, KVH = 4, D = 128, PS = 16;
    attn4j_context* ctx;
    std::vector<int32_t> lens{700, 33, 1500, 5};
    int pages = 0;  // used by the sequences; the cache holds 8 more, zero
    std::vector<int32_t> indptr{0}, indices, last;
    int32_t *d_indptr, *d_indices, *d_last;
    float *d_q, *d_out, *d_lse;
    void *d_k, *d_v;
    attn4j_paged_kv cache{};
    attn4j_page_table table{};
    attn4j_tensor q{}, out{}, lse{};
    attn4j_plan* plan = nullptr;
    std::mt19937 rng{7};

    int batch() const { return int(lens.size()); }

    Decode(attn4j_context* c, attn4j_dtype kv_dtype) : ctx(c) {
        for (int32_t l : lens) {
            const int np = (l + PS - 1) / PS;
            for (int j = 0; j < np; ++j) indices.push_back(pages + j);
            pages += np;
            indptr.push_back(int32_t(indices.size()));
            last.push_back(l - (np - 1) * PS);
        }
        std::shuffle(indices.begin(), indices.end(), rng);
        const int64_t token_bytes = kv_dtype == ATTN4J_DTYPE_BF16 ? 2 * D
                                                                   : attn4j_kv_token_bytes(kv_dtype, D, D, ATTN4J_DTYPE_F32);
        const int64_t bytes = int64_t(pages + 8) * KVH * PS * token_bytes;
        const std::vector<uint8_t> zeros(size_t(bytes), 0);
        d_k = dev_copy(ctx, zeros);
        d_v = dev_copy(ctx, zeros);
        d_indptr = dev_copy(ctx, indptr);
        d_indices = dev_copy(ctx, indices);
        d_last = dev_copy(ctx, last);
        cache = a4j_test::paged_kv(kv_dtype, KVH, D, PS, pages + 8, d_k, d_v, bytes, ATTN4J_DEVICE_CUDA, D,
                                   ATTN4J_DTYPE_F32, ATTN4J_ROTATION_HADAMARD);
        table.struct_size = sizeof table;
        table.indptr = dev_tensor(d_indptr, ATTN4J_DTYPE_I32, {batch() + 1});
        table.indices = dev_tensor(d_indices, ATTN4J_DTYPE_I32, {int64_t(indices.size())});
        table.last_page_len = dev_tensor(d_last, ATTN4J_DTYPE_I32, {batch()});

        // Every token of every sequence appended at once.
        std::vector<int32_t> ap{0};
        for (int32_t l : lens) ap.push_back(ap.back() + l);
        const int64_t nnz = ap.back();
        std::normal_distribution<float> nd;
        std::vector<float> kv(size_t(nnz) * KVH * D);
        for (float& x : kv) x = nd(rng);
        float* dk_new = dev_copy(ctx, kv);
        for (float& x : kv) x = nd(rng);
        float* dv_new = dev_copy(ctx, kv);
        int32_t* d_ap = dev_copy(ctx, ap);
        const attn4j_tensor kt = dev_tensor(dk_new, ATTN4J_DTYPE_F32, {nnz, KVH, D});
        const attn4j_tensor vt = dev_tensor(dv_new, ATTN4J_DTYPE_F32, {nnz, KVH, D});
        const attn4j_tensor apt = dev_tensor(d_ap, ATTN4J_DTYPE_I32, {batch() + 1});
        CHECK_MSG(attn4j_paged_kv_append(ctx, &cache, &table, &apt, &kt, &vt) == OK, attn4j_last_error());
        for (void* p : {static_cast<void*>(dk_new), static_cast<void*>(dv_new), static_cast<void*>(d_ap)})
            attn4j_memory_free(ctx, p);

        d_q = dev_copy(ctx, random_q());
        d_out = dev_copy(ctx, std::vector<float>(size_t(batch()) * H * D));
        d_lse = dev_copy(ctx, std::vector<float>(size_t(batch()) * H));
        q = dev_tensor(d_q, ATTN4J_DTYPE_F32, {batch(), H, D});
        out = dev_tensor(d_out, ATTN4J_DTYPE_F32, {batch(), H, D});
        lse = dev_tensor(d_lse, ATTN4J_DTYPE_F32, {batch(), H});

        const attn4j_attention_desc d = a4j_test::attention_desc(H, KVH, D, ATTN4J_DTYPE_F32, kv_dtype, PS, batch());
        CHECK_MSG(attn4j_decode_plan_create(ctx, &d, &plan) == OK, attn4j_last_error());
    }
    ~Decode() {
        attn4j_plan_destroy(plan);
        for (void* p : {d_k, d_v, static_cast<void*>(d_indptr), static_cast<void*>(d_indices),
                        static_cast<void*>(d_last), static_cast<void*>(d_q), static_cast<void*>(d_out),
                        static_cast<void*>(d_lse)})
            attn4j_memory_free(ctx, p);
    }

    std::vector<float> random_q() {
        std::normal_distribution<float> nd;
        std::vector<float> h(size_t(batch()) * H * D);
        for (float& x : h) x = nd(rng);
        return h;
    }
    // Another valid table of the same sizes: random used pages, random last-page fill.
    void randomize_table() {
        std::uniform_int_distribution<int32_t> page(0, pages - 1), fill(1, PS);
        for (int32_t& p : indices) p = page(rng);
        for (int32_t& l : last) l = fill(rng);
        upload(ctx, d_indices, indices);
        upload(ctx, d_last, last);
    }
    void poison() {
        upload(ctx, d_out, std::vector<float>(size_t(batch()) * H * D, NAN));
        upload(ctx, d_lse, std::vector<float>(size_t(batch()) * H, NAN));
    }
    attn4j_status run() { return attn4j_decode_run(plan, &q, &cache, &table, &out, &lse); }
    // out then lse, after the work on the current stream.
    std::vector<float> result() {
        std::vector<float> r = download(ctx, d_out, size_t(batch()) * H * D);
        const std::vector<float> l = download(ctx, d_lse, size_t(batch()) * H);
        r.insert(r.end(), l.begin(), l.end());
        return r;
    }
    // A run on the default stream (page table checked on the host), then `stream` current again.
    std::vector<float> reference(attn4j_stream* stream) {
        CHECK(attn4j_context_set_stream(ctx, nullptr) == OK);
        poison();
        CHECK_MSG(run() == OK, attn4j_last_error());
        std::vector<float> r = result();
        CHECK(attn4j_context_set_stream(ctx, stream) == OK);
        return r;
    }
    // Sequence b's values (rows then LSE) of a result.
    std::vector<float> rows_of(const std::vector<float>& r, int b) const {
        const size_t rows = size_t(H) * D, o = size_t(b) * rows, l = size_t(batch()) * rows + size_t(b) * H;
        std::vector<float> v(r.begin() + long(o), r.begin() + long(o + rows));
        v.insert(v.end(), r.begin() + long(l), r.begin() + long(l + H));
        return v;
    }
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}
bool all_nan(const std::vector<float>& a) {
    for (float x : a)
        if (!std::isnan(x)) return false;
    return true;
}
bool all_finite(const std::vector<float>& a) {
    for (float x : a)
        if (!std::isfinite(x)) return false;
    return true;
}

void memory(attn4j_context* ctx, attn4j_stream* stream) {
    const int64_t n = 1 << 20;
    void *dev = nullptr, *pin_a = nullptr, *pin_b = nullptr;
    expect_status("memory_alloc 1 MiB", attn4j_memory_alloc(ctx, n, &dev), OK, "");
    expect_status("host_alloc_pinned 1 MiB", attn4j_host_alloc_pinned(ctx, n, &pin_a), OK, "");
    expect_status("host_alloc_pinned 1 MiB", attn4j_host_alloc_pinned(ctx, n, &pin_b), OK, "");
    if (!dev || !pin_a || !pin_b) return;
    cudaPointerAttributes at{};
    CK(cudaPointerGetAttributes(&at, dev));
    CHECK(at.type == cudaMemoryTypeDevice && at.device == 0);
    for (int64_t i = 0; i < n; ++i) static_cast<uint8_t*>(pin_a)[i] = uint8_t(i * 13 + 5);

    // Synchronous, default stream; pageable host memory.
    const std::vector<uint8_t> pageable(static_cast<uint8_t*>(pin_a), static_cast<uint8_t*>(pin_a) + n);
    std::vector<uint8_t> back(pageable.size());
    expect_status("memcpy host -> device", attn4j_memcpy(ctx, dev, pageable.data(), n, 0), OK, "");
    expect_status("memcpy device -> host", attn4j_memcpy(ctx, back.data(), dev, n, 0), OK, "");
    CHECK_MSG(back == pageable, "synchronous round trip");

    // Asynchronous on a stream, pinned memory; the device copy is cleared first.
    CHECK(attn4j_context_set_stream(ctx, stream) == OK);
    std::memset(pin_b, 0, size_t(n));
    expect_status("memcpy pinned -> device (async)", attn4j_memcpy(ctx, dev, pin_b, n, 1), OK, "");
    expect_status("stream_synchronize", attn4j_stream_synchronize(stream), OK, "");
    expect_status("memcpy pinned -> device (async)", attn4j_memcpy(ctx, dev, pin_a, n, 1), OK, "");
    expect_status("memcpy device -> pinned (async)", attn4j_memcpy(ctx, pin_b, dev, n, 1), OK, "");
    expect_status("stream_synchronize", attn4j_stream_synchronize(stream), OK, "");
    CHECK_MSG(std::memcmp(pin_a, pin_b, size_t(n)) == 0, "asynchronous round trip");
    CHECK(attn4j_context_set_stream(ctx, nullptr) == OK);

    expect_status("memcpy overlapping", attn4j_memcpy(ctx, static_cast<char*>(dev) + 8, dev, 64, 0), INV, "overlaps");
    void* p = nullptr;
    expect_status("memory_alloc 1 PiB", attn4j_memory_alloc(ctx, int64_t(1) << 50, &p), ATTN4J_ERR_OUT_OF_MEMORY,
                  "1125899906842624 bytes of device memory for cuda:0");
    CHECK(p == nullptr);
    expect_status("memory_alloc after OOM", attn4j_memory_alloc(ctx, 256, &p), OK, "");
    expect_status("memory_free", attn4j_memory_free(ctx, p), OK, "");
    expect_status("memory_free", attn4j_memory_free(ctx, dev), OK, "");
    expect_status("host_free_pinned", attn4j_host_free_pinned(ctx, pin_a), OK, "");
    expect_status("host_free_pinned", attn4j_host_free_pinned(ctx, pin_b), OK, "");
}

void wrap_callers_stream(attn4j_context* ctx) {
    cudaStream_t mine = nullptr;
    CK(cudaStreamCreate(&mine));
    attn4j_stream* s = nullptr;
    expect_status("stream_wrap", attn4j_stream_wrap(ctx, mine, &s), OK, "");
    void* h = nullptr;
    CHECK(attn4j_stream_native_handle(s, &h) == OK && h == mine);
    CHECK(attn4j_context_set_stream(ctx, s) == OK);
    std::vector<int32_t> v(1000);
    for (size_t i = 0; i < v.size(); ++i) v[i] = int32_t(i * 3);
    int32_t* d = dev_copy(ctx, v);
    CHECK(download(ctx, d, v.size()) == v);
    attn4j_memory_free(ctx, d);
    CHECK(attn4j_context_set_stream(ctx, nullptr) == OK);
    expect_status("stream_destroy (borrowed)", attn4j_stream_destroy(s), OK, "");
    CHECK(cudaStreamQuery(mine) == cudaSuccess);  // still the caller's
    CK(cudaStreamDestroy(mine));
}

// Decode on `stream` equals decode on the default stream; a captured run replays with new q and
// table contents; invalid tables give NaN rows for that sequence only and a report.
void decode_on_stream(attn4j_context* ctx, attn4j_stream* stream, attn4j_dtype kv_dtype, const char* name) {
    std::printf("decode on a stream, %s cache:\n", name);
    Decode P(ctx, kv_dtype);
    if (!P.plan) return;
    const std::vector<float> ref = P.reference(stream);
    CHECK_MSG(all_finite(ref), name);

    P.poison();
    expect_status("run on stream", P.run(), OK, "");
    expect_status("stream_synchronize", attn4j_stream_synchronize(stream), OK, "");
    CHECK_MSG(same_bits(P.result(), ref), std::string(name) + ": stream run == default-stream run");

    // Graph: capture once, replay after changing q and the table in place.
    attn4j_graph* g = nullptr;
    expect_status("graph_capture_begin", attn4j_graph_capture_begin(stream), OK, "");
    expect_status("run (captured)", P.run(), OK, "");
    expect_status("graph_capture_end", attn4j_graph_capture_end(stream, &g), OK, "");
    if (!g) return;
    for (int replay = 0; replay < 2; ++replay) {
        upload(ctx, P.d_q, P.random_q());
        P.randomize_table();
        const std::vector<float> fresh = P.reference(stream);
        P.poison();
        expect_status("graph_launch", attn4j_graph_launch(g, stream), OK, "");
        expect_status("stream_synchronize", attn4j_stream_synchronize(stream), OK, "");
        CHECK_MSG(same_bits(P.result(), fresh), std::string(name) + ": replay == fresh run");
    }

    // Invalid tables on the stream: one bad sequence each, run directly and through the graph.
    const std::vector<float> good = P.reference(stream);
    struct Bad {
        const char* what;
        int seq;
        const char* needle;
    };
    const Bad bads[] = {
        {"page id 9999", 2, "sequence 2: page id 9999 not in [0, "},
        {"last_page_len 0", 1, "sequence 1: last_page_len 0 not in [1, 16]"},
        {"indptr beyond indices", 3, "sequence 3: indptr value"},
    };
    for (const Bad& b : bads) {
        for (const bool graph : {false, true}) {
            std::vector<int32_t> indices = P.indices, last = P.last, indptr = P.indptr;
            if (b.seq == 2) indices[size_t(P.indptr[2] + 1)] = 9999;
            if (b.seq == 1) last[1] = 0;
            if (b.seq == 3) indptr[4] = int32_t(indices.size()) + 5;
            upload(ctx, P.d_indices, indices);
            upload(ctx, P.d_last, last);
            upload(ctx, P.d_indptr, indptr);
            P.poison();
            expect_status(graph ? "graph_launch, bad table" : "run, bad table",
                          graph ? attn4j_graph_launch(g, stream) : P.run(), OK, "");
            expect_status(b.what, attn4j_stream_synchronize(stream), INV, b.needle);
            expect_status("stream_synchronize again (cleared)", attn4j_stream_synchronize(stream), OK, "");
            const std::vector<float> r = P.result();
            for (int s = 0; s < P.batch(); ++s)
                CHECK_MSG(s == b.seq ? all_nan(P.rows_of(r, s)) : same_bits(P.rows_of(r, s), P.rows_of(good, s)),
                          std::string(name) + ", " + b.what + ": sequence " + std::to_string(s));
            upload(ctx, P.d_indices, P.indices);
            upload(ctx, P.d_last, P.last);
            upload(ctx, P.d_indptr, P.indptr);
        }
    }
    P.poison();
    expect_status("run after bad tables", P.run(), OK, "");
    expect_status("stream_synchronize", attn4j_stream_synchronize(stream), OK, "");
    CHECK_MSG(same_bits(P.result(), good), std::string(name) + ": run after bad tables");
    attn4j_graph_destroy(g);
}

// Calls that cannot be captured abort the capture and say so; the stream keeps working.
void uncapturable(attn4j_context* ctx, attn4j_stream* stream, attn4j_stream* other) {
    std::printf("calls that cannot be captured:\n");
    Decode P(ctx, ATTN4J_DTYPE_BF16);
    attn4j_graph* g = nullptr;
    void* p = nullptr;
    CHECK(attn4j_context_set_stream(ctx, other) == OK);
    expect_status("capture_begin, not current", attn4j_graph_capture_begin(stream), INV, "not the current stream");
    CHECK(attn4j_context_set_stream(ctx, stream) == OK);

    CHECK(attn4j_graph_capture_begin(stream) == OK);
    expect_status("memory_alloc while capturing", attn4j_memory_alloc(ctx, 64, &p), INV, "cannot be captured");
    expect_status("capture_end", attn4j_graph_capture_end(stream, &g), INV, "aborted: attn4j_memory_alloc");
    CHECK(g == nullptr);

    CHECK(attn4j_graph_capture_begin(stream) == OK);
    std::vector<float> h(16);
    expect_status("memcpy (sync) while capturing", attn4j_memcpy(ctx, P.d_out, h.data(), 64, 0), INV,
                  "cannot be captured");
    expect_status("capture_end", attn4j_graph_capture_end(stream, &g), INV, "aborted: attn4j_memcpy");

    CHECK(attn4j_graph_capture_begin(stream) == OK);
    attn4j_tensor ap = dev_tensor(P.d_indptr, ATTN4J_DTYPE_I32, {P.batch() + 1});
    expect_status("append while capturing", attn4j_paged_kv_append(ctx, &P.cache, &P.table, &ap, &P.q, &P.q), INV,
                  "attn4j_paged_kv_append");
    expect_status("capture_end", attn4j_graph_capture_end(stream, &g), INV, "aborted: attn4j_paged_kv_append");

    CHECK(attn4j_graph_capture_begin(stream) == OK);
    expect_status("capture_begin twice", attn4j_graph_capture_begin(stream), INV, "capturing already");
    expect_status("set_stream while capturing", attn4j_context_set_stream(ctx, other), INV, "capture_end");
    expect_status("synchronize while capturing", attn4j_stream_synchronize(stream), INV, "cannot be captured");
    expect_status("capture_end", attn4j_graph_capture_end(stream, &g), INV, "aborted: attn4j_stream_synchronize");
    expect_status("capture_end, none", attn4j_graph_capture_end(stream, &g), INV, "not capturing");

    // Still usable: a captured run, then a plain one.
    CHECK(attn4j_graph_capture_begin(stream) == OK);
    expect_status("run (captured)", P.run(), OK, "");
    expect_status("capture_end", attn4j_graph_capture_end(stream, &g), OK, "");
    expect_status("graph_launch on another stream", attn4j_graph_launch(g, other), OK, "");
    expect_status("synchronize", attn4j_stream_synchronize(other), OK, "");
    attn4j_graph_destroy(g);
    expect_status("run", P.run(), OK, "");
    expect_status("synchronize", attn4j_stream_synchronize(stream), OK, "");
    attn4j_stream* legacy = nullptr;
    CHECK(attn4j_stream_wrap(ctx, nullptr, &legacy) == OK);
    CHECK(attn4j_context_set_stream(ctx, legacy) == OK);
    expect_status("capture of the default stream", attn4j_graph_capture_begin(legacy), INV, "wraps the default stream");
    CHECK(attn4j_context_set_stream(ctx, nullptr) == OK);
    attn4j_stream_destroy(legacy);
}

}  // namespace

int main() {
    if (a4j_test::no_cuda_device("test_cuda_stream")) return 0;
    attn4j_context* ctx = a4j_test::make_context(ATTN4J_DEVICE_CUDA, 1);
    if (!ctx) return a4j_test::finish("test_cuda_stream");
    attn4j_stream *s = nullptr, *other = nullptr;
    CHECK(attn4j_stream_create(ctx, &s) == OK);
    CHECK(attn4j_stream_create(ctx, &other) == OK);
    void* h = nullptr;
    CHECK(attn4j_stream_native_handle(s, &h) == OK && h != nullptr);

    std::printf("memory:\n");
    memory(ctx, s);
    wrap_callers_stream(ctx);
    decode_on_stream(ctx, s, ATTN4J_DTYPE_BF16, "BF16");
    decode_on_stream(ctx, s, ATTN4J_DTYPE_INT8, "INT8");
    uncapturable(ctx, s, other);

    CHECK(attn4j_context_set_stream(ctx, s) == OK);
    expect_status("stream_destroy while current", attn4j_stream_destroy(s), INV, "attn4j_context_set_stream(ctx, NULL)");
    CHECK(attn4j_context_set_stream(ctx, nullptr) == OK);
    CHECK(attn4j_stream_destroy(s) == OK);
    CHECK(attn4j_stream_destroy(other) == OK);
    CK(cudaDeviceSynchronize());
    attn4j_context_destroy(ctx);
    return a4j_test::finish("test_cuda_stream");
}
