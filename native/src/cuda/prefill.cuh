// CUDA prefill: FlashAttention-2-style tensor-core kernel (mma.sync m16n8k16, BF16 or F16 inputs,
// F32 accumulation and online softmax in registers) over a ragged batch, causal (bottom-right
// aligned) or not, reading K/V from contiguous ragged rows or from the HND pages of a paged cache.
//
// The host (api/cuda_prefill.cpp) cuts every sequence into query tiles (prefill_tile_rows() rows),
// orders them by decreasing KV work (causal tiles near the end of a long sequence first, so the
// tail of the grid is short tiles), and hands the list to the kernel in device memory together
// with device copies of the CSR offsets. One CTA computes one (tile, query head); consecutive
// CTAs share a tile and differ in head, so the query heads of a GQA group read the same K/V
// tiles close in time (L2 reuse).
//
// Supported: head_dim 64 and 128; q and K/V the same dtype, BF16 or F16; out F32 / F16 / BF16
// (run-time switch in the epilogue). Rows of q, k, v, out must be 16-byte aligned.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attn4j.h"
#include "cuda/attn_io.cuh"

namespace attn4j::cuda {

constexpr int kPrefillTileKeys = 64;  // keys per K/V tile in shared memory

constexpr int kPrefillRowsPerWarp = 32;  // two m16 row blocks
constexpr int kPrefillWgmmaRows = 128;   // two warpgroups of 64 rows (sm90a/prefill_wgmma.cu)

// The prefill kernels: mma.sync with 4 or 8 warps of kPrefillRowsPerWarp rows (sm_80 and up), and
// the Hopper wgmma kernel (head_dim 128; sm_90a code, compute capability 9.0 devices).
enum class PrefillKernel : int32_t { kMma4, kMma8, kWgmma };

// Query rows per tile of a kernel: the host cuts every sequence into tiles of this many rows.
constexpr int prefill_tile_rows(PrefillKernel k) {
    return k == PrefillKernel::kMma8 ? 8 * kPrefillRowsPerWarp
                                     : k == PrefillKernel::kMma4 ? 4 * kPrefillRowsPerWarp : kPrefillWgmmaRows;
}

// True when this library holds the wgmma kernel (built with sm_90a code) and `device` has compute
// capability 9.0.
bool prefill_wgmma_available(int device);

// The kernel for a run. `wgmma`: prefill_wgmma_available for the plan's device. The wgmma kernel
// serves head_dim 128 where available. Otherwise mma.sync with 8 warps by default; 4 for head_dim
// 64 and for causal contiguous batches whose mean n_q is below 24576, where 128-row tiles waste
// less on the diagonal and balance better (on H200 4 warps won at 16k and below, 8 at 32k).
// ATTN4J_CUDA_PREFILL_TILE=4x2|8x2 forces an mma.sync kernel (A/B runs).
PrefillKernel prefill_kernel_for(int head_dim, bool causal, bool paged, int64_t mean_q_len, bool wgmma);

// Query rows q_start .. q_start + prefill_tile_rows(kernel) of sequence `seq` (clipped to its length).
struct PrefillTile {
    int32_t seq;
    int32_t q_start;
};

struct PrefillParams : AttnIo {  // lse: natural log
    const int* qo_indptr;  // device, [batch + 1]
    const PrefillTile* tiles;
    int num_tiles;
    // K/V. Contiguous: rows kv_indptr[b] .. kv_indptr[b + 1] of k / v with strides kv_row,
    // kv_head. Paged (page_indices != nullptr): sequence b owns pages
    // page_indices[page_indptr[b] .. page_indptr[b + 1]], its last page holds last_page_len[b]
    // tokens; element (page, head, slot, d) at page * page_stride + head * head_stride + slot * D.
    const void* k;
    const void* v;
    int64_t k_row, k_head, v_row, v_head;
    const int* kv_indptr;
    const int* page_indptr;
    const int* page_indices;
    const int* last_page_len;
    int page_size;
    int64_t page_stride, head_stride;
    int num_qo_heads, group;
    float scale_log2;  // sm_scale * log2(e)
    int causal;
    PrefillKernel kernel;  // from prefill_kernel_for(), the one the tiles were cut for
};

// True when the kernel implements this desc; otherwise the caller answers UNSUPPORTED.
bool prefill_supported(const attn4j_attention_desc& desc);

// Enqueues the prefill kernel for p.num_tiles * p.num_qo_heads CTAs on `stream` (the current
// device is the plan's). `paged`: K/V from pages. Returns cudaGetLastError after the launch.
cudaError_t launch_prefill(const PrefillParams& p, int head_dim, attn4j_dtype dtype, bool paged,
                           cudaStream_t stream);

}  // namespace attn4j::cuda
