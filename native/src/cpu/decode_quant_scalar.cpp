// Portable scalar quantized decode chunk kernel: the generic kernel of decode_quant_impl.h
// (codes decoded one token at a time, double accumulators). Reference-grade fallback.
#include "cpu/decode_quant_impl.h"

namespace attn4j::cpu {
namespace {
struct ScalarQuantOps {};
}  // namespace

void decode_quant_chunk_scalar(const QuantDecodeChunk& c) { quant_impl::GenericKernel<ScalarQuantOps>::run(c); }

}  // namespace attn4j::cpu
