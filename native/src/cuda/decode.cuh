// CUDA paged decode: one query token per sequence against its paged KV (HND pages, CSR page
// table on the device). Mirrors cpu/decode.h. One CTA streams one (sequence, kv head, KV chunk)
// once and serves every query head of the GQA group from it (up to 8 query heads per CTA; larger
// groups are tiled by 8 and re-read KV once per tile). Long sequences are split into page-aligned
// chunks so that batch * kv_heads * chunks fills the GPU; partial (output, LSE) states go to the
// plan's workspace and a light merge kernel combines them. The chunk count is chosen on the host
// from the batch size alone (sequence lengths live on the device and are never read back); each
// CTA derives its page range from its sequence's length, so short sequences stay whole.
//
// Supported: head_dim 64 and 128; KV BF16 / F16; q and out F32 / F16 / BF16 (q is converted to
// F32 in-kernel, out is written by a run-time switch, so neither multiplies the instantiations).
// run() allocates nothing and never synchronises: it can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

#include "core/kernel_args.h"
#include "cuda/table_check.cuh"

namespace attn4j::cuda {

// Knobs for tests and benchmarks; the defaults are what plans use.
struct DecodeTuning {
    int min_chunk_tokens = 128;  // never split a sequence finer than this (rounded up to pages)
    int force_chunks = 0;        // > 0: use exactly this many chunks per sequence (tests)
    int ctas_per_sm = 0;         // 0: occupancy from cudaOccupancyMaxActiveBlocksPerMultiprocessor
    bool dependent_merge = true; // split runs launch the merge as a dependent launch on sm_90+
                                 // (cuda/dependent_launch.cuh; ATTN4J_CUDA_PDL=0 turns it off)
};

class DecodeKernel {
public:
    virtual ~DecodeKernel() = default;
    // One decode. All pointers in `args` (q, out, lse, pages, page table) are device pointers on
    // the plan's device; args.table.batch <= desc.max_batch_size. The table's contents are
    // checked in the kernels as `check` says (cuda/table_check.cuh): a sequence with an invalid
    // table gets NaN rows. Enqueues one kernel (two when split: decode + merge) on `stream`;
    // returns cudaGetLastError after the launches. Runs of one plan must not overlap (they share
    // the workspace): use one stream per plan.
    virtual cudaError_t run(const DecodeArgs& args, cudaStream_t stream, const TableCheck& check = TableCheck{}) = 0;
    // Split count a run with this batch size uses (1 = no split, no merge kernel).
    virtual int num_chunks(int batch) const = 0;
    // Device bytes of split-KV workspace owned by the plan (allocated once at creation).
    virtual size_t workspace_bytes() const = 0;
    virtual const char* path_name() const = 0;  // e.g. "cuda-sm90"
};

// True when the CUDA kernels implement this desc (head_dim 64/128, KV BF16/F16, q/out
// F32/F16/BF16); otherwise the caller answers ATTN4J_ERR_UNSUPPORTED.
bool decode_supported(const attn4j_attention_desc& desc);

// desc is validated already. Sizes and allocates the split-KV workspace on `device_id` (the
// current device is restored afterwards). Throws attn4j::Error: UNSUPPORTED for a desc the CUDA
// kernels lack, OUT_OF_MEMORY / DEVICE for CUDA failures.
std::unique_ptr<DecodeKernel> make_decode_kernel(const attn4j_attention_desc& desc, int device_id,
                                                 const DecodeTuning& tuning = DecodeTuning{});

}  // namespace attn4j::cuda
