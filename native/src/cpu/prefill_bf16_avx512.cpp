// BF16 prefill tile loop (AVX-512 unit): packs Q/K/V tiles to bf16 (from F32/F16/BF16, contiguous
// or paged), runs the two tile GEMMs (AMX intrinsics, or oneDNN through a function table), and the
// online softmax in AVX-512 with lazy rescaling (the running max of a row only moves, and O is only
// rescaled, when a tile's max exceeds it by more than 2^8, so P stays <= 256 and most tiles touch
// O through the GEMM alone).
//
// Only plain functions over plain structs leave this unit (see prefill_internal.h).
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include "core/cpu_features.h"
#include "cpu/prefill_internal.h"

// GCC 12 warns about the deliberately undefined pass-through operand inside the AVX-512 unpack
// intrinsics (a false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace attn4j::cpu::prefill_detail {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kRescaleThreshold = 8.f;  // log2 units

inline int imin(int a, int b) { return a < b ? a : b; }
inline int imax(int a, int b) { return a > b ? a : b; }

inline size_t dtype_size(attn4j_dtype d) { return d == ATTN4J_DTYPE_F32 ? 4 : 2; }

// ---- conversions -------------------------------------------------------------------------------
inline __m512 load16_f32(const void* p, attn4j_dtype dt) {
    if (dt == ATTN4J_DTYPE_F32) return _mm512_loadu_ps(p);
    __m256i h = _mm256_loadu_si256(static_cast<const __m256i*>(p));
    if (dt == ATTN4J_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline __m256i f32_to_bf16(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(x); }

// 32 bf16 values (one 64-byte chunk) starting at element `col` of a row of dtype `dt` and length
// `D` (a multiple of 16); elements past D read as zero.
inline __m512i load32_bf16(const void* row, attn4j_dtype dt, int col, int D) {
    const char* b = static_cast<const char*>(row);
    const bool half = col + 16 >= D;
    if (dt == ATTN4J_DTYPE_BF16) {
        if (half)
            return _mm512_zextsi256_si512(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + size_t(col) * 2)));
        return _mm512_loadu_si512(b + size_t(col) * 2);
    }
    const size_t es = dtype_size(dt);
    __m256i lo = f32_to_bf16(load16_f32(b + size_t(col) * es, dt));
    if (half) return _mm512_inserti64x4(_mm512_setzero_si512(), lo, 0);
    __m256i hi = f32_to_bf16(load16_f32(b + size_t(col + 16) * es, dt));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

inline void store16(void* p, attn4j_dtype dt, __m512 x) {
    if (dt == ATTN4J_DTYPE_F32) {
        _mm512_storeu_ps(p, x);
    } else if (dt == ATTN4J_DTYPE_F16) {
        _mm256_storeu_si256(static_cast<__m256i*>(p),
                            _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else {
        _mm256_storeu_si256(static_cast<__m256i*>(p), f32_to_bf16(x));
    }
}

inline __m512 exp2_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-127.f));
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.525273380405984e-05f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393381609e-04f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618129107628477e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550410866482158e-02f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402265069591007e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471805599453e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}

// In-register transpose of a 16x16 matrix of 32-bit elements.
inline void transpose16x16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int k = 0; k < 4; ++k) {
        const __m512i x = _mm512_shuffle_i32x4(r[k], r[4 + k], 0x88);
        const __m512i y = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0x88);
        const __m512i x2 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0xDD);
        const __m512i y2 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0xDD);
        t[k] = _mm512_shuffle_i32x4(x, y, 0x88);
        t[8 + k] = _mm512_shuffle_i32x4(x, y, 0xDD);
        t[4 + k] = _mm512_shuffle_i32x4(x2, y2, 0x88);
        t[12 + k] = _mm512_shuffle_i32x4(x2, y2, 0xDD);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// ---- row addressing ----------------------------------------------------------------------------
struct SeqView {
    const PrefillArgs* a;
    int seq, kv_head;
    int64_t kv_start;        // contiguous: first kv row
    const int32_t* pages;    // paged: this sequence's page ids
    size_t kv_es;

    const void* row(bool v, int j) const {
        if (!a->paged) {
            const RowsHeadsView& t = v ? a->v : a->k;
            return static_cast<const char*>(t.data) +
                   size_t((kv_start + j) * t.row_stride + int64_t(kv_head) * t.head_stride) * kv_es;
        }
        const PagedKvView& kv = a->kv;
        const int ps = kv.page_size;
        const int64_t page = pages[j / ps];
        const int64_t off = page * kv.page_stride() + int64_t(kv_head) * kv.head_stride() +
                            int64_t(j % ps) * kv.head_dim;
        return static_cast<const char*>(v ? kv.v : kv.k) + size_t(off) * kv_es;
    }
};

