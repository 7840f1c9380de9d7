// Hopper prefill kernel (wgmma, compiled for sm_90a only; see prefill_wgmma.cuh). Per CTA: two
// warpgroups of 64 query rows each (128 rows, the 4-warp mma.sync kernel's tile), head_dim 128,
// K/V tiles of 128 keys in a 2-stage cp.async pipeline, one barrier per tile.
//  - S = Q K^T: 8 wgmma m64n128k16 per warpgroup with Q and K read by the tensor cores straight
//    from shared memory (no ldmatrix: what bounded the mma.sync kernel was the shared-memory pipe
//    feeding its register operands).
//  - Online softmax in base 2 in registers; the S accumulator of each warp is the A fragment of
//    P V, so P never leaves registers.
//  - O += P V: 8 wgmma m64n128k16 with A (P) from registers and V from shared memory, transposed on
//    read (V rows are keys, contiguous in head_dim).
// The two warpgroups run unsynchronised between barriers, so one's softmax overlaps the other's
// MMAs. Tiles are 128-byte-swizzled panels (wgmma.cuh); cp.async writes them, so every thread
// fences the async proxy before the barrier that publishes a tile.
#include "cuda/sm90a/prefill_wgmma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/decode_common.cuh"
#include "cuda/mma.cuh"
#include "cuda/out_store.cuh"
#include "cuda/prefill_seq.cuh"
#include "cuda/sm90a/wgmma.cuh"

namespace attn4j::cuda {

namespace {

using detail::cp_async16;
using detail::cp_async_commit;
using detail::cp_async_wait;
using detail::ex2;
using detail::kLn2;

constexpr int D = 128;
constexpr int BM = kPrefillWgmmaRows;  // two warpgroups x 64 rows
constexpr int BN = 128;                // keys per K/V tile
constexpr int STAGES = 2;
constexpr int THREADS = 256;
constexpr int CPR = D / 8;                       // 16-byte chunks per row
constexpr int ROWS_PER_PASS = THREADS / CPR;     // rows one pass of cp.async covers
constexpr size_t kTileElems = size_t(BN) * D;    // one K or V tile
constexpr size_t kSmemBytes = (size_t(BM) * D + 2 * STAGES * kTileElems) * 2 + 1024;  // + alignment slack

template <typename T, bool PAGED>
__global__ void __launch_bounds__(THREADS, 1) prefill_wgmma_kernel(const PrefillParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ unsigned char smem_raw[];
    // 128-byte swizzle atoms must start 1024-byte aligned.
    const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
    T* sQ = reinterpret_cast<T*>(smem_raw + ((1024 - (base & 1023)) & 1023));
    T* sK = sQ + BM * D;                 // [STAGES][2 panels][BN][64]
    T* sV = sK + STAGES * kTileElems;    // [STAGES][2 panels][BN][64]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wg = warp >> 2;                       // warpgroup: rows 64 wg .. 64 wg + 63
    const int g = lane >> 2, c2 = (lane & 3) * 2;   // fragment row within 8, column pair
    const int wrow0 = 64 * wg + 16 * (warp & 3);    // first tile row of this warp
    const PrefillTile tile = p.tiles[blockIdx.x / p.num_qo_heads];
    const int head = blockIdx.x % p.num_qo_heads;
    const int kvh = head / p.group;
    const int b = tile.seq, q0 = tile.q_start;
    const PrefillSeq seq = prefill_seq<PAGED>(p, b);
    const int q_begin = seq.q_begin, nq = seq.nq, nk = seq.nk, kv_begin = seq.kv_begin, page_begin = seq.page_begin;
    const int q_rows = min(BM, nq - q0);
    const int diag = nk - nq;  // query i sees keys <= i + diag (causal, bottom-right aligned)
    const int kv_end = p.causal ? max(0, min(nk, q0 + q_rows + diag)) : nk;
    const int num_kv_tiles = (kv_end + BN - 1) / BN;

    // Each thread copies chunk `my_chunk` of rows my_row + i * ROWS_PER_PASS.
    const int my_chunk = tid % CPR, my_row = tid / CPR;
    const T* qh = static_cast<const T*>(p.q) + int64_t(q_begin) * p.q_row + int64_t(head) * p.q_head;
#pragma unroll
    for (int i = 0; i < BM / ROWS_PER_PASS; ++i) {
        const int r = my_row + i * ROWS_PER_PASS;
        const bool ok = r < q_rows;
        cp_async16(sQ + sm90::panel_offset(r, my_chunk, BM), ok ? qh + int64_t(q0 + r) * p.q_row + my_chunk * 8 : qh,
                   ok);
    }
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
        T* dk = sK + buf * kTileElems;
        T* dv = sV + buf * kTileElems;
#pragma unroll
        for (int i = 0; i < BN / ROWS_PER_PASS; ++i) {
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
            const int o = sm90::panel_offset(r, my_chunk, BN);
            cp_async16(dk + o, kh + ko, ok);
            cp_async16(dv + o, vh + vo, ok);
        }
    };
    if (num_kv_tiles > 0) load_kv(0, 0);
    cp_async_commit();  // Q and tile 0

    float o[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) o[i] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
    const T* qa = sQ + 64 * wg * sm90::kPanel;  // this warpgroup's rows in panel 0
    const int wg_last_row = q0 + 64 * wg + 63;

