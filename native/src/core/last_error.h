// The calling thread's last failure message (attn4j_last_error()). Set only on failure: a
// successful call does not clear it, so after a failed call the message stays readable until the
// next failure on the same thread.
#pragma once

#include <string>

namespace attn4j {

void set_last_error(const std::string& message) noexcept;
void set_last_error(const char* message) noexcept;
const char* last_error() noexcept;

}  // namespace attn4j
