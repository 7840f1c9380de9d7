// Prefill plans on a CUDA context (see cuda_prefill.h).
#include "api/guard.h"

#include "api/cuda_prefill.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "api/stream.h"
#include "core/dtype.h"
#include "core/error.h"

#ifdef ATTN4J_HAVE_CUDA
#include <cuda_runtime.h>

#include "api/cuda_util.h"
#include "cuda/prefill.cuh"
#endif

namespace attn4j {

#ifndef ATTN4J_HAVE_CUDA

class CudaPrefillPlan {};
void CudaPrefillPlanDeleter::operator()(CudaPrefillPlan* p) const noexcept { delete p; }

CudaPrefillPlanPtr make_cuda_prefill_plan(const attn4j_attention_desc&, Context& ctx) {
    fail(ATTN4J_ERR_UNSUPPORTED, "ctx: prefill plan on CUDA device " + std::to_string(ctx.device_id) +
                                     ": this library was built without CUDA");
}
void cuda_prefill_run(CudaPrefillPlan&, const PrefillArgs&) {
    fail(ATTN4J_ERR_UNSUPPORTED, "plan: this library was built without CUDA");
}
void cuda_prefill_paged_run(CudaPrefillPlan&, const PrefillArgs&, const attn4j_page_table&, const PageTableDims&) {
    fail(ATTN4J_ERR_UNSUPPORTED, "plan: this library was built without CUDA");
}

#else

using S = std::string;

class CudaPrefillPlan {
public:
    CudaPrefillPlan(const attn4j_attention_desc& d, Context& ctx) : desc_(d), ctx_(ctx), device_(ctx.device_id) {
        DeviceScope scope(device_);
        wgmma_ = cuda::prefill_wgmma_available(device_);
        const cudaError_t e = cudaEventCreateWithFlags(&staged_, cudaEventDisableTiming);
        if (e != cudaSuccess) cuda_fail(e, "attn4j_prefill_plan_create: cudaEventCreate on cuda:" + std::to_string(device_));
    }
    ~CudaPrefillPlan() {
        DeviceScope scope(device_);
        (void)cudaEventSynchronize(staged_);
        (void)cudaEventDestroy(staged_);
        if (dev_) (void)cudaFree(dev_);
    }

    // Staging the tile list from pinned memory and growing device memory cannot be captured.
    void reject_capture(const char* function) const {
        api::reject_if_capturing(ctx_.current_stream,
                                 (S(function) + " on CUDA").c_str());
    }

    // After set_lengths_from_*: checks the views, plans the tiles, stages them and launches.
    void run(const PrefillArgs& a, const char* function) {
        DeviceScope scope(device_);
        check_views(a, function);
        const cudaStream_t stream = static_cast<cudaStream_t>(ctx_.cuda_stream);
        plan_tiles(a, host_kv_lengths_);

        // Staging: qo_indptr [batch + 1], kv_indptr [batch + 1] (contiguous K/V), tiles.
        const int64_t batch = a.batch;
        const int64_t n_kv = a.paged ? 0 : batch + 1;
        const int64_t n = (batch + 1) + n_kv + 2 * int64_t(tiles_.size());
        wait_staged(function);  // the previous run's copy reads the pinned buffer until then
        int32_t* h = staging_.reserve(n, "the prefill tile list");
        std::copy(a.qo_indptr, a.qo_indptr + batch + 1, h);
        if (n_kv) std::copy(a.kv_indptr, a.kv_indptr + batch + 1, h + batch + 1);
        std::copy(reinterpret_cast<const int32_t*>(tiles_.data()),
                  reinterpret_cast<const int32_t*>(tiles_.data() + tiles_.size()), h + batch + 1 + n_kv);
        int32_t* d = device_buffer(n, function);
        cudaError_t e = cudaMemcpyAsync(d, h, size_t(n) * sizeof(int32_t), cudaMemcpyHostToDevice, stream);
        if (e == cudaSuccess) e = cudaEventRecord(staged_, stream);
        if (e != cudaSuccess) cuda_fail(e, S(function) + ": staging the tile list on cuda:" + std::to_string(device_));

        cuda::PrefillParams p{};
        cuda::fill_io(p, a.q, a.out, a.lse);
        p.qo_indptr = d;
        p.tiles = reinterpret_cast<const cuda::PrefillTile*>(d + batch + 1 + n_kv);
        p.num_tiles = int(tiles_.size());
        if (a.paged) {
            p.k = a.kv.k;
            p.v = a.kv.v;
            p.page_indptr = a.table.indptr;
            p.page_indices = a.table.indices;
            p.last_page_len = a.table.last_page_len;
            p.page_size = a.kv.page_size;
            p.page_stride = a.kv.page_stride();
            p.head_stride = a.kv.head_stride();
        } else {
            p.k = a.k.data;
            p.v = a.v.data;
            p.k_row = a.k.row_stride;
            p.k_head = a.k.head_stride;
            p.v_row = a.v.row_stride;
            p.v_head = a.v.head_stride;
            p.kv_indptr = d + batch + 1;
        }
        p.num_qo_heads = desc_.num_qo_heads;
        p.group = desc_.num_qo_heads / desc_.num_kv_heads;
        p.scale_log2 = desc_.sm_scale * 1.4426950408889634f;
        p.causal = desc_.causal;
        p.kernel = kernel_;
        e = cuda::launch_prefill(p, desc_.head_dim, desc_.q_dtype, a.paged, stream);
        if (e != cudaSuccess)
            cuda_fail(e, S(function) + ": CUDA prefill launch on cuda:" + std::to_string(device_) + " failed");
    }

