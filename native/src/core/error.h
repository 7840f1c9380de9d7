// The one exception type used inside the library. api/ catches it (and std::bad_alloc, and
// anything else) at the C boundary, stores the message as the thread's last error and returns
// the status. Messages name the offending argument, e.g. "q: shape[2] is 96, expected head_dim 128".
#pragma once

#include <string>
#include <utility>

#include "attn4j.h"

namespace attn4j {

struct Error {
    attn4j_status status;
    std::string message;
};

[[noreturn]] inline void fail(attn4j_status status, std::string message) {
    throw Error{status, std::move(message)};
}

[[noreturn]] inline void invalid(std::string message) {
    fail(ATTN4J_ERR_INVALID_ARGUMENT, std::move(message));
}

}  // namespace attn4j
