// embedding.cpp: token + per-axis positional embedding with the shift right behind a learned
// start vector (slot 0 = start; slot t >= 1 = tok[x[t-1]] + sum_a pos[a][coord_a(t-1)]).
#include <vector>

#include "ops.h"

namespace stx {
namespace ref {

namespace {

// Row-major coordinates of positions 0..T-1 along each axis of pos_shape:
// coords[p * n_axes + a] is the coordinate of position p on axis a.
std::vector<int32_t> position_coords(const int32_t *pos_shape, int32_t n_axes, int32_t T) {
    std::vector<int32_t> coords(static_cast<size_t>(T) * static_cast<size_t>(n_axes));
    for (int32_t p = 0; p < T; ++p) {
        int64_t rest = p;
        for (int32_t a = n_axes - 1; a >= 0; --a) {
            coords[static_cast<size_t>(p) * n_axes + a] = static_cast<int32_t>(rest % pos_shape[a]);
            rest /= pos_shape[a];
        }
    }
    return coords;
}

} // namespace

template <typename S>
void embedding_forward(S *out, const uint8_t *tokens, const S *tok, const S *start,
                       const S *const *pos, const int32_t *pos_shape, int32_t n_axes, int32_t B,
                       int32_t T, int32_t C) {
    const std::vector<int32_t> coords = position_coords(pos_shape, n_axes, T);
#pragma omp parallel for
    for (int64_t row = 0; row < static_cast<int64_t>(B) * T; ++row) {
        const int64_t b = row / T;
        const int32_t t = static_cast<int32_t>(row % T);
        S *o = out + row * C;
        if (t == 0) {
            for (int32_t c = 0; c < C; ++c) o[c] = start[c];
            continue;
        }
        const S *e = tok + static_cast<int64_t>(tokens[b * T + t - 1]) * C;
        for (int32_t c = 0; c < C; ++c) o[c] = e[c];
        for (int32_t a = 0; a < n_axes; ++a) {
            const S *pa = pos[a] + static_cast<int64_t>(coords[(t - 1) * n_axes + a]) * C;
            for (int32_t c = 0; c < C; ++c) o[c] += pa[c];
        }
    }
}

// Parallel over the channel c: each thread owns column c of every parameter gradient and
// walks the rows in a fixed order, so the result is deterministic.
template <typename S>
void embedding_backward(S *dtok, S *dstart, S *const *dpos, const S *dout, const uint8_t *tokens,
                        const int32_t *pos_shape, int32_t n_axes, int32_t B, int32_t T, int32_t C) {
    const std::vector<int32_t> coords = position_coords(pos_shape, n_axes, T);
#pragma omp parallel for
    for (int32_t c = 0; c < C; ++c) {
        for (int64_t b = 0; b < B; ++b) {
            const S *db = dout + b * T * C;
            dstart[c] += db[c];
            for (int32_t t = 1; t < T; ++t) {
                const S d = db[static_cast<int64_t>(t) * C + c];
                dtok[static_cast<int64_t>(tokens[b * T + t - 1]) * C + c] += d;
                for (int32_t a = 0; a < n_axes; ++a)
                    dpos[a][static_cast<int64_t>(coords[(t - 1) * n_axes + a]) * C + c] += d;
            }
        }
    }
}

template void embedding_forward<float>(float *, const uint8_t *, const float *, const float *,
                                       const float *const *, const int32_t *, int32_t, int32_t,
                                       int32_t, int32_t);
template void embedding_forward<double>(double *, const uint8_t *, const double *, const double *,
                                        const double *const *, const int32_t *, int32_t, int32_t,
                                        int32_t, int32_t);
template void embedding_backward<float>(float *, float *, float *const *, const float *,
                                        const uint8_t *, const int32_t *, int32_t, int32_t, int32_t,
                                        int32_t);
template void embedding_backward<double>(double *, double *, double *const *, const double *,
                                         const uint8_t *, const int32_t *, int32_t, int32_t,
                                         int32_t, int32_t);

} // namespace ref
} // namespace stx
