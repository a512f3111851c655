// crossentropy.cpp: softmax cross-entropy per row, loss = logsumexp(logits) - logits[target],
// with a stable logsumexp (max subtracted); backward adds scale * (softmax - onehot).
#include <cmath>

#include "ops.h"

namespace stx {
namespace ref {

namespace {
template <typename S> S row_logsumexp(const S *x, int32_t V) {
    S mx = x[0];
    for (int32_t v = 1; v < V; ++v)
        if (x[v] > mx) mx = x[v];
    S sum = 0;
    for (int32_t v = 0; v < V; ++v) sum += std::exp(x[v] - mx);
    return mx + std::log(sum);
}
} // namespace

template <typename S>
void crossentropy_forward(S *losses, const S *logits, const uint8_t *targets, int64_t N,
                          int32_t V) {
#pragma omp parallel for
    for (int64_t n = 0; n < N; ++n) {
        const S *x = logits + n * V;
        losses[n] = row_logsumexp(x, V) - x[targets[n]];
    }
}

template <typename S>
void crossentropy_backward(S *dlogits, const S *logits, const uint8_t *targets, double dloss_scale,
                           int64_t N, int32_t V) {
    const S scale = static_cast<S>(dloss_scale);
#pragma omp parallel for
    for (int64_t n = 0; n < N; ++n) {
        const S *x = logits + n * V;
        S *dx = dlogits + n * V;
        const S lse = row_logsumexp(x, V);
        for (int32_t v = 0; v < V; ++v) {
            const S prob = std::exp(x[v] - lse);
            const S onehot = v == targets[n] ? S(1) : S(0);
            dx[v] += scale * (prob - onehot);
        }
    }
}

template void crossentropy_forward<float>(float *, const float *, const uint8_t *, int64_t,
                                          int32_t);
template void crossentropy_forward<double>(double *, const double *, const uint8_t *, int64_t,
                                           int32_t);
template void crossentropy_backward<float>(float *, const float *, const uint8_t *, double, int64_t,
                                           int32_t);
template void crossentropy_backward<double>(double *, const double *, const uint8_t *, double,
                                            int64_t, int32_t);

} // namespace ref
} // namespace stx
