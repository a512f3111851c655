// elementwise.cu: quick GELU, residual + dropout (the reference's Philox mask, bit for bit)
// and AdamW, forward and backward; one thread per element, grid-stride loops.
#include <cmath>

#include "context.cuh"
#include "philox.h"

namespace stx {
namespace cuda {
namespace {

const int kThreads = 256;

#define STX_GRID_LOOP(i, n)                                                                        \
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n);         \
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void gelu_forward_kernel(float *out, const float *inp, int64_t n) {
    STX_GRID_LOOP(i, n) {
        const float x = inp[i];
        out[i] = x * (1.0f / (1.0f + expf(-1.702f * x)));
    }
}

__global__ void gelu_backward_kernel(float *dinp, const float *dout, const float *inp, int64_t n) {
    STX_GRID_LOOP(i, n) {
        const float x = inp[i];
        const float s = 1.0f / (1.0f + expf(-1.702f * x));
        dinp[i] += dout[i] * (s + 1.702f * x * s * (1.0f - s));
    }
}

__global__ void residual_dropout_forward_kernel(float *out, const float *resid, const float *branch,
                                                int64_t n, bool drop, float inv_keep, uint64_t seed,
                                                uint32_t stream, uint64_t step,
                                                uint64_t threshold) {
    STX_GRID_LOOP(i, n) {
        float b = branch[i];
        if (drop)
            b = dropout_keep(seed, stream, step, static_cast<uint64_t>(i), threshold) ? b * inv_keep
                                                                                      : 0.0f;
        out[i] = resid[i] + b;
    }
}

__global__ void residual_dropout_backward_kernel(float *dresid, float *dbranch, const float *dout,
                                                 int64_t n, bool drop, float inv_keep,
                                                 uint64_t seed, uint32_t stream, uint64_t step,
                                                 uint64_t threshold) {
    STX_GRID_LOOP(i, n) {
        const float g = dout[i];
        dresid[i] += g;
        if (!drop)
            dbranch[i] += g;
        else if (dropout_keep(seed, stream, step, static_cast<uint64_t>(i), threshold))
            dbranch[i] += g * inv_keep;
    }
}

__global__ void adamw_kernel(float *p, float *m, float *v, const float *g, int64_t n,
                             float grad_scale, float lr, float beta1, float beta2, float eps,
                             float decay_factor, float bc1, float bc2) {
    STX_GRID_LOOP(i, n) {
        const float gi = g[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float pi = p[i];
        pi -= decay_factor * pi;
        pi -= lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
        p[i] = pi;
    }
}

} // namespace

void CudaOps::gelu_forward(float *out, const float *inp, int64_t n) {
    if (!ctx_->ok() || n == 0) return;
    gelu_forward_kernel<<<blocks_for(n, kThreads), kThreads, 0, ctx_->stream>>>(out, inp, n);
    STX_LAUNCH_CHECK(ctx_, "gelu_forward_kernel");
}

void CudaOps::gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n) {
    if (!ctx_->ok() || n == 0) return;
    gelu_backward_kernel<<<blocks_for(n, kThreads), kThreads, 0, ctx_->stream>>>(dinp, dout, inp,
                                                                                 n);
    STX_LAUNCH_CHECK(ctx_, "gelu_backward_kernel");
}

void CudaOps::residual_dropout_forward(float *out, const float *resid, const float *branch,
                                       int64_t n, double p, uint64_t seed, uint32_t stream,
                                       uint64_t step) {
    if (!ctx_->ok() || n == 0) return;
    const bool drop = p > 0.0;
    const float inv_keep = drop ? static_cast<float>(1.0 / (1.0 - p)) : 1.0f;
    residual_dropout_forward_kernel<<<blocks_for(n, kThreads), kThreads, 0, ctx_->stream>>>(
        out, resid, branch, n, drop, inv_keep, seed, stream, step, dropout_threshold(p));
    STX_LAUNCH_CHECK(ctx_, "residual_dropout_forward_kernel");
}

void CudaOps::residual_dropout_backward(float *dresid, float *dbranch, const float *dout, int64_t n,
                                        double p, uint64_t seed, uint32_t stream, uint64_t step) {
    if (!ctx_->ok() || n == 0) return;
    const bool drop = p > 0.0;
    const float inv_keep = drop ? static_cast<float>(1.0 / (1.0 - p)) : 1.0f;
    residual_dropout_backward_kernel<<<blocks_for(n, kThreads), kThreads, 0, ctx_->stream>>>(
        dresid, dbranch, dout, n, drop, inv_keep, seed, stream, step, dropout_threshold(p));
    STX_LAUNCH_CHECK(ctx_, "residual_dropout_backward_kernel");
}

void CudaOps::adamw_update(float *p, float *m, float *v, const float *g, int64_t n,
                           double grad_scale, double lr, double beta1, double beta2, double eps,
                           double weight_decay, bool decay, int64_t t) {
    if (!ctx_->ok() || n == 0) return;
    ctx_->parameters_written(p, static_cast<size_t>(n));
    const float bc1 = static_cast<float>(1.0 - std::pow(beta1, static_cast<double>(t)));
    const float bc2 = static_cast<float>(1.0 - std::pow(beta2, static_cast<double>(t)));
    const float decay_factor = decay ? static_cast<float>(lr * weight_decay) : 0.0f;
    adamw_kernel<<<blocks_for(n, kThreads), kThreads, 0, ctx_->stream>>>(
        p, m, v, g, n, static_cast<float>(grad_scale), static_cast<float>(lr),
        static_cast<float>(beta1), static_cast<float>(beta2), static_cast<float>(eps), decay_factor,
        bc1, bc2);
    STX_LAUNCH_CHECK(ctx_, "adamw_kernel");
}

} // namespace cuda
} // namespace stx
