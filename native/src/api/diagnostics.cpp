// attn4j_measure_read_bandwidth.
#include "api/guard.h"

#include <string>

#include "cpu/read_bandwidth.h"

using namespace attn4j;

extern "C" {

attn4j_status attn4j_measure_read_bandwidth(attn4j_context* ctx, int64_t bytes, int32_t repeats,
                                            double* out_gb_per_s) {
    return api::guard("attn4j_measure_read_bandwidth", [&] {
        Context& c = api::context_of(ctx);
        if (!out_gb_per_s) invalid("out_gb_per_s: is NULL");
        if (bytes <= 0) invalid("bytes: " + std::to_string(bytes) + ", expected > 0");
        if (bytes > (int64_t(1) << 46))
            invalid("bytes: " + std::to_string(bytes) + ", expected at most 2^46 (64 TiB)");
        if (repeats < 1) invalid("repeats: " + std::to_string(repeats) + ", expected >= 1");
        api::require_cpu_context(c, "measure_read_bandwidth");
        *out_gb_per_s = cpu::measure_read_bandwidth(bytes, repeats, c.num_threads);
    });
}

}  // extern "C"
