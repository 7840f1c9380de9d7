// attn4j_merge_states on a CUDA context: the device half. merge_states.cpp checks shapes, dtypes,
// strides and the tensors' device labels for both devices; this unit checks that every buffer is
// memory of the context's GPU (cudaPointerGetAttributes) and enqueues the kernel on the context's
// stream without synchronizing, so merges can be captured in a CUDA graph. The values of v and s
// are therefore not checked: a row whose s holds NaN or +inf gets NaN in v_out and s_out (the CPU
// path rejects them). Builds without CUDA: UNSUPPORTED.
#pragma once

#include "core/context.h"
#include "cpu/merge_states.h"

namespace attn4j {

// `a` holds the checked views (device pointers).
void cuda_merge_states(const Context& c, const cpu::MergeStatesArgs& a);

}  // namespace attn4j
