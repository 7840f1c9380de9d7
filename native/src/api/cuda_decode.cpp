// Decode plans on a CUDA context (see cuda_decode.h).
//
// On the default stream a run validates the page table on the host: indptr, last_page_len and the
// used part of indices are copied (synchronously) into a pinned buffer owned by the plan and
// checked exactly as on CPU before the kernel is launched, so a bad page id is a status of the
// call. The price is one synchronization per run. On any other stream the run reads nothing back
// (no copy, no synchronization, no allocation: it can be captured in a CUDA graph) and the kernels
// check the table themselves (cuda/table_check.cuh): a bad sequence gets NaN rows and is reported
// by the next attn4j_stream_synchronize. Either way no page id outside the cache is ever read, so
// a bad table never becomes an illegal memory access (which would poison the whole CUDA context).
#include "api/guard.h"

#include "api/cuda_decode.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

#ifdef ATTN4J_HAVE_CUDA
#include <cuda_runtime.h>

#include "api/cuda_table_errors.h"
#include "api/cuda_util.h"
#include "cuda/decode.cuh"
#include "cuda/decode_quant.cuh"
#include "cuda/merge_states.cuh"
#endif

namespace attn4j {

#ifndef ATTN4J_HAVE_CUDA

class CudaDecodePlan {};
void CudaDecodePlanDeleter::operator()(CudaDecodePlan* p) const noexcept { delete p; }

CudaDecodePlanPtr make_cuda_decode_plan(const attn4j_attention_desc&, Context& ctx) {
    fail(ATTN4J_ERR_UNSUPPORTED, "ctx: decode plan on CUDA device " + std::to_string(ctx.device_id) +
                                     ": this library was built without CUDA");
}

void cuda_decode_run(CudaDecodePlan&, DecodeArgs&, const attn4j_page_table*, const PageTableDims*, int) {
    fail(ATTN4J_ERR_UNSUPPORTED, "plan: this library was built without CUDA");
}

#else

using S = std::string;

class CudaDecodePlan {
public:
    CudaDecodePlan(const attn4j_attention_desc& d, Context& ctx) : desc_(d), ctx_(ctx), device_(ctx.device_id) {
        DeviceScope scope(device_);
        kernel_ = quant_bits(d.kv_dtype) ? cuda::make_quant_decode_kernel(d, device_)
                                         : cuda::make_decode_kernel(d, device_);
        hdr_.reserve(2 * int64_t(d.max_batch_size) + 1, "the page table");
        idx_.reserve(int64_t(d.max_batch_size) * 16, "the page table");
    }

