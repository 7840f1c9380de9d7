// AVX2 + FMA + F16C fused quantized decode chunk kernel: decode_quant_impl.h over the
// Avx2QuantOps policy (quant_ops_avx2.h). Compiled with the AVX2 flags (file name suffix), called
// only when cpu_features() reports AVX2, FMA and F16C.
#include "cpu/quant_ops_avx2.h"

namespace attn4j::cpu {

void decode_quant_chunk_avx2(const QuantDecodeChunk& c) { quant_impl::dispatch<Avx2QuantOps>(c); }

}  // namespace attn4j::cpu
