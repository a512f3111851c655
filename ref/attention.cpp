// attention.cpp: the reference attention, block-sparse over a Layout, and its O(T^2) oracle.
//
// Both compute, for every head h and query position t < T,
//   out[t] = sum_k softmax_k(scale * q[t].k[k]) v[k]   over the keys k the pattern allows,
//   lse[t] = log sum_k exp(scale * q[t].k[k]),
// and the backward of that. Buffers are in natural order: q, k (B,T,H*Dq); v, out (B,T,H*Dv);
// lse (B,H,T). The sparse version walks each pass of the head over its active key blocks
// (slots in the pass's order, masked element-wise by pass_allows) and combines the passes
// through their log-sum-exp; the T x T matrix is never formed. The oracle asks
// layout.allows() about every k <= t.
//
// Each (b, h) is independent, so the loops over b*H run in parallel and the results do not
// depend on the number of threads.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "layout.h"
#include "ops.h"

namespace stx {
namespace ref {
namespace {

// One (b, h) slice of a [B, T, H*D] buffer: row t of head h starts at base + t*H*D.
template <typename P> struct HeadRows {
    P *base;
    int64_t stride; // H*D
    P *operator[](int64_t t) const { return base + t * stride; }
};

template <typename P>
HeadRows<P> head_rows(P *buf, int32_t b, int32_t h, int32_t T, int32_t H, int32_t D) {
    const int64_t stride = static_cast<int64_t>(H) * D;
    return HeadRows<P>{buf + static_cast<int64_t>(b) * T * stride + static_cast<int64_t>(h) * D,
                       stride};
}

template <typename S> S dot(const S *a, const S *b, int32_t n) {
    S s = S(0);
    for (int32_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

template <typename S> S neg_inf() {
    return -std::numeric_limits<S>::infinity();
}

// Calls fn(bh, b, h) for every (b, h) of B x H, in parallel (each is independent).
template <typename Fn> void for_each_head(int32_t B, int32_t H, Fn &&fn) {
    const int64_t BH = static_cast<int64_t>(B) * H;
#pragma omp parallel for schedule(dynamic)
    for (int64_t bh = 0; bh < BH; ++bh)
        fn(bh, static_cast<int32_t>(bh / H), static_cast<int32_t>(bh % H));
}

// The forward's buffers, sliced to one (b, h).
template <typename S> struct ForwardRows {
    HeadRows<const S> q, k, v;
    HeadRows<S> out;
    ForwardRows(S *out_, const S *q_, const S *k_, const S *v_, int32_t b, int32_t h, int32_t T,
                int32_t H, int32_t Dq, int32_t Dv)
        : q(head_rows(q_, b, h, T, H, Dq)), k(head_rows(k_, b, h, T, H, Dq)),
          v(head_rows(v_, b, h, T, H, Dv)), out(head_rows(out_, b, h, T, H, Dv)) {}
};

// The backward's buffers, sliced to one (b, h).
template <typename S> struct BackwardRows {
    HeadRows<const S> q, k, v, out, dout;
    HeadRows<S> dq, dk, dv;
    BackwardRows(S *dq_, S *dk_, S *dv_, const S *dout_, const S *q_, const S *k_, const S *v_,
                 const S *out_, int32_t b, int32_t h, int32_t T, int32_t H, int32_t Dq, int32_t Dv)
        : q(head_rows(q_, b, h, T, H, Dq)), k(head_rows(k_, b, h, T, H, Dq)),
          v(head_rows(v_, b, h, T, H, Dv)), out(head_rows(out_, b, h, T, H, Dv)),
          dout(head_rows(dout_, b, h, T, H, Dv)), dq(head_rows(dq_, b, h, T, H, Dq)),
          dk(head_rows(dk_, b, h, T, H, Dq)), dv(head_rows(dv_, b, h, T, H, Dv)) {}
};

// Calls fn(qp, keys) for every query position qp < T of pass `p` of head `h`, with `keys`
// the key positions that pass computes for it (kp < T, kp <= qp, pass_allows), found by
// walking the pass's active key blocks. `keys` may be empty.
template <typename Fn>
void for_each_pass_row(const Layout &layout, int32_t h, size_t p, int32_t T,
                       std::vector<int64_t> &keys, Fn &&fn) {
    const AttnPass &pass = layout.heads[static_cast<size_t>(h)].passes[p];
    const int64_t bs = layout.block_size;
    for (int32_t i = 0; i < pass.n_qblocks; ++i) {
        const int64_t q_end = std::min((i + 1) * bs, pass.n_slots);
        for (int64_t qs = i * bs; qs < q_end; ++qs) {
            const int64_t qp = slot_position(pass, layout.n_ctx, qs);
            if (qp < 0 || qp >= T) continue;
            keys.clear();
            for (int64_t e = pass.row_ptr[static_cast<size_t>(i)];
                 e < pass.row_ptr[static_cast<size_t>(i) + 1]; ++e) {
                const int64_t j = pass.col_idx[static_cast<size_t>(e)];
                const int64_t k_end = std::min((j + 1) * bs, pass.n_slots);
                for (int64_t ks = j * bs; ks < k_end; ++ks) {
                    const int64_t kp = slot_position(pass, layout.n_ctx, ks);
                    if (kp < 0 || kp >= T || kp > qp) continue;
                    if (!layout.pass_allows(h, p, qp, kp)) continue;
                    keys.push_back(kp);
                }
            }
            fn(qp, keys);
        }
    }
}

// The dense oracle's key set of query t: every k <= t that layout.allows().
inline void dense_keys(const Layout &layout, int32_t h, int64_t t, std::vector<int64_t> &keys) {
    keys.clear();
    for (int64_t kp = 0; kp <= t; ++kp) {
        if (layout.allows(h, t, kp)) keys.push_back(kp);
    }
}

// Softmax attention of one query row over a list of keys: o = sum_n softmax_n v[keys[n]]
// (normalized), returns lse = log sum_n exp(score_n); -inf and o = 0 for no keys.
template <typename S>
S attend_row(S *o, const S *q_row, const HeadRows<const S> &k, const HeadRows<const S> &v,
             const std::vector<int64_t> &keys, std::vector<S> &scores, int32_t Dq, int32_t Dv,
             S scale) {
    std::fill(o, o + Dv, S(0));
    if (keys.empty()) return neg_inf<S>();
    scores.resize(keys.size());
    S m = neg_inf<S>();
    for (size_t n = 0; n < keys.size(); ++n) {
        scores[n] = scale * dot(q_row, k[keys[n]], Dq);
        m = std::max(m, scores[n]);
    }
    S l = S(0);
    for (size_t n = 0; n < keys.size(); ++n) {
        const S w = std::exp(scores[n] - m);
        l += w;
        const S *v_row = v[keys[n]];
        for (int32_t d = 0; d < Dv; ++d) o[d] += w * v_row[d];
    }
    for (int32_t d = 0; d < Dv; ++d) o[d] /= l;
    return m + std::log(l);
}

// Backward of one query row over a list of keys (FlashAttention style):
//   P = exp(scale q.k - lse), dv[k] += P dout, dS = P (dout.v[k] - Dt),
//   dq += scale dS k[k], dk[k] += scale dS q.
template <typename S>
void attend_row_backward(const BackwardRows<S> &r, int64_t qp, const std::vector<int64_t> &keys,
                         S lse, S Dt, int32_t Dq, int32_t Dv, S scale) {
    const S *q_row = r.q[qp];
    const S *do_row = r.dout[qp];
    S *dq_row = r.dq[qp];
    for (int64_t kp : keys) {
        const S *k_row = r.k[kp];
        const S *v_row = r.v[kp];
        const S P = std::exp(scale * dot(q_row, k_row, Dq) - lse);
        S *dv_row = r.dv[kp];
        for (int32_t d = 0; d < Dv; ++d) dv_row[d] += P * do_row[d];
        const S dP = dot(do_row, v_row, Dv);
        const S dS = P * (dP - Dt);
        S *dk_row = r.dk[kp];
        for (int32_t d = 0; d < Dq; ++d) {
            dq_row[d] += scale * dS * k_row[d];
            dk_row[d] += scale * dS * q_row[d];
        }
    }
}

} // namespace

template <typename S>
void attention_forward(S *out, S *lse, const S *q, const S *k, const S *v, const Layout &layout,
                       int32_t B, int32_t T, int32_t Dq, int32_t Dv, double scale) {
    const int32_t H = layout.n_head;
    const S sc = static_cast<S>(scale);
    for_each_head(B, H, [&](int64_t bh, int32_t b, int32_t h) {
        const ForwardRows<S> r(out, q, k, v, b, h, T, H, Dq, Dv);
        S *lse_h = lse + bh * T;

        // Each pass's normalized result and log-sum-exp per row, then their combination.
        const size_t n_pass = layout.heads[static_cast<size_t>(h)].passes.size();
        const size_t rows = static_cast<size_t>(T);
        std::vector<S> pass_out(n_pass * rows * static_cast<size_t>(Dv), S(0));
        std::vector<S> pass_lse(n_pass * rows, neg_inf<S>());
        std::vector<int64_t> keys;
        std::vector<S> scores;
        for (size_t p = 0; p < n_pass; ++p) {
            for_each_pass_row(
                layout, h, p, T, keys, [&](int64_t qp, const std::vector<int64_t> &ks) {
                    const size_t i = p * rows + static_cast<size_t>(qp);
                    pass_lse[i] = attend_row(&pass_out[i * static_cast<size_t>(Dv)], r.q[qp], r.k,
                                             r.v, ks, scores, Dq, Dv, sc);
                });
        }
        // lse = log sum_p exp(lse_p); out = sum_p exp(lse_p - lse) o_p.
        for (int64_t t = 0; t < T; ++t) {
            S m = neg_inf<S>();
            for (size_t p = 0; p < n_pass; ++p)
                m = std::max(m, pass_lse[p * rows + static_cast<size_t>(t)]);
            S total = S(0);
            for (size_t p = 0; p < n_pass; ++p)
                total += std::exp(pass_lse[p * rows + static_cast<size_t>(t)] - m);
            const S l = m + std::log(total); // finite: key t is always allowed
            S *o_row = r.out[t];
            std::fill(o_row, o_row + Dv, S(0));
            for (size_t p = 0; p < n_pass; ++p) {
                const size_t i = p * rows + static_cast<size_t>(t);
                if (pass_lse[i] == neg_inf<S>()) continue;
                const S w = std::exp(pass_lse[i] - l);
                const S *po = &pass_out[i * static_cast<size_t>(Dv)];
                for (int32_t d = 0; d < Dv; ++d) o_row[d] += w * po[d];
            }
            lse_h[t] = l;
        }
    });
}

template <typename S>
void attention_backward(S *dq, S *dk, S *dv, const S *dout, const S *q, const S *k, const S *v,
                        const S *out, const S *lse, const Layout &layout, int32_t B, int32_t T,
                        int32_t Dq, int32_t Dv, double scale) {
    const int32_t H = layout.n_head;
    const S sc = static_cast<S>(scale);
    for_each_head(B, H, [&](int64_t bh, int32_t b, int32_t h) {
        const BackwardRows<S> r(dq, dk, dv, dout, q, k, v, out, b, h, T, H, Dq, Dv);
        const S *lse_h = lse + bh * T;

        // D[t] = dout[t] . out[t], the softmax backward's row term (over all passes).
        std::vector<S> Drow(static_cast<size_t>(T));
        for (int64_t t = 0; t < T; ++t) Drow[static_cast<size_t>(t)] = dot(r.dout[t], r.out[t], Dv);

        std::vector<int64_t> keys;
        const size_t n_pass = layout.heads[static_cast<size_t>(h)].passes.size();
        for (size_t p = 0; p < n_pass; ++p) {
            for_each_pass_row(layout, h, p, T, keys,
                              [&](int64_t qp, const std::vector<int64_t> &ks) {
                                  attend_row_backward(r, qp, ks, lse_h[qp],
                                                      Drow[static_cast<size_t>(qp)], Dq, Dv, sc);
                              });
        }
    });
}

template <typename S>
void attention_dense_forward(S *out, S *lse, const S *q, const S *k, const S *v,
                             const Layout &layout, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                             double scale) {
    const int32_t H = layout.n_head;
    const S sc = static_cast<S>(scale);
    for_each_head(B, H, [&](int64_t bh, int32_t b, int32_t h) {
        const ForwardRows<S> r(out, q, k, v, b, h, T, H, Dq, Dv);
        std::vector<int64_t> keys;
        std::vector<S> scores;
        for (int64_t t = 0; t < T; ++t) {
            dense_keys(layout, h, t, keys);
            lse[bh * T + t] = attend_row(r.out[t], r.q[t], r.k, r.v, keys, scores, Dq, Dv, sc);
        }
    });
}

template <typename S>
void attention_dense_backward(S *dq, S *dk, S *dv, const S *dout, const S *q, const S *k,
                              const S *v, const S *out, const S *lse, const Layout &layout,
                              int32_t B, int32_t T, int32_t Dq, int32_t Dv, double scale) {
    const int32_t H = layout.n_head;
    const S sc = static_cast<S>(scale);
    for_each_head(B, H, [&](int64_t bh, int32_t b, int32_t h) {
        const BackwardRows<S> r(dq, dk, dv, dout, q, k, v, out, b, h, T, H, Dq, Dv);
        std::vector<int64_t> keys;
        for (int64_t t = 0; t < T; ++t) {
            dense_keys(layout, h, t, keys);
            attend_row_backward(r, t, keys, lse[bh * T + t], dot(r.dout[t], r.out[t], Dv), Dq, Dv,
                                sc);
        }
    });
}

#define STX_INSTANTIATE_ATTENTION(S)                                                               \
    template void attention_forward<S>(S *, S *, const S *, const S *, const S *, const Layout &,  \
                                       int32_t, int32_t, int32_t, int32_t, double);                \
    template void attention_backward<S>(S *, S *, S *, const S *, const S *, const S *, const S *, \
                                        const S *, const S *, const Layout &, int32_t, int32_t,    \
                                        int32_t, int32_t, double);                                 \
    template void attention_dense_forward<S>(S *, S *, const S *, const S *, const S *,            \
                                             const Layout &, int32_t, int32_t, int32_t, int32_t,   \
                                             double);                                              \
    template void attention_dense_backward<S>(S *, S *, S *, const S *, const S *, const S *,      \
                                              const S *, const S *, const S *, const Layout &,     \
                                              int32_t, int32_t, int32_t, int32_t, double);

STX_INSTANTIATE_ATTENTION(float)
STX_INSTANTIATE_ATTENTION(double)

#undef STX_INSTANTIATE_ATTENTION

} // namespace ref
} // namespace stx
