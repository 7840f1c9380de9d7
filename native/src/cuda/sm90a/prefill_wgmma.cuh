// Hopper (sm_90a) prefill kernel: the contract of prefill.cuh's kernels (PrefillParams, tiles of
// kPrefillWgmmaRows query rows, ragged batches, causal bottom-right aligned, K/V contiguous or
// paged), head_dim 128, BF16 or F16, with wgmma instead of mma.sync. Built only when the CUDA
// archs include 90 (as sm_90a code, in its own object library); launch it only on a compute
// capability 9.0 device (prefill_wgmma_available).
#pragma once

#include <cuda_runtime.h>

#include "attn4j.h"
#include "cuda/prefill.cuh"

namespace attn4j::cuda {

// Enqueues the wgmma prefill kernel for p.num_tiles * p.num_qo_heads CTAs on `stream`.
cudaError_t launch_prefill_wgmma(const PrefillParams& p, attn4j_dtype dtype, bool paged, cudaStream_t stream);

}  // namespace attn4j::cuda
