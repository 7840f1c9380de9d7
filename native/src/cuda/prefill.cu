// CUDA prefill kernel (see prefill.cuh). Per CTA: 4 or 8 warps of 32 query rows each (two m16
// blocks), K/V tiles of 64 keys in a 2- or 3-stage cp.async pipeline in shared memory, one barrier
// per tile. Each warp keeps its 32 x D output accumulator, the running row max and row sum in registers; S = Q K^T and O += P V are
// mma.sync m16n8k16 with fragments from ldmatrix (V transposed on the fly). P never leaves
// registers: the S accumulator layout of one m16n8 pair is the A-fragment layout of the next MMA.
// Shared memory rows are XOR-swizzled in 16-byte chunks so that ldmatrix reads 8 rows of one
// column chunk from 8 different bank groups.
#include "cuda/prefill.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <cstring>

#include "cuda/decode_common.cuh"
#include "cuda/mma.cuh"
#include "cuda/out_store.cuh"
#include "cuda/prefill_seq.cuh"
#ifdef ATTN4J_HAVE_SM90A
#include "cuda/sm90a/prefill_wgmma.cuh"
#endif

namespace attn4j::cuda {

namespace {

using detail::cp_async16;
using detail::cp_async_commit;
using detail::cp_async_wait;
using detail::ex2;
using detail::kLn2;

constexpr int BN = kPrefillTileKeys;

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* smem) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* smem) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

// Element offset of 16-byte chunk `chunk` of row `row` in a swizzled [rows][D] tile.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
    return row * D + ((chunk ^ (row & 7)) << 3);
}

// K/V pipeline depth: 3 where one CTA holds the SM (its loads must hide behind its own math), 2
// where two CTAs share it (228 KB of shared memory leaves room for no more).
__host__ __device__ constexpr int stages(int warps) { return warps == 8 ? 3 : 2; }

// Two m16 row blocks per warp: every K / V fragment a warp loads from shared memory feeds two
// MMAs. With one block per warp (the first kernel) ldmatrix bandwidth, not the tensor cores,
// bounded it at about 295 TFLOP/s on H200.
constexpr int MB = 2;
static_assert(16 * MB == kPrefillRowsPerWarp, "rows per warp");

