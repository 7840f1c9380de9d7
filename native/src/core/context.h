// Contexts and plans behind the opaque C handles. A plan holds a shared_ptr to its context's
// state, so a context handle may be destroyed before its plans.
#pragma once

#include <memory>

#include "attn4j.h"
#include "cpu/decode.h"
#include "cpu/prefill.h"

namespace attn4j {

// Scratch of attn4j_paged_kv_append on a CUDA context (api/cuda_append.cpp; defined only in
// CUDA builds): reused device and pinned host buffers, so appends allocate only when they grow.
class CudaAppendScratch;
struct CudaAppendScratchDeleter {
    void operator()(CudaAppendScratch* p) const noexcept;
};

// Where decode kernels on a non-default stream report the first page table they found invalid
// (api/cuda_table_errors.cpp; defined only in CUDA builds): mapped pinned memory, read and
// cleared by attn4j_stream_synchronize.
class CudaTableErrors;
struct CudaTableErrorsDeleter {
    void operator()(CudaTableErrors* p) const noexcept;
};

struct Context {
    attn4j_device_type device_type = ATTN4J_DEVICE_CPU;
    int32_t device_id = 0;
    int num_threads = 1;  // resolved: > 0
    // cudaStream_t of the current stream (attn4j_context_set_stream); nullptr = the default
    // stream. Every CUDA launch and copy of this context goes there.
    void* cuda_stream = nullptr;
    // The stream handle behind cuda_stream (nullptr = the default stream): its capture state and
    // the check that a stream is not destroyed while current.
    attn4j_stream* current_stream = nullptr;
    std::unique_ptr<CudaAppendScratch, CudaAppendScratchDeleter> cuda_append;  // made on first use
    // Made when a non-default stream first becomes current.
    std::unique_ptr<CudaTableErrors, CudaTableErrorsDeleter> cuda_table_errors;
};

// Number of CUDA devices visible; 0 without CUDA support in the build, driver or GPU. Never
// throws.
int cuda_device_count() noexcept;

// A decode plan on a CUDA context (api/cuda_decode.cpp; defined only in CUDA builds). Opaque
// here so that this header needs no CUDA headers.
class CudaDecodePlan;
struct CudaDecodePlanDeleter {
    void operator()(CudaDecodePlan* p) const noexcept;
};
// A prefill plan on a CUDA context (api/cuda_prefill.cpp), opaque for the same reason.
class CudaPrefillPlan;
struct CudaPrefillPlanDeleter {
    void operator()(CudaPrefillPlan* p) const noexcept;
};

}  // namespace attn4j

struct attn4j_context {
    std::shared_ptr<attn4j::Context> state;
};

struct attn4j_plan {
    enum class Kind { decode, prefill };
    Kind kind = Kind::decode;
    std::shared_ptr<attn4j::Context> ctx;
    attn4j_attention_desc desc{};
    std::unique_ptr<attn4j::cpu::DecodeKernel> decode;
    std::unique_ptr<attn4j::cpu::PrefillKernel> prefill;
    std::unique_ptr<attn4j::CudaDecodePlan, attn4j::CudaDecodePlanDeleter> cuda_decode;
    std::unique_ptr<attn4j::CudaPrefillPlan, attn4j::CudaPrefillPlanDeleter> cuda_prefill;
};
