// CPU paged decode: one query token per sequence against its paged KV. Each task streams one
// (sequence, kv head, KV chunk) once and serves every query head of the GQA group from it;
// long sequences are split into chunks across threads and the partial (output, LSE) states are
// merged. The SIMD path (AVX-512 / AVX2 / scalar) is chosen at creation from cpu_features().
#pragma once

#include <memory>

#include "core/cpu_features.h"
#include "core/kernel_args.h"

namespace attn4j::cpu {

class DecodeKernel {
public:
    virtual ~DecodeKernel() = default;
    // Runs one validated decode on the threads fixed at creation; allocates nothing.
    virtual void run(const DecodeArgs& args) = 0;
    // e.g. "avx512", "avx2", "scalar".
    virtual const char* path_name() const = 0;
};

// desc is validated already (dtypes, head_dim, page_size > 0, max_batch_size > 0); sizes the
// split-KV workspace once. Throws std::bad_alloc / attn4j::Error (caught in api/).
std::unique_ptr<DecodeKernel> make_decode_kernel(const attn4j_attention_desc& desc,
                                                 int num_threads);

// Test hook: the same kernel on a chosen SIMD path. `isa` is capped at cpu_features().isa, so
// asking for a path this CPU (or ATTN4J_ISA) does not allow gives the best allowed one instead.
std::unique_ptr<DecodeKernel> make_decode_kernel_for_isa(const attn4j_attention_desc& desc,
                                                         int num_threads, Isa isa);

}  // namespace attn4j::cpu