// WARPS warps of 32 query rows: BM = 32 * WARPS rows per CTA.
template <int D, typename T, bool PAGED, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, WARPS == 4 ? 2 : 1) prefill_kernel(const PrefillParams p) {
    constexpr int THREADS = WARPS * 32;
    constexpr int BM = WARPS * 16 * MB;
    constexpr int CPR = D / 8;              // 16-byte chunks per row
    constexpr int ROWS_PER_PASS = THREADS / CPR;
    constexpr int KV_PASSES = BN / ROWS_PER_PASS;
    constexpr int Q_PASSES = BM / ROWS_PER_PASS;
    constexpr int DT = D / 8;               // n8 tiles of the output
    constexpr int NT = BN / 8;              // n8 tiles of S
    constexpr int STAGES = stages(WARPS);
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T* sQ = reinterpret_cast<T*>(smem_raw);
    T* sK = sQ + BM * D;            // [STAGES][BN][D]
    T* sV = sK + STAGES * BN * D;   // [STAGES][BN][D]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const PrefillTile tile = p.tiles[blockIdx.x / p.num_qo_heads];
    const int head = blockIdx.x % p.num_qo_heads;
    const int kvh = head / p.group;
    const int b = tile.seq, q0 = tile.q_start;
    const PrefillSeq seq = prefill_seq<PAGED>(p, b);
    const int q_begin = seq.q_begin, nq = seq.nq, nk = seq.nk, kv_begin = seq.kv_begin, page_begin = seq.page_begin;
    const int q_rows = min(BM, nq - q0);
    // Keys this tile sees: all of them, or (causal, bottom-right) up to row q0 + q_rows - 1's limit.
    const int diag = nk - nq;  // query i sees keys <= i + diag
    const int kv_end = p.causal ? min(nk, q0 + q_rows + diag) : nk;
    const int num_kv_tiles = (kv_end + BN - 1) / BN;

    // Each thread copies chunk `my_chunk` of rows my_row + i * ROWS_PER_PASS.
    const int my_chunk = tid % CPR, my_row = tid / CPR;
    const T* qh = static_cast<const T*>(p.q) + int64_t(q_begin) * p.q_row + int64_t(head) * p.q_head;
#pragma unroll
    for (int i = 0; i < Q_PASSES; ++i) {
        const int r = my_row + i * ROWS_PER_PASS;
        const bool ok = r < q_rows;
        cp_async16(sQ + swz<D>(r, my_chunk), ok ? qh + int64_t(q0 + r) * p.q_row + my_chunk * 8 : qh, ok);
    }
    // This thread's column chunk of the sequence's (paged: the pages') K and V rows of head kvh.
    const T* kh = static_cast<const T*>(p.k) + my_chunk * 8;
    const T* vh = static_cast<const T*>(p.v) + my_chunk * 8;
    if constexpr (PAGED) {
        kh += int64_t(kvh) * p.head_stride;
        vh += int64_t(kvh) * p.head_stride;
    } else {
        kh += int64_t(kv_begin) * p.k_row + int64_t(kvh) * p.k_head;
        vh += int64_t(kv_begin) * p.v_row + int64_t(kvh) * p.v_head;
    }
    auto load_kv = [&](int tile_index, int buf) {
        const int k0 = tile_index * BN;
        T* dk = sK + buf * BN * D;
        T* dv = sV + buf * BN * D;
#pragma unroll
        for (int i = 0; i < KV_PASSES; ++i) {
            const int r = my_row + i * ROWS_PER_PASS;
            const int t = k0 + r;
            const bool ok = t < kv_end;
            int64_t ko = 0, vo = 0;
            if (ok) {
                if constexpr (PAGED) {
                    const int page = p.page_indices[page_begin + t / p.page_size];
                    ko = vo = int64_t(page) * p.page_stride + int64_t(t % p.page_size) * D;
                } else {
                    ko = int64_t(t) * p.k_row;
                    vo = int64_t(t) * p.v_row;
                }
            }
            cp_async16(dk + swz<D>(r, my_chunk), kh + ko, ok);
            cp_async16(dv + swz<D>(r, my_chunk), vh + vo, ok);
        }
    };
    // Prologue: tiles 0 .. STAGES - 2 in flight (Q travels in the first group).
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < num_kv_tiles) load_kv(st, st);
        cp_async_commit();
    }

    float o[MB][DT][4];
    float row_max[MB][2], row_sum[MB][2];
#pragma unroll
    for (int m = 0; m < MB; ++m) {
#pragma unroll
        for (int i = 0; i < DT; ++i) o[m][i][0] = o[m][i][1] = o[m][i][2] = o[m][i][3] = 0.f;
        row_max[m][0] = row_max[m][1] = -INFINITY;
        row_sum[m][0] = row_sum[m][1] = 0.f;
    }
    const int g = lane >> 2, c2 = (lane & 3) * 2;  // fragment row within 8, column pair
    const int mi = lane >> 3, r8 = lane & 7;       // ldmatrix: matrix index, row within it
    const int warp_row0 = warp * 16 * MB;          // first tile row of this warp
    // Row block m of this thread: tile rows warp_row0 + 16m + g and + 8.

    int buf = 0;  // j % STAGES
    for (int j = 0; j < num_kv_tiles; ++j) {
        // Tile j has landed, and every warp is done with tile j - 1, whose buffer the prefetch
        // of tile j + STAGES - 1 reuses: one barrier per tile.
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {
            const int next = j + STAGES - 1;
            if (next < num_kv_tiles) load_kv(next, buf == 0 ? STAGES - 1 : buf - 1);
            cp_async_commit();
        }
        const T* tk = sK + buf * BN * D;
        const T* tv = sV + buf * BN * D;
        const int k0 = j * BN;
        // Causal: a warp whose last row sees no key of this tile has nothing to do in it.
        if (!p.causal || k0 <= q0 + warp_row0 + 16 * MB - 1 + diag) {

        float s[MB][NT][4];
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            unsigned a[MB][4];
#pragma unroll
            for (int m = 0; m < MB; ++m)
                ldmatrix_x4(a[m], sQ + swz<D>(warp_row0 + m * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                unsigned bk[4];
                ldmatrix_x4(bk, tk + swz<D>(np * 16 + (mi >> 1) * 8 + r8, kk * 2 + (mi & 1)));
#pragma unroll
                for (int m = 0; m < MB; ++m) {
                    if (kk == 0) {
                        Mma<T>::first(s[m][2 * np], a[m], bk[0], bk[1]);
                        Mma<T>::first(s[m][2 * np + 1], a[m], bk[2], bk[3]);
                    } else {
                        Mma<T>::run(s[m][2 * np], a[m], bk[0], bk[1]);
                        Mma<T>::run(s[m][2 * np + 1], a[m], bk[2], bk[3]);
                    }
                }
            }
        }

        // Mask keys past the end and, on tiles that cross the diagonal, above it.
        const bool edge = k0 + BN > nk || (p.causal && k0 + BN - 1 > q0 + warp_row0 + diag);
        if (edge) {
#pragma unroll
            for (int m = 0; m < MB; ++m)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int key = k0 + nt * 8 + c2 + (e & 1);
                        const int qi = q0 + warp_row0 + m * 16 + g + (e >> 1) * 8;
                        if (key >= nk || (p.causal && key > qi + diag)) s[m][nt][e] = -INFINITY;
                    }
        }

        // Online softmax (log2 domain). The output is rescaled only when a row max of this
        // thread changed (late in long rows it rarely does).
        float alpha[MB][2];
#pragma unroll
        for (int m = 0; m < MB; ++m)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = row_max[m][r];
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[m][nt][2 * r], s[m][nt][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float base = mx == -INFINITY ? 0.f : mx * p.scale_log2;
                alpha[m][r] = ex2(row_max[m][r] * p.scale_log2 - base);
                row_max[m][r] = mx;
                float sum = 0.f;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    s[m][nt][2 * r] = ex2(fmaf(s[m][nt][2 * r], p.scale_log2, -base));
                    s[m][nt][2 * r + 1] = ex2(fmaf(s[m][nt][2 * r + 1], p.scale_log2, -base));
                    sum += s[m][nt][2 * r] + s[m][nt][2 * r + 1];
                }
                row_sum[m][r] = row_sum[m][r] * alpha[m][r] + sum;
            }
        bool rescale = false;