// ---- packing -----------------------------------------------------------------------------------
// Row-major bf16 [Bk][D]; rows >= valid are zero.
void pack_rows(const SeqView& sv, bool v, int j0, int valid, int Bk, int D, int Dr, attn4j_dtype dt,
               uint16_t* dst) {
    for (int n = 0; n < Bk; ++n) {
        uint16_t* d = dst + size_t(n) * D;
        if (n >= valid) {
            std::memset(d, 0, size_t(D) * 2);
            continue;
        }
        const void* src = sv.row(v, j0 + n);
        for (int c = 0; c < D; c += 32) _mm512_storeu_si512(d + c, load32_bf16(src, dt, c, Dr));
    }
}

// K^T in VNNI pairs for AMX: dwords [D/2][Bk], dword (kk, n) = (K[n][2kk], K[n][2kk+1]).
void pack_k_vnni(const SeqView& sv, int j0, int valid, int Bk, int D, int Dr, attn4j_dtype dt,
                 uint32_t* dst) {
    __m512i r[16];
    for (int n0 = 0; n0 < Bk; n0 += 16) {
        const void* rows[16];
        for (int i = 0; i < 16; ++i) rows[i] = n0 + i < valid ? sv.row(false, j0 + n0 + i) : nullptr;
        for (int c = 0; c < D; c += 32) {
            for (int i = 0; i < 16; ++i)
                r[i] = rows[i] ? load32_bf16(rows[i], dt, c, Dr) : _mm512_setzero_si512();
            transpose16x16(r);
            const int kk0 = c / 2;
            for (int i = 0; i < 16; ++i) _mm512_storeu_si512(dst + size_t(kk0 + i) * Bk + n0, r[i]);
        }
    }
}

// V in VNNI pairs for AMX: dwords [Bk/2][D], dword (kk, n) = (V[2kk][n], V[2kk+1][n]).
void pack_v_vnni(const SeqView& sv, int j0, int valid, int Bk, int D, int Dr, attn4j_dtype dt,
                 uint32_t* dst) {
    const __m512i idx_lo = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i idx_hi = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    for (int kk = 0; kk < Bk / 2; ++kk) {
        const int n0 = 2 * kk, n1 = 2 * kk + 1;
        const void* r0 = n0 < valid ? sv.row(true, j0 + n0) : nullptr;
        const void* r1 = n1 < valid ? sv.row(true, j0 + n1) : nullptr;
        uint32_t* d = dst + size_t(kk) * D;
        for (int c = 0; c < D; c += 32) {
            const __m512i a = r0 ? load32_bf16(r0, dt, c, Dr) : _mm512_setzero_si512();
            const __m512i b = r1 ? load32_bf16(r1, dt, c, Dr) : _mm512_setzero_si512();
            const __m512i lo = _mm512_unpacklo_epi16(a, b);
            const __m512i hi = _mm512_unpackhi_epi16(a, b);
            _mm512_storeu_si512(d + c, _mm512_permutex2var_epi64(lo, idx_lo, hi));
            _mm512_storeu_si512(d + c + 16, _mm512_permutex2var_epi64(lo, idx_hi, hi));
        }
    }
}

// ---- AMX ---------------------------------------------------------------------------------------
struct alignas(64) TileConfig {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

__attribute__((target("amx-tile,amx-bf16"))) void amx_begin() {
    TileConfig cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int i = 0; i < 8; ++i) {
        cfg.colsb[i] = 64;
        cfg.rows[i] = 16;
    }
    // GCC 12's _tile_loadconfig does not tell the optimiser that it reads `cfg` (the stores above
    // get dropped), so load it through asm with the memory operand spelled out.
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory");
}

__attribute__((target("amx-tile,amx-bf16"))) void amx_end() { _tile_release(); }

// s[rows][Bk] = q[rows][D] . kp  (rows multiple of 32, Bk multiple of 32, D multiple of 32)
__attribute__((target("amx-tile,amx-bf16"))) void amx_qk(const uint16_t* q, const uint32_t* kp,
                                                          float* s, int rows, int D, int Bk) {
    const int qs = D * 2, ks = Bk * 4, ss = Bk * 4;
    for (int m = 0; m < rows; m += 32) {
        for (int n = 0; n < Bk; n += 32) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int c = 0; c < D; c += 32) {
                _tile_loadd(4, q + size_t(m) * D + c, qs);
                _tile_loadd(5, q + size_t(m + 16) * D + c, qs);
                _tile_loadd(6, kp + size_t(c / 2) * Bk + n, ks);
                _tile_loadd(7, kp + size_t(c / 2) * Bk + n + 16, ks);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, s + size_t(m) * Bk + n, ss);
            _tile_stored(1, s + size_t(m) * Bk + n + 16, ss);
            _tile_stored(2, s + size_t(m + 16) * Bk + n, ss);
            _tile_stored(3, s + size_t(m + 16) * Bk + n + 16, ss);
        }
    }
}

