// layernorm.cpp: LayerNorm over the last axis with biased variance and
// rstd = 1/sqrt(var + eps); saves mean and rstd per row for the backward.
#include <cmath>

#include "ops.h"

namespace stx {
namespace ref {

template <typename S>
void layernorm_forward(S *out, S *mean, S *rstd, const S *inp, const S *g, const S *b, int64_t N,
                       int32_t C, double eps) {
    const S eps_s = static_cast<S>(eps);
#pragma omp parallel for
    for (int64_t n = 0; n < N; ++n) {
        const S *x = inp + n * C;
        S *y = out + n * C;
        S sum = 0;
        for (int32_t c = 0; c < C; ++c) sum += x[c];
        const S mu = sum / static_cast<S>(C);
        S sq = 0;
        for (int32_t c = 0; c < C; ++c) sq += (x[c] - mu) * (x[c] - mu);
        const S var = sq / static_cast<S>(C);
        const S rs = S(1) / std::sqrt(var + eps_s);
        for (int32_t c = 0; c < C; ++c) y[c] = (x[c] - mu) * rs * g[c] + b[c];
        mean[n] = mu;
        rstd[n] = rs;
    }
}

// dinp = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dout * g.
// The rows are independent for dinp; dg and db reduce over rows and are parallel over the
// column, each column summed serially in row order (deterministic).
template <typename S>
void layernorm_backward(S *dinp, S *dg, S *db, const S *dout, const S *inp, const S *g,
                        const S *mean, const S *rstd, int64_t N, int32_t C) {
#pragma omp parallel for
    for (int64_t n = 0; n < N; ++n) {
        const S *x = inp + n * C;
        const S *dy = dout + n * C;
        S *dx = dinp + n * C;
        const S mu = mean[n], rs = rstd[n];
        S sum_dxhat = 0, sum_dxhat_xhat = 0;
        for (int32_t c = 0; c < C; ++c) {
            const S xhat = (x[c] - mu) * rs;
            const S dxhat = dy[c] * g[c];
            sum_dxhat += dxhat;
            sum_dxhat_xhat += dxhat * xhat;
        }
        const S mean_dxhat = sum_dxhat / static_cast<S>(C);
        const S mean_dxhat_xhat = sum_dxhat_xhat / static_cast<S>(C);
        for (int32_t c = 0; c < C; ++c) {
            const S xhat = (x[c] - mu) * rs;
            const S dxhat = dy[c] * g[c];
            dx[c] += rs * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
        }
    }
#pragma omp parallel for
    for (int32_t c = 0; c < C; ++c) {
        S sg = 0, sb = 0;
        for (int64_t n = 0; n < N; ++n) {
            const S xhat = (inp[n * C + c] - mean[n]) * rstd[n];
            sg += dout[n * C + c] * xhat;
            sb += dout[n * C + c];
        }
        dg[c] += sg;
        db[c] += sb;
    }
}

template void layernorm_forward<float>(float *, float *, float *, const float *, const float *,
                                       const float *, int64_t, int32_t, double);
template void layernorm_forward<double>(double *, double *, double *, const double *,
                                        const double *, const double *, int64_t, int32_t, double);
template void layernorm_backward<float>(float *, float *, float *, const float *, const float *,
                                        const float *, const float *, const float *, int64_t,
                                        int32_t);
template void layernorm_backward<double>(double *, double *, double *, const double *,
                                         const double *, const double *, const double *,
                                         const double *, int64_t, int32_t);

} // namespace ref
} // namespace stx
