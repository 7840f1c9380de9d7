// Profiler ranges of the C entry points (core/trace.h): a static NVTX injection, the hook Nsight
// attaches through, records every range; each attn4j_* call must open exactly one range named
// after itself in the "attn4j" domain and close it, failing calls included. Builds without CUDA
// have no ranges: SKIP.
#include <cstdio>
#include <string>
#include <vector>

#include "a4j_test.h"
#include "attn4j.h"

#ifdef ATTN4J_HAVE_CUDA
#define NVTX_NO_IMPL  // types only: the implementation (and its weak injection hook) is the library's
#include <nvtx3/nvToolsExt.h>

namespace {

std::vector<std::string> g_events;
int g_domain_tag;
nvtxDomainHandle_t tag() { return reinterpret_cast<nvtxDomainHandle_t>(&g_domain_tag); }

nvtxDomainHandle_t NVTX_API domain_create(const char* name) {
    g_events.push_back(std::string("domain ") + name);
    return tag();
}
int NVTX_API range_push(nvtxDomainHandle_t d, const nvtxEventAttributes_t* a) {
    g_events.push_back(std::string(d == tag() ? "push " : "push(other domain) ") + a->message.ascii);
    return 0;
}
int NVTX_API range_pop(nvtxDomainHandle_t d) {
    g_events.push_back(d == tag() ? "pop" : "pop(other domain)");
    return 0;
}

int NVTX_API init(NvtxGetExportTableFunc_t get) {
    const auto* cb = static_cast<const NvtxExportTableCallbacks*>(get(NVTX_ETID_CALLBACKS));
    NvtxFunctionTable t = nullptr;
    unsigned n = 0;
    if (!cb || !cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &t, &n)) return 0;
    *t[NVTX_CBID_CORE2_DomainCreateA] = reinterpret_cast<NvtxFunctionPointer>(&domain_create);
    *t[NVTX_CBID_CORE2_DomainRangePushEx] = reinterpret_cast<NvtxFunctionPointer>(&range_push);
    *t[NVTX_CBID_CORE2_DomainRangePop] = reinterpret_cast<NvtxFunctionPointer>(&range_pop);
    return 1;
}

}  // namespace

// Overrides the weak hook in the library's NVTX implementation (static injection).
extern "C" {
NvtxInitializeInjectionNvtxFunc_t InitializeInjectionNvtx2_fnptr = &init;
}

int main() {
    int32_t count = -1;
    CHECK(attn4j_device_count(ATTN4J_DEVICE_CPU, &count) == ATTN4J_OK);
    attn4j_context* ctx = a4j_test::make_context(ATTN4J_DEVICE_CPU, 1);
    CHECK(attn4j_merge_states(nullptr, nullptr, nullptr, nullptr, nullptr) == ATTN4J_ERR_INVALID_ARGUMENT);
    CHECK(attn4j_context_destroy(ctx) == ATTN4J_OK);
    (void)attn4j_status_name(ATTN4J_OK);  // no work, no range

    const std::vector<std::string> want = {"domain attn4j",
                                           "push attn4j_device_count", "pop",
                                           "push attn4j_context_create", "pop",
                                           "push attn4j_merge_states", "pop",
                                           "push attn4j_context_destroy", "pop"};
    std::string got;
    for (const std::string& e : g_events) got += "\n  " + e;
    CHECK_MSG(g_events == want, "recorded:" + got);
    std::printf("ranges:%s\n", got.c_str());
    return a4j_test::finish("test_trace");
}

#else

int main() {
    std::printf("SKIP: built without CUDA, no NVTX ranges (test_trace)\n");
    return 0;
}

#endif
