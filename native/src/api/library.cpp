// Library-level entry points: versions, build / CPU info, errors, status names, struct sizes,
// device counts.
#include "api/guard.h"

#include <oneapi/dnnl/dnnl.h>

#include <cstring>
#include <string>

#include "attn4j_build_config.h"
#include "core/cpu_features.h"
#include "cpu/decode.h"
#include "cpu/prefill.h"

using namespace attn4j;

extern "C" {

uint32_t attn4j_abi_version(void) { return ATTN4J_ABI_VERSION; }

const char* attn4j_build_info(void) {
    static const std::string info = [] {
        std::string s;
        try {
            s += "version=" ATTN4J_VERSION_STRING "\n";
            s += "abi=" + std::to_string(ATTN4J_ABI_VERSION) + "\n";
            s += "compiler=" ATTN4J_COMPILER_STRING "\n";
            s += "build_type=" ATTN4J_BUILD_TYPE_STRING "\n";
            s += "isa_paths=" ATTN4J_ISA_PATHS_STRING "\n";
            s += "openmp=" ATTN4J_OPENMP_STRING "\n";
            const dnnl_version_t* v = dnnl_version();
            s += "onednn=" + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                 std::to_string(v->patch) + " (" + (v->hash ? v->hash : "") + ")\n";
#ifdef ATTN4J_HAVE_CUDA
            s += "cuda=" ATTN4J_CUDA_VERSION_STRING "\n";
            s += "cuda_archs=" ATTN4J_CUDA_ARCHS_STRING "\n";
            s += "cuda_runtime=static\n";
#else
            s += "cuda=off\n";
#endif
            if (std::strlen(ATTN4J_SANITIZE_STRING)) s += "sanitize=" ATTN4J_SANITIZE_STRING "\n";
        } catch (...) {
        }
        return s;
    }();
    return info.c_str();
}

const char* attn4j_cpu_info(void) {
    static const std::string info = [] {
        std::string s;
        try {
            s = cpu_features_string();
            attn4j_attention_desc d{};
            d.struct_size = sizeof d;
            d.num_qo_heads = 8;
            d.num_kv_heads = 2;
            d.head_dim = 128;
            d.q_dtype = d.kv_dtype = d.out_dtype = ATTN4J_DTYPE_BF16;
            d.sm_scale = 0.088f;
            d.page_size = 16;
            d.max_batch_size = 1;
            try {
                s += std::string(" decode=") + cpu::make_decode_kernel(d, 1)->path_name();
            } catch (...) {
                s += " decode=unavailable";
            }
            try {
                s += std::string(" prefill_bf16=") + cpu::make_prefill_kernel(d, 1)->path_name();
            } catch (...) {
                s += " prefill_bf16=unavailable";
            }
        } catch (...) {
        }
        return s;
    }();
    return info.c_str();
}

const char* attn4j_last_error(void) { return attn4j::last_error(); }

const char* attn4j_status_name(attn4j_status status) {
    switch (status) {
        case ATTN4J_OK: return "ATTN4J_OK";
        case ATTN4J_ERR_INVALID_ARGUMENT: return "ATTN4J_ERR_INVALID_ARGUMENT";
        case ATTN4J_ERR_UNSUPPORTED: return "ATTN4J_ERR_UNSUPPORTED";
        case ATTN4J_ERR_OUT_OF_MEMORY: return "ATTN4J_ERR_OUT_OF_MEMORY";
        case ATTN4J_ERR_DEVICE: return "ATTN4J_ERR_DEVICE";
        case ATTN4J_ERR_INTERNAL: return "ATTN4J_ERR_INTERNAL";
        default: return "ATTN4J_STATUS_UNKNOWN";
    }
}

uint64_t attn4j_struct_size(const char* name) {
    if (!name) return 0;
    struct Entry {
        const char* name;
        uint64_t size;
    };
    static const Entry entries[] = {
        {"attn4j_tensor", sizeof(attn4j_tensor)},
        {"attn4j_context_options", sizeof(attn4j_context_options)},
        {"attn4j_paged_kv", sizeof(attn4j_paged_kv)},
        {"attn4j_kv_quant", sizeof(attn4j_kv_quant)},
        {"attn4j_page_table", sizeof(attn4j_page_table)},
        {"attn4j_attention_desc", sizeof(attn4j_attention_desc)},
    };
    for (const Entry& e : entries)
        if (!std::strcmp(name, e.name)) return e.size;
    return 0;
}

attn4j_status attn4j_device_count(attn4j_device_type device_type, int32_t* out_count) {
    return api::guard("attn4j_device_count", [&] {
        if (!out_count) invalid("out_count: is NULL");
        if (device_type == ATTN4J_DEVICE_CPU) {
            *out_count = 1;
        } else if (device_type == ATTN4J_DEVICE_CUDA) {
            *out_count = cuda_device_count();
        } else {
            invalid("device_type: " + std::to_string(device_type) +
                    " is not a device type (ATTN4J_DEVICE_CPU = 1, ATTN4J_DEVICE_CUDA = 2)");
        }
    });
}

}  // extern "C"
