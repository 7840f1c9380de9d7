// attn4j_context_create / attn4j_context_destroy.
#include "api/guard.h"

#include <omp.h>

#include <memory>
#include <string>

#include "core/validate.h"

using namespace attn4j;

extern "C" {

attn4j_status attn4j_context_create(const attn4j_context_options* options, attn4j_context** out_ctx) {
    return api::guard("attn4j_context_create", [&] {
        require_non_null(out_ctx, "out_ctx");
        *out_ctx = nullptr;
        require_non_null(options, "options");
        check_struct_size(options->struct_size, sizeof(attn4j_context_options), "options",
                          "attn4j_context_options");
        const attn4j_context_options& o = *options;
        if (o.num_threads < 0)
            invalid("options.num_threads: " + std::to_string(o.num_threads) +
                    ", expected >= 0 (0 = one per available core)");
        auto state = std::make_shared<Context>();
        state->device_type = o.device_type;
        state->device_id = o.device_id;
        if (o.device_type == ATTN4J_DEVICE_CPU) {
            if (o.device_id != 0)
                invalid("options.device_id: " + std::to_string(o.device_id) +
                        " for device_type CPU, expected 0 (there is one CPU device)");
        } else if (o.device_type == ATTN4J_DEVICE_CUDA) {
            if (o.device_id < 0)
                invalid("options.device_id: " + std::to_string(o.device_id) +
                        " for device_type CUDA, expected >= 0");
#ifndef ATTN4J_HAVE_CUDA
            fail(ATTN4J_ERR_DEVICE, "options.device_type: CUDA device cuda:" +
                                        std::to_string(o.device_id) +
                                        " requested, but this library was built without CUDA "
                                        "(cuda=off in attn4j_build_info)");
#else
            const int n = cuda_device_count();
            if (n == 0)
                fail(ATTN4J_ERR_DEVICE, "options.device_type: no CUDA device (cuda:" +
                                            std::to_string(o.device_id) +
                                            " requested; no driver or GPU visible)");
            if (o.device_id >= n)
                fail(ATTN4J_ERR_DEVICE, "options.device_id: cuda:" + std::to_string(o.device_id) +
                                            " requested but only " + std::to_string(n) +
                                            " CUDA device(s) are visible");
#endif
        } else {
            invalid("options.device_type: " + std::to_string(o.device_type) +
                    " is not a device type (ATTN4J_DEVICE_CPU = 1, ATTN4J_DEVICE_CUDA = 2)");
        }
        state->num_threads = o.num_threads > 0 ? o.num_threads : std::max(1, omp_get_num_procs());
        *out_ctx = new attn4j_context{std::move(state)};
    });
}

attn4j_status attn4j_context_destroy(attn4j_context* ctx) {
    return api::guard("attn4j_context_destroy", [&] { delete ctx; });
}

}  // extern "C"
