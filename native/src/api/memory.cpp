// attn4j_memory_alloc / _free, attn4j_host_alloc_pinned / _free_pinned, attn4j_memcpy: memory of
// the context's device. CPU contexts: 64-byte aligned host memory and memcpy; CUDA contexts:
// api/cuda_memory.cpp.
#include "api/guard.h"

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "api/cuda_memory.h"
#include "api/stream.h"
#include "core/validate.h"

using namespace attn4j;

namespace {

constexpr size_t kHostAlignment = 64;  // a cache line; what the CPU kernels' vector loads like

void check_bytes(int64_t bytes) {
    if (bytes <= 0) invalid("bytes: " + std::to_string(bytes) + ", expected > 0");
}

// More than the machine's physical memory is refused up front: the answer is then the same with
// or without overcommit and under sanitizers, which abort on huge requests instead of failing.
void* host_alloc(int64_t bytes, const char* function) {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    const bool too_big = pages > 0 && page > 0 && uint64_t(bytes) > uint64_t(pages) * uint64_t(page);
    const size_t rounded = (size_t(bytes) + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
    void* p = too_big ? nullptr : std::aligned_alloc(kHostAlignment, rounded);
    if (!p)
        fail(ATTN4J_ERR_OUT_OF_MEMORY,
             std::string(function) + ": " + std::to_string(bytes) + " bytes of host memory (CPU context): out of memory");
    return p;
}

// Device and pinned allocations share everything but the CUDA call: CPU contexts get host memory
// for both, and neither may run while the context's stream is capturing.
template <class CudaAlloc>
attn4j_status allocate(attn4j_context* ctx, int64_t bytes, void** out_ptr, const char* function, CudaAlloc cuda_alloc) {
    return api::guard(function, [&] {
        require_non_null(out_ptr, "out_ptr");
        *out_ptr = nullptr;
        Context& c = api::context_of(ctx);
        check_bytes(bytes);
        if (c.device_type != ATTN4J_DEVICE_CUDA) {
            *out_ptr = host_alloc(bytes, function);
            return;
        }
        api::reject_if_capturing(c.current_stream, function);
        *out_ptr = cuda_alloc(c.device_id, bytes);
    });
}

template <class CudaFree>
attn4j_status release(attn4j_context* ctx, void* ptr, const char* function, CudaFree cuda_free) {
    return api::guard(function, [&] {
        Context& c = api::context_of(ctx);
        if (!ptr) return;
        if (c.device_type != ATTN4J_DEVICE_CUDA) {
            std::free(ptr);
            return;
        }
        api::reject_if_capturing(c.current_stream, function);
        cuda_free(c.device_id, ptr);
    });
}

}  // namespace

extern "C" {

attn4j_status attn4j_memory_alloc(attn4j_context* ctx, int64_t bytes, void** out_ptr) {
    return allocate(ctx, bytes, out_ptr, "attn4j_memory_alloc", cuda_device_alloc);
}

attn4j_status attn4j_memory_free(attn4j_context* ctx, void* ptr) {
    return release(ctx, ptr, "attn4j_memory_free", cuda_device_free);
}

attn4j_status attn4j_host_alloc_pinned(attn4j_context* ctx, int64_t bytes, void** out_ptr) {
    return allocate(ctx, bytes, out_ptr, "attn4j_host_alloc_pinned", cuda_pinned_alloc);
}

attn4j_status attn4j_host_free_pinned(attn4j_context* ctx, void* ptr) {
    return release(ctx, ptr, "attn4j_host_free_pinned", cuda_pinned_free);
}

attn4j_status attn4j_memcpy(attn4j_context* ctx, void* dst, const void* src, int64_t bytes, int32_t async) {
    return api::guard("attn4j_memcpy", [&] {
        Context& c = api::context_of(ctx);
        require_non_null(dst, "dst");
        require_non_null(src, "src");
        check_bytes(bytes);
        const uintptr_t d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
        if (d < s + uint64_t(bytes) && s < d + uint64_t(bytes))
            invalid("dst: [dst, dst + bytes) overlaps [src, src + bytes) (" + std::to_string(bytes) +
                    " bytes); overlapping copies are not supported");
        if (c.device_type != ATTN4J_DEVICE_CUDA) {
            std::memcpy(dst, src, size_t(bytes));
            return;
        }
        if (!async) api::reject_if_capturing(c.current_stream, "attn4j_memcpy with async == 0");
        cuda_copy(c.device_id, c.cuda_stream, dst, src, bytes, async != 0);
    });
}

}  // extern "C"