// o[rows][D] += p[rows][Bk] . vp
__attribute__((target("amx-tile,amx-bf16"))) void amx_pv(const uint16_t* p, const uint32_t* vp,
                                                          float* o, int rows, int D, int Bk) {
    const int ps = Bk * 2, vs = D * 4, os = D * 4;
    for (int m = 0; m < rows; m += 32) {
        for (int n = 0; n < D; n += 32) {
            float* o00 = o + size_t(m) * D + n;
            float* o10 = o + size_t(m + 16) * D + n;
            _tile_loadd(0, o00, os);
            _tile_loadd(1, o00 + 16, os);
            _tile_loadd(2, o10, os);
            _tile_loadd(3, o10 + 16, os);
            for (int c = 0; c < Bk; c += 32) {
                _tile_loadd(4, p + size_t(m) * Bk + c, ps);
                _tile_loadd(5, p + size_t(m + 16) * Bk + c, ps);
                _tile_loadd(6, vp + size_t(c / 2) * D + n, vs);
                _tile_loadd(7, vp + size_t(c / 2) * D + n + 16, vs);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, o00, os);
            _tile_stored(1, o00 + 16, os);
            _tile_stored(2, o10, os);
            _tile_stored(3, o10 + 16, os);
        }
    }
}

bool request_amx_permission() {
    // Linux: ask for the AMX tile data state once per process (ARCH_REQ_XCOMP_PERM, XTILEDATA).
    static const bool ok = [] {
        long r = syscall(SYS_arch_prctl, 0x1023, 18);
        return r == 0;
    }();
    return ok;
}

// ---- online softmax over one score tile ----------------------------------------------------------
// Rows [0, rows). vis(r) = number of visible leading columns of row r in this tile.
void softmax_tile(float* s, uint16_t* p, float* o, float* mrow, float* lrow, int rows, int Bk,
                  int D, float c, int G, int valid, bool causal, int lim_base, int nq) {
    const __m512 vc = _mm512_set1_ps(c);
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int r = 0; r < rows; ++r) {
        int vis = valid;
        if (causal) vis = imin(vis, lim_base + imin(r / G, nq - 1));
        float* sr = s + size_t(r) * Bk;
        uint16_t* pr = p + size_t(r) * Bk;
        if (vis <= 0) {
            std::memset(pr, 0, size_t(Bk) * 2);
            continue;
        }
        __m512 mx = ninf;
        for (int j = 0; j < vis; j += 16) {
            const __mmask16 k = vis - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (vis - j)) - 1);
            mx = _mm512_mask_max_ps(mx, k, mx, _mm512_loadu_ps(sr + j));
        }
        const float tmax = _mm512_reduce_max_ps(mx) * c;
        float mref = mrow[r];
        if (tmax > mref + kRescaleThreshold) {
            const float alpha = std::exp2(mref - tmax);  // 0 when mref == -inf
            lrow[r] *= alpha;
            float* orow = o + size_t(r) * D;
            const __m512 va = _mm512_set1_ps(alpha);
            for (int d = 0; d < D; d += 16)
                _mm512_storeu_ps(orow + d, _mm512_mul_ps(_mm512_loadu_ps(orow + d), va));
            mref = tmax;
            mrow[r] = mref;
        }
        const __m512 vm = _mm512_set1_ps(mref);
        __m512 sum = _mm512_setzero_ps();
        for (int j = 0; j < Bk; j += 16) {
            const int rem = vis - j;
            const __mmask16 k = rem >= 16 ? __mmask16(0xFFFF)
                                : rem <= 0 ? __mmask16(0)
                                           : __mmask16((1u << rem) - 1);
            __m512 e = exp2_ps(_mm512_fmsub_ps(_mm512_loadu_ps(sr + j), vc, vm));
            e = _mm512_maskz_mov_ps(k, e);
            const __m256i b = f32_to_bf16(e);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + j), b);
            // sum what the GEMM will use: the bf16-rounded probabilities
            sum = _mm512_add_ps(sum, _mm512_castsi512_ps(
                                         _mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16)));
        }
        lrow[r] += _mm512_reduce_add_ps(sum);
    }
}

}  // namespace

bool bf16_amx_available() {
    return cpu_features().amx_bf16 && cpu_features().amx_tile && request_amx_permission();
}

