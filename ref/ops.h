// ops.h: the op contract of the CPU reference backend. One forward/backward pair per op,
// templated on the scalar type (float for use, double for gradient checks), written to be
// read. The CUDA backend mirrors these names one for one.
//
// Dimension letters: B batch, T time, C width, H heads, Dq query/key head dim, Dv value
// head dim, F feed-forward width, V vocabulary (256), N = B*T rows.
// Argument order: outputs, saved tensors, inputs, weights, sizes; backward: gradients out
// first, then the upstream gradient, then saved/inputs/weights, then sizes.
// Write rule: forward ops overwrite (=) their outputs. Backward ops ADD (+=) into every
// gradient they produce, activation gradients included, so callers zero them first; this
// lets the residual stream and the q/k/v branches sum without temporaries.
// Linear weights are [OC, IC] (y = x W^T + b), as torch.nn.Linear.
#pragma once
#include <cstddef>
#include <cstdint>

#include "layout.h"

namespace stx {
namespace ref {

// Embedding with the shift right: out[b,0] = start; out[b,t] = tok[x[b,t-1]] +
// sum_a pos[a][coord_a(t-1)] for t >= 1, where coord_a is the row-major coordinate of the
// position along axis a of pos_shape (prod(pos_shape) >= T).
// out (B,T,C); tokens (B,T); tok (256,C); start (C); pos[a] (pos_shape[a], C)
template <typename S>
void embedding_forward(S *out, const uint8_t *tokens, const S *tok, const S *start,
                       const S *const *pos, const int32_t *pos_shape, int32_t n_axes, int32_t B,
                       int32_t T, int32_t C);
template <typename S>
void embedding_backward(S *dtok, S *dstart, S *const *dpos, const S *dout, const uint8_t *tokens,
                        const int32_t *pos_shape, int32_t n_axes, int32_t B, int32_t T, int32_t C);

// LayerNorm over the last axis: out = (x - mean) * rstd * g + b, rstd = 1/sqrt(var + eps),
// var the biased variance. out, inp (N,C); mean, rstd (N); g, b (C)
template <typename S>
void layernorm_forward(S *out, S *mean, S *rstd, const S *inp, const S *g, const S *b, int64_t N,
                       int32_t C, double eps);
template <typename S>
void layernorm_backward(S *dinp, S *dg, S *db, const S *dout, const S *inp, const S *g,
                        const S *mean, const S *rstd, int64_t N, int32_t C);

// Linear: out[n,o] = bias[o] + sum_i inp[n,i] * w[o,i]. out (N,OC); inp (N,IC); w (OC,IC);
// bias (OC) or NULL.
template <typename S>
void linear_forward(S *out, const S *inp, const S *w, const S *bias, int64_t N, int32_t IC,
                    int32_t OC);
template <typename S>
void linear_backward(S *dinp, S *dw, S *dbias, const S *dout, const S *inp, const S *w, int64_t N,
                     int32_t IC, int32_t OC);

// Quick GELU: out = x * sigmoid(1.702 x). n elements.
template <typename S> void gelu_forward(S *out, const S *inp, int64_t n);
template <typename S> void gelu_backward(S *dinp, const S *dout, const S *inp, int64_t n);

// Residual + dropout: out = resid + mask * branch / (1 - p), mask from philox.h's
// dropout_keep(seed, stream, step, index0 + i) with threshold dropout_threshold(p); p = 0 is
// the identity on branch. n = B*T*C elements, flat index i; index0 places them in a larger
// batch (a data-parallel rank's shard: first sequence * T * C), 0 for a whole batch.
template <typename S>
void residual_dropout_forward(S *out, const S *resid, const S *branch, int64_t n, double p,
                              uint64_t seed, uint32_t stream, uint64_t step, uint64_t index0 = 0);
template <typename S>
void residual_dropout_backward(S *dresid, S *dbranch, const S *dout, int64_t n, double p,
                               uint64_t seed, uint32_t stream, uint64_t step, uint64_t index0 = 0);

// Softmax cross-entropy: losses[n] = logsumexp(logits[n,:]) - logits[n, targets[n]].
// Backward of sum_n dloss_scale * losses[n]: dlogits += scale * (softmax - onehot).
// logits, dlogits (N,V); targets, losses (N)
template <typename S>
void crossentropy_forward(S *losses, const S *logits, const uint8_t *targets, int64_t N, int32_t V);
template <typename S>
void crossentropy_backward(S *dlogits, const S *logits, const uint8_t *targets, double dloss_scale,
                           int64_t N, int32_t V);

// Block-sparse attention over a layout. q, k (B,T,H*Dq); v, out (B,T,H*Dv); lse (B,H,T).
// Walks each head's passes and their active blocks, masking element-wise; combines passes
// through their log-sum-exp. Never forms the T x T matrix. T <= layout.n_ctx.
template <typename S>
void attention_forward(S *out, S *lse, const S *q, const S *k, const S *v, const Layout &layout,
                       int32_t B, int32_t T, int32_t Dq, int32_t Dv, double scale);
template <typename S>
void attention_backward(S *dq, S *dk, S *dv, const S *dout, const S *q, const S *k, const S *v,
                        const S *out, const S *lse, const Layout &layout, int32_t B, int32_t T,
                        int32_t Dq, int32_t Dv, double scale);

// The oracle: dense masked attention from layout.allows(), O(T^2) per head. Same contract.
template <typename S>
void attention_dense_forward(S *out, S *lse, const S *q, const S *k, const S *v,
                             const Layout &layout, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                             double scale);
template <typename S>
void attention_dense_backward(S *dq, S *dk, S *dv, const S *dout, const S *q, const S *k,
                              const S *v, const S *out, const S *lse, const Layout &layout,
                              int32_t B, int32_t T, int32_t Dq, int32_t Dv, double scale);

// Sum of squares of n elements, accumulated in double.
template <typename S> double sum_squares(const S *x, int64_t n);

// One AdamW update of n parameters at step t (1-based) with gradients scaled by grad_scale:
//   g' = grad_scale * g; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2;
//   if decay: p -= lr * wd * p;  p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
// (torch.optim.AdamW's order).
template <typename S>
void adamw_update(S *p, S *m, S *v, const S *g, int64_t n, double grad_scale, double lr,
                  double beta1, double beta2, double eps, double weight_decay, bool decay,
                  int64_t t);

} // namespace ref
} // namespace stx
