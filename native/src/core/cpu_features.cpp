#include "core/cpu_features.h"

#include <cpuid.h>

#include <cstdlib>
#include <cstring>

namespace attn4j {
namespace {

unsigned long long xgetbv0() {
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<unsigned long long>(edx) << 32) | eax;
}

CpuFeatures detect() {
    CpuFeatures f;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = c & (1u << 27);
    const bool fma = c & (1u << 12), f16c = c & (1u << 29), avx = c & (1u << 28);
    const unsigned long long xcr0 = osxsave ? xgetbv0() : 0;
    const bool ymm_os = (xcr0 & 0x6) == 0x6;
    const bool zmm_os = (xcr0 & 0xE6) == 0xE6;
    const bool amx_os = (xcr0 & (3ull << 17)) == (3ull << 17);
    if (__get_cpuid_max(0, nullptr) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = avx && ymm_os && (b & (1u << 5));
    f.fma = fma && ymm_os;
    f.f16c = f16c && ymm_os;
    f.avx512f = zmm_os && (b & (1u << 16));
    f.avx512dq = zmm_os && (b & (1u << 17));
    f.avx512bw = zmm_os && (b & (1u << 30));
    f.avx512vl = zmm_os && (b & (1u << 31));
    f.avx512_fp16 = zmm_os && (d & (1u << 23));
    f.avx512_vnni = zmm_os && (c & (1u << 11));
    f.amx_bf16 = amx_os && (d & (1u << 22));
    f.amx_tile = amx_os && (d & (1u << 24));
    f.amx_int8 = amx_os && (d & (1u << 25));
    unsigned a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    f.avx512_bf16 = zmm_os && (a1 & (1u << 5));

    Isa best = Isa::scalar;
    if (f.avx2 && f.fma && f.f16c) best = Isa::avx2;
    if (best == Isa::avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq) best = Isa::avx512;
    if (const char* cap = std::getenv("ATTN4J_ISA")) {
        Isa want = best;
        if (!std::strcmp(cap, "scalar")) want = Isa::scalar;
        else if (!std::strcmp(cap, "avx2")) want = Isa::avx2;
        else if (!std::strcmp(cap, "avx512")) want = Isa::avx512;
        if (static_cast<int>(want) < static_cast<int>(best)) best = want;
    }
    f.isa = best;
    return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
    static const CpuFeatures features = detect();
    return features;
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx512: return "avx512";
        case Isa::avx2: return "avx2";
        default: return "scalar";
    }
}

const std::string& cpu_features_string() {
    static const std::string s = [] {
        const CpuFeatures& f = cpu_features();
        std::string out = std::string("isa=") + isa_name(f.isa) + " features=";
        const std::pair<bool, const char*> all[] = {
            {f.avx2, "avx2"}, {f.fma, "fma"}, {f.f16c, "f16c"}, {f.avx512f, "avx512f"},
            {f.avx512bw, "avx512bw"}, {f.avx512vl, "avx512vl"}, {f.avx512dq, "avx512dq"},
            {f.avx512_bf16, "avx512_bf16"}, {f.avx512_vnni, "avx512_vnni"}, {f.avx512_fp16, "avx512_fp16"},
            {f.amx_tile, "amx_tile"}, {f.amx_bf16, "amx_bf16"}, {f.amx_int8, "amx_int8"}};
        bool first = true;
        for (auto& [on, name] : all) {
            if (!on) continue;
            if (!first) out += ',';
            out += name;
            first = false;
        }
        return out;
    }();
    return s;
}

}  // namespace attn4j
