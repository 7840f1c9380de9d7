// The page-table error record of a CUDA context (see cuda_table_errors.h).
#include "api/guard.h"

#include "api/cuda_table_errors.h"

#include <cinttypes>
#include <cstdio>

#ifdef ATTN4J_HAVE_CUDA
#include "api/cuda_util.h"
#endif

namespace attn4j {

#ifndef ATTN4J_HAVE_CUDA

CudaTableErrors::CudaTableErrors(int) { fail(ATTN4J_ERR_UNSUPPORTED, "ctx: this library was built without CUDA"); }
CudaTableErrors::~CudaTableErrors() = default;
void CudaTableErrors::throw_and_clear() {}
void CudaTableErrorsDeleter::operator()(CudaTableErrors* p) const noexcept { delete p; }

#else

CudaTableErrors::CudaTableErrors(int device) {
    DeviceScope scope(device);
    void* p = nullptr;
    cudaError_t e = cudaHostAlloc(&p, sizeof(cuda::TableErrorRecord), cudaHostAllocMapped);
    if (e != cudaSuccess)
        cuda_fail(e, "ctx: page-table error record (mapped pinned memory) on cuda:" + std::to_string(device));
    host_ = static_cast<cuda::TableErrorRecord*>(p);
    host_->claimed = 0;
    e = cudaHostGetDevicePointer(reinterpret_cast<void**>(&device_), p, 0);
    if (e != cudaSuccess) {
        (void)cudaFreeHost(p);
        cuda_fail(e, "ctx: page-table error record: cudaHostGetDevicePointer on cuda:" + std::to_string(device));
    }
}

CudaTableErrors::~CudaTableErrors() { (void)cudaFreeHost(const_cast<cuda::TableErrorRecord*>(host_)); }

void CudaTableErrors::throw_and_clear() {
    if (host_->claimed == 0) return;
    const int32_t kind = host_->kind, b = host_->sequence;
    const int64_t value = host_->value, bound = host_->bound;
    host_->claimed = 0;
    char buf[256];
    const char* prefix = "table (decode run on stream): sequence";
    switch (kind) {
        case cuda::kTableEmptySequence:
            std::snprintf(buf, sizeof buf,
                          "%s %d: indptr[%d] = %" PRId64 ", indptr[%d] = %" PRId64
                          ": no pages (every sequence needs at least one)",
                          prefix, b, b, value, b + 1, bound);
            break;
        case cuda::kTableIndptrRange:
            std::snprintf(buf, sizeof buf, "%s %d: indptr value %" PRId64 " not in [0, %" PRId64 "] (table.indices' elements)",
                          prefix, b, value, bound);
            break;
        case cuda::kTableLastPageLen:
            std::snprintf(buf, sizeof buf, "%s %d: last_page_len %" PRId64 " not in [1, %" PRId64 "] (page_size)",
                          prefix, b, value, bound);
            break;
        case cuda::kTablePageId:
            std::snprintf(buf, sizeof buf, "%s %d: page id %" PRId64 " not in [0, %" PRId64 ")", prefix, b, value, bound);
            break;
        default:
            fail(ATTN4J_ERR_INTERNAL, "table (decode run on stream): unknown error record kind " +
                                          std::to_string(kind) + " (please report)");
    }
    invalid(std::string(buf) + "; that sequence's output is NaN");
}

void CudaTableErrorsDeleter::operator()(CudaTableErrors* p) const noexcept { delete p; }

#endif  // ATTN4J_HAVE_CUDA

}  // namespace attn4j
