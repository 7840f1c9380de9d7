// Internals shared by the CPU prefill translation units (not part of any public interface).
//
//   prefill.cpp               plan, task scheduling (OpenMP), generic F32 path (baseline ISA)
//   prefill_onednn.cpp        oneDNN matmul tile GEMMs (baseline ISA: oneDNN dispatches itself)
//   prefill_bf16_avx512.cpp   BF16 tile loop: packing, online softmax, AMX tile GEMMs
//
// The AVX-512 unit exposes plain functions over plain structs only (no STL types cross it), so
// no inline function compiled with AVX-512 flags can be picked by the linker for baseline code.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/kernel_args.h"

namespace attn4j::cpu::prefill_detail {

// Shape of the BF16 tiles, fixed for a plan. Query tiles stack the `group` query heads that
// share one KV head, token-major: row r = token (r / group), head (kv_head * group + r % group).
struct Bf16Geometry {
    int head_dim = 0;  // D
    int dpad = 0;      // D rounded up to 32: Q/K/V/O tiles are zero-padded to it
    int group = 0;     // G
    int q_tokens = 0;  // query tokens per tile (Bq)
    int rows = 0;      // M = G * Bq, a multiple of 32
    int kv_tile = 0;   // Bk, a multiple of 32
};

// Per-thread scratch, 64-byte aligned, sized at plan creation.
struct Bf16Scratch {
    uint16_t* q = nullptr;   // [M][Dp] bf16 (Dp = dpad)
    uint16_t* k = nullptr;   // oneDNN: [Bk][D] bf16; AMX: K^T in VNNI pairs, [D/2][Bk] dwords
    uint16_t* v = nullptr;   // oneDNN: [Bk][D] bf16; AMX: V in VNNI pairs, [Bk/2][D] dwords
    float* s = nullptr;      // [M][Bk] scores
    uint16_t* p = nullptr;   // [M][Bk] bf16 probabilities
    float* o = nullptr;      // [M][D] f32 accumulator
    float* m = nullptr;      // [M] running max (log2 domain, scaled)
    float* l = nullptr;      // [M] running sum
};

// Tile GEMMs of the oneDNN engine: s = q k^T ([M][D] x [Bk][D]^T), o += p v ([M][Bk] x [Bk][D]).
struct TileGemms {
    void* ctx = nullptr;
    void (*qk)(void* ctx, int tid, const uint16_t* q, const uint16_t* k, float* s) = nullptr;
    void (*pv)(void* ctx, int tid, const uint16_t* p, const uint16_t* v, float* o) = nullptr;
};

enum class Engine { onednn = 0, amx = 1 };

// One task: query tokens [q0, q0 + nq) of sequence `seq` (local indices), all heads of kv head
// `kv_head`.
struct Task {
    int seq = 0;
    int kv_head = 0;
    int q0 = 0;
    int nq = 0;
};

// BF16 path (AVX-512 unit). Returns false when the engine is not usable on this CPU.
bool bf16_amx_available();
void bf16_run_task_avx512(const PrefillArgs& args, const Bf16Geometry& geo, Engine engine,
                          const TileGemms& gemms, Bf16Scratch& scratch, int tid, const Task& task);

// oneDNN engine (oneDNN unit). Opaque state, created once per plan.
struct OnednnGemms;
OnednnGemms* onednn_gemms_create(const Bf16Geometry& geo, int num_threads);
void onednn_gemms_destroy(OnednnGemms* g);
TileGemms onednn_gemms_table(OnednnGemms* g);
const char* onednn_gemms_impl(const OnednnGemms* g);  // e.g. "brg:avx512_core_amx / ..."

}  // namespace attn4j::cpu::prefill_detail
