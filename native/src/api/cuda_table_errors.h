// The per-context record where decode kernels on a non-default stream report the first invalid
// page table they met (cuda/table_check.cuh): mapped pinned memory, so kernels write it without a
// copy and the host reads it after synchronizing. CUDA builds only.
#pragma once

#include "core/context.h"
#include "cuda/table_check.cuh"

namespace attn4j {

class CudaTableErrors {
public:
    explicit CudaTableErrors(int device);  // OUT_OF_MEMORY / DEVICE when the allocation fails
    ~CudaTableErrors();
    CudaTableErrors(const CudaTableErrors&) = delete;
    CudaTableErrors& operator=(const CudaTableErrors&) = delete;

    // For TableCheck::record.
    cuda::TableErrorRecord* device_record() const { return device_; }
    // After the work that may have written it has completed: throws INVALID_ARGUMENT describing
    // the recorded error, and clears the record for the next runs; returns when there is none.
    void throw_and_clear();

private:
    volatile cuda::TableErrorRecord* host_ = nullptr;
    cuda::TableErrorRecord* device_ = nullptr;
};

}  // namespace attn4j
