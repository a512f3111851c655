// adamw.cpp: one AdamW step in torch.optim.AdamW's order (decoupled decay first, then the
// bias-corrected Adam update), and the sum of squares used for global-norm clipping.
#include <cmath>
#include <vector>

#include "ops.h"

namespace stx {
namespace ref {

// Fixed-size chunks summed in parallel, then the partials in order: deterministic for any
// thread count.
template <typename S> double sum_squares(const S *x, int64_t n) {
    const int64_t chunk = 1 << 16;
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    std::vector<double> partial(static_cast<size_t>(n_chunks), 0.0);
#pragma omp parallel for
    for (int64_t k = 0; k < n_chunks; ++k) {
        const int64_t end = (k + 1) * chunk < n ? (k + 1) * chunk : n;
        double acc = 0.0;
        for (int64_t i = k * chunk; i < end; ++i) {
            const double xi = static_cast<double>(x[i]);
            acc += xi * xi;
        }
        partial[static_cast<size_t>(k)] = acc;
    }
    double total = 0.0;
    for (double s : partial) total += s;
    return total;
}

template <typename S>
void adamw_update(S *p, S *m, S *v, const S *g, int64_t n, double grad_scale, double lr,
                  double beta1, double beta2, double eps, double weight_decay, bool decay,
                  int64_t t) {
    const double td = static_cast<double>(t);
    const S gs = static_cast<S>(grad_scale);
    const S b1 = static_cast<S>(beta1), b2 = static_cast<S>(beta2);
    const S one_minus_b1 = static_cast<S>(1.0 - beta1), one_minus_b2 = static_cast<S>(1.0 - beta2);
    const S bc1 = static_cast<S>(1.0 - std::pow(beta1, td));
    const S bc2 = static_cast<S>(1.0 - std::pow(beta2, td));
    const S lr_s = static_cast<S>(lr), eps_s = static_cast<S>(eps);
    const S lr_wd = static_cast<S>(lr * weight_decay);
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) {
        const S gi = gs * g[i];
        const S mi = b1 * m[i] + one_minus_b1 * gi;
        const S vi = b2 * v[i] + one_minus_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        S pi = p[i];
        if (decay) pi -= lr_wd * pi;
        pi -= lr_s * (mi / bc1) / (std::sqrt(vi / bc2) + eps_s);
        p[i] = pi;
    }
}

template double sum_squares<float>(const float *, int64_t);
template double sum_squares<double>(const double *, int64_t);
template void adamw_update<float>(float *, float *, float *, const float *, int64_t, double, double,
                                  double, double, double, double, bool, int64_t);
template void adamw_update<double>(double *, double *, double *, const double *, int64_t, double,
                                   double, double, double, double, double, bool, int64_t);

} // namespace ref
} // namespace stx