    for (int j = 0; j < num_kv_tiles; ++j) {
        const int buf = j & 1;
        // Tile j has landed and both warpgroups are done with tile j - 1, whose buffer the
        // prefetch of tile j + 1 reuses.
        cp_async_wait<0>();
        sm90::fence_async_smem();
        __syncthreads();
        if (j + 1 < num_kv_tiles) load_kv(j + 1, buf ^ 1);
        cp_async_commit();
        const int k0 = j * BN;
        // Causal: a warpgroup whose last row sees no key of this tile skips it.
        if (p.causal && k0 > wg_last_row + diag) continue;
        const T* tk = sK + buf * kTileElems;
        const T* tv = sV + buf * kTileElems;

        float s[64];
        sm90::fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {  // head-dim columns 16 kk ..: panel kk / 4, 16 (kk % 4) in it
            const int col = (kk & 3) * 16;
            sm90::mma_ss<T>(s, sm90::desc_k_major(qa + (kk >> 2) * BM * sm90::kPanel + col),
                            sm90::desc_k_major(tk + (kk >> 2) * BN * sm90::kPanel + col), kk > 0);
        }
        sm90::commit();
        sm90::wait<0>();
        sm90::fence_regs(s);

        // Mask keys past the end and, on tiles that cross the diagonal, above it.
        if (k0 + BN > nk || (p.causal && k0 + BN - 1 > q0 + wrow0 + diag)) {
#pragma unroll
            for (int i = 0; i < 64; ++i) {
                const int key = k0 + 8 * (i >> 2) + c2 + (i & 1);
                const int qi = q0 + wrow0 + g + 8 * ((i >> 1) & 1);
                if (key >= nk || (p.causal && key > qi + diag)) s[i] = -INFINITY;
            }
        }
        // Online softmax (log2 domain); the output is rescaled only when a row max moved.
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = row_max[r];
#pragma unroll
            for (int n = 0; n < 16; ++n) mx = fmaxf(mx, fmaxf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float base_r = mx == -INFINITY ? 0.f : mx * p.scale_log2;
            alpha[r] = ex2(row_max[r] * p.scale_log2 - base_r);
            row_max[r] = mx;
            float sum = 0.f;
#pragma unroll
            for (int n = 0; n < 16; ++n) {
                s[4 * n + 2 * r] = ex2(fmaf(s[4 * n + 2 * r], p.scale_log2, -base_r));
                s[4 * n + 2 * r + 1] = ex2(fmaf(s[4 * n + 2 * r + 1], p.scale_log2, -base_r));
                sum += s[4 * n + 2 * r] + s[4 * n + 2 * r + 1];
            }
            row_sum[r] = row_sum[r] * alpha[r] + sum;
        }
        if (alpha[0] != 1.f || alpha[1] != 1.f) {
#pragma unroll
            for (int n = 0; n < 16; ++n) {
                o[4 * n] *= alpha[0];
                o[4 * n + 1] *= alpha[0];
                o[4 * n + 2] *= alpha[1];
                o[4 * n + 3] *= alpha[1];
            }
        }
        // P as A fragments: keys 16 kj .. 16 kj + 15 are S's n8 blocks 2 kj and 2 kj + 1.
        uint32_t pa[BN / 16][4];
#pragma unroll
        for (int kj = 0; kj < BN / 16; ++kj) {
            pa[kj][0] = Mma<T>::pack(s[8 * kj], s[8 * kj + 1]);
            pa[kj][1] = Mma<T>::pack(s[8 * kj + 2], s[8 * kj + 3]);
            pa[kj][2] = Mma<T>::pack(s[8 * kj + 4], s[8 * kj + 5]);
            pa[kj][3] = Mma<T>::pack(s[8 * kj + 6], s[8 * kj + 7]);
        }
        sm90::fence_regs(o);
        sm90::fence();
#pragma unroll
        for (int kj = 0; kj < BN / 16; ++kj)
            sm90::mma_rs<T>(o, pa[kj], sm90::desc_mn_major(tv + kj * 16 * sm90::kPanel, BN * sm90::kPanelRowBytes), 1);
        sm90::commit();
        sm90::wait<0>();
        sm90::fence_regs(o);
    }
    cp_async_wait<0>();

    // Epilogue: full row sums across the quad, normalise, write.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = row_sum[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int qi = q0 + wrow0 + g + 8 * r;
        if (qi >= nq) continue;
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const int64_t row = q_begin + qi;
        const int64_t ob = row * p.o_row + int64_t(head) * p.o_head + c2;
#pragma unroll
        for (int n = 0; n < 16; ++n)
            store_pair(p.out, p.out_dtype, ob + 8 * n, o[4 * n + 2 * r] * inv, o[4 * n + 2 * r + 1] * inv);
        if (p.lse && (lane & 3) == 0)
            p.lse[row * p.lse_row + int64_t(head) * p.lse_head] =
                l > 0.f ? (row_max[r] * p.scale_log2 + __log2f(l)) * kLn2 : -INFINITY;
    }
#else
    __trap();  // only sm_90a code is built for this kernel; the host never launches it elsewhere
#endif
}

template <typename T, bool PAGED>
cudaError_t launch(const PrefillParams& p, cudaStream_t stream) {
    auto kernel = prefill_wgmma_kernel<T, PAGED>;
    if (p.num_tiles == 0) return cudaSuccess;
    const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes));
    if (attr != cudaSuccess) return attr;
    kernel<<<unsigned(int64_t(p.num_tiles) * p.num_qo_heads), THREADS, kSmemBytes, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_prefill_wgmma(const PrefillParams& p, attn4j_dtype dtype, bool paged, cudaStream_t stream) {
    if (dtype == ATTN4J_DTYPE_F16) return paged ? launch<__half, true>(p, stream) : launch<__half, false>(p, stream);
    return paged ? launch<__nv_bfloat16, true>(p, stream) : launch<__nv_bfloat16, false>(p, stream);
}

}  // namespace attn4j::cuda