void bf16_run_task_avx512(const PrefillArgs& a, const Bf16Geometry& geo, Engine engine,
                          const TileGemms& gemms, Bf16Scratch& sc, int tid, const Task& task) {
    const int D = geo.dpad, Dr = geo.head_dim, G = geo.group, Bk = geo.kv_tile;
    const int seq = task.seq, q0 = task.q0, nq = task.nq;
    const int64_t qo_start = a.qo_indptr[seq];
    const int n_q = int(a.qo_indptr[seq + 1] - qo_start);

    SeqView sv{&a, seq, task.kv_head, 0, nullptr, 0};
    int n_kv;
    attn4j_dtype kv_dt;
    if (a.paged) {
        sv.pages = a.table.indices + a.table.indptr[seq];
        n_kv = int(a.table.seq_len(seq, a.kv.page_size));
        kv_dt = a.kv.dtype;
    } else {
        sv.kv_start = a.kv_indptr[seq];
        n_kv = int(a.kv_indptr[seq + 1] - sv.kv_start);
        kv_dt = a.k.dtype;
    }
    sv.kv_es = dtype_size(kv_dt);

    const bool amx = engine == Engine::amx;
    const int valid_rows = nq * G;
    const int rows = amx ? (valid_rows + 31) / 32 * 32 : geo.rows;

    // Q tile (bf16), O = 0, m = -inf, l = 0
    const size_t q_es = dtype_size(a.q.dtype);
    for (int r = 0; r < rows; ++r) {
        uint16_t* d = sc.q + size_t(r) * D;
        if (r >= valid_rows) {
            std::memset(d, 0, size_t(D) * 2);
        } else {
            const int t = r / G, h = task.kv_head * G + r % G;
            const char* src = static_cast<const char*>(a.q.data) +
                              size_t((qo_start + q0 + t) * a.q.row_stride + h * a.q.head_stride) * q_es;
            for (int c = 0; c < D; c += 32) _mm512_storeu_si512(d + c, load32_bf16(src, a.q.dtype, c, Dr));
        }
        sc.m[r] = -INFINITY;
        sc.l[r] = 0.f;
    }
    std::memset(sc.o, 0, size_t(rows) * D * sizeof(float));

    const bool causal = a.shape.causal;
    const int off = n_kv - n_q;  // bottom-right alignment
    const int kv_end = causal ? imin(n_kv, q0 + nq + off) : n_kv;
    const float c = a.shape.sm_scale * kLog2e;

    if (amx) amx_begin();
    for (int j0 = 0; j0 < kv_end; j0 += Bk) {
        const int valid = imin(Bk, kv_end - j0);
        // row r (token t) sees keys j <= q0 + t + off: columns [0, q0 + t + off - j0 + 1)
        const bool diag = causal && (j0 + valid - 1 > q0 + off);
        if (amx) {
            pack_k_vnni(sv, j0, valid, Bk, D, Dr, kv_dt, reinterpret_cast<uint32_t*>(sc.k));
            pack_v_vnni(sv, j0, valid, Bk, D, Dr, kv_dt, reinterpret_cast<uint32_t*>(sc.v));
            amx_qk(sc.q, reinterpret_cast<const uint32_t*>(sc.k), sc.s, rows, D, Bk);
        } else {
            pack_rows(sv, false, j0, valid, Bk, D, Dr, kv_dt, sc.k);
            pack_rows(sv, true, j0, valid, Bk, D, Dr, kv_dt, sc.v);
            gemms.qk(gemms.ctx, tid, sc.q, sc.k, sc.s);
        }
        softmax_tile(sc.s, sc.p, sc.o, sc.m, sc.l, rows, Bk, D, c, G, valid, diag,
                     q0 + off - j0 + 1, nq);
        if (amx)
            amx_pv(sc.p, reinterpret_cast<const uint32_t*>(sc.v), sc.o, rows, D, Bk);
        else
            gemms.pv(gemms.ctx, tid, sc.p, sc.v, sc.o);
    }
    if (amx) amx_end();

    // out = O / l, lse = ln(sum exp) = (m + log2 l) * ln 2
    const size_t o_es = dtype_size(a.out.dtype);
    for (int r = 0; r < valid_rows; ++r) {
        const int t = r / G, h = task.kv_head * G + r % G;
        const int64_t row = qo_start + q0 + t;
        char* dst = static_cast<char*>(a.out.data) +
                    size_t(row * a.out.row_stride + h * a.out.head_stride) * o_es;
        const __m512 inv = _mm512_set1_ps(1.f / sc.l[r]);
        const float* orow = sc.o + size_t(r) * D;
        for (int d = 0; d < Dr; d += 16)
            store16(dst + size_t(d) * o_es, a.out.dtype, _mm512_mul_ps(_mm512_loadu_ps(orow + d), inv));
        if (a.lse.data)
            a.lse.data[row * a.lse.row_stride + h * a.lse.head_stride] =
                (sc.m[r] + std::log2(sc.l[r])) * kLn2;
    }
}

}  // namespace attn4j::cpu::prefill_detail