    // Contiguous K/V: lengths from the host kv_indptr.
    void set_lengths_from_indptr(const PrefillArgs& a) {
        host_kv_lengths_.resize(size_t(a.batch));
        for (int32_t i = 0; i < a.batch; ++i) host_kv_lengths_[size_t(i)] = a.kv_indptr[i + 1] - a.kv_indptr[i];
    }

    // Paged K/V: the table read back (synchronizing the stream) and checked as on CPU.
    void set_lengths_from_table(const PrefillArgs& a, const attn4j_page_table& table, const PageTableDims& dims,
                                const char* function) {
        DeviceScope scope(device_);
        check_device_pointer(table.indptr.data, "table.indptr", device_);
        check_device_pointer(table.indices.data, "table.indices", device_);
        check_device_pointer(table.last_page_len.data, "table.last_page_len", device_);
        const cudaStream_t stream = static_cast<cudaStream_t>(ctx_.cuda_stream);
        const int32_t* indptr = copy_back(function, tbl_indptr_, table.indptr.data, dims.batch + 1, "table.indptr",
                                          device_, stream);
        check_page_table_indptr(indptr, dims);
        const int32_t* last = copy_back(function, tbl_last_, table.last_page_len.data, dims.batch,
                                        "table.last_page_len", device_, stream);
        const int32_t* indices = copy_back(function, tbl_indices_, table.indices.data, indptr[dims.batch],
                                           "table.indices", device_, stream);
        check_page_table_pages(indptr, indices, last, dims.batch, a.kv);
        host_kv_lengths_.resize(size_t(dims.batch));
        for (int64_t i = 0; i < dims.batch; ++i) {
            const int32_t np = indptr[i + 1] - indptr[i];
            const int32_t nk = np == 0 ? 0 : (np - 1) * a.kv.page_size + last[i];
            if (desc_.causal) check_causal_table_fit(i, nk, a.qo_indptr[i + 1] - a.qo_indptr[i]);
            host_kv_lengths_[size_t(i)] = nk;
        }
    }

private:
    // Device memory of the plan's GPU, rows 16-byte aligned (the kernel copies 16-byte chunks).
    void check_views(const PrefillArgs& a, const char* function) const {
        const auto rows = [&](const void* data, int64_t row, int64_t head, attn4j_dtype dt, const char* name) {
            check_device_pointer(data, name, device_);
            const int64_t align = 16 / dtype_size(dt);
            char buf[64];
            std::snprintf(buf, sizeof buf, "%p", data);
            if ((reinterpret_cast<uintptr_t>(data) & 15) != 0 || row % align != 0 || head % align != 0)
                invalid(S(name) + ": data " + buf + " with row stride " + std::to_string(row) + " and head stride " +
                        std::to_string(head) + " elements: the CUDA prefill kernel (" + function +
                        ") needs 16-byte aligned rows (aligned data, strides multiples of " +
                        std::to_string(align) + " elements)");
        };
        rows(a.q.data, a.q.row_stride, a.q.head_stride, a.q.dtype, "q");
        rows(a.out.data, a.out.row_stride, a.out.head_stride, a.out.dtype, "out");
        check_device_pointer(a.lse.data, "lse", device_);
        if (a.paged) {
            rows(a.kv.k, a.kv.page_stride(), a.kv.head_stride(), a.kv.dtype, "cache.k_data");
            rows(a.kv.v, a.kv.page_stride(), a.kv.head_stride(), a.kv.dtype, "cache.v_data");
        } else {
            rows(a.k.data, a.k.row_stride, a.k.head_stride, a.k.dtype, "k");
            rows(a.v.data, a.v.row_stride, a.v.head_stride, a.v.dtype, "v");
        }
    }

    // Query tiles of every sequence, most KV work first (longest-processing-time order).
    void plan_tiles(const PrefillArgs& a, const std::vector<int32_t>& kv_len) {
        const int64_t mean_q = (int64_t(a.qo_indptr[a.batch]) + a.batch - 1) / std::max(a.batch, 1);
        kernel_ = cuda::prefill_kernel_for(desc_.head_dim, desc_.causal != 0, a.paged, mean_q, wgmma_);
        const int BM = cuda::prefill_tile_rows(kernel_);
        tiles_.clear();
        cost_.clear();
        for (int32_t b = 0; b < a.batch; ++b) {
            const int32_t nq = a.qo_indptr[b + 1] - a.qo_indptr[b], nk = kv_len[size_t(b)];
            for (int32_t q0 = 0; q0 < nq; q0 += BM) {
                const int32_t rows = std::min(BM, nq - q0);
                tiles_.push_back({b, q0});
                cost_.push_back(desc_.causal ? std::min<int64_t>(nk, int64_t(q0) + rows + nk - nq) : nk);
            }
        }
        order_.resize(tiles_.size());
        for (size_t i = 0; i < order_.size(); ++i) order_[i] = int32_t(i);
        std::stable_sort(order_.begin(), order_.end(), [&](int32_t x, int32_t y) { return cost_[size_t(x)] > cost_[size_t(y)]; });
        sorted_.resize(tiles_.size());
        for (size_t i = 0; i < order_.size(); ++i) sorted_[i] = tiles_[size_t(order_[i])];
        tiles_.swap(sorted_);
        if (int64_t(tiles_.size()) * desc_.num_qo_heads > INT32_MAX)
            fail(ATTN4J_ERR_UNSUPPORTED, "q: " + std::to_string(tiles_.size()) + " query tiles x " +
                                             std::to_string(desc_.num_qo_heads) +
                                             " heads exceed the CUDA grid; split the batch");
    }

