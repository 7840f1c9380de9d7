// Helpers shared by the quantized-KV tests (CPU and CUDA): random orthogonal rotations and
// contexts. Header-only, no framework.
#pragma once

#include <cmath>
#include <random>
#include <vector>

#include "a4j_test.h"
#include "attn4j.h"

namespace a4j_test {

// A random n x n orthogonal matrix, row-major: Gram-Schmidt (two passes, for fp64 orthogonality)
// on a Gaussian matrix drawn from `rng`.
template <class Rng>
std::vector<float> random_orthogonal(int n, Rng& rng) {
    std::normal_distribution<double> nd;
    std::vector<double> m(size_t(n) * n);
    for (double& x : m) x = nd(rng);
    for (int i = 0; i < n; ++i) {
        double* r = &m[size_t(i) * n];
        for (int pass = 0; pass < 2; ++pass)
            for (int k = 0; k < i; ++k) {
                const double* b = &m[size_t(k) * n];
                double d = 0;
                for (int j = 0; j < n; ++j) d += r[j] * b[j];
                for (int j = 0; j < n; ++j) r[j] -= d * b[j];
            }
        double nn = 0;
        for (int j = 0; j < n; ++j) nn += r[j] * r[j];
        nn = std::sqrt(nn);
        for (int j = 0; j < n; ++j) r[j] /= nn;
    }
    return std::vector<float>(m.begin(), m.end());
}

}  // namespace a4j_test
