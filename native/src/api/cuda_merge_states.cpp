// attn4j_merge_states on a CUDA context (see cuda_merge_states.h).
#include "api/cuda_merge_states.h"

#include <string>

#include "core/error.h"

#ifdef ATTN4J_HAVE_CUDA
#include "api/cuda_util.h"
#include "cuda/merge_states.cuh"
#endif

namespace attn4j {

#ifndef ATTN4J_HAVE_CUDA

void cuda_merge_states(const Context&, const cpu::MergeStatesArgs&) {
    fail(ATTN4J_ERR_UNSUPPORTED, "ctx: merge_states on CUDA: this library was built without CUDA");
}

#else

void cuda_merge_states(const Context& c, const cpu::MergeStatesArgs& a) {
    const int device = c.device_id;
    DeviceScope scope(device);
    check_device_pointer(a.v, "v", device);
    check_device_pointer(a.s, "s", device);
    check_device_pointer(a.v_out, "v_out", device);
    check_device_pointer(a.s_out, "s_out", device);
    const cudaError_t e = cuda::merge_states(a, static_cast<cudaStream_t>(c.cuda_stream));
    if (e != cudaSuccess)
        cuda_fail(e, "attn4j_merge_states: CUDA merge launch on cuda:" + std::to_string(device) + " failed");
}

#endif  // ATTN4J_HAVE_CUDA

}  // namespace attn4j
