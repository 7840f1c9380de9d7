// attn4j_merge_states on a CUDA context through the C ABI: random shapes (head_dim 1..320, 1..70
// states) and strides (padded, states and heads swapped, rows misaligned for the scalar path), all
// nine v / v_out dtype pairs, empty parts (-inf, their v NaN), all-empty rows and a dominating
// part. Outputs poisoned with NaN must be written in full and nowhere else and match a float64
// reference and the CPU merge of the same data. Then bad inputs: host memory on the CUDA context
// (labelled CPU, or labelled CUDA), device tensors on a CPU context, another GPU's memory; NaN and
// +inf LSEs (not checked on the device) give NaN rows.
// Without a CUDA device it prints "SKIP: no CUDA device" and exits 0.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "a4j_test.h"
#include "attn4j.h"
#include "cuda_test.h"
#include "dtype_buffer.h"
#include "quant_test.h"

namespace {

using a4j_test::Buf;

const float kNinf = -INFINITY;

// A tensor over a buffer of `elems` elements: random order of the outer dimensions, padding after
// each, and `off` leading elements. Layout 0: dense; 1: padded by multiples of 8 elements (rows
// stay 16-byte aligned); 2: odd padding and offset (scalar kernel path).
struct Layout {
    attn4j_tensor t{};
    int64_t off = 0;
    size_t elems = 0;
    int64_t at(std::initializer_list<int64_t> idx) const {
        int64_t e = off, d = 0;
        for (int64_t i : idx) e += i * t.strides[d++];
        return e;
    }
};

Layout layout(attn4j_dtype dt, std::vector<int64_t> shape, int kind, std::mt19937& rng) {
    Layout l;
    l.t = a4j_test::tensor(nullptr, dt, shape);
    const int r = int(shape.size());
    std::vector<int> order(size_t(r - 1));  // outer dimensions, innermost first
    std::iota(order.rbegin(), order.rend(), 0);
    if (kind > 0) std::shuffle(order.begin(), order.end(), rng);
    auto pad = [&] { return kind == 0 ? 0 : kind == 1 ? 8 * int64_t(rng() % 3) : int64_t(rng() % 5); };
    int64_t cur = shape[size_t(r - 1)] + pad();
    for (int d : order) {
        l.t.strides[d] = cur;
        cur = cur * shape[size_t(d)] + pad();
    }
    l.off = kind == 2 ? 1 + int64_t(rng() % 3) : 0;
    int64_t reach = 0;
    for (int d = 0; d < r; ++d) reach += (shape[size_t(d)] - 1) * l.t.strides[d];
    l.elems = size_t(l.off + reach + 1);
    l.t.size_bytes = int64_t(l.elems - size_t(l.off)) * int64_t(a4j_test::dsize(dt));
    return l;
}

attn4j_tensor bind(const Layout& l, void* base, attn4j_device_type dev) {
    attn4j_tensor t = l.t;
    t.data = static_cast<char*>(base) + l.off * int64_t(a4j_test::dsize(t.dtype));
    t.device_type = dev;
    return t;
}

// Allowed |got - want| for an output of dtype dt: its rounding plus float accumulation.
double tol(attn4j_dtype dt, double want) {
    const double rel = dt == ATTN4J_DTYPE_F32 ? 1e-5 : dt == ATTN4J_DTYPE_F16 ? 1e-3 : 8e-3;
    const double abs = dt == ATTN4J_DTYPE_F32 ? 1e-5 : dt == ATTN4J_DTYPE_F16 ? 1e-4 : 1e-3;
    return abs + rel * std::fabs(want);
}

template <class T>
std::vector<T> host_copy(const T* d, size_t n) {
    std::vector<T> h(n);
    CK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

int g_cases = 0;
double g_max_err[3] = {0, 0, 0};  // by output dtype: max |gpu - ref| / tol

void run_case(attn4j_context* cpu, attn4j_context* gpu, attn4j_dtype vdt, attn4j_dtype odt, int kind,
              uint32_t seed) {
    std::mt19937 rng(seed);
    const int64_t Ds[] = {1, 8, 16, 24, 40, 64, 72, 80, 96, 128, 200, 256, 320};
    const int64_t Ss[] = {1, 2, 3, 5, 8, 33, 70};
    const int64_t n = 1 + rng() % 6, H = 1 + rng() % 6, S = Ss[rng() % 7], D = Ds[rng() % 13];
    const bool with_s_out = rng() % 4 != 0;
    const Layout lv = layout(vdt, {n, S, H, D}, kind, rng), ls = layout(ATTN4J_DTYPE_F32, {n, S, H}, kind, rng),
                 lo = layout(odt, {n, H, D}, kind, rng), lso = layout(ATTN4J_DTYPE_F32, {n, H}, kind, rng);
    char name[160];
    std::snprintf(name, sizeof name, "v %s out %s n %lld S %lld H %lld D %lld layout %d%s", a4j_test::dname(vdt),
                  a4j_test::dname(odt), (long long)n, (long long)S, (long long)H, (long long)D, kind,
                  with_s_out ? "" : " no s_out");

    // LSEs: large (shift invariance), some parts empty, row 0 head 0 all empty when n * H > 1,
    // one part dominating by exp(170).
    std::normal_distribution<float> nd;
    std::vector<float> s(ls.elems, NAN);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < S; ++k)
            for (int64_t h = 0; h < H; ++h)
                s[size_t(ls.at({i, k, h}))] = (rng() % 4 == 0) ? kNinf : 30.f + 4.f * nd(rng);
    if (n * H > 1)
        for (int64_t k = 0; k < S; ++k) s[size_t(ls.at({0, k, 0}))] = kNinf;
    if (n > 1) s[size_t(ls.at({n - 1, S - 1, H - 1}))] = 200.f;
    // v: N(0, 1) rounded to its dtype; NaN in empty parts and padding (must not be read).
    Buf v(vdt, lv.elems);
    v.poison();
    for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < S; ++k)
            for (int64_t h = 0; h < H; ++h)
                if (s[size_t(ls.at({i, k, h}))] != kNinf)
                    for (int64_t d = 0; d < D; ++d) v.set(size_t(lv.at({i, k, h}) + d), nd(rng));
    Buf out(odt, lo.elems);
    out.poison();
    const std::vector<float> so0(lso.elems, NAN);

