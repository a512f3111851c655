// elementwise.cu: quick GELU, residual + dropout (the reference's Philox mask, bit for bit)
// and AdamW, forward and backward; grid-stride loops, four elements a thread where aligned.
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

// The float4 paths below give each element the same expression as the scalar path (these
// functions), so vectorizing changes no bit; they need every pointer 16-byte aligned, and a
// scalar loop takes the last n % 4 elements.
__device__ __forceinline__ bool aligned16(const void *p) {
    return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

__device__ __forceinline__ float gelu(float x) {
    return x * (1.0f / (1.0f + expf(-1.702f * x)));
}

// acc + g * gelu'(x)
__device__ __forceinline__ float gelu_grad_add(float acc, float g, float x) {
    const float s = 1.0f / (1.0f + expf(-1.702f * x));
    return acc + g * (s + 1.702f * x * s * (1.0f - s));
}

// The first index of a grid-stride loop's scalar tail over [4 * (n / 4), n).
#define STX_GRID_TAIL(i, n)                                                                        \
    for (int64_t i = (n) / 4 * 4 + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;    \
         i < (n); i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// out16 (unless null): the bf16 rounding of each value stored in out, the operand copy of
// the next product (context.cuh), the same bits the conversion kernel would give.
__global__ void gelu_forward_kernel(float *out, __nv_bfloat16 *out16, const float *inp, int64_t n) {
    if (aligned16(out) && aligned16(inp)) {
        STX_GRID_LOOP(i, n / 4) {
            const float4 x = reinterpret_cast<const float4 *>(inp)[i];
            const float4 y = make_float4(gelu(x.x), gelu(x.y), gelu(x.z), gelu(x.w));
            reinterpret_cast<float4 *>(out)[i] = y;
            if (out16) {
                out16[4 * i] = __float2bfloat16(y.x);
                out16[4 * i + 1] = __float2bfloat16(y.y);
                out16[4 * i + 2] = __float2bfloat16(y.z);
                out16[4 * i + 3] = __float2bfloat16(y.w);
            }
        }
        STX_GRID_TAIL(i, n) {
            const float y = gelu(inp[i]);
            out[i] = y;
            if (out16) out16[i] = __float2bfloat16(y);
        }
        return;
    }
    STX_GRID_LOOP(i, n) {
        const float y = gelu(inp[i]);
        out[i] = y;
        if (out16) out16[i] = __float2bfloat16(y);
    }
}

// fresh: dinp is a pending zero (context.cuh): it is not read, 0.0f takes its place.
__global__ void gelu_backward_kernel(float *dinp, const float *dout, const float *inp, int64_t n,
                                     bool fresh) {
    if (aligned16(dinp) && aligned16(dout) && aligned16(inp)) {
        STX_GRID_LOOP(i, n / 4) {
            const float4 x = reinterpret_cast<const float4 *>(inp)[i];
            const float4 g = reinterpret_cast<const float4 *>(dout)[i];
            const float4 d = fresh ? make_float4(0.0f, 0.0f, 0.0f, 0.0f)
                                   : reinterpret_cast<const float4 *>(dinp)[i];
            reinterpret_cast<float4 *>(dinp)[i] =
                make_float4(gelu_grad_add(d.x, g.x, x.x), gelu_grad_add(d.y, g.y, x.y),
                            gelu_grad_add(d.z, g.z, x.z), gelu_grad_add(d.w, g.w, x.w));
        }
        STX_GRID_TAIL(i, n) dinp[i] = gelu_grad_add(fresh ? 0.0f : dinp[i], dout[i], inp[i]);
        return;
    }
    STX_GRID_LOOP(i, n) dinp[i] = gelu_grad_add(fresh ? 0.0f : dinp[i], dout[i], inp[i]);
}

// resid + drop(b) for element i (index0 + i of the dropout stream: a shard's place in the
// global batch).
__device__ __forceinline__ float residual_dropout(float resid, float b, int64_t i, bool drop,
                                                  float inv_keep, uint64_t seed, uint32_t stream,
                                                  uint64_t step, uint64_t threshold,
                                                  uint64_t index0) {
    if (drop)
        b = dropout_keep(seed, stream, step, index0 + static_cast<uint64_t>(i), threshold)
                ? b * inv_keep
                : 0.0f;
    return resid + b;
}

__global__ void residual_dropout_forward_kernel(float *out, const float *resid, const float *branch,
                                                int64_t n, bool drop, float inv_keep, uint64_t seed,
                                                uint32_t stream, uint64_t step, uint64_t threshold,
                                                uint64_t index0) {
    if (aligned16(out) && aligned16(resid) && aligned16(branch)) {
        STX_GRID_LOOP(i, n / 4) {
            const float4 r = reinterpret_cast<const float4 *>(resid)[i];
            const float4 b = reinterpret_cast<const float4 *>(branch)[i];
            const int64_t e = 4 * i;
            reinterpret_cast<float4 *>(out)[i] =
                make_float4(residual_dropout(r.x, b.x, e, drop, inv_keep, seed, stream, step,
                                             threshold, index0),
                            residual_dropout(r.y, b.y, e + 1, drop, inv_keep, seed, stream, step,
                                             threshold, index0),
                            residual_dropout(r.z, b.z, e + 2, drop, inv_keep, seed, stream, step,
                                             threshold, index0),
                            residual_dropout(r.w, b.w, e + 3, drop, inv_keep, seed, stream, step,
                                             threshold, index0));
        }
        STX_GRID_TAIL(i, n)
        out[i] = residual_dropout(resid[i], branch[i], i, drop, inv_keep, seed, stream, step,
                                  threshold, index0);
        return;
    }
    STX_GRID_LOOP(i, n)
    out[i] = residual_dropout(resid[i], branch[i], i, drop, inv_keep, seed, stream, step, threshold,
                              index0);
}

// dresid += g; dbranch += drop'(g) for element i.
__device__ __forceinline__ void residual_dropout_grad(float &dresid, float &dbranch, float g,
                                                      int64_t i, bool drop, float inv_keep,
                                                      uint64_t seed, uint32_t stream, uint64_t step,
                                                      uint64_t threshold, uint64_t index0) {
    dresid += g;
    if (!drop)
        dbranch += g;
    else if (dropout_keep(seed, stream, step, index0 + static_cast<uint64_t>(i), threshold))
        dbranch += g * inv_keep;
}

// fresh_r, fresh_b: that gradient is a pending zero (context.cuh): not read, 0.0f instead
// (never both set on one buffer: a fresh output meets no other range of the op).
__global__ void residual_dropout_backward_kernel(float *dresid, float *dbranch, const float *dout,
                                                 int64_t n, bool drop, float inv_keep,
                                                 uint64_t seed, uint32_t stream, uint64_t step,
                                                 uint64_t threshold, uint64_t index0, bool fresh_r,
                                                 bool fresh_b) {
    const float4 zero4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    // The float4 path holds both gradients in registers: only distinct buffers may take it.
    if (aligned16(dresid) && aligned16(dbranch) && aligned16(dout) && dresid != dbranch) {
        STX_GRID_LOOP(i, n / 4) {
            const float4 g = reinterpret_cast<const float4 *>(dout)[i];
            float4 r = fresh_r ? zero4 : reinterpret_cast<const float4 *>(dresid)[i];
            float4 b = fresh_b ? zero4 : reinterpret_cast<const float4 *>(dbranch)[i];
            const int64_t e = 4 * i;
            residual_dropout_grad(r.x, b.x, g.x, e, drop, inv_keep, seed, stream, step, threshold,
                                  index0);
            residual_dropout_grad(r.y, b.y, g.y, e + 1, drop, inv_keep, seed, stream, step,
                                  threshold, index0);
            residual_dropout_grad(r.z, b.z, g.z, e + 2, drop, inv_keep, seed, stream, step,
                                  threshold, index0);
            residual_dropout_grad(r.w, b.w, g.w, e + 3, drop, inv_keep, seed, stream, step,
                                  threshold, index0);
            reinterpret_cast<float4 *>(dresid)[i] = r;
            reinterpret_cast<float4 *>(dbranch)[i] = b;
        }
        STX_GRID_TAIL(i, n) {
            float r = fresh_r ? 0.0f : dresid[i], b = fresh_b ? 0.0f : dbranch[i];
            residual_dropout_grad(r, b, dout[i], i, drop, inv_keep, seed, stream, step, threshold,
                                  index0);
            dresid[i] = r;
            dbranch[i] = b;
        }
        return;
    }
    if (fresh_r || fresh_b) { // distinct buffers (a fresh one meets no other)
        STX_GRID_LOOP(i, n) {
            float r = fresh_r ? 0.0f : dresid[i], b = fresh_b ? 0.0f : dbranch[i];
            residual_dropout_grad(r, b, dout[i], i, drop, inv_keep, seed, stream, step, threshold,
                                  index0);
            dresid[i] = r;
            dbranch[i] = b;
        }
        return;
    }
    STX_GRID_LOOP(i, n)
    residual_dropout_grad(dresid[i], dbranch[i], dout[i], i, drop, inv_keep, seed, stream, step,
                          threshold, index0);
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
    OpAccess io(ctx_.get(), {Span(inp, n)}, {Span(out, n)});
    __nv_bfloat16 *out16 = io.produce(out, n); // g: the bf16 operand of the next product
    gelu_forward_kernel<<<blocks_for((n + 3) / 4, kThreads), kThreads, 0, ctx_->stream>>>(
        out, out16, inp, n);
    STX_LAUNCH_CHECK(ctx_, "gelu_forward_kernel");
}

void CudaOps::gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n) {
    if (!ctx_->ok() || n == 0) return;
    OpAccess io(ctx_.get(), {Span(dout, n), Span(inp, n)}, {}, {Span(dinp, n)});
    gelu_backward_kernel<<<blocks_for((n + 3) / 4, kThreads), kThreads, 0, ctx_->stream>>>(
        dinp, dout, inp, n, io.fresh(0));
    STX_LAUNCH_CHECK(ctx_, "gelu_backward_kernel");
}

void CudaOps::residual_dropout_forward(float *out, const float *resid, const float *branch,
                                       int64_t n, double p, uint64_t seed, uint32_t stream,
                                       uint64_t step, uint64_t index0) {
    if (!ctx_->ok() || n == 0) return;
    OpAccess io(ctx_.get(), {Span(resid, n), Span(branch, n)}, {Span(out, n)});
    const bool drop = p > 0.0;
    const float inv_keep = drop ? static_cast<float>(1.0 / (1.0 - p)) : 1.0f;
    residual_dropout_forward_kernel<<<blocks_for((n + 3) / 4, kThreads), kThreads, 0,
                                      ctx_->stream>>>(out, resid, branch, n, drop, inv_keep, seed,
                                                      stream, step, dropout_threshold(p), index0);
    STX_LAUNCH_CHECK(ctx_, "residual_dropout_forward_kernel");
}

void CudaOps::residual_dropout_backward(float *dresid, float *dbranch, const float *dout, int64_t n,
                                        double p, uint64_t seed, uint32_t stream, uint64_t step,
                                        uint64_t index0) {
    if (!ctx_->ok() || n == 0) return;
    OpAccess io(ctx_.get(), {Span(dout, n)}, {}, {Span(dresid, n), Span(dbranch, n)});
    const bool drop = p > 0.0;
    const float inv_keep = drop ? static_cast<float>(1.0 / (1.0 - p)) : 1.0f;
    residual_dropout_backward_kernel<<<blocks_for((n + 3) / 4, kThreads), kThreads, 0,
                                       ctx_->stream>>>(dresid, dbranch, dout, n, drop, inv_keep,
                                                       seed, stream, step, dropout_threshold(p),
                                                       index0, io.fresh(0), io.fresh(1));
    STX_LAUNCH_CHECK(ctx_, "residual_dropout_backward_kernel");
}

void CudaOps::adamw_update(float *p, float *m, float *v, const float *g, int64_t n,
                           double grad_scale, double lr, double beta1, double beta2, double eps,
                           double weight_decay, bool decay, int64_t t) {
    if (!ctx_->ok() || n == 0) return;
    OpAccess io(ctx_.get(), {Span(g, n)}, {Span(p, n), Span(m, n), Span(v, n)});
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
