#include "core/last_error.h"

#include <cstring>

namespace attn4j {
namespace {

// Fixed-size per-thread buffer: recording an error never allocates (and so never fails, even
// when the error being recorded is an out-of-memory).
constexpr size_t kMaxMessage = 2048;
thread_local char t_last_error[kMaxMessage] = {0};

void store(const char* msg, size_t n) noexcept {
    if (n >= kMaxMessage) n = kMaxMessage - 1;
    std::memcpy(t_last_error, msg, n);
    t_last_error[n] = '\0';
}

}  // namespace

void set_last_error(const std::string& message) noexcept { store(message.data(), message.size()); }

void set_last_error(const char* message) noexcept {
    if (!message) message = "";
    store(message, std::strlen(message));
}

const char* last_error() noexcept { return t_last_error; }

}  // namespace attn4j