    // CPU merge of the host copies.
    Buf cout_ = out;
    std::vector<float> cso = so0;
    attn4j_tensor tv = bind(lv, v.data(), ATTN4J_DEVICE_CPU), ts = bind(ls, s.data(), ATTN4J_DEVICE_CPU),
                  to = bind(lo, cout_.data(), ATTN4J_DEVICE_CPU), tso = bind(lso, cso.data(), ATTN4J_DEVICE_CPU);
    CHECK_MSG(attn4j_merge_states(cpu, &tv, &ts, &to, with_s_out ? &tso : nullptr) == ATTN4J_OK,
              std::string(name) + ": CPU: " + attn4j_last_error());

    // The same on the GPU.
    uint8_t* dv = a4j_test::to_device(v.bytes);
    float* ds = a4j_test::to_device(s);
    uint8_t* dout = a4j_test::to_device(out.bytes);
    float* dso = a4j_test::to_device(so0);
    tv = bind(lv, dv, ATTN4J_DEVICE_CUDA);
    ts = bind(ls, ds, ATTN4J_DEVICE_CUDA);
    to = bind(lo, dout, ATTN4J_DEVICE_CUDA);
    tso = bind(lso, dso, ATTN4J_DEVICE_CUDA);
    ++g_cases;
    CHECK_MSG(attn4j_merge_states(gpu, &tv, &ts, &to, with_s_out ? &tso : nullptr) == ATTN4J_OK,
              std::string(name) + ": " + attn4j_last_error());
    CK(cudaDeviceSynchronize());
    Buf gout(odt, lo.elems);
    gout.bytes = host_copy(dout, out.bytes.size());
    const std::vector<float> gso = host_copy(dso, so0.size());