#pragma unroll
        for (int m = 0; m < MB; ++m) rescale |= alpha[m][0] != 1.f || alpha[m][1] != 1.f;
        if (rescale) {
#pragma unroll
            for (int m = 0; m < MB; ++m)
#pragma unroll
                for (int dt = 0; dt < DT; ++dt) {
                    o[m][dt][0] *= alpha[m][0];
                    o[m][dt][1] *= alpha[m][0];
                    o[m][dt][2] *= alpha[m][1];
                    o[m][dt][3] *= alpha[m][1];
                }
        }

        // O += P V: the S accumulators of n-tiles 2kj, 2kj + 1 are the A fragment of key block kj.
#pragma unroll
        for (int kj = 0; kj < BN / 16; ++kj) {
            unsigned a[MB][4];
#pragma unroll
            for (int m = 0; m < MB; ++m) {
                a[m][0] = Mma<T>::pack(s[m][2 * kj][0], s[m][2 * kj][1]);
                a[m][1] = Mma<T>::pack(s[m][2 * kj][2], s[m][2 * kj][3]);
                a[m][2] = Mma<T>::pack(s[m][2 * kj + 1][0], s[m][2 * kj + 1][1]);
                a[m][3] = Mma<T>::pack(s[m][2 * kj + 1][2], s[m][2 * kj + 1][3]);
            }
#pragma unroll
            for (int dn = 0; dn < D / 16; ++dn) {
                unsigned bv[4];
                ldmatrix_x4_trans(bv, tv + swz<D>(kj * 16 + (mi & 1) * 8 + r8, dn * 2 + (mi >> 1)));
#pragma unroll
                for (int m = 0; m < MB; ++m) {
                    Mma<T>::run(o[m][2 * dn], a[m], bv[0], bv[1]);
                    Mma<T>::run(o[m][2 * dn + 1], a[m], bv[2], bv[3]);
                }
            }
        }
        }
        buf = buf + 1 == STAGES ? 0 : buf + 1;
    }
    cp_async_wait<0>();

    // Epilogue: full row sums across the quad, normalise, write.
