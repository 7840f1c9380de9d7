#include "cpu/merge_states.h"

#include <cmath>
#include <limits>
#include <vector>

#include <omp.h>

#include "core/dtype.h"

namespace attn4j::cpu {

void merge_states(const MergeStatesArgs& a, int num_threads) {
    const int64_t S = a.num_states, D = a.head_dim;
    const int64_t tasks = a.n * a.num_heads;
    const float neg_inf = -std::numeric_limits<float>::infinity();
    const int vsize = dtype_size(a.v_dtype), osize = dtype_size(a.v_out_dtype);
    const bool par = tasks * S * D >= 16384 && num_threads > 1;
    const int nt = par ? num_threads : 1;
    // Scratch allocated here: nothing inside the parallel region may throw.
    std::vector<float> scratch(size_t(nt) * size_t(2 * D));
#pragma omp parallel num_threads(nt) if (par)
    {
        float* acc = scratch.data() + size_t(omp_get_thread_num()) * size_t(2 * D);
        float* row = acc + D;
#pragma omp for schedule(static)
        for (int64_t task = 0; task < tasks; ++task) {
            const int64_t i = task / a.num_heads, h = task % a.num_heads;
            const float* s = a.s + i * a.s_stride[0] + h * a.s_head_stride;
            float m = neg_inf;
            for (int64_t k = 0; k < S; ++k) m = std::fmax(m, s[k * a.s_stride[1]]);
            char* out = static_cast<char*>(a.v_out) +
                        (i * a.v_out_stride[0] + h * a.v_out_stride[1]) * osize;
            if (m == neg_inf) {
                for (int64_t d = 0; d < D; ++d) store_f32(out, a.v_out_dtype, d, 0.f);
                if (a.s_out) a.s_out[i * a.s_out_stride[0] + h * a.s_out_stride[1]] = neg_inf;
                continue;
            }
            for (int64_t d = 0; d < D; ++d) acc[d] = 0.f;
            float sum = 0.f;
            for (int64_t k = 0; k < S; ++k) {
                const float sk = s[k * a.s_stride[1]];
                if (sk == neg_inf) continue;
                const float w = std::exp(sk - m);
                sum += w;
                const char* vk = static_cast<const char*>(a.v) +
                                 (i * a.v_stride[0] + k * a.v_stride[1] + h * a.v_stride[2]) * vsize;
                if (a.v_dtype == ATTN4J_DTYPE_F32) {
                    const float* vf = reinterpret_cast<const float*>(vk);
                    for (int64_t d = 0; d < D; ++d) acc[d] += w * vf[d];
                } else {
                    for (int64_t d = 0; d < D; ++d) row[d] = load_f32(vk, a.v_dtype, d);
                    for (int64_t d = 0; d < D; ++d) acc[d] += w * row[d];
                }
            }
            const float inv = 1.f / sum;  // sum >= 1 (the max term contributes exp(0))
            if (a.v_out_dtype == ATTN4J_DTYPE_F32) {
                float* of = reinterpret_cast<float*>(out);
                for (int64_t d = 0; d < D; ++d) of[d] = acc[d] * inv;
            } else {
                for (int64_t d = 0; d < D; ++d) store_f32(out, a.v_out_dtype, d, acc[d] * inv);
            }
            if (a.s_out) a.s_out[i * a.s_out_stride[0] + h * a.s_out_stride[1]] = m + std::log(sum);
        }
    }
}

}  // namespace attn4j::cpu