    // Written in full, nowhere else; float64 reference; CPU result.
    std::vector<char> inside(lo.elems, 0), inside_s(lso.elems, 0);
    int64_t bad_ref = 0, bad_cpu = 0, bad_lse = 0, unwritten = 0;
    double worst = 0;
    for (int64_t i = 0; i < n; ++i)
        for (int64_t h = 0; h < H; ++h) {
            double m = -INFINITY;
            for (int64_t k = 0; k < S; ++k) m = std::max(m, double(s[size_t(ls.at({i, k, h}))]));
            std::vector<double> ref(size_t(D), 0.0);
            double sum = 0;
            if (m != -INFINITY) {
                for (int64_t k = 0; k < S; ++k) {
                    const double sk = s[size_t(ls.at({i, k, h}))];
                    if (sk == -INFINITY) continue;
                    const double w = std::exp(sk - m);
                    sum += w;
                    for (int64_t d = 0; d < D; ++d) ref[size_t(d)] += w * v.get(size_t(lv.at({i, k, h}) + d));
                }
                for (double& r : ref) r /= sum;
            }
            for (int64_t d = 0; d < D; ++d) {
                const size_t e = size_t(lo.at({i, h}) + d);
                inside[e] = 1;
                const double g = gout.get(e), c = cout_.get(e), r = ref[size_t(d)];
                if (std::isnan(g)) ++unwritten;
                if (!(std::fabs(g - r) <= tol(odt, r))) ++bad_ref;
                if (!(std::fabs(g - c) <= tol(odt, c))) ++bad_cpu;
                if (m == -INFINITY && g != 0.0) ++bad_ref;  // all-empty rows: exactly 0
                worst = std::max(worst, std::fabs(g - r) / tol(odt, r));
            }
            if (!with_s_out) continue;
            const size_t e = size_t(lso.at({i, h}));
            inside_s[e] = 1;
            const double sref = m == -INFINITY ? -INFINITY : m + std::log(sum);
            const double g = gso[e], c = cso[e];
            if (sref == -INFINITY ? g != -INFINITY : !(std::fabs(g - sref) <= 1e-5 * std::fabs(sref) + 1e-5)) ++bad_lse;
            if (sref == -INFINITY ? c != -INFINITY : !(std::fabs(g - c) <= 1e-5 * std::fabs(c) + 1e-5)) ++bad_lse;
        }
    int64_t outside = 0;
    for (size_t e = 0; e < lo.elems; ++e) outside += !inside[e] && !std::isnan(gout.get(e));
    for (size_t e = 0; e < lso.elems; ++e) outside += !inside_s[e] && !std::isnan(gso[e]);
    const int oi = odt == ATTN4J_DTYPE_F32 ? 0 : odt == ATTN4J_DTYPE_F16 ? 1 : 2;
    g_max_err[oi] = std::max(g_max_err[oi], worst);
    CHECK_MSG(unwritten == 0, std::string(name) + ": " + std::to_string(unwritten) + " v_out elements left poisoned");
    CHECK_MSG(outside == 0, std::string(name) + ": " + std::to_string(outside) + " elements written outside the shape");
    CHECK_MSG(bad_ref == 0, std::string(name) + ": " + std::to_string(bad_ref) + " v_out elements off the float64 reference");
    CHECK_MSG(bad_cpu == 0, std::string(name) + ": " + std::to_string(bad_cpu) + " v_out elements off the CPU merge");
    CHECK_MSG(bad_lse == 0, std::string(name) + ": " + std::to_string(bad_lse) + " bad s_out values");
    for (void* p : {(void*)dv, (void*)ds, (void*)dout, (void*)dso}) CK(cudaFree(p));
}

void expect(const char* what, attn4j_status got, attn4j_status want, const char* needle) {
    const char* msg = attn4j_last_error();
    const bool ok = got == want && (got == ATTN4J_OK || std::strstr(msg, needle) != nullptr);
    std::printf("  %-36s -> %s: %s\n", what, attn4j_status_name(got), got == ATTN4J_OK ? "" : msg);
    CHECK_MSG(ok, std::string(what) + ": got " + attn4j_status_name(got) + " '" + msg + "', wanted " +
                      attn4j_status_name(want) + (needle ? std::string(" with '") + needle + "'" : ""));
}

