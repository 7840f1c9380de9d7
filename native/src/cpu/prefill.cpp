// CPU prefill: plan (tile shapes, per-thread scratch, oneDNN primitives), OpenMP task scheduling,
// and the generic F32 path.
//
// Paths (chosen once per plan):
//  - "amx-bf16"        q or kv 16-bit, AVX-512 + AMX-BF16: hand-written AMX tile GEMMs
//  - "onednn-bf16"     q or kv 16-bit, AVX-512 without AMX (or ATTN4J_PREFILL_ENGINE=onednn):
//                      oneDNN matmul primitives created here for the fixed tile shape
//  - "generic-f32"     q and kv F32 (exact to ~1e-7), or no AVX-512: portable C++, fp32 math
// A task is (sequence, kv head, tile of query tokens) with the G query heads of the kv head stacked
// into the GEMM rows, so every K/V tile is loaded once for the whole GQA group. Causal tiles that
// are fully masked are never visited (the KV loop stops at the last visible key of the tile).
#include "cpu/prefill.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/error.h"
#include "cpu/prefill_internal.h"
#include "cpu/quantize.h"

namespace attn4j::cpu {
namespace {

using namespace prefill_detail;

inline size_t dsize(attn4j_dtype d) { return d == ATTN4J_DTYPE_F32 ? 4 : 2; }

void load_row(const void* src, attn4j_dtype dt, int n, float* dst) {
    if (dt == ATTN4J_DTYPE_F32) {
        std::memcpy(dst, src, size_t(n) * 4);
    } else if (dt == ATTN4J_DTYPE_BF16) {
        const uint16_t* s = static_cast<const uint16_t*>(src);
        for (int i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
    } else {
        const uint16_t* s = static_cast<const uint16_t*>(src);
        for (int i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
    }
}

void store_row(const float* src, float scale, attn4j_dtype dt, int n, void* dst) {
    if (dt == ATTN4J_DTYPE_F32) {
        float* d = static_cast<float*>(dst);
        for (int i = 0; i < n; ++i) d[i] = src[i] * scale;
    } else if (dt == ATTN4J_DTYPE_BF16) {
        uint16_t* d = static_cast<uint16_t*>(dst);
        for (int i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i] * scale);
    } else {
        uint16_t* d = static_cast<uint16_t*>(dst);
        for (int i = 0; i < n; ++i) d[i] = f32_to_f16(src[i] * scale);
    }
}

struct AlignedFree {
    void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<char, AlignedFree>;

Buffer alloc_buffer(size_t bytes) {
    bytes = (bytes + 4095) / 4096 * 4096;
    void* p = std::aligned_alloc(4096, bytes);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
    return Buffer(static_cast<char*>(p));
}

int64_t seq_kv_len(const PrefillArgs& a, int s) {
    return a.paged ? a.table.seq_len(s, a.kv.page_size) : int64_t(a.kv_indptr[s + 1] - a.kv_indptr[s]);
}

const void* kv_row_ptr(const PrefillArgs& a, bool v, int s, int kvh, int64_t j) {
    if (!a.paged) {
        const RowsHeadsView& t = v ? a.v : a.k;
        return static_cast<const char*>(t.data) +
               size_t((a.kv_indptr[s] + j) * t.row_stride + int64_t(kvh) * t.head_stride) *
                   dsize(t.dtype);
    }
    const PagedKvView& kv = a.kv;
    const int32_t page = a.table.indices[a.table.indptr[s] + j / kv.page_size];
    const int64_t off = int64_t(page) * kv.page_stride() + int64_t(kvh) * kv.head_stride() +
                        (j % kv.page_size) * kv.head_dim;
    return static_cast<const char*>(v ? kv.v : kv.k) + size_t(off) * dsize(kv.dtype);
}

// Row j of sequence s, kv head kvh, as F32 in the original (un-rotated) space. Quantized pages are
// decoded and rotated back here (chunked prefill over a quantized cache: correct, not fast).
void load_kv_row(const PrefillArgs& a, bool v, int s, int kvh, int64_t j, float* out) {
    if (!a.paged || !a.kv.quantized()) {
        load_row(kv_row_ptr(a, v, s, kvh, j), a.paged ? a.kv.dtype : (v ? a.v : a.k).dtype, a.shape.head_dim, out);
        return;
    }
    const PagedKvView& kv = a.kv;
    const QuantFormat& f = kv.quant;
    const int32_t page = a.table.indices[a.table.indptr[s] + j / kv.page_size];
    const char* block = static_cast<const char*>(v ? kv.v : kv.k) + page * kv.page_stride_bytes() +
                        int64_t(kvh) * kv.head_stride_bytes();
    const int64_t slot = j % kv.page_size;
    const uint8_t* codes = reinterpret_cast<const uint8_t*>(block) + slot * f.code_bytes();
    const char* meta = block + int64_t(kv.page_size) * f.code_bytes() + slot * f.meta_bytes();
    float rotated[256];
    dequantize_row(codes, meta, f, rotated);
    const RotationView& rot = v ? kv.v_rot : kv.k_rot;
    unrotate_row(rotated, out, f.head_dim, rot.kind, rot.matrix_of(kvh, f.head_dim));
}

// ---- generic F32 path ----------------------------------------------------------------------------
constexpr int kGenericBq = 16;
constexpr int kGenericBk = 64;

struct GenericScratch {
    float *q, *kt, *v, *s, *o, *m, *l;
};

void generic_task(const PrefillArgs& a, GenericScratch& sc, const Task& task) {
    const int D = a.shape.head_dim, G = a.shape.group(), Bk = kGenericBk;
    const int64_t qo_start = a.qo_indptr[task.seq];
    const int n_q = int(a.qo_indptr[task.seq + 1] - qo_start);
    const int n_kv = int(seq_kv_len(a, task.seq));
    const int rows = task.nq * G;
    const float scale = a.shape.sm_scale;
    const size_t q_es = dsize(a.q.dtype);
    for (int r = 0; r < rows; ++r) {
        const int t = r / G, h = task.kv_head * G + r % G;
        const char* src = static_cast<const char*>(a.q.data) +
                          size_t((qo_start + task.q0 + t) * a.q.row_stride + h * a.q.head_stride) * q_es;
        load_row(src, a.q.dtype, D, sc.q + size_t(r) * D);
        for (int d = 0; d < D; ++d) sc.q[size_t(r) * D + d] *= scale;
        sc.m[r] = -INFINITY;
        sc.l[r] = 0.f;
    }
    std::memset(sc.o, 0, sizeof(float) * size_t(rows) * D);
    const int off = n_kv - n_q;
    const int kv_end = a.shape.causal ? std::min(n_kv, task.q0 + task.nq + off) : n_kv;
    for (int j0 = 0; j0 < kv_end; j0 += Bk) {
        const int valid = std::min(Bk, kv_end - j0);
        float row[256];
        for (int n = 0; n < valid; ++n) {
            load_kv_row(a, false, task.seq, task.kv_head, j0 + n, row);
            for (int d = 0; d < D; ++d) sc.kt[size_t(d) * Bk + n] = row[d];
            load_kv_row(a, true, task.seq, task.kv_head, j0 + n, sc.v + size_t(n) * D);
        }
        for (int r = 0; r < rows; ++r) {
            int vis = valid;
            if (a.shape.causal) vis = std::min(vis, task.q0 + r / G + off - j0 + 1);
            if (vis <= 0) continue;
            float* s = sc.s;
            const float* q = sc.q + size_t(r) * D;
            for (int n = 0; n < vis; ++n) s[n] = 0.f;
            for (int d = 0; d < D; ++d) {
                const float qd = q[d];
                const float* kt = sc.kt + size_t(d) * Bk;
                for (int n = 0; n < vis; ++n) s[n] += qd * kt[n];
            }
            float mx = sc.m[r];
            for (int n = 0; n < vis; ++n) mx = std::max(mx, s[n]);
            const float alpha = std::exp(sc.m[r] - mx);
            float* o = sc.o + size_t(r) * D;
            if (alpha != 1.f)
                for (int d = 0; d < D; ++d) o[d] *= alpha;
            float sum = 0.f;
            for (int n = 0; n < vis; ++n) {
                const float p = std::exp(s[n] - mx);
                sum += p;
                const float* v = sc.v + size_t(n) * D;
                for (int d = 0; d < D; ++d) o[d] += p * v[d];
            }
            sc.l[r] = sc.l[r] * alpha + sum;
            sc.m[r] = mx;
        }
    }
    const size_t o_es = dsize(a.out.dtype);
    for (int r = 0; r < rows; ++r) {
        const int t = r / G, h = task.kv_head * G + r % G;
        const int64_t row = qo_start + task.q0 + t;
        char* dst = static_cast<char*>(a.out.data) +
                    size_t(row * a.out.row_stride + h * a.out.head_stride) * o_es;
        store_row(sc.o + size_t(r) * D, 1.f / sc.l[r], a.out.dtype, D, dst);
        if (a.lse.data)
            a.lse.data[row * a.lse.row_stride + h * a.lse.head_stride] = sc.m[r] + std::log(sc.l[r]);
    }
}

// ---- the kernel ----------------------------------------------------------------------------------
enum class Path { generic_f32, bf16 };

class PrefillKernelImpl final : public PrefillKernel {
public:
    PrefillKernelImpl(const attn4j_attention_desc& desc, int num_threads)
        : threads_(std::max(1, num_threads)) {
        const int D = desc.head_dim, G = desc.num_qo_heads / desc.num_kv_heads;
        const CpuFeatures& f = cpu_features();
        // Quantized caches: the generic path dequantizes rows as it loads them.
        const bool all_f32 = (desc.q_dtype == ATTN4J_DTYPE_F32 && desc.kv_dtype == ATTN4J_DTYPE_F32) ||
                             quant_bits(desc.kv_dtype) != 0;
        const bool avx512 = f.isa == Isa::avx512 && f.avx512_bf16;
        path_ = (!all_f32 && avx512) ? Path::bf16 : Path::generic_f32;
        if (path_ == Path::bf16) {
            const char* want = std::getenv("ATTN4J_PREFILL_ENGINE");
            const bool want_onednn = want && std::strcmp(want, "onednn") == 0;
            engine_ = (!want_onednn && bf16_amx_available()) ? Engine::amx : Engine::onednn;
            geo_.head_dim = D;
            geo_.dpad = (D + 31) / 32 * 32;
            geo_.group = G;
            int bq = env_int("ATTN4J_PREFILL_BQ", 0);
            if (bq <= 0) bq = std::max(1, (256 + G - 1) / G);
            geo_.q_tokens = bq;
            geo_.rows = (G * bq + 31) / 32 * 32;
            int bk = env_int("ATTN4J_PREFILL_BK", 0);
            geo_.kv_tile = bk > 0 ? (bk + 31) / 32 * 32 : 128;
            if (engine_ == Engine::onednn) {
                onednn_ = onednn_gemms_create(geo_, threads_);
                gemms_ = onednn_gemms_table(onednn_);
            }
            const size_t M = geo_.rows, Dp = geo_.dpad, Bk = geo_.kv_tile;
            const size_t sizes[8] = {M * Dp * 2, Bk * Dp * 2, Bk * Dp * 2, M * Bk * 4,
                                     M * Bk * 2, M * Dp * 4, M * 4,       M * 4};
            size_t total = 0;
            for (size_t s : sizes) total += (s + 63) / 64 * 64;
            for (int t = 0; t < threads_; ++t) {
                buffers_.push_back(alloc_buffer(total));
                char* p = buffers_.back().get();
                char* ptrs[8];
                for (int i = 0; i < 8; ++i) {
                    ptrs[i] = p;
                    p += (sizes[i] + 63) / 64 * 64;
                }
                Bf16Scratch sc;
                sc.q = reinterpret_cast<uint16_t*>(ptrs[0]);
                sc.k = reinterpret_cast<uint16_t*>(ptrs[1]);
                sc.v = reinterpret_cast<uint16_t*>(ptrs[2]);
                sc.s = reinterpret_cast<float*>(ptrs[3]);
                sc.p = reinterpret_cast<uint16_t*>(ptrs[4]);
                sc.o = reinterpret_cast<float*>(ptrs[5]);
                sc.m = reinterpret_cast<float*>(ptrs[6]);
                sc.l = reinterpret_cast<float*>(ptrs[7]);
                bf16_scratch_.push_back(sc);
            }
            q_tokens_ = geo_.q_tokens;
        } else {
            const size_t M = size_t(G) * kGenericBq, Bk = kGenericBk;
            const size_t sizes[7] = {M * D * 4, Bk * D * 4, Bk * D * 4, Bk * 4, M * D * 4, M * 4, M * 4};
            size_t total = 0;
            for (size_t s : sizes) total += (s + 63) / 64 * 64;
            for (int t = 0; t < threads_; ++t) {
                buffers_.push_back(alloc_buffer(total));
                char* p = buffers_.back().get();
                float* ptrs[7];
                for (int i = 0; i < 7; ++i) {
                    ptrs[i] = reinterpret_cast<float*>(p);
                    p += (sizes[i] + 63) / 64 * 64;
                }
                generic_scratch_.push_back({ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4], ptrs[5], ptrs[6]});
            }
            q_tokens_ = kGenericBq;
        }
        prefix_.resize(size_t(std::max(1, desc.max_batch_size)) + 1);
    }

    ~PrefillKernelImpl() override {
        if (onednn_) onednn_gemms_destroy(onednn_);
    }

    const char* path_name() const override {
        if (path_ == Path::generic_f32) return "generic-f32";
        return engine_ == Engine::amx ? "amx-bf16" : "onednn-bf16";
    }

    void run(const PrefillArgs& a) override {
        if (size_t(a.batch) + 1 > prefix_.size()) prefix_.resize(size_t(a.batch) + 1);  // api rejects
        const int hkv = a.shape.num_kv_heads;
        int64_t total = 0;
        for (int s = 0; s < a.batch; ++s) {
            prefix_[s] = total;
            const int64_t nq = a.qo_indptr[s + 1] - a.qo_indptr[s];
            total += (nq + q_tokens_ - 1) / q_tokens_ * hkv;
        }
        prefix_[a.batch] = total;
        if (total == 0) return;

        std::exception_ptr error;
        std::mutex error_mu;
        const int nth = int(std::min<int64_t>(threads_, total));
#pragma omp parallel num_threads(nth)
        {
            const int tid = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
            for (int64_t idx = 0; idx < total; ++idx) {
                try {
                    run_task(a, tid, idx);
                } catch (...) {
                    std::lock_guard<std::mutex> lock(error_mu);
                    if (!error) error = std::current_exception();
                }
            }
        }
        if (error) std::rethrow_exception(error);
    }

private:
    static int env_int(const char* name, int dflt) {
        const char* v = std::getenv(name);
        return v ? std::atoi(v) : dflt;
    }

    void run_task(const PrefillArgs& a, int tid, int64_t idx) {
        const int hkv = a.shape.num_kv_heads;
        const int s = int(std::upper_bound(prefix_.begin(), prefix_.begin() + a.batch + 1, idx) -
                          prefix_.begin()) - 1;
        const int64_t local = idx - prefix_[s];
        const int nq = int(a.qo_indptr[s + 1] - a.qo_indptr[s]);
        const int ntiles = (nq + q_tokens_ - 1) / q_tokens_;
        Task t;
        t.seq = s;
        t.kv_head = int(local % hkv);
        // last query tiles first: under a causal mask they see the most keys
        const int tile = ntiles - 1 - int(local / hkv);
        t.q0 = tile * q_tokens_;
        t.nq = std::min(q_tokens_, nq - t.q0);
        if (path_ == Path::bf16)
            bf16_run_task_avx512(a, geo_, engine_, gemms_, bf16_scratch_[tid], tid, t);
        else
            generic_task(a, generic_scratch_[tid], t);
    }

    int threads_;
    Path path_ = Path::generic_f32;
    Engine engine_ = Engine::onednn;
    Bf16Geometry geo_;
    OnednnGemms* onednn_ = nullptr;
    TileGemms gemms_;
    int q_tokens_ = 16;
    std::vector<Buffer> buffers_;
    std::vector<Bf16Scratch> bf16_scratch_;
    std::vector<GenericScratch> generic_scratch_;
    std::vector<int64_t> prefix_;
};

}  // namespace

std::unique_ptr<PrefillKernel> make_prefill_kernel(const attn4j_attention_desc& desc,
                                                   int num_threads) {
    if (desc.head_dim <= 0 || desc.head_dim % 16 != 0 || desc.head_dim > 256)
        fail(ATTN4J_ERR_UNSUPPORTED, "head_dim: CPU prefill supports multiples of 16 up to 256");
    return std::make_unique<PrefillKernelImpl>(desc, num_threads);
}

}  // namespace attn4j::cpu