    void wait_staged(const char* function) {
        const cudaError_t e = cudaEventSynchronize(staged_);
        if (e != cudaSuccess)
            cuda_fail(e, S(function) + ": waiting for the previous run's staging copy on cuda:" + std::to_string(device_));
    }

    int32_t* device_buffer(int64_t n, const char* function) {
        if (n <= dev_cap_) return dev_;
        const int64_t cap = std::max<int64_t>(n, 2 * dev_cap_);
        if (dev_) {
            // The previous buffer may still be read by a kernel on the stream.
            const cudaError_t e = cudaStreamSynchronize(static_cast<cudaStream_t>(ctx_.cuda_stream));
            if (e != cudaSuccess) cuda_fail(e, S(function) + ": synchronizing before growing the tile list");
            (void)cudaFree(dev_);
            dev_ = nullptr;
            dev_cap_ = 0;
        }
        void* p = nullptr;
        const cudaError_t e = cudaMalloc(&p, size_t(cap) * sizeof(int32_t));
        if (e != cudaSuccess)
            cuda_fail(e, S(function) + ": device memory for the tile list (" + std::to_string(cap * 4) +
                             " bytes) on cuda:" + std::to_string(device_));
        dev_ = static_cast<int32_t*>(p);
        dev_cap_ = cap;
        return dev_;
    }

    attn4j_attention_desc desc_;
    Context& ctx_;  // outlives the plan (attn4j_plan holds it)
    int device_;
    cudaEvent_t staged_ = nullptr;
    PinnedI32 staging_;
    int32_t* dev_ = nullptr;
    int64_t dev_cap_ = 0;
    PinnedI32 tbl_indptr_, tbl_last_, tbl_indices_;
    std::vector<int32_t> host_kv_lengths_;
    std::vector<cuda::PrefillTile> tiles_, sorted_;
    std::vector<int64_t> cost_;
    std::vector<int32_t> order_;
    cuda::PrefillKernel kernel_ = cuda::PrefillKernel::kMma8;  // kernel of the current run
    bool wgmma_ = false;  // prefill_wgmma_available(device_), asked once
};

void CudaPrefillPlanDeleter::operator()(CudaPrefillPlan* p) const noexcept {
    try {
        delete p;
    } catch (...) {
    }
}

CudaPrefillPlanPtr make_cuda_prefill_plan(const attn4j_attention_desc& d, Context& ctx) {
    if (!cuda::prefill_supported(d))
        fail(ATTN4J_ERR_UNSUPPORTED,
             S("desc: not supported by CUDA prefill (head_dim ") + std::to_string(d.head_dim) + ", q_dtype " +
                 dtype_name(d.q_dtype) + ", kv_dtype " + dtype_name(d.kv_dtype) + ", out_dtype " +
                 dtype_name(d.out_dtype) +
                 "); CUDA prefill supports head_dim 64 or 128 with q and K/V both BF16 or both F16, out F32, F16 "
                 "or BF16, any GQA group; use a CPU context for other combinations (quantized caches included)");
    return CudaPrefillPlanPtr(new CudaPrefillPlan(d, ctx));
}

void cuda_prefill_run(CudaPrefillPlan& plan, const PrefillArgs& a) {
    constexpr const char* fn = "attn4j_prefill_run";
    plan.reject_capture(fn);
    plan.set_lengths_from_indptr(a);
    plan.run(a, fn);
}

void cuda_prefill_paged_run(CudaPrefillPlan& plan, const PrefillArgs& a, const attn4j_page_table& table,
                            const PageTableDims& dims) {
    constexpr const char* fn = "attn4j_prefill_paged_run";
    plan.reject_capture(fn);
    plan.set_lengths_from_table(a, table, dims, fn);
    PrefillArgs with_table = a;
    with_table.table.batch = int32_t(dims.batch);
    with_table.table.indptr = static_cast<const int32_t*>(table.indptr.data);
    with_table.table.indices = static_cast<const int32_t*>(table.indices.data);
    with_table.table.last_page_len = static_cast<const int32_t*>(table.last_page_len.data);
    plan.run(with_table, fn);
}

#endif  // ATTN4J_HAVE_CUDA

}  // namespace attn4j
