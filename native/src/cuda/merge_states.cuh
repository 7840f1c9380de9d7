// CUDA merge of partial attention states: cpu/merge_states.h on the device, same arithmetic
// (max-subtracted expf in float, parts with s = -inf skipped, all-empty rows give v_out = 0 and
// s_out = -inf).
#pragma once

#include <cuda_runtime.h>

#include "cpu/merge_states.h"

namespace attn4j::cuda {

// `a` as for cpu::merge_states (the view is device-agnostic), with device pointers; any head_dim,
// any positive strides. Values are not checked on the host: a row whose s holds NaN or +inf gets
// NaN in v_out and s_out. Enqueued on `stream`; returns the launch status.
cudaError_t merge_states(const cpu::MergeStatesArgs& a, cudaStream_t stream);

}  // namespace attn4j::cuda
