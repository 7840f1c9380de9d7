// CUDA paged KV append (see append.cuh). One CTA per (new token, kv head); K then V. Rounding is
// pinned to the CPU path's operation order with explicit _rn intrinsics (no FMA contraction), so
// the bytes match cpu::quantize_row.
#include "cuda/append.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

namespace attn4j::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxDim = 256;

__device__ float load(const void* base, attn4j_dtype dt, int64_t i) {
    switch (dt) {
        case ATTN4J_DTYPE_F16: return __half2float(static_cast<const __half*>(base)[i]);
        case ATTN4J_DTYPE_BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
        default: return static_cast<const float*>(base)[i];
    }
}

__device__ void store(void* base, attn4j_dtype dt, int64_t i, float v) {
    switch (dt) {
        case ATTN4J_DTYPE_F16: static_cast<__half*>(base)[i] = __float2half_rn(v); break;
        case ATTN4J_DTYPE_BF16: static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v); break;
        default: static_cast<float*>(base)[i] = v; break;
    }
}

__device__ float round_meta(float v, attn4j_dtype meta) {
    return meta == ATTN4J_DTYPE_F16 ? __half2float(__float2half_rn(v)) : v;
}

// x <- x R in shared memory (forward rotation of cpu::rotate_row).
__device__ void rotate(float* x, float* tmp, int D, const RotationView& rot, int kv_head, float hscale) {
    if (rot.kind == ATTN4J_ROTATION_HADAMARD) {
        for (int h = 1; h < D; h *= 2) {
            __syncthreads();
            for (int p = threadIdx.x; p < D / 2; p += blockDim.x) {
                const int i = (p / h) * 2 * h + p % h;
                const float a = x[i], b = x[i + h];
                x[i] = __fadd_rn(a, b);
                x[i + h] = __fsub_rn(a, b);
            }
        }
        __syncthreads();
        for (int j = threadIdx.x; j < D; j += blockDim.x) x[j] = __fmul_rn(x[j], hscale);
    } else if (rot.kind == ATTN4J_ROTATION_MATRIX) {
        const float* R = rot.matrix + int64_t(kv_head) * D * D;
        __syncthreads();
        for (int j = threadIdx.x; j < D; j += blockDim.x) {
            double acc = 0.0;
            for (int i = 0; i < D; ++i) acc = __dadd_rn(acc, __dmul_rn(double(x[i]), double(R[int64_t(i) * D + j])));
            tmp[j] = float(acc);
        }
        __syncthreads();
        for (int j = threadIdx.x; j < D; j += blockDim.x) x[j] = tmp[j];
    }
    __syncthreads();
}

// Geometry of a quantized token (QuantFormat's host helpers, for the device).
struct Geometry {
    int bits, D, G, groups, n, code_bytes, meta_bytes, qmax;
    attn4j_dtype meta;
    __device__ explicit Geometry(const QuantFormat& f)
        : bits(f.bits), D(f.head_dim), G(f.group_size), groups(f.head_dim / f.group_size),
          n(f.group_size * f.bits / 8), code_bytes(f.head_dim * f.bits / 8),
          meta_bytes((f.head_dim / f.group_size) * 2 * (f.meta_dtype == ATTN4J_DTYPE_F32 ? 4 : 2)),
          qmax((1 << f.bits) - 1), meta(f.meta_dtype) {}
};

// One row: rotate, then codes + meta into the (page, head) block at `slot`.
__device__ void quantize(float* x, float* tmp, float* gscale, float* gzero, const Geometry& f, int page_size,
                         const RotationView& rot, int kv_head, float hscale, uint8_t* block, int64_t slot) {
    const int G = f.G, n = f.n, qmax = f.qmax;
    rotate(x, tmp, f.D, rot, kv_head, hscale);
    const float clip = rot.clip ? rot.clip[kv_head] : 1.f;
    for (int g = threadIdx.x; g < f.groups; g += blockDim.x) {
        const float* xg = x + g * G;
        float mn = xg[0], mx = xg[0];
        for (int j = 1; j < G; ++j) {
            mn = fminf(mn, xg[j]);
            mx = fmaxf(mx, xg[j]);
        }
        const float lo = __fmul_rn(clip, mn), hi = __fmul_rn(clip, mx);
        float scale = round_meta(__fdiv_rn(__fsub_rn(hi, lo), float(qmax)), f.meta);
        float zero = round_meta(lo, f.meta);
        if (!(mx > mn) || !(scale > 0.f)) {
            scale = 0.f;
            zero = round_meta(mn, f.meta);
        }
        gscale[g] = scale;
        gzero[g] = zero;
        uint8_t* meta = block + int64_t(page_size) * f.code_bytes + slot * f.meta_bytes;
        if (f.meta == ATTN4J_DTYPE_F16) {
            reinterpret_cast<__half*>(meta)[2 * g] = __float2half_rn(scale);
            reinterpret_cast<__half*>(meta)[2 * g + 1] = __float2half_rn(zero);
        } else {
            reinterpret_cast<float*>(meta)[2 * g] = scale;
            reinterpret_cast<float*>(meta)[2 * g + 1] = zero;
        }
    }
    __syncthreads();
    uint8_t* codes = block + slot * f.code_bytes;
    const int per_byte = 8 / f.bits;
    for (int b = threadIdx.x; b < f.code_bytes; b += blockDim.x) {
        const int g = b / n, bb = b % n;
        const float scale = gscale[g], zero = gzero[g];
        unsigned byte = 0;
        if (scale != 0.f) {
            for (int m = 0; m < per_byte; ++m) {
                const int j = bb + n * m;  // value j of the group
                float v = __fdiv_rn(__fsub_rn(x[g * G + j], zero), scale);
                v = fminf(fmaxf(v, 0.f), float(qmax));
                const int c = min(int(floorf(__fadd_rn(v, 0.5f))), qmax);
                byte |= unsigned(c) << (f.bits * m);
            }
        }
        codes[b] = uint8_t(byte);
    }
    __syncthreads();
}

