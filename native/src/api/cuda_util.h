// CUDA helpers shared by the api/ units that run on CUDA contexts (decode, append): CUDA errors
// as statuses, a current-device scope, a growable pinned int32 buffer for host copies of page
// tables, and the check that a buffer is memory the plan's device can use. Only included in
// builds with CUDA.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>

#include "core/error.h"

namespace attn4j {


inline std::string cuda_msg(cudaError_t e) {
    return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

// CUDA failure -> ATTN4J_ERR_DEVICE (OUT_OF_MEMORY for allocations). Clears a non-sticky error
// so that the context stays usable; a sticky one (e.g. an earlier illegal address) stays, and
// every later call reports it.
[[noreturn]] inline void cuda_fail(cudaError_t e, const std::string& what) {
    (void)cudaGetLastError();
    fail(e == cudaErrorMemoryAllocation ? ATTN4J_ERR_OUT_OF_MEMORY : ATTN4J_ERR_DEVICE,
         what + ": " + cuda_msg(e));
}

// Makes `device` current for the scope and restores the previous one.
class DeviceScope {
public:
    explicit DeviceScope(int device) {
        cudaError_t e = cudaGetDevice(&prev_);
        if (e != cudaSuccess) cuda_fail(e, "cudaGetDevice");
        if (prev_ != device) {
            e = cudaSetDevice(device);
            if (e != cudaSuccess) cuda_fail(e, "cudaSetDevice(" + std::to_string(device) + ")");
            restore_ = true;
        }
    }
    ~DeviceScope() {
        if (restore_) (void)cudaSetDevice(prev_);
    }
    DeviceScope(const DeviceScope&) = delete;
    DeviceScope& operator=(const DeviceScope&) = delete;

private:
    int prev_ = 0;
    bool restore_ = false;
};

// Pinned host buffer of int32 that grows on demand.
class PinnedI32 {
public:
    ~PinnedI32() {
        if (p_) (void)cudaFreeHost(p_);
    }
    int32_t* reserve(int64_t n, const char* what) {
        if (n <= cap_) return p_;
        const int64_t cap = std::max<int64_t>(n, cap_ * 2);
        void* q = nullptr;
        const cudaError_t e = cudaMallocHost(&q, size_t(cap) * sizeof(int32_t));
        if (e != cudaSuccess)
            cuda_fail(e, std::string("plan: pinned host buffer for ") + what + " (" +
                             std::to_string(cap * 4) + " bytes)");
        if (p_) (void)cudaFreeHost(p_);
        p_ = static_cast<int32_t*>(q);
        cap_ = cap;
        return p_;
    }

private:
    int32_t* p_ = nullptr;
    int64_t cap_ = 0;
};

// Copies n int32 of device memory into `dst` (grown as needed) on `stream` and waits for it: the
// host copy of an index array that a CUDA call validates before it launches anything.
inline const int32_t* copy_back(const char* function, PinnedI32& dst, const void* src, int64_t n, const char* name,
                                int device, cudaStream_t stream) {
    int32_t* h = dst.reserve(std::max<int64_t>(n, 1), name);
    if (n <= 0) return h;
    cudaError_t e = cudaMemcpyAsync(h, src, size_t(n) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess)
        cuda_fail(e, std::string(function) + ": copying " + name + " to the host for validation failed on cuda:" +
                         std::to_string(device) +
                         " (an error of earlier asynchronous work on this device is also reported here)");
    return h;
}

// A buffer handed to a CUDA plan must be device-accessible memory of the plan's GPU.
inline void check_device_pointer(const void* ptr, const char* name, int device) {
    if (!ptr) return;
    cudaPointerAttributes at{};
    const cudaError_t e = cudaPointerGetAttributes(&at, ptr);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%p", ptr);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        invalid(std::string(name) + ": pointer " + buf + " is not CUDA memory (cudaPointerGetAttributes: " +
                cuda_msg(e) + "); pass memory allocated with cudaMalloc on cuda:" +
                std::to_string(device));
    }
    switch (at.type) {
        case cudaMemoryTypeUnregistered:
            invalid(std::string(name) + ": pointer " + buf +
                    " is plain host memory although the tensor says device_type CUDA; copy it "
                    "to the device first (cudaMalloc + cudaMemcpy)");
        case cudaMemoryTypeDevice:
            if (at.device != device)
                invalid(std::string(name) + ": pointer " + buf + " is memory of cuda:" +
                        std::to_string(at.device) + " but the plan runs on cuda:" +
                        std::to_string(device) + "; copy it to cuda:" + std::to_string(device));
            return;
        case cudaMemoryTypeHost:  // pinned host memory: usable by the device when mapped
            if (!at.devicePointer)
                invalid(std::string(name) + ": pointer " + buf +
                        " is pinned host memory not mapped into the device's address space; "
                        "copy it to the device first (cudaMalloc + cudaMemcpy)");
            return;
        default:  // managed
            return;
    }
}

}  // namespace attn4j
