// Device and pinned memory and copies of a CUDA context (see cuda_memory.h).
#include "api/guard.h"

#include "api/cuda_memory.h"

#include <string>

#ifdef ATTN4J_HAVE_CUDA
#include "api/cuda_util.h"
#endif

namespace attn4j {

#ifndef ATTN4J_HAVE_CUDA

namespace {
[[noreturn]] void no_cuda() { fail(ATTN4J_ERR_UNSUPPORTED, "ctx: this library was built without CUDA"); }
}  // namespace

void* cuda_device_alloc(int, int64_t) { no_cuda(); }
void cuda_device_free(int, void*) { no_cuda(); }
void* cuda_pinned_alloc(int, int64_t) { no_cuda(); }
void cuda_pinned_free(int, void*) { no_cuda(); }
void cuda_copy(int, void*, void*, const void*, int64_t, bool) { no_cuda(); }

#else

namespace {

std::string size_on(int64_t bytes, const char* what, int device) {
    return std::to_string(bytes) + " bytes of " + what + " for cuda:" + std::to_string(device);
}

bool is_capture_error(cudaError_t e) {
    return e == cudaErrorStreamCaptureUnsupported || e == cudaErrorStreamCaptureInvalidated ||
           e == cudaErrorStreamCaptureImplicit;
}

}  // namespace

void* cuda_device_alloc(int device, int64_t bytes) {
    DeviceScope scope(device);
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, size_t(bytes));
    if (e != cudaSuccess) cuda_fail(e, "attn4j_memory_alloc: " + size_on(bytes, "device memory", device));
    return p;
}

void cuda_device_free(int device, void* ptr) {
    DeviceScope scope(device);
    const cudaError_t e = cudaFree(ptr);
    if (e != cudaSuccess)
        cuda_fail(e, "attn4j_memory_free: ptr on cuda:" + std::to_string(device) +
                         " (is it memory from attn4j_memory_alloc of this context?)");
}

void* cuda_pinned_alloc(int device, int64_t bytes) {
    DeviceScope scope(device);
    void* p = nullptr;
    const cudaError_t e = cudaHostAlloc(&p, size_t(bytes), cudaHostAllocDefault);
    if (e != cudaSuccess) cuda_fail(e, "attn4j_host_alloc_pinned: " + size_on(bytes, "pinned host memory", device));
    return p;
}

void cuda_pinned_free(int device, void* ptr) {
    DeviceScope scope(device);
    const cudaError_t e = cudaFreeHost(ptr);
    if (e != cudaSuccess)
        cuda_fail(e, "attn4j_host_free_pinned: ptr (is it memory from attn4j_host_alloc_pinned of this context?)");
}

void cuda_copy(int device, void* stream, void* dst, const void* src, int64_t bytes, bool async) {
    DeviceScope scope(device);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    cudaError_t e = cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyDefault, s);
    if (is_capture_error(e)) {
        (void)cudaGetLastError();
        invalid("attn4j_memcpy: this copy cannot be captured in a CUDA graph (pageable host memory? copy from "
                "attn4j_host_alloc_pinned memory) (CUDA: " + cuda_msg(e) + ")");
    }
    if (e == cudaSuccess && !async) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess)
        cuda_fail(e, "attn4j_memcpy: " + std::to_string(bytes) + " bytes on cuda:" + std::to_string(device) +
                         " (an error of earlier asynchronous work on the stream is also reported here)");
}

#endif  // ATTN4J_HAVE_CUDA

}  // namespace attn4j
