// Programmatic dependent launch (Hopper and later): a kernel launched with launch_dependent() may
// be scheduled while the kernel before it in the stream is still finishing, so its launch latency
// hides behind that kernel's tail. The dependent kernel must call wait_for_prior_grid() before it
// reads anything the prior kernel wrote (griddepcontrol.wait returns once the prior grid has
// completed and its memory is visible); the prior kernel may call allow_dependent_launch() once
// its CTAs are past their main loop, so the dependent grid is resident when it ends. Both device
// calls are no-ops below sm_90 and when the kernel was launched without the attribute; captured in
// a CUDA graph the launch becomes a programmatic edge. Split decode uses it for its merge kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

namespace attn4j::cuda {

__device__ __forceinline__ void wait_for_prior_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::);
#endif
}

// Whether kernels of a plan made now use dependent launches on a device of compute capability
// `sm_major`: Hopper and later, unless ATTN4J_CUDA_PDL=0 (diagnostics: A/B runs).
inline bool dependent_launch_enabled(int sm_major) {
    if (sm_major < 9) return false;
    const char* env = std::getenv("ATTN4J_CUDA_PDL");
    return !(env && !std::strcmp(env, "0"));
}

// kernel<<<grid, block, smem, stream>>>(args...), as a dependent launch when `dependent`.
template <typename... Params, typename... Args>
cudaError_t launch_dependent(bool dependent, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t stream, Args&&... args) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = dependent ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace attn4j::cuda
