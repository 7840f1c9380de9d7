// CPU paged decode driver: split-KV planning over one or more KV segments (mixed precision),
// OpenMP threading over a precomputed task list, q / output dtype conversion, LSE merge of all
// chunks of a (sequence, kv head). The SIMD work per chunk is in decode_<isa>.cpp (float caches,
// see decode_kernel_impl.h) and decode_quant_<isa>.cpp (INT8 / INT4 / INT2 caches, see
// decode_quant.h). Everything is sized at creation; run() allocates nothing.
#include "cpu/decode.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "cpu/decode_chunk.h"
#include "cpu/decode_quant.h"

namespace attn4j::cpu {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// Chunk costs are K+V bytes read. Bytes below which a chunk is never split further (512 BF16
// tokens at head_dim 128), and the per-task overhead used when balancing.
constexpr int64_t kMinChunkBytes = 512 * 2 * 256;
constexpr int64_t kTaskOverheadBytes = 32 * 2 * 256;
// Tasks per thread we aim for when splitting: enough to balance ragged batches.
constexpr int64_t kTasksPerThread = 4;
// Segments per sequence the split workspace is sized for (mixed precision: high-precision +
// quantized); runs with more segments still work while their chunks fit.
constexpr int64_t kPlannedSegments = 2;

inline void store_row(void* base, attn4j_dtype dt, int64_t at, const float* src, int n) {
    switch (dt) {
        case ATTN4J_DTYPE_F16: {
            uint16_t* d = static_cast<uint16_t*>(base) + at;
            for (int i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
            break;
        }
        case ATTN4J_DTYPE_BF16: {
            uint16_t* d = static_cast<uint16_t*>(base) + at;
            for (int i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
            break;
        }
        default: std::memcpy(static_cast<float*>(base) + at, src, size_t(n) * 4); break;
    }
}

template <class T>
struct AlignedArray {
    T* ptr = nullptr;
    size_t n = 0;
    explicit AlignedArray(size_t count) : n(count) {
        const size_t bytes = std::max<size_t>(64, (count * sizeof(T) + 63) / 64 * 64);
        ptr = static_cast<T*>(std::aligned_alloc(64, bytes));
        if (!ptr) throw std::bad_alloc();
    }
    ~AlignedArray() { std::free(ptr); }
    AlignedArray(const AlignedArray&) = delete;
    AlignedArray& operator=(const AlignedArray&) = delete;
    T& operator[](size_t i) { return ptr[i]; }
};

struct Task {
    int32_t seq;
    int32_t kv_head;
    int32_t segment;     // 0 = DecodeArgs::kv, s > 0 = DecodeArgs::extra[s - 1]
    int32_t page_begin;  // index into the sequence's pages of that segment
    int32_t num_pages;
    int64_t num_tokens;
    int32_t slot;        // -1: write the final output directly; else workspace state index
};

struct Merge {
    int32_t seq;
    int32_t kv_head;
    int32_t slot;        // first of num_chunks consecutive workspace states
    int32_t num_chunks;
};

class DecodeKernelImpl final : public DecodeKernel {
public:
    DecodeKernelImpl(const attn4j_attention_desc& desc, int num_threads, Isa isa)
        : desc_(desc),
          threads_(std::max(1, num_threads)),
          isa_(isa),
          group_(desc.num_qo_heads / desc.num_kv_heads),
          hd_(desc.head_dim),
          max_slots_(std::max<int64_t>(64, 16 * int64_t(std::max(1, num_threads))) +
                     kPlannedSegments * int64_t(desc.max_batch_size) * desc.num_kv_heads),
          max_tasks_(int64_t(desc.max_batch_size) * desc.num_kv_heads + max_slots_),
          tasks_(size_t(max_tasks_)),
          prefix_(size_t(max_tasks_ + 1)),
          merges_(size_t(std::max<int64_t>(1, max_slots_ / 2))),
          ws_o_(size_t(max_slots_) * group_ * hd_),
          ws_lse_(size_t(max_slots_) * group_),
          scratch_mem_(size_t(threads_) * scratch_floats()),
          scratch_(size_t(threads_)),
          lse_tmp_(size_t(threads_) * group_),
          quant_scratch_bytes_((quant_chunk_scratch_bytes(group_, hd_, desc.page_size) + 63) / 64 * 64),
          quant_scratch_(size_t(threads_) * quant_scratch_bytes_),
          quant_fn_(quant_chunk_fn(isa)) {
        switch (isa_) {
            case Isa::avx512: fn_ = decode_chunk_avx512; break;
            case Isa::avx2: fn_ = decode_chunk_avx2; break;
            default: fn_ = decode_chunk_scalar; break;
        }
        for (int t = 0; t < threads_; ++t) {
            float* base = scratch_mem_.ptr + size_t(t) * scratch_floats();
            DecodeScratch& s = scratch_[t];
            const size_t gh = size_t(group_) * hd_;
            s.q = base;
            s.o = s.q + round16(gh);
            s.m = s.o + round16(gh);
            s.l = reinterpret_cast<double*>(s.m + round16(group_));
            s.alpha = s.m + 3 * round16(group_);
            s.p = s.alpha + round16(group_);
            s.sacc = s.p + round16(size_t(group_) * kDecodeMaxLanes);
            s.off = reinterpret_cast<int64_t*>(s.sacc + kDecodeMaxGroupTile * kDecodeMaxLanes * kDecodeMaxLanes);
        }
    }

    const char* path_name() const override { return isa_name(isa_); }

    void run(const DecodeArgs& a) override {
        plan(a);
        if (num_tasks_ == 0) return;
        const int nt = int(std::min<int64_t>(threads_, num_tasks_));
        if (nt <= 1) {
            work(a, 0, 1);
            return;
        }
#pragma omp parallel num_threads(nt)
        work(a, omp_get_thread_num(), omp_get_num_threads());
    }

private:
    static size_t round16(size_t n) { return (n + 15) / 16 * 16; }
    size_t scratch_floats() const {
        const size_t gh = size_t(group_) * hd_;
        return 2 * round16(gh) + 4 * round16(group_) + round16(size_t(group_) * kDecodeMaxLanes) +
               kDecodeMaxGroupTile * kDecodeMaxLanes * kDecodeMaxLanes + 4 * kDecodeMaxLanes /* off, pfoff: 2 x int64[lanes] */;
    }

    static const PagedKvView& seg_kv(const DecodeArgs& a, int s) { return s == 0 ? a.kv : a.extra[s - 1].kv; }
    static const PageTableView& seg_table(const DecodeArgs& a, int s) {
        return s == 0 ? a.table : a.extra[s - 1].table;
    }

    // Builds the task list: (sequence, kv head, segment, page-aligned chunk), chunks sized in
    // bytes read so that there are about kTasksPerThread tasks per thread, limited by the
    // workspace. All chunks of one (sequence, kv head) get consecutive workspace slots and one
    // merge, across segments.
    void plan(const DecodeArgs& a) {
        const int nseg = 1 + a.num_extra_segments;
        const int32_t B = a.table.batch, H = desc_.num_kv_heads;
        int64_t total = 0;
        for (int s = 0; s < nseg; ++s)
            for (int32_t i = 0; i < B; ++i)
                total += seg_table(a, s).seq_len(i, seg_kv(a, s).page_size) * 2 * seg_kv(a, s).token_bytes();
        total *= H;
        int64_t chunk_bytes = std::max<int64_t>(kMinChunkBytes, total / (int64_t(threads_) * kTasksPerThread) + 1);
        if (threads_ == 1) chunk_bytes = INT64_MAX / 4;
        int64_t chunk_pages[kMaxKvSegments];
        auto set_chunk_pages = [&] {
            for (int s = 0; s < nseg; ++s) {
                const int64_t page_bytes = int64_t(seg_kv(a, s).page_size) * 2 * seg_kv(a, s).token_bytes();
                chunk_pages[s] = std::max<int64_t>(1, chunk_bytes / page_bytes + (chunk_bytes % page_bytes != 0));
            }
        };
        auto chunks_of = [&](int s, int32_t i) {
            const int64_t np = seg_table(a, s).indptr[i + 1] - seg_table(a, s).indptr[i];
            return (np + chunk_pages[s] - 1) / chunk_pages[s];
        };
        set_chunk_pages();
        // Grow the chunks until the split states fit the workspace.
        for (;;) {
            int64_t slots = 0, merges = 0, most = 0;
            for (int32_t i = 0; i < B; ++i) {
                int64_t nc = 0;
                for (int s = 0; s < nseg; ++s) {
                    const int64_t c = chunks_of(s, i);
                    nc += c;
                    most = std::max(most, c);
                }
                if (nc > 1) {
                    slots += nc * H;
                    merges += H;
                }
            }
            if (slots <= max_slots_ && merges <= int64_t(merges_.n)) break;
            if (most <= 1)
                fail(ATTN4J_ERR_INVALID_ARGUMENT,
                     "caches: batch " + std::to_string(B) + " x " + std::to_string(nseg) +
                         " segments needs more merge workspace than this plan has (sized for " +
                         std::to_string(kPlannedSegments) + " segments at max_batch_size " +
                         std::to_string(desc_.max_batch_size) + "); use fewer segments or a smaller batch");
            chunk_bytes = chunk_bytes > INT64_MAX / 4 ? chunk_bytes : chunk_bytes * 2;
            set_chunk_pages();
        }
        int64_t nt = 0, slot = 0, nm = 0;
        for (int32_t i = 0; i < B; ++i) {
            int64_t nc_total = 0;
            for (int s = 0; s < nseg; ++s) nc_total += chunks_of(s, i);
            for (int32_t h = 0; h < H; ++h) {
                if (nc_total > 1) merges_[nm++] = Merge{i, h, int32_t(slot), int32_t(nc_total)};
                for (int s = 0; s < nseg; ++s) {
                    const PageTableView& tb = seg_table(a, s);
                    const int32_t ps = seg_kv(a, s).page_size;
                    const int32_t np = tb.indptr[i + 1] - tb.indptr[i];
                    const int32_t nc = int32_t(chunks_of(s, i));
                    // Even split in pages.
                    for (int32_t c = 0; c < nc; ++c) {
                        const int32_t pb = int32_t(int64_t(np) * c / nc), pe = int32_t(int64_t(np) * (c + 1) / nc);
                        Task& t = tasks_[nt++];
                        t.seq = i;
                        t.kv_head = h;
                        t.segment = s;
                        t.page_begin = pb;
                        t.num_pages = pe - pb;
                        t.num_tokens = pe == np ? int64_t(pe - pb - 1) * ps + tb.last_page_len[i]
                                                : int64_t(pe - pb) * ps;
                        t.slot = nc_total > 1 ? int32_t(slot++) : -1;
                    }
                }
            }
        }
        num_tasks_ = nt;
        num_merges_ = nm;
        prefix_[0] = 0;
        for (int64_t t = 0; t < nt; ++t)
            prefix_[t + 1] = prefix_[t] + tasks_[t].num_tokens * 2 * seg_kv(a, tasks_[t].segment).token_bytes() +
                             kTaskOverheadBytes;
    }

    void work(const DecodeArgs& a, int tid, int nt) {
        // Contiguous range of tasks whose cost midpoint falls in this thread's share.
        const int64_t total = prefix_[num_tasks_];
        auto owner = [&](int64_t t) {
            const int64_t mid = (prefix_[t] + prefix_[t + 1]) / 2;
            return int(std::min<int64_t>(nt - 1, mid * nt / std::max<int64_t>(1, total)));
        };
        // Binary search first task owned by >= tid.
        auto first_of = [&](int who) {
            int64_t lo = 0, hi = num_tasks_;
            while (lo < hi) {
                const int64_t m = (lo + hi) / 2;
                if (owner(m) < who) lo = m + 1;
                else hi = m;
            }
            return lo;
        };
        const int64_t tb = first_of(tid), te = first_of(tid + 1);
        DecodeScratch& s = scratch_[tid];
        float* lse_tmp = lse_tmp_.ptr + size_t(tid) * group_;
        const float qscale = a.shape.sm_scale * kLog2e;
        for (int64_t ti = tb; ti < te; ++ti) {
            const Task& t = tasks_[ti];
            // q of the group, scaled, F32.
            for (int g = 0; g < group_; ++g) {
                const int64_t qh = int64_t(t.kv_head) * group_ + g;
                const int64_t at = int64_t(t.seq) * a.q.row_stride + qh * a.q.head_stride;
                float* dst = s.q + int64_t(g) * hd_;
                for (int d = 0; d < hd_; ++d) dst[d] = load_f32(a.q.data, a.q.dtype, at + d) * qscale;
            }
            const PagedKvView& kv = seg_kv(a, t.segment);
            const PageTableView& tbl = seg_table(a, t.segment);
            const int64_t head_bytes = kv.head_stride_bytes();
            float* lse2 = t.slot < 0 ? lse_tmp : ws_lse_.ptr + size_t(t.slot) * group_;
            if (kv.quantized()) {
                QuantDecodeChunk ch;
                ch.fmt = kv.quant;
                ch.k_rot = kv.k_rot;
                ch.v_rot = kv.v_rot;
                ch.kv_head = t.kv_head;
                ch.group = group_;
                ch.page_size = kv.page_size;
                ch.k_base = static_cast<const uint8_t*>(kv.k) + t.kv_head * head_bytes;
                ch.v_base = static_cast<const uint8_t*>(kv.v) + t.kv_head * head_bytes;
                ch.page_stride_bytes = kv.page_stride_bytes();
                ch.pages = tbl.indices + tbl.indptr[t.seq] + t.page_begin;
                ch.num_tokens = t.num_tokens;
                ch.q = s.q;
                ch.out = s.o;
                ch.lse2 = lse2;
                ch.scratch = quant_scratch_.ptr + size_t(tid) * quant_scratch_bytes_;
                quant_fn_(ch);
            } else {
                DecodeChunk ch;
                ch.kv_dtype = kv.dtype;
                ch.group = group_;
                ch.head_dim = hd_;
                ch.page_size = kv.page_size;
                ch.k_base = static_cast<const char*>(kv.k) + t.kv_head * head_bytes;
                ch.v_base = static_cast<const char*>(kv.v) + t.kv_head * head_bytes;
                ch.page_stride_bytes = kv.page_stride_bytes();
                ch.pages = tbl.indices + tbl.indptr[t.seq] + t.page_begin;
                ch.num_tokens = t.num_tokens;
                ch.scratch = &s;
                ch.lse2 = lse2;
                fn_(ch);
            }
            if (t.slot < 0) {
                write_out(a, t.seq, t.kv_head, s.o, lse_tmp);
            } else {
                std::memcpy(ws_o_.ptr + size_t(t.slot) * group_ * hd_, s.o, size_t(group_) * hd_ * 4);
            }
        }
        if (num_merges_ == 0) return;
        if (nt > 1) {
#pragma omp barrier
        }
        // Merge split states: (merge item, query head) pairs round-robin over threads.
        const int64_t items = num_merges_ * group_;
        for (int64_t it = tid; it < items; it += nt) {
            const Merge& m = merges_[it / group_];
            const int g = int(it % group_);
            float mx = -INFINITY;
            for (int c = 0; c < m.num_chunks; ++c) mx = std::max(mx, ws_lse_[size_t(m.slot + c) * group_ + g]);
            float* acc = s.o;  // scratch row
            for (int d = 0; d < hd_; ++d) acc[d] = 0.f;
            float sum = 0.f;
            for (int c = 0; c < m.num_chunks; ++c) {
                const float w = std::exp2(ws_lse_[size_t(m.slot + c) * group_ + g] - mx);
                sum += w;
                const float* src = ws_o_.ptr + (size_t(m.slot + c) * group_ + g) * hd_;
                for (int d = 0; d < hd_; ++d) acc[d] += w * src[d];
            }
            const float inv = 1.f / sum;
            for (int d = 0; d < hd_; ++d) acc[d] *= inv;
            const float lse2 = mx + std::log2(sum);
            write_head(a, m.seq, m.kv_head * group_ + g, acc, lse2);
        }
    }

    void write_head(const DecodeArgs& a, int32_t seq, int64_t qh, const float* o, float lse2) {
        store_row(a.out.data, a.out.dtype, int64_t(seq) * a.out.row_stride + qh * a.out.head_stride, o, hd_);
        if (a.lse.data) a.lse.data[int64_t(seq) * a.lse.row_stride + qh * a.lse.head_stride] = lse2 * kLn2;
    }

    void write_out(const DecodeArgs& a, int32_t seq, int32_t kv_head, const float* o, const float* lse2) {
        for (int g = 0; g < group_; ++g)
            write_head(a, seq, int64_t(kv_head) * group_ + g, o + int64_t(g) * hd_, lse2[g]);
    }

    attn4j_attention_desc desc_;
    int threads_;
    Isa isa_;
    int group_;
    int hd_;
    int64_t max_slots_;
    int64_t max_tasks_;
    DecodeChunkFn fn_ = nullptr;
    AlignedArray<Task> tasks_;
    AlignedArray<int64_t> prefix_;
    AlignedArray<Merge> merges_;
    AlignedArray<float> ws_o_;
    AlignedArray<float> ws_lse_;
    AlignedArray<float> scratch_mem_;
    std::vector<DecodeScratch> scratch_;
    AlignedArray<float> lse_tmp_;
    size_t quant_scratch_bytes_;
    AlignedArray<uint8_t> quant_scratch_;
    QuantChunkFn quant_fn_;
    int64_t num_tasks_ = 0;
    int64_t num_merges_ = 0;
};

}  // namespace

std::unique_ptr<DecodeKernel> make_decode_kernel_for_isa(const attn4j_attention_desc& desc,
                                                         int num_threads, Isa isa) {
    const Isa best = cpu_features().isa;
    if (static_cast<int>(isa) > static_cast<int>(best)) isa = best;
    if (desc.num_kv_heads <= 0 || desc.num_qo_heads % desc.num_kv_heads != 0 || desc.head_dim <= 0 ||
        desc.head_dim % 16 != 0 || desc.head_dim > 256)
        fail(ATTN4J_ERR_UNSUPPORTED, "decode: head_dim must be a multiple of 16 up to 256 and num_qo_heads a multiple of num_kv_heads");
    return std::make_unique<DecodeKernelImpl>(desc, num_threads, isa);
}

std::unique_ptr<DecodeKernel> make_decode_kernel(const attn4j_attention_desc& desc, int num_threads) {
    return make_decode_kernel_for_isa(desc, num_threads, cpu_features().isa);
}

}  // namespace attn4j::cpu
