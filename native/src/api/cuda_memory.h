// The CUDA half of attn4j_memory_* / attn4j_host_*_pinned / attn4j_memcpy (api/memory.cpp):
// `device` is made current for the call; failures become statuses that name the size and the
// device. Builds without CUDA: UNSUPPORTED (never reached: no CUDA context exists there).
#pragma once

#include <cstdint>

namespace attn4j {

void* cuda_device_alloc(int device, int64_t bytes);
void cuda_device_free(int device, void* ptr);
void* cuda_pinned_alloc(int device, int64_t bytes);
void cuda_pinned_free(int device, void* ptr);
// cudaMemcpyDefault on `stream` (a cudaStream_t, nullptr = default); synchronizes it unless async.
void cuda_copy(int device, void* stream, void* dst, const void* src, int64_t bytes, bool async);

}  // namespace attn4j
