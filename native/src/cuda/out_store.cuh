// Output stores shared by the CUDA kernels: two adjacent values of an output row in the run's
// output dtype (F32, F16 or BF16, a run-time switch so the dtype multiplies no instantiation).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "attn4j.h"

namespace attn4j::cuda {

__device__ __forceinline__ void store_pair(void* out, int dt, int64_t i, float a, float b) {
    if (dt == ATTN4J_DTYPE_F32) {
        *reinterpret_cast<float2*>(static_cast<float*>(out) + i) = make_float2(a, b);
    } else if (dt == ATTN4J_DTYPE_F16) {
        *reinterpret_cast<__half2*>(static_cast<__half*>(out) + i) = __floats2half2_rn(a, b);
    } else {
        *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(out) + i) = __floats2bfloat162_rn(a, b);
    }
}

}  // namespace attn4j::cuda
