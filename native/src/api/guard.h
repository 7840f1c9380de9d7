// Shared by the extern "C" entry points. Include FIRST in every api/*.cpp: the visibility pragma
// must see the first inclusion of attn4j.h so that the attn4j_* functions are exported while
// everything else stays hidden (-fvisibility=hidden).
#pragma once

#pragma GCC visibility push(default)
#include "attn4j.h"
#pragma GCC visibility pop

#include <exception>
#include <new>
#include <string>

#include "core/context.h"
#include "core/error.h"
#include "core/last_error.h"
#include "core/trace.h"

namespace attn4j::api {

// Runs `body` and maps every outcome to a status: attn4j::Error -> its status, std::bad_alloc ->
// ATTN4J_ERR_OUT_OF_MEMORY, anything else -> ATTN4J_ERR_INTERNAL; failures set the thread's last
// error. A successful call leaves the last error as it was. The call is one profiler range named
// `function` (core/trace.h), error mapping included.
template <class F>
attn4j_status guard(const char* function, F&& body) noexcept {
    const TraceScope range(function);
    try {
        body();
        return ATTN4J_OK;
    } catch (const Error& e) {
        set_last_error(e.message);
        return e.status >= ATTN4J_ERR_INVALID_ARGUMENT && e.status <= ATTN4J_ERR_INTERNAL
                   ? e.status
                   : ATTN4J_ERR_INTERNAL;
    } catch (const std::bad_alloc&) {
        set_last_error(std::string(function) + ": out of memory");
        return ATTN4J_ERR_OUT_OF_MEMORY;
    } catch (const std::exception& e) {
        try {
            set_last_error(std::string(function) + ": internal error (please report): " + e.what());
        } catch (...) {
            set_last_error("internal error (please report)");
        }
        return ATTN4J_ERR_INTERNAL;
    } catch (...) {
        set_last_error("internal error (please report): unknown exception");
        return ATTN4J_ERR_INTERNAL;
    }
}

// The context behind a handle; throws "<name>: is NULL".
inline Context& context_of(attn4j_context* ctx, const char* name = "ctx") {
    if (!ctx || !ctx->state) invalid(std::string(name) + ": is NULL");
    return *ctx->state;
}

// Operations with no CUDA kernel yet (prefill, measure_read_bandwidth).
inline void require_cpu_context(const Context& c, const char* what) {
    if (c.device_type != ATTN4J_DEVICE_CPU)
        fail(ATTN4J_ERR_UNSUPPORTED,
             std::string("ctx: ") + what + " on CUDA device " + std::to_string(c.device_id) +
                 " is not implemented in this release (decode, append and merge_states run on "
                 "CUDA); use a CPU context");
}

}  // namespace attn4j::api
