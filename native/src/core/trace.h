// Profiler ranges: api::guard() opens one per C entry point, named after it, so Nsight Systems
// shows every attn4j call (and so every Java call, which maps 1:1) on the calling thread's
// timeline. NVTX3 in CUDA builds, no-ops otherwise (core/trace.cpp).
#pragma once

namespace attn4j {

// `name` must outlive the range (the entry points pass string literals). Ranges nest per thread.
void trace_push(const char* name) noexcept;
void trace_pop() noexcept;

class TraceScope {
public:
    explicit TraceScope(const char* name) noexcept { trace_push(name); }
    ~TraceScope() { trace_pop(); }
    TraceScope(const TraceScope&) = delete;
    TraceScope& operator=(const TraceScope&) = delete;
};

}  // namespace attn4j
