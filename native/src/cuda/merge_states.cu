// merge_states on the device: one warp per (row, head). The lanes first reduce the row's LSEs
// (max, then the sum of max-subtracted exps, as the CPU kernel), then each lane accumulates its
// slice of head_dim over the states in state order; the per-state weight is recomputed (one
// broadcast load of s and one expf) rather than staged, so any num_states fits without shared
// memory. v is read in the widest aligned vectors (up to 16 bytes) that keep the warp busy.
#include "cuda/merge_states.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

namespace attn4j::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xFFFFFFFFu;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// N elements moved as one access (two for 32 bytes); aligned to its size, at most 16.
template <typename T, int N>
struct alignas(sizeof(T) * N < 16 ? sizeof(T) * N : 16) Vec {
    T x[N];
};

template <typename Tin, typename Tout, int VEC>
__global__ void __launch_bounds__(kThreads) merge_kernel(const cpu::MergeStatesArgs a) {
    const int lane = threadIdx.x & 31;
    const int64_t tasks = a.n * a.num_heads, S = a.num_states, D = a.head_dim;
    const float ninf = -INFINITY;
    for (int64_t task = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; task < tasks;
         task += int64_t(gridDim.x) * kWarps) {
        const int64_t i = task / a.num_heads, h = task - i * a.num_heads;
        const float* s = a.s + i * a.s_stride[0] + h * a.s_head_stride;
        float m = ninf;
        bool bad = false;  // NaN or +inf: the CPU path rejects these, here they poison the row
        for (int64_t k = lane; k < S; k += 32) {
            const float x = s[k * a.s_stride[1]];
            bad |= !(x < INFINITY);
            m = fmaxf(m, x);
        }
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, o));
        bad = __any_sync(kFull, bad);
        Tout* out = static_cast<Tout*>(a.v_out) + i * a.v_out_stride[0] + h * a.v_out_stride[1];
        float* so = a.s_out ? a.s_out + i * a.s_out_stride[0] + h * a.s_out_stride[1] : nullptr;
        if (bad || m == ninf) {  // warp-uniform
            const float fill = bad ? NAN : 0.f;
            for (int64_t d = lane; d < D; d += 32) out[d] = from_f32<Tout>(fill);
            if (so && lane == 0) *so = bad ? NAN : ninf;
            continue;
        }
        float sum = 0.f;
        for (int64_t k = lane; k < S; k += 32) {
            const float x = s[k * a.s_stride[1]];
            if (x != ninf) sum += expf(x - m);
        }
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(kFull, sum, o);
        const float inv = 1.f / sum;  // sum >= 1 (the max term contributes exp(0))
        const Tin* vrow = static_cast<const Tin*>(a.v) + i * a.v_stride[0] + h * a.v_stride[2];
        for (int64_t d = int64_t(lane) * VEC; d < D; d += 32 * VEC) {
            float acc[VEC];
#pragma unroll
            for (int j = 0; j < VEC; ++j) acc[j] = 0.f;
#pragma unroll 4
            for (int64_t k = 0; k < S; ++k) {
                const float x = s[k * a.s_stride[1]];
                if (x == ninf) continue;  // an empty part's v may hold anything
                const float w = expf(x - m);
                const Vec<Tin, VEC> v = *reinterpret_cast<const Vec<Tin, VEC>*>(vrow + k * a.v_stride[1] + d);
#pragma unroll
                for (int j = 0; j < VEC; ++j) acc[j] += w * to_f32(v.x[j]);
            }
            Vec<Tout, VEC> r;
#pragma unroll
            for (int j = 0; j < VEC; ++j) r.x[j] = from_f32<Tout>(acc[j] * inv);
            *reinterpret_cast<Vec<Tout, VEC>*>(out + d) = r;
        }
        if (so && lane == 0) *so = m + logf(sum);
    }
}

// Every row start p + sum(idx * stride) is a multiple of `align` bytes.
bool rows_aligned(const void* p, const int64_t* strides, int n, int esize, int align) {
    if (reinterpret_cast<uintptr_t>(p) % uintptr_t(align)) return false;
    for (int j = 0; j < n; ++j)
        if ((strides[j] * esize) % align) return false;
    return true;
}

// The widest access (at most 16 bytes of v) that keeps all 32 lanes busy and that every row of v
// and v_out is aligned for; halves until one fits (VEC 1 always does).
template <typename Tin, typename Tout, int VEC>
cudaError_t launch(const cpu::MergeStatesArgs& a, cudaStream_t stream) {
    if constexpr (VEC > 1) {
        constexpr int kOutAlign = std::min<int>(16, VEC * sizeof(Tout));
        const bool fits = a.head_dim % VEC == 0 && a.head_dim >= 32 * VEC &&
                          rows_aligned(a.v, a.v_stride, 3, sizeof(Tin), VEC * sizeof(Tin)) &&
                          rows_aligned(a.v_out, a.v_out_stride, 2, sizeof(Tout), kOutAlign);
        if (!fits) return launch<Tin, Tout, VEC / 2>(a, stream);
    }
    const int64_t tasks = a.n * a.num_heads;
    const unsigned blocks = unsigned(std::min<int64_t>((tasks + kWarps - 1) / kWarps, int64_t(1) << 20));
    merge_kernel<Tin, Tout, VEC><<<blocks, kThreads, 0, stream>>>(a);
    return cudaGetLastError();
}

template <typename Tin>
cudaError_t launch_out(const cpu::MergeStatesArgs& a, cudaStream_t stream) {
    constexpr int kMaxVec = 16 / sizeof(Tin);
    switch (a.v_out_dtype) {
        case ATTN4J_DTYPE_F32: return launch<Tin, float, kMaxVec>(a, stream);
        case ATTN4J_DTYPE_F16: return launch<Tin, __half, kMaxVec>(a, stream);
        default: return launch<Tin, __nv_bfloat16, kMaxVec>(a, stream);
    }
}

}  // namespace

cudaError_t merge_states(const cpu::MergeStatesArgs& a, cudaStream_t stream) {
    if (a.n * a.num_heads == 0) return cudaSuccess;
    switch (a.v_dtype) {
        case ATTN4J_DTYPE_F32: return launch_out<float>(a, stream);
        case ATTN4J_DTYPE_F16: return launch_out<__half>(a, stream);
        default: return launch_out<__nv_bfloat16>(a, stream);
    }
}

}  // namespace attn4j::cuda