__global__ void __launch_bounds__(kThreads) append_kernel(AppendArgs a) {
    __shared__ float x[kMaxDim];
    __shared__ float tmp[kMaxDim];
    __shared__ float gscale[kMaxDim / 32];
    __shared__ float gzero[kMaxDim / 32];
    const int64_t t = blockIdx.x;
    const int h = blockIdx.y;
    const PagedKvView& kv = a.kv;
    const int D = kv.head_dim;
    // Sequence of token t: the last i with append_indptr[i] <= t.
    int lo = 0, hi = a.table.batch;  // answer in [lo, hi)
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (a.append_indptr[mid] <= t) lo = mid;
        else hi = mid;
    }
    const int i = lo;
    const int32_t np = a.table.indptr[i + 1] - a.table.indptr[i];
    const int64_t len = int64_t(np - 1) * kv.page_size + a.table.last_page_len[i];
    const int64_t pos = len - (a.append_indptr[i + 1] - a.append_indptr[i]) + (t - a.append_indptr[i]);
    const int64_t page = a.table.indices[a.table.indptr[i] + pos / kv.page_size];
    const int64_t slot = pos % kv.page_size;
    for (int which = 0; which < 2; ++which) {
        const RowsHeadsView& src = which ? a.v : a.k;
        const int64_t at = t * src.row_stride + int64_t(h) * src.head_stride;
        char* dst_base = static_cast<char*>(which ? kv.v : kv.k);
        if (kv.quant.bits == 0) {
            const int64_t off = ((page * kv.num_kv_heads + h) * kv.page_size + slot) * D;
            for (int d = threadIdx.x; d < D; d += blockDim.x) store(dst_base, kv.dtype, off + d, load(src.data, src.dtype, at + d));
            continue;
        }
        __syncthreads();
        for (int d = threadIdx.x; d < D; d += blockDim.x) x[d] = load(src.data, src.dtype, at + d);
        uint8_t* block = reinterpret_cast<uint8_t*>(dst_base) + page * a.page_stride_bytes + h * a.head_stride_bytes;
        quantize(x, tmp, gscale, gzero, Geometry(kv.quant), kv.page_size, which ? kv.v_rot : kv.k_rot, h,
                 a.hadamard_scale, block, slot);
    }
}

__global__ void nonfinite_kernel(RowsHeadsView t, int64_t rows, int heads, int dim, unsigned long long* first) {
    const int64_t total = rows * heads * dim;
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
        const int64_t r = e / (int64_t(heads) * dim), h = (e / dim) % heads, d = e % dim;
        const float v = load(t.data, t.dtype, r * t.row_stride + h * t.head_stride + d);
        if (!isfinite(v)) atomicMin(first, static_cast<unsigned long long>(e));
    }
}

}  // namespace

cudaError_t paged_kv_append(const AppendArgs& a, cudaStream_t stream) {
    if (a.nnz == 0) return cudaSuccess;
    const dim3 grid(unsigned(a.nnz), unsigned(a.kv.num_kv_heads));
    append_kernel<<<grid, kThreads, 0, stream>>>(a);
    return cudaGetLastError();
}

cudaError_t find_nonfinite(const RowsHeadsView& t, int64_t rows, int heads, int dim, unsigned long long* first,
                           cudaStream_t stream) {
    const int64_t total = rows * heads * dim;
    if (total == 0) return cudaSuccess;
    const int blocks = int(std::min<int64_t>((total + 255) / 256, 4096));
    nonfinite_kernel<<<blocks, 256, 0, stream>>>(t, rows, heads, dim, first);
    return cudaGetLastError();
}

}  // namespace attn4j::cuda
