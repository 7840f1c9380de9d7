// Prefill plans on a CUDA context: the device half of attn4j_prefill_plan_create / _run /
// _paged_run. attention.cpp checks shapes, dtypes and devices of every argument and the host
// index arrays (qo_indptr, kv_indptr); this unit checks what only CUDA can answer (pointers are
// memory of the plan's GPU, alignment), reads a paged cache's table back to check it and to learn
// the sequence lengths, plans the query tiles and launches the kernel (cuda/prefill.cuh).
//
// A run stages its tile list and CSR offsets from a pinned buffer into plan-owned device memory
// (grown when a larger batch comes), so it cannot be captured in a CUDA graph: a capturing
// stream is rejected. A paged run also synchronizes the stream to read the page table.
#pragma once

#include <memory>

#include "attn4j.h"
#include "core/context.h"
#include "core/kernel_args.h"
#include "core/validate.h"

namespace attn4j {

using CudaPrefillPlanPtr = std::unique_ptr<CudaPrefillPlan, CudaPrefillPlanDeleter>;

// `desc` is validated already. UNSUPPORTED (saying what is supported) for a desc the kernel
// lacks, or in a build without CUDA.
CudaPrefillPlanPtr make_cuda_prefill_plan(const attn4j_attention_desc& desc, Context& ctx);

// Contiguous K/V: a.qo_indptr and a.kv_indptr are checked host arrays, the tensors device views.
void cuda_prefill_run(CudaPrefillPlan& plan, const PrefillArgs& a);

// Paged K/V: a.qo_indptr is a checked host array; `table` passed check_page_table_tensors on the
// plan's device and its contents are checked here.
void cuda_prefill_paged_run(CudaPrefillPlan& plan, const PrefillArgs& a, const attn4j_page_table& table,
                            const PageTableDims& dims);

}  // namespace attn4j
