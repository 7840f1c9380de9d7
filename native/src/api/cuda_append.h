// attn4j_paged_kv_append on a CUDA context: the device half (host copies of the page table and
// append_indptr checked as on CPU, device pointer checks, an Inf/NaN scan of k and v on the
// device before anything is written, then the append kernel), all on the context's current
// stream, which it synchronizes (several times: the checks run on the host), so appends cannot be
// captured in a CUDA graph (rejected during a capture). Buffers come from the context's
// CudaAppendScratch and are reused across calls. Builds without CUDA: UNSUPPORTED.
#pragma once

#include "attn4j.h"
#include "core/context.h"
#include "core/kernel_args.h"

namespace attn4j {

void cuda_paged_kv_append(Context& c, const PagedKvView& kv, const attn4j_page_table* table,
                          const attn4j_tensor* append_indptr, const attn4j_tensor* k, const attn4j_tensor* v);

}  // namespace attn4j
