// Quantized decode chunk kernels: scratch size and per-ISA dispatch (decode_quant.h).
#include "cpu/decode_quant.h"

#include "cpu/decode_quant_impl.h"

namespace attn4j::cpu {

void decode_quant_chunk_scalar(const QuantDecodeChunk& c);
void decode_quant_chunk_avx2(const QuantDecodeChunk& c);
void decode_quant_chunk_avx512vnni(const QuantDecodeChunk& c);

size_t quant_chunk_scratch_bytes(int group, int head_dim, int page_size) {
    (void)page_size;
    return quant_impl::Scratch(nullptr, group, head_dim).bytes;
}

QuantChunkFn quant_chunk_fn(Isa isa) {
    const Isa best = cpu_features().isa;
    if (static_cast<int>(isa) > static_cast<int>(best)) isa = best;
    // AVX-512 without VNNI (Skylake-X) runs the AVX2 kernel: without vpdpbusd the wider integer
    // phases would not pay for themselves.
    if (isa == Isa::avx512 && cpu_features().avx512_vnni) return decode_quant_chunk_avx512vnni;
    if (isa == Isa::avx512 || isa == Isa::avx2) return decode_quant_chunk_avx2;
    return decode_quant_chunk_scalar;
}

}  // namespace attn4j::cpu
