// gelu.cpp: quick GELU, out = x * sigmoid(1.702 x), and its derivative
// s + 1.702 x s (1 - s) with s = sigmoid(1.702 x).
#include <cmath>

#include "ops.h"

namespace stx {
namespace ref {

namespace {
template <typename S> S quick_sigmoid(S x) {
    return S(1) / (S(1) + std::exp(-static_cast<S>(1.702) * x));
}
} // namespace

template <typename S> void gelu_forward(S *out, const S *inp, int64_t n) {
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) out[i] = inp[i] * quick_sigmoid(inp[i]);
}

template <typename S> void gelu_backward(S *dinp, const S *dout, const S *inp, int64_t n) {
    const S k = static_cast<S>(1.702);
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) {
        const S x = inp[i];
        const S s = quick_sigmoid(x);
        dinp[i] += dout[i] * (s + k * x * s * (S(1) - s));
    }
}

template void gelu_forward<float>(float *, const float *, int64_t);
template void gelu_forward<double>(double *, const double *, int64_t);
template void gelu_backward<float>(float *, const float *, const float *, int64_t);
template void gelu_backward<double>(double *, const double *, const double *, int64_t);

} // namespace ref
} // namespace stx
