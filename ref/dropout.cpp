// dropout.cpp: residual add with dropout on the branch, out = resid + mask * branch / (1 - p);
// the mask is philox.h's dropout_keep over the flat element index (offset by index0 for a
// shard of a larger batch), so backward replays it.
#include "ops.h"
#include "philox.h"

namespace stx {
namespace ref {

template <typename S>
void residual_dropout_forward(S *out, const S *resid, const S *branch, int64_t n, double p,
                              uint64_t seed, uint32_t stream, uint64_t step, uint64_t index0) {
    if (p == 0.0) {
#pragma omp parallel for
        for (int64_t i = 0; i < n; ++i) out[i] = resid[i] + branch[i];
        return;
    }
    const uint64_t threshold = dropout_threshold(p);
    const S scale = static_cast<S>(1.0 / (1.0 - p));
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) {
        const bool keep =
            dropout_keep(seed, stream, step, index0 + static_cast<uint64_t>(i), threshold);
        out[i] = keep ? resid[i] + branch[i] * scale : resid[i];
    }
}

template <typename S>
void residual_dropout_backward(S *dresid, S *dbranch, const S *dout, int64_t n, double p,
                               uint64_t seed, uint32_t stream, uint64_t step, uint64_t index0) {
    if (p == 0.0) {
#pragma omp parallel for
        for (int64_t i = 0; i < n; ++i) {
            dresid[i] += dout[i];
            dbranch[i] += dout[i];
        }
        return;
    }
    const uint64_t threshold = dropout_threshold(p);
    const S scale = static_cast<S>(1.0 / (1.0 - p));
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) {
        dresid[i] += dout[i];
        if (dropout_keep(seed, stream, step, index0 + static_cast<uint64_t>(i), threshold))
            dbranch[i] += dout[i] * scale;
    }
}

template void residual_dropout_forward<float>(float *, const float *, const float *, int64_t,
                                              double, uint64_t, uint32_t, uint64_t, uint64_t);
template void residual_dropout_forward<double>(double *, const double *, const double *, int64_t,
                                               double, uint64_t, uint32_t, uint64_t, uint64_t);
template void residual_dropout_backward<float>(float *, float *, const float *, int64_t, double,
                                               uint64_t, uint32_t, uint64_t, uint64_t);
template void residual_dropout_backward<double>(double *, double *, const double *, int64_t, double,
                                                uint64_t, uint32_t, uint64_t, uint64_t);

} // namespace ref
} // namespace stx
