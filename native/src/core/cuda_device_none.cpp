// cuda_device_count() for builds without the CUDA backend (src/cuda/device.cu provides it
// otherwise).
#include "core/context.h"

#ifndef ATTN4J_HAVE_CUDA
namespace attn4j {
int cuda_device_count() noexcept { return 0; }
}  // namespace attn4j
#endif