    void run(DecodeArgs& a, const attn4j_page_table* tables, const PageTableDims* dims, int num_segments) {
        DeviceScope scope(device_);
        check_device_pointer(a.q.data, "q", device_);
        check_device_pointer(a.out.data, "out", device_);
        check_device_pointer(a.lse.data, "lse", device_);
        if (num_segments == 1) {
            run_segment(*kernel_, a, tables[0], dims[0], -1, static_cast<cudaStream_t>(ctx_.cuda_stream));
            return;
        }
        // Segments: each one's decode writes F32 partials [batch][segment][head] to plan scratch
        // (output and LSE; a sequence with no tokens in a segment gets 0 and -inf), then one merge
        // kernel combines them by LSE into out / lse.
        const int64_t qo = desc_.num_qo_heads, D = desc_.head_dim, n = num_segments;
        cuda::DecodeKernel* kernels[kMaxKvSegments];
        for (int s = 0; s < num_segments; ++s)  // before any launch: a dtype no kernel serves fails here
            kernels[s] = &kernel_for(s == 0 ? a.kv.dtype : a.extra[s - 1].kv.dtype, kCacheNames[s + 1]);
        ensure_segment_scratch();
        // Segments whose kernel is not segment 0's (they would share its workspace) run on a side
        // stream forked from and joined to the context's stream by events, alongside segment 0:
        // the small BF16 parts of a tiered cache then hide behind the quantized middle. They are
        // enqueued first, so their few CTAs are scheduled before segment 0's grid takes the GPU
        // (enqueued after it, they waited for its CTAs and ran behind it).
        const cudaStream_t main = static_cast<cudaStream_t>(ctx_.cuda_stream);
        bool forked = false;
        for (int s = 1; s < num_segments; ++s) forked |= kernels[s] != kernels[0];
        if (forked) {
            ensure_side_stream();
            cuda_check(cudaEventRecord(fork_, main), "recording the fork event");
            cuda_check(cudaStreamWaitEvent(side_, fork_, 0), "the side stream waiting for the fork");
        }
        int order[kMaxKvSegments], k = 0;
        for (int s = 1; s < num_segments; ++s)
            if (kernels[s] != kernels[0]) order[k++] = s;
        for (int s = 0; s < num_segments; ++s)
            if (kernels[s] == kernels[0]) order[k++] = s;
        for (int i = 0; i < num_segments; ++i) {
            const int s = order[i];
            DecodeArgs sa = a;
            sa.num_extra_segments = 0;
            if (s > 0) sa.kv = a.extra[s - 1].kv;
            sa.out.data = seg_o_ + s * qo * D;
            sa.out.dtype = ATTN4J_DTYPE_F32;
            sa.out.row_stride = n * qo * D;
            sa.out.head_stride = D;
            sa.lse.data = seg_lse_ + s * qo;
            sa.lse.row_stride = n * qo;
            sa.lse.head_stride = 1;
            run_segment(*kernels[s], sa, tables[s], dims[s], s, kernels[s] != kernels[0] ? side_ : main);
        }
        if (forked) {
            cuda_check(cudaEventRecord(join_, side_), "recording the join event");
            cuda_check(cudaStreamWaitEvent(main, join_, 0), "the stream waiting for the side stream");
        }
        cpu::MergeStatesArgs m;
        m.n = dims[0].batch;
        m.num_states = n;
        m.num_heads = qo;
        m.head_dim = D;
        m.v = seg_o_;
        m.v_dtype = ATTN4J_DTYPE_F32;
        m.v_stride[0] = n * qo * D;
        m.v_stride[1] = qo * D;
        m.v_stride[2] = D;
        m.s = seg_lse_;
        m.s_stride[0] = n * qo;
        m.s_stride[1] = qo;
        m.s_head_stride = 1;
        m.v_out = a.out.data;
        m.v_out_dtype = a.out.dtype;
        m.v_out_stride[0] = a.out.row_stride;
        m.v_out_stride[1] = a.out.head_stride;
        m.s_out = a.lse.data;
        m.s_out_stride[0] = a.lse.row_stride;
        m.s_out_stride[1] = a.lse.head_stride;
        const cudaError_t e = cuda::merge_states(m, main);
        if (e != cudaSuccess)
            cuda_fail(e, "attn4j_decode_run_segments: CUDA merge launch on cuda:" + std::to_string(device_) +
                             " failed");
    }

    CudaDecodePlan(const CudaDecodePlan&) = delete;
    CudaDecodePlan& operator=(const CudaDecodePlan&) = delete;
    ~CudaDecodePlan() {
        if (seg_o_) cudaFree(seg_o_);
        if (join_) cudaEventDestroy(join_);
        if (fork_) cudaEventDestroy(fork_);
        if (side_) cudaStreamDestroy(side_);
    }

private:
    // One kernel run over one cache: the device-side checks of the cache and table, then the launch.
    void run_segment(cuda::DecodeKernel& kernel, DecodeArgs& a, const attn4j_page_table& table,
                     const PageTableDims& dims, int segment, cudaStream_t launch_on) {
        // segment -1: attn4j_decode_run (one cache, no empty sequences); else a segment's index.
        const char* cache_name = kCacheNames[segment + 1];
        const bool allow_empty = segment >= 0;
        // The kernel streams pages with 16-byte cp.async: both page buffers must be 16-aligned
        // (head_dim is a multiple of 8 elements, so every page and row then is too).
        const auto aligned16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
        char buf[64];
        if (a.kv.quantized()) {
            check_quant(a);
        } else {
            const void* ptrs[2] = {a.kv.k, a.kv.v};
            const char* fields[2] = {"k_data", "v_data"};
            for (int i = 0; i < 2; ++i)
                if (!aligned16(ptrs[i])) {
                    std::snprintf(buf, sizeof buf, "%p", ptrs[i]);
                    invalid(S(cache_name) + ": " + fields[i] + " pointer " + buf +
                            " is not aligned to 16 bytes; the CUDA decode kernel reads pages with 16-byte "
                            "loads (cudaMalloc returns 256-byte aligned memory)");
                }
        }
        check_device_pointer(a.kv.k, kFieldNames[segment + 1][0], device_);
        check_device_pointer(a.kv.v, kFieldNames[segment + 1][1], device_);
        check_device_pointer(table.indptr.data, "table.indptr", device_);
        check_device_pointer(table.indices.data, "table.indices", device_);
        check_device_pointer(table.last_page_len.data, "table.last_page_len", device_);

        const cudaStream_t stream = static_cast<cudaStream_t>(ctx_.cuda_stream);
        cuda::TableCheck check;
        check.num_indices = dims.n_indices;
        check.allow_empty = allow_empty;
        if (stream) {
            if (!ctx_.cuda_table_errors)
                fail(ATTN4J_ERR_INTERNAL, "plan: stream without a page-table error record (please report)");
            check.record = ctx_.cuda_table_errors->device_record();
        } else {
            check_table_on_host(a, table, dims, allow_empty);
        }
        a.table.batch = int32_t(dims.batch);
        a.table.indptr = static_cast<const int32_t*>(table.indptr.data);
        a.table.indices = static_cast<const int32_t*>(table.indices.data);
        a.table.last_page_len = static_cast<const int32_t*>(table.last_page_len.data);
        const cudaError_t e = kernel.run(a, launch_on, check);
        if (e != cudaSuccess)
            cuda_fail(e, "attn4j_decode_run: CUDA decode launch on cuda:" + std::to_string(device_) +
                             " failed");
    }