// Wrong memory for the context, and LSEs the device does not check.
void bad_inputs(attn4j_context* cpu, attn4j_context* gpu) {
    const attn4j_status INV = ATTN4J_ERR_INVALID_ARGUMENT;
    const int64_t n = 2, S = 3, H = 2, D = 64;
    std::vector<float> hv(size_t(n * S * H * D), 0.5f), hs(size_t(n * S * H), 1.f), ho(size_t(n * H * D), NAN),
        hso(size_t(n * H), NAN);
    float* dv = a4j_test::to_device(hv);
    float* ds = a4j_test::to_device(hs);
    float* dout = a4j_test::to_device(ho);
    float* dso = a4j_test::to_device(hso);
    auto T = [](void* p, std::vector<int64_t> shape, attn4j_device_type dev) {
        attn4j_tensor t = a4j_test::tensor(p, ATTN4J_DTYPE_F32, std::move(shape));
        t.device_type = dev;
        return t;
    };
    const auto CU = ATTN4J_DEVICE_CUDA, HOST = ATTN4J_DEVICE_CPU;
    attn4j_tensor tv = T(dv, {n, S, H, D}, CU), ts = T(ds, {n, S, H}, CU), to = T(dout, {n, H, D}, CU),
                  tso = T(dso, {n, H}, CU);

    attn4j_tensor host_v = T(hv.data(), {n, S, H, D}, HOST);
    expect("host v on CUDA ctx", attn4j_merge_states(gpu, &host_v, &ts, &to, &tso), INV, "v: device CPU");
    attn4j_tensor lying_s = T(hs.data(), {n, S, H}, CU);
    expect("host s labelled CUDA", attn4j_merge_states(gpu, &tv, &lying_s, &to, &tso), INV,
           "s: pointer");
    attn4j_tensor lying_so = T(hso.data(), {n, H}, CU);
    expect("host s_out labelled CUDA", attn4j_merge_states(gpu, &tv, &ts, &to, &lying_so), INV,
           "s_out: pointer");
    CHECK_MSG(std::isnan(host_copy(dout, ho.size())[0]), "a rejected merge wrote v_out");
    attn4j_tensor host_s = T(hs.data(), {n, S, H}, HOST), host_o = T(ho.data(), {n, H, D}, HOST);
    expect("device v on CPU ctx", attn4j_merge_states(cpu, &tv, &host_s, &host_o, nullptr), INV,
           "v: device CUDA");
    expect("device v_out on CPU ctx", attn4j_merge_states(cpu, &host_v, &host_s, &to, nullptr), INV,
           "v_out: device CUDA");
    int count = 0;
    CK(cudaGetDeviceCount(&count));
    if (count >= 2) {
        float* other = nullptr;
        CK(cudaSetDevice(1));
        CK(cudaMalloc(reinterpret_cast<void**>(&other), ho.size() * sizeof(float)));
        CK(cudaSetDevice(0));
        attn4j_tensor to1 = T(other, {n, H, D}, CU);
        expect("v_out on cuda:1, ctx on cuda:0", attn4j_merge_states(gpu, &tv, &ts, &to1, &tso), INV,
               "v_out: pointer");
        CK(cudaFree(other));
    } else {
        std::printf("  (one GPU: another GPU's memory not tested)\n");
    }
    expect("correct merge after errors", attn4j_merge_states(gpu, &tv, &ts, &to, &tso), ATTN4J_OK, nullptr);

    // NaN and +inf in s: rejected on CPU, NaN rows on CUDA (only those rows).
    hs[size_t((0 * S + 1) * H + 0)] = NAN;      // row 0 head 0
    hs[size_t((1 * S + 2) * H + 1)] = INFINITY;  // row 1 head 1
    CK(cudaMemcpy(ds, hs.data(), hs.size() * sizeof(float), cudaMemcpyHostToDevice));
    expect("NaN / +inf in s on CUDA", attn4j_merge_states(gpu, &tv, &ts, &to, &tso), ATTN4J_OK, nullptr);
    CK(cudaDeviceSynchronize());
    const std::vector<float> go = host_copy(dout, ho.size()), gso = host_copy(dso, hso.size());
    for (int64_t i = 0; i < n; ++i)
        for (int64_t h = 0; h < H; ++h) {
            const bool poisoned = (i == 0 && h == 0) || (i == 1 && h == 1);
            int64_t wrong = 0;
            for (int64_t d = 0; d < D; ++d) {
                const float g = go[size_t((i * H + h) * D + d)];
                wrong += poisoned ? !std::isnan(g) : !(std::fabs(g - 0.5f) <= 1e-6f);
            }
            const float lse = gso[size_t(i * H + h)];
            wrong += poisoned ? !std::isnan(lse) : std::isnan(lse);
            CHECK_MSG(wrong == 0, "NaN / +inf LSE: row " + std::to_string(i) + " head " + std::to_string(h) + ": " +
                                      std::to_string(wrong) + " wrong values");
        }
    for (void* p : {(void*)dv, (void*)ds, (void*)dout, (void*)dso}) CK(cudaFree(p));
}

}  // namespace

int main() {
    if (a4j_test::no_cuda_device("test_cuda_merge")) return 0;
    attn4j_context* cpu = a4j_test::make_context(ATTN4J_DEVICE_CPU, 2);
    attn4j_context* gpu = a4j_test::make_context(ATTN4J_DEVICE_CUDA, 2);
    const attn4j_dtype fl[3] = {ATTN4J_DTYPE_F32, ATTN4J_DTYPE_F16, ATTN4J_DTYPE_BF16};
    uint32_t seed = 7000;
    for (attn4j_dtype vd : fl)
        for (attn4j_dtype od : fl)
            for (int c = 0; c < 9; ++c) run_case(cpu, gpu, vd, od, c % 3, seed++);
    std::printf("test_cuda_merge: %d cases; worst |gpu - ref| / tolerance: f32 %.3f f16 %.3f bf16 %.3f\n", g_cases,
                g_max_err[0], g_max_err[1], g_max_err[2]);
    bad_inputs(cpu, gpu);
    attn4j_context_destroy(gpu);
    attn4j_context_destroy(cpu);
    return a4j_test::finish("test_cuda_merge");
}
