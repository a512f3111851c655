// linear.cpp: y = x W^T + b with W stored [OC, IC] (torch.nn.Linear); bias may be NULL.
#include "ops.h"

namespace stx {
namespace ref {

template <typename S>
void linear_forward(S *out, const S *inp, const S *w, const S *bias, int64_t N, int32_t IC,
                    int32_t OC) {
#pragma omp parallel for
    for (int64_t n = 0; n < N; ++n) {
        const S *x = inp + n * IC;
        for (int32_t o = 0; o < OC; ++o) {
            const S *wo = w + static_cast<int64_t>(o) * IC;
            S acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int32_t i = 0; i < IC; ++i) acc += x[i] * wo[i];
            out[n * OC + o] = (bias ? bias[o] : S(0)) + acc;
        }
    }
}

// Inner loops are plain sums that `omp simd` may vectorize (a fixed order for a given build,
// so results stay deterministic). dinp is parallel over rows; dw and dbias reduce over rows and are
// parallel over the output channel o, each summed serially in row order (deterministic). dbias is
// skipped when NULL.
template <typename S>
void linear_backward(S *dinp, S *dw, S *dbias, const S *dout, const S *inp, const S *w, int64_t N,
                     int32_t IC, int32_t OC) {
#pragma omp parallel for
    for (int64_t n = 0; n < N; ++n) {
        const S *dy = dout + n * OC;
        S *dx = dinp + n * IC;
        for (int32_t o = 0; o < OC; ++o) { // rows of W in order: contiguous, vectorizable
            const S d = dy[o];
            const S *wo = w + static_cast<int64_t>(o) * IC;
#pragma omp simd
            for (int32_t i = 0; i < IC; ++i) dx[i] += d * wo[i];
        }
    }
#pragma omp parallel for
    for (int32_t o = 0; o < OC; ++o) {
        S *dwo = dw + static_cast<int64_t>(o) * IC;
        S sb = 0;
        for (int64_t n = 0; n < N; ++n) {
            const S d = dout[n * OC + o];
            const S *x = inp + n * IC;
#pragma omp simd
            for (int32_t i = 0; i < IC; ++i) dwo[i] += d * x[i];
            sb += d;
        }
        if (dbias) dbias[o] += sb;
    }
}

template void linear_forward<float>(float *, const float *, const float *, const float *, int64_t,
                                    int32_t, int32_t);
template void linear_forward<double>(double *, const double *, const double *, const double *,
                                     int64_t, int32_t, int32_t);
template void linear_backward<float>(float *, float *, float *, const float *, const float *,
                                     const float *, int64_t, int32_t, int32_t);
template void linear_backward<double>(double *, double *, double *, const double *, const double *,
                                      const double *, int64_t, int32_t, int32_t);

} // namespace ref
} // namespace stx
