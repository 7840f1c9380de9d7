// CPU prefill: tiled flash attention with online softmax over ragged batches, contiguous or paged
// K/V. A PrefillKernel is built once per plan (it owns tile primitives and per-thread scratch),
// then run many times without allocating.
#pragma once

#include <memory>

#include "core/kernel_args.h"

namespace attn4j::cpu {

class PrefillKernel {
public:
    virtual ~PrefillKernel() = default;
    // Runs one validated prefill on `num_threads` threads (fixed at creation).
    virtual void run(const PrefillArgs& args) = 0;
    // Short name of the path in use, for build/plan info (e.g. "onednn-amx-bf16", "avx512-f32").
    virtual const char* path_name() const = 0;
};

// desc is validated already; throws std::bad_alloc / attn4j::Error on failure (caught in api/).
std::unique_ptr<PrefillKernel> make_prefill_kernel(const attn4j_attention_desc& desc,
                                                   int num_threads);

}  // namespace attn4j::cpu
