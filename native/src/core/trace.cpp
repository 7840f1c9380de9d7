// trace_push / trace_pop (core/trace.h): NVTX3 ranges in builds with CUDA, nothing otherwise.
//
// NVTX3 is header-only (CUDA toolkit): without a profiler attached each call only tests the
// injection function pointer. Measured on an H200 host: ~3 ns per push+pop pair, the same as two
// empty out-of-line functions; attn4j_device_count(CPU) took 7-9 ns with either. Ranges go to an
// "attn4j" domain so that profiles can show or filter them apart from the application's own
// (nsys --nvtx-domain-include=attn4j). Messages are plain ASCII, no category or colour.
#include "core/trace.h"

#ifdef ATTN4J_HAVE_CUDA
#include <nvtx3/nvToolsExt.h>

namespace attn4j {
namespace {

nvtxDomainHandle_t domain() noexcept {
    // Created on first use: a profiler is attached (or not) by then, and library load stays free.
    static const nvtxDomainHandle_t d = nvtxDomainCreateA("attn4j");
    return d;
}

}  // namespace

void trace_push(const char* name) noexcept {
    nvtxEventAttributes_t a{};
    a.version = NVTX_VERSION;
    a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    a.messageType = NVTX_MESSAGE_TYPE_ASCII;
    a.message.ascii = name;
    nvtxDomainRangePushEx(domain(), &a);
}

void trace_pop() noexcept { nvtxDomainRangePop(domain()); }

}  // namespace attn4j

#else

namespace attn4j {
void trace_push(const char*) noexcept {}
void trace_pop() noexcept {}
}  // namespace attn4j

#endif
