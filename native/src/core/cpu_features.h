// CPU features detected once at run time (cpuid + xgetbv, so OS support for the wide registers
// is honoured), and the SIMD path kernels dispatch to. ATTN4J_ISA=avx512|avx2|scalar in the
// environment caps the path (tests use it to exercise every path on one machine).
#pragma once

#include <string>

namespace attn4j {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2 };

struct CpuFeatures {
    bool avx2 = false, fma = false, f16c = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
    bool avx512_bf16 = false, avx512_fp16 = false, avx512_vnni = false;
    bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
    Isa isa = Isa::scalar;  // best usable path after the ATTN4J_ISA cap
};

const CpuFeatures& cpu_features();
const char* isa_name(Isa isa);
// "isa=avx512 features=avx2,fma,..." for attn4j_cpu_info().
const std::string& cpu_features_string();

}  // namespace attn4j
