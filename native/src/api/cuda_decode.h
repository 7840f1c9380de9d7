// Decode plans on a CUDA context: the device half of attn4j_decode_plan_create / _run. The C entry
// points in attention.cpp check everything that needs no device access (shapes, dtypes, strides,
// size_bytes, device_type / device_id of every argument) for both devices; this unit adds what
// only CUDA can answer and launches the kernel.
#pragma once

#include <memory>

#include "attn4j.h"
#include "core/context.h"
#include "core/kernel_args.h"
#include "core/validate.h"

namespace attn4j {

using CudaDecodePlanPtr = std::unique_ptr<CudaDecodePlan, CudaDecodePlanDeleter>;

// `desc` is validated already; the plan runs on ctx's device and enqueues on ctx's current stream
// (ctx must outlive the plan). UNSUPPORTED (with what is supported) for a desc the CUDA kernels
// lack; DEVICE / OUT_OF_MEMORY for CUDA failures. Builds without CUDA: UNSUPPORTED.
CudaDecodePlanPtr make_cuda_decode_plan(const attn4j_attention_desc& desc, Context& ctx);

// One decode over `num_segments` caches (segment 0: a.kv, then a.extra) with tables[s] (whose
// tensors passed check_page_table_tensors on the plan's device, dims[s]). `a` holds the checked q /
// out / lse / kv views (device pointers); `a.table` is filled here. Several segments: one kernel
// per segment into plan scratch (a sequence may own no tokens in a segment), then an LSE merge;
// the first segmented run allocates that scratch and, for a float segment of a quantized plan,
// a BF16/F16 kernel with its workspace, so capture a segmented run in a graph only after one
// uncaptured run. A sequence empty in every segment gets output 0 and LSE -inf.
// Before launching: 16-byte alignment of the pages and cudaPointerGetAttributes of every buffer
// (host memory labelled CUDA, memory of another GPU). On the default stream the page table's
// CONTENTS are then copied synchronously to a plan-owned pinned buffer and checked as on CPU (the
// call synchronizes with the legacy default stream); on any other stream the kernels check them
// and nothing is read back (capturable; errors reach attn4j_stream_synchronize).
void cuda_decode_run(CudaDecodePlan& plan, DecodeArgs& a, const attn4j_page_table* tables,
                     const PageTableDims* dims, int num_segments);

}  // namespace attn4j
