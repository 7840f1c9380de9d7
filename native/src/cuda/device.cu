// CUDA device discovery, tolerant of a missing driver or GPU (count 0, never an abort). The CUDA
// runtime is linked statically; it loads the driver (libcuda.so.1) lazily here.
#include <cuda_runtime.h>

namespace attn4j {

int cuda_device_count() noexcept {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();  // clear the sticky error
        return 0;
    }
    return n;
}

}  // namespace attn4j
