// attn4j_paged_kv_append on a CUDA context (see cuda_append.h).
#include "api/cuda_append.h"

#include <cinttypes>
#include <cmath>
#include <string>
#include <vector>

#include "api/paged_kv_checks.h"
#include "api/stream.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/validate.h"

#ifdef ATTN4J_HAVE_CUDA
#include "api/cuda_util.h"
#include "cuda/append.cuh"
#endif

namespace attn4j {

#ifndef ATTN4J_HAVE_CUDA

class CudaAppendScratch {};
void CudaAppendScratchDeleter::operator()(CudaAppendScratch* p) const noexcept { delete p; }

void cuda_paged_kv_append(Context&, const PagedKvView&, const attn4j_page_table*, const attn4j_tensor*,
                          const attn4j_tensor*, const attn4j_tensor*) {
    fail(ATTN4J_ERR_UNSUPPORTED, "ctx: paged_kv_append on CUDA: this library was built without CUDA");
}

#else

namespace {

// Where the first non-finite value of a [rows, heads, dim] device tensor is, as the CPU says it.
[[noreturn]] void report_nonfinite(const attn4j_tensor& t, const char* name, unsigned long long flat) {
    const int64_t heads = t.shape[1], dim = t.shape[2];
    const int64_t row = int64_t(flat) / (heads * dim), head = (int64_t(flat) / dim) % heads, d = int64_t(flat) % dim;
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "%s: contains a non-finite value (Inf or NaN) at row %" PRId64 " head %" PRId64
                  " (element [%" PRId64 ", %" PRId64 ", %" PRId64 "]); nothing was written",
                  name, row, head, row, head, d);
    invalid(buf);
}

}  // namespace

// Per-context buffers of the CUDA append: host copies of the page table and append counts, and
// device memory for the Inf/NaN scan results and the clip ratios. Grown on demand, never shrunk.
class CudaAppendScratch {
public:
    ~CudaAppendScratch() {
        if (dev_) (void)cudaFree(dev_);
    }
    // Device scratch of at least `bytes` (contents undefined).
    void* device(size_t bytes) {
        if (bytes > dev_bytes_) {
            if (dev_) (void)cudaFree(dev_);
            dev_ = nullptr;
            dev_bytes_ = 0;
            const cudaError_t e = cudaMalloc(&dev_, bytes);
            if (e != cudaSuccess) cuda_fail(e, "attn4j_paged_kv_append: device scratch");
            dev_bytes_ = bytes;
        }
        return dev_;
    }
    PinnedI32 indptr, last, indices, append;
    std::vector<float> clips;

private:
    void* dev_ = nullptr;
    size_t dev_bytes_ = 0;
};

void CudaAppendScratchDeleter::operator()(CudaAppendScratch* p) const noexcept {
    try {
        delete p;
    } catch (...) {
    }
}

