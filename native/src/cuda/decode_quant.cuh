// CUDA paged decode over quantized KV pages (INT8 / INT4 / INT2, see attn4j_kv_quant): codes are
// read straight from the packed pages and dequantized in registers; scores and P.V run on the
// tensor cores (mma.sync m16n8k16, f16 inputs, f32 accumulation). Default (GQA group <= 8,
// power-of-two page size): one CTA of 8 warps streams one (sequence, tile of up to 8 kv heads, KV
// chunk), a page's blocks of those heads read together, one warp (or several) per kv head; else
// one CTA of 4 warps per (sequence, kv head, tile of up to 8 query heads, KV chunk). Long
// sequences are split into page-aligned chunks merged by an LSE kernel, as in decode.cuh. The page format (group size,
// meta dtype) and the rotations are read from DecodeArgs::kv at run time, so one plan serves any
// of them. run() allocates nothing and never synchronises (CUDA-graph capturable).
#pragma once

#include <cuda_runtime.h>

#include <memory>

#include "core/kernel_args.h"
#include "cuda/decode.cuh"

namespace attn4j::cuda {

// True when the quantized kernels implement this desc (kv INT8/INT4/INT2, head_dim 64/128,
// q/out F32/F16/BF16).
bool quant_decode_supported(const attn4j_attention_desc& desc);

// Same contract as make_decode_kernel. DecodeArgs::kv must describe a quantized cache (quant.bits
// matching desc.kv_dtype, group size 32/64/128 dividing head_dim, meta F32/F16; rotation matrices
// in device memory). run() returns cudaErrorInvalidValue for a run it cannot serve (format
// mismatch) and cudaErrorMisalignedAddress for page buffers not 4-byte aligned.
std::unique_ptr<DecodeKernel> make_quant_decode_kernel(const attn4j_attention_desc& desc, int device_id,
                                                       const DecodeTuning& tuning = DecodeTuning{});

}  // namespace attn4j::cuda
