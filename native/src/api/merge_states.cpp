// attn4j_merge_states: argument checks for both devices, then the CPU kernel or the CUDA one
// (api/cuda_merge_states.h).
#include "api/guard.h"

#include <cmath>
#include <string>

#include "api/cuda_merge_states.h"
#include "core/dtype.h"
#include "core/validate.h"
#include "cpu/merge_states.h"

using namespace attn4j;

namespace {

// s: no NaN, no +inf (-inf marks an empty part). v: finite wherever its part is not empty.
void check_merge_values(const attn4j_tensor& v, const attn4j_tensor& s) {
    const int64_t n = s.shape[0], S = s.shape[1], H = s.shape[2], D = v.shape[3];
    const float* sd = static_cast<const float*>(s.data);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < S; ++k)
            for (int64_t h = 0; h < H; ++h) {
                const float x = sd[i * s.strides[0] + k * s.strides[1] + h * s.strides[2]];
                if (std::isnan(x) || x == INFINITY)
                    invalid("s: contains " + std::string(std::isnan(x) ? "NaN" : "+Inf") +
                            " at element [" + std::to_string(i) + ", " + std::to_string(k) + ", " +
                            std::to_string(h) + "] (-inf marks an empty part; NaN and +inf are "
                            "invalid)");
                if (x == -INFINITY) continue;
                const int64_t off = i * v.strides[0] + k * v.strides[1] + h * v.strides[2];
                for (int64_t d = 0; d < D; ++d) {
                    const float y = load_f32(v.data, v.dtype, off + d);
                    if (!std::isfinite(y))
                        invalid("v: contains a non-finite value (" +
                                std::string(std::isnan(y) ? "NaN" : (y > 0 ? "+Inf" : "-Inf")) +
                                ") at element [" + std::to_string(i) + ", " + std::to_string(k) +
                                ", " + std::to_string(h) + ", " + std::to_string(d) + "]");
                }
            }
}

}  // namespace

extern "C" {

attn4j_status attn4j_merge_states(attn4j_context* ctx, const attn4j_tensor* v,
                                  const attn4j_tensor* s, attn4j_tensor* v_out,
                                  attn4j_tensor* s_out) {
    return api::guard("attn4j_merge_states", [&] {
        Context& c = api::context_of(ctx);
        const attn4j_tensor& tv = check_tensor(v, "v");
        expect_rank(tv, "v", 4);
        expect_float_dtype(tv, "v");
        const attn4j_tensor& ts = check_tensor(s, "s");
        expect_rank(ts, "s", 3);
        expect_dtype(ts, "s", ATTN4J_DTYPE_F32, "the required LSE dtype");
        const attn4j_tensor& to = check_tensor(v_out, "v_out");
        expect_rank(to, "v_out", 3);
        expect_float_dtype(to, "v_out");
        const int64_t n = tv.shape[0], S = tv.shape[1], H = tv.shape[2], D = tv.shape[3];
        if (S < 1) invalid("v: shape[1] (num_states) is 0, expected >= 1");
        expect_dim(ts, "s", 0, n, "v's n =");
        expect_dim(ts, "s", 1, S, "v's num_states =");
        expect_dim(ts, "s", 2, H, "v's num_heads =");
        expect_dim(to, "v_out", 0, n, "v's n =");
        expect_dim(to, "v_out", 1, H, "v's num_heads =");
        expect_dim(to, "v_out", 2, D, "v's head_dim =");
        if (s_out) {
            const attn4j_tensor& tso = check_tensor(s_out, "s_out");
            expect_rank(tso, "s_out", 2);
            expect_dtype(tso, "s_out", ATTN4J_DTYPE_F32, "the required LSE dtype");
            expect_dim(tso, "s_out", 0, n, "v's n =");
            expect_dim(tso, "s_out", 1, H, "v's num_heads =");
        }
        const attn4j_tensor* all[4] = {v, s, v_out, s_out};
        const char* names[4] = {"v", "s", "v_out", "s_out"};
        for (int i = 0; i < 4; ++i)
            if (all[i]) expect_device(*all[i], names[i], c.device_type, c.device_id, "ctx");

        cpu::MergeStatesArgs a;
        a.n = n;
        a.num_states = S;
        a.num_heads = H;
        a.head_dim = D;
        a.v = tv.data;
        a.v_dtype = tv.dtype;
        a.v_stride[0] = tv.strides[0];
        a.v_stride[1] = tv.strides[1];
        a.v_stride[2] = tv.strides[2];
        a.s = static_cast<const float*>(ts.data);
        a.s_stride[0] = ts.strides[0];
        a.s_stride[1] = ts.strides[1];
        a.s_head_stride = ts.strides[2];
        a.v_out = to.data;
        a.v_out_dtype = to.dtype;
        a.v_out_stride[0] = to.strides[0];
        a.v_out_stride[1] = to.strides[1];
        if (s_out) {
            a.s_out = static_cast<float*>(s_out->data);
            a.s_out_stride[0] = s_out->strides[0];
            a.s_out_stride[1] = s_out->strides[1];
        }
        if (c.device_type == ATTN4J_DEVICE_CUDA) {
            cuda_merge_states(c, a);
            return;
        }
        check_merge_values(tv, ts);
        if (n * H > 0) cpu::merge_states(a, c.num_threads);
    });
}

}  // extern "C"