    // Argument names a run reports, by segment + 1 (0: the single cache of attn4j_decode_run).
    static constexpr const char* kCacheNames[kMaxKvSegments + 1] = {"cache", "caches[0]", "caches[1]", "caches[2]",
                                                                     "caches[3]"};
    static constexpr const char* kFieldNames[kMaxKvSegments + 1][2] = {
        {"cache.k_data", "cache.v_data"},         {"caches[0].k_data", "caches[0].v_data"},
        {"caches[1].k_data", "caches[1].v_data"}, {"caches[2].k_data", "caches[2].v_data"},
        {"caches[3].k_data", "caches[3].v_data"}};

    // The kernel for a segment of `dtype`: the plan's own, or, for a float segment of a plan of
    // another kv dtype (the BF16 parts of a tiered cache), one made with its workspace on first use.
    cuda::DecodeKernel& kernel_for(attn4j_dtype dtype, const char* name) {
        if (dtype == desc_.kv_dtype) return *kernel_;
        if (dtype != ATTN4J_DTYPE_BF16 && dtype != ATTN4J_DTYPE_F16)
            fail(ATTN4J_ERR_UNSUPPORTED, S(name) + ": dtype " + dtype_name(dtype) + " but the plan's kv_dtype is " +
                                             dtype_name(desc_.kv_dtype) +
                                             "; on CUDA further segments are BF16, F16 or the plan's kv dtype");
        auto& k = dtype == ATTN4J_DTYPE_BF16 ? bf16_kernel_ : f16_kernel_;
        if (!k) {
            attn4j_attention_desc d = desc_;
            d.kv_dtype = dtype;
            k = cuda::make_decode_kernel(d, device_);
        }
        return *k;
    }