#pragma unroll
    for (int m = 0; m < MB; ++m)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float l = row_sum[m][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const int qi = q0 + warp_row0 + m * 16 + g + r * 8;
            if (qi >= nq) continue;
            const float inv = l > 0.f ? 1.f / l : 0.f;
            const int64_t row = q_begin + qi;
            const int64_t ob = row * p.o_row + int64_t(head) * p.o_head + c2;
#pragma unroll
            for (int dt = 0; dt < DT; ++dt)
                store_pair(p.out, p.out_dtype, ob + dt * 8, o[m][dt][2 * r] * inv, o[m][dt][2 * r + 1] * inv);
            if (p.lse && (lane & 3) == 0)
                p.lse[row * p.lse_row + int64_t(head) * p.lse_head] =
                    l > 0.f ? (row_max[m][r] * p.scale_log2 + __log2f(l)) * kLn2 : -INFINITY;
        }
}

template <int D, typename T, bool PAGED, int WARPS>
cudaError_t launch(const PrefillParams& p, cudaStream_t stream) {
    constexpr size_t smem = size_t(WARPS * 16 * MB + 2 * stages(WARPS) * BN) * D * sizeof(T);
    auto kernel = prefill_kernel<D, T, PAGED, WARPS>;
    if (p.num_tiles == 0) return cudaSuccess;
    // Per device and cheap; not cached in a static so that every GPU of a process gets it.
    const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (attr != cudaSuccess) return attr;
    kernel<<<unsigned(int64_t(p.num_tiles) * p.num_qo_heads), WARPS * 32, smem, stream>>>(p);
    return cudaGetLastError();
}

template <int D, typename T, bool PAGED>
cudaError_t launch_shape(const PrefillParams& p, cudaStream_t stream) {
    return p.kernel == PrefillKernel::kMma8 ? launch<D, T, PAGED, 8>(p, stream) : launch<D, T, PAGED, 4>(p, stream);
}

template <int D, typename T>
cudaError_t launch_layout(const PrefillParams& p, bool paged, cudaStream_t stream) {
    return paged ? launch_shape<D, T, true>(p, stream) : launch_shape<D, T, false>(p, stream);
}

template <int D>
cudaError_t launch_dtype(const PrefillParams& p, attn4j_dtype dtype, bool paged, cudaStream_t stream) {
    return dtype == ATTN4J_DTYPE_F16 ? launch_layout<D, __half>(p, paged, stream)
                                     : launch_layout<D, __nv_bfloat16>(p, paged, stream);
}

}  // namespace

bool prefill_wgmma_available(int device) {
#ifdef ATTN4J_HAVE_SM90A
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
        return false;
    return major == 9 && minor == 0;
#else
    (void)device;
    return false;
#endif
}

// The mma.sync choice follows the H200 A/B of both shapes (benchmarks/results/h200/cuda-prefill-tiles.txt).
PrefillKernel prefill_kernel_for(int head_dim, bool causal, bool paged, int64_t mean_q_len, bool wgmma) {
    static const char* const env = std::getenv("ATTN4J_CUDA_PREFILL_TILE");
    const bool wgmma_ok = wgmma && head_dim == 128;
    if (env && !std::strcmp(env, "8x2")) return PrefillKernel::kMma8;
    if (env && !std::strcmp(env, "4x2")) return PrefillKernel::kMma4;
    if (wgmma_ok) return PrefillKernel::kWgmma;
    if (head_dim == 64) return PrefillKernel::kMma4;
    return causal && !paged && mean_q_len < 24576 ? PrefillKernel::kMma4 : PrefillKernel::kMma8;
}

bool prefill_supported(const attn4j_attention_desc& d) {
    const bool dim = d.head_dim == 64 || d.head_dim == 128;
    const bool in = (d.q_dtype == ATTN4J_DTYPE_BF16 || d.q_dtype == ATTN4J_DTYPE_F16) && d.kv_dtype == d.q_dtype;
    const bool out = d.out_dtype == ATTN4J_DTYPE_F32 || d.out_dtype == ATTN4J_DTYPE_F16 ||
                     d.out_dtype == ATTN4J_DTYPE_BF16;
    return dim && in && out;
}

cudaError_t launch_prefill(const PrefillParams& p, int head_dim, attn4j_dtype dtype, bool paged,
                           cudaStream_t stream) {
    if (p.kernel == PrefillKernel::kWgmma) {
#ifdef ATTN4J_HAVE_SM90A
        if (head_dim == 128) return launch_prefill_wgmma(p, dtype, paged, stream);
#endif
        return cudaErrorNoKernelImageForDevice;  // prefill_kernel_for never picks it here
    }
    return head_dim == 64 ? launch_dtype<64>(p, dtype, paged, stream) : launch_dtype<128>(p, dtype, paged, stream);
}

}  // namespace attn4j::cuda