void cuda_paged_kv_append(Context& c, const PagedKvView& kv, const attn4j_page_table* table,
                          const attn4j_tensor* append_indptr, const attn4j_tensor* k, const attn4j_tensor* v) {
    const int device = c.device_id;
    api::reject_if_capturing(c.current_stream, "attn4j_paged_kv_append (it checks the page table on the host)");
    const cudaStream_t stream = static_cast<cudaStream_t>(c.cuda_stream);
    const PageTableDims dims = check_page_table_tensors(table, ATTN4J_DEVICE_CUDA, device, "ctx");
    const attn4j_tensor& ap_t = check_tensor(append_indptr, "append_indptr");
    expect_rank(ap_t, "append_indptr", 1);
    expect_dtype(ap_t, "append_indptr", ATTN4J_DTYPE_I32, "the required");
    expect_device(ap_t, "append_indptr", ATTN4J_DEVICE_CUDA, device, "ctx");
    DeviceScope scope(device);
    for (const auto& [ptr, name] : {std::pair<const void*, const char*>{table->indptr.data, "table.indptr"},
                                    {table->indices.data, "table.indices"},
                                    {table->last_page_len.data, "table.last_page_len"},
                                    {append_indptr->data, "append_indptr"},
                                    {kv.k, "cache.k_data"},
                                    {kv.v, "cache.v_data"}})
        check_device_pointer(ptr, name, device);
    if (kv.k_rot.kind == ATTN4J_ROTATION_MATRIX) check_device_pointer(kv.k_rot.matrix, "cache.quant.k_matrix", device);
    if (kv.v_rot.kind == ATTN4J_ROTATION_MATRIX) check_device_pointer(kv.v_rot.matrix, "cache.quant.v_matrix", device);

    if (!c.cuda_append) c.cuda_append.reset(new CudaAppendScratch());
    CudaAppendScratch& sc = *c.cuda_append;
    // Page table and append counts: host copies, then the CPU path's checks.
    const int32_t* indptr = copy_back("attn4j_paged_kv_append", sc.indptr, table->indptr.data, dims.batch + 1, "table.indptr", device, stream);
    check_page_table_indptr(indptr, dims);
    const int32_t* last = copy_back("attn4j_paged_kv_append", sc.last, table->last_page_len.data, dims.batch, "table.last_page_len", device, stream);
    const int32_t* indices = copy_back("attn4j_paged_kv_append", sc.indices, table->indices.data, indptr[dims.batch], "table.indices", device, stream);
    check_page_table_pages(indptr, indices, last, dims.batch, kv, /*allow_empty=*/true);
    const int32_t* ap = copy_back("attn4j_paged_kv_append", sc.append, append_indptr->data, ap_t.shape[0], "append_indptr", device, stream);
    PageTableView host_table;
    host_table.batch = int32_t(dims.batch);
    host_table.indptr = indptr;
    host_table.indices = indices;
    host_table.last_page_len = last;
    const int64_t nnz = api::check_append_counts(ap, ap_t.shape[0], host_table, kv);
    api::check_append_rows(k, v, nnz, kv, c);
    check_device_pointer(k->data, "k", device);
    check_device_pointer(v->data, "v", device);

    // Scratch: the Inf/NaN scan's two results, then the clip ratios, which the ABI keeps in host
    // memory, as device copies for the kernel.
    const int H = kv.num_kv_heads;
    std::vector<float>& clips = sc.clips;
    clips.assign(size_t(2 * H), 1.f);
    for (int h = 0; h < H; ++h) {
        if (kv.k_rot.clip) clips[size_t(h)] = kv.k_rot.clip[h];
        if (kv.v_rot.clip) clips[size_t(H + h)] = kv.v_rot.clip[h];
    }
    void* scratch = sc.device(2 * sizeof(unsigned long long) + clips.size() * sizeof(float));
    unsigned long long* d_first = static_cast<unsigned long long*>(scratch);
    float* d_clips = reinterpret_cast<float*>(d_first + 2);
    // Pageable source: the copy is staged before cudaMemcpyAsync returns, so `clips` may change.
    cudaError_t e = cudaMemcpyAsync(d_clips, clips.data(), clips.size() * sizeof(float), cudaMemcpyHostToDevice, stream);
    // Nothing is written unless every value is finite.
    if (e == cudaSuccess) e = cudaMemsetAsync(d_first, 0xFF, 2 * sizeof(unsigned long long), stream);
    const RowsHeadsView kr = rows_heads_view(*k), vr = rows_heads_view(*v);
    if (e == cudaSuccess) e = cuda::find_nonfinite(kr, nnz, kv.num_kv_heads, kv.head_dim, d_first, stream);
    if (e == cudaSuccess) e = cuda::find_nonfinite(vr, nnz, kv.num_kv_heads, kv.head_dim, d_first + 1, stream);
    unsigned long long first[2] = {~0ull, ~0ull};
    if (e == cudaSuccess) e = cudaMemcpyAsync(first, d_first, sizeof first, cudaMemcpyDeviceToHost, stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess) cuda_fail(e, "attn4j_paged_kv_append: Inf/NaN scan of k and v on cuda:" + std::to_string(device));
    if (first[0] != ~0ull) report_nonfinite(*k, "k", first[0]);
    if (first[1] != ~0ull) report_nonfinite(*v, "v", first[1]);

    cuda::AppendArgs a;
    a.kv = kv;
    a.kv.k_rot.clip = d_clips;
    a.kv.v_rot.clip = d_clips + H;
    a.table.batch = int32_t(dims.batch);
    a.table.indptr = static_cast<const int32_t*>(table->indptr.data);
    a.table.indices = static_cast<const int32_t*>(table->indices.data);
    a.table.last_page_len = static_cast<const int32_t*>(table->last_page_len.data);
    a.append_indptr = static_cast<const int32_t*>(append_indptr->data);
    a.nnz = nnz;
    a.k = kr;
    a.v = vr;
    a.hadamard_scale = float(1.0 / std::sqrt(double(kv.head_dim)));
    a.page_stride_bytes = kv.page_stride_bytes();
    a.head_stride_bytes = kv.head_stride_bytes();
    e = cuda::paged_kv_append(a, stream);
    // Kernel errors are reported by this call; the scratch is then free for the next append even
    // if the current stream changes in between.
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess) cuda_fail(e, "attn4j_paged_kv_append: append kernel on cuda:" + std::to_string(device));
}

#endif  // ATTN4J_HAVE_CUDA

}  // namespace attn4j