    // The side stream and its fork / join events, made by the first segmented run that needs them.
    void ensure_side_stream() {
        if (side_) return;
        cuda_check(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming), "creating the fork event");
        cuda_check(cudaEventCreateWithFlags(&join_, cudaEventDisableTiming), "creating the join event");
        cuda_check(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking), "creating the side stream");
    }

    void cuda_check(cudaError_t e, const char* what) const {
        if (e != cudaSuccess)
            cuda_fail(e, S("attn4j_decode_run_segments: ") + what + " on cuda:" + std::to_string(device_) +
                             " failed");
    }

    // F32 partial outputs then LSEs of every segment: [max_batch][kMaxKvSegments][qo heads] x (head_dim + 1).
    void ensure_segment_scratch() {
        if (seg_o_) return;
        const size_t rows = size_t(desc_.max_batch_size) * kMaxKvSegments * size_t(desc_.num_qo_heads);
        const size_t bytes = rows * (size_t(desc_.head_dim) + 1) * sizeof(float);
        void* mem = nullptr;
        const cudaError_t e = cudaMalloc(&mem, bytes);
        if (e != cudaSuccess)
            cuda_fail(e, "attn4j_decode_run_segments: " + std::to_string(bytes) +
                             " bytes of segment scratch on cuda:" + std::to_string(device_));
        seg_o_ = static_cast<float*>(mem);
        seg_lse_ = seg_o_ + rows * size_t(desc_.head_dim);
    }

    // Default stream: host copies of the page table, then the CPU path's checks.
    void check_table_on_host(const DecodeArgs& a, const attn4j_page_table& table, const PageTableDims& dims,
                             bool allow_empty) {
        const int64_t batch = dims.batch;
        int32_t* h = hdr_.reserve(2 * batch + 1, "the page table");
        int32_t* h_indptr = h;
        int32_t* h_last = h + batch + 1;
        copy(h_indptr, table.indptr.data, batch + 1, "table.indptr");
        check_page_table_indptr(h_indptr, dims);
        copy(h_last, table.last_page_len.data, batch, "table.last_page_len");
        const int64_t used = h_indptr[batch];
        int32_t* h_idx = idx_.reserve(std::max<int64_t>(used, 1), "the page table");
        copy(h_idx, table.indices.data, used, "table.indices");
        check_page_table_pages(h_indptr, h_idx, h_last, batch, a.kv, allow_empty);
    }

    // Quantized cache: what the generic checks leave to the device (validate.cpp checked the
    // format itself): the plan's kv dtype, 4-byte aligned pages (16-byte aligned pages with a
    // 16-byte multiple per (page, head) block take the faster 16-byte copies), and rotation
    // matrices that are memory of this device.
    void check_quant(const DecodeArgs& a) const {
        if (a.kv.dtype != desc_.kv_dtype)
            invalid(S("cache: dtype ") + dtype_name(a.kv.dtype) + " but the plan was created for kv_dtype " +
                    dtype_name(desc_.kv_dtype));
        char buf[64];
        const void* ptrs[2] = {a.kv.k, a.kv.v};
        const char* names[2] = {"k_data", "v_data"};
        for (int i = 0; i < 2; ++i)
            if (reinterpret_cast<uintptr_t>(ptrs[i]) & 3) {
                std::snprintf(buf, sizeof buf, "%p", ptrs[i]);
                invalid(S("cache: ") + names[i] + " pointer " + buf +
                        " is not aligned to 4 bytes; the CUDA quantized decode kernel copies pages in "
                        "4- and 16-byte units (cudaMalloc returns 256-byte aligned memory)");
            }
        if (a.kv.k_rot.kind == ATTN4J_ROTATION_MATRIX) check_device_pointer(a.kv.k_rot.matrix, "cache.quant.k_matrix", device_);
        if (a.kv.v_rot.kind == ATTN4J_ROTATION_MATRIX) check_device_pointer(a.kv.v_rot.matrix, "cache.quant.v_matrix", device_);
    }

    void copy(int32_t* dst, const void* src, int64_t n, const char* name) {
        if (n <= 0) return;
        const cudaError_t e =
            cudaMemcpy(dst, src, size_t(n) * sizeof(int32_t), cudaMemcpyDeviceToHost);
        if (e != cudaSuccess)
            cuda_fail(e, S("attn4j_decode_run: copying ") + name + " (" + std::to_string(n) +
                             " elements) to the host for validation failed on cuda:" +
                             std::to_string(device_) +
                             " (an error of earlier asynchronous work on this device is also "
                             "reported here)");
    }

    attn4j_attention_desc desc_;
    Context& ctx_;  // outlives the plan (attn4j_plan holds it)
    int device_;
    std::unique_ptr<cuda::DecodeKernel> kernel_;
    std::unique_ptr<cuda::DecodeKernel> bf16_kernel_;  // segments of another dtype (made on first use)
    std::unique_ptr<cuda::DecodeKernel> f16_kernel_;
    float* seg_o_ = nullptr;  // segment scratch (ensure_segment_scratch); seg_lse_ lies in the same allocation
    float* seg_lse_ = nullptr;
    cudaStream_t side_ = nullptr;  // segments with their own kernel run here (ensure_side_stream)
    cudaEvent_t fork_ = nullptr;
    cudaEvent_t join_ = nullptr;
    PinnedI32 hdr_;  // indptr [batch + 1] then last_page_len [batch]
    PinnedI32 idx_;  // indices [indptr[batch]]
};

void CudaDecodePlanDeleter::operator()(CudaDecodePlan* p) const noexcept {
    try {
        delete p;
    } catch (...) {
    }
}

CudaDecodePlanPtr make_cuda_decode_plan(const attn4j_attention_desc& d, Context& ctx) {
    if (!cuda::decode_supported(d) && !cuda::quant_decode_supported(d))
        fail(ATTN4J_ERR_UNSUPPORTED,
             S("desc: not supported by CUDA decode (head_dim ") + std::to_string(d.head_dim) +
                 ", kv_dtype " + dtype_name(d.kv_dtype) + ", q_dtype " + dtype_name(d.q_dtype) +
                 ", out_dtype " + dtype_name(d.out_dtype) +
                 "); CUDA decode supports head_dim 64 or 128, kv_dtype BF16, F16, INT8, INT4 or INT2, q_dtype and "
                 "out_dtype F32, F16 or BF16, any GQA group; use a CPU context for other shapes");
    if (d.max_batch_size > 65535)
        fail(ATTN4J_ERR_UNSUPPORTED, "desc.max_batch_size: " + std::to_string(d.max_batch_size) +
                                         " exceeds 65535, the most CUDA decode supports");
    return CudaDecodePlanPtr(new CudaDecodePlan(d, ctx));
}

void cuda_decode_run(CudaDecodePlan& plan, DecodeArgs& a, const attn4j_page_table* tables,
                     const PageTableDims* dims, int num_segments) {
    plan.run(a, tables, dims, num_segments);
}

#endif  // ATTN4J_HAVE_CUDA

}  // namespace attn4j
