// bench.cu: the GPU side of stx_attention_benchmark: random q, k, v in device memory, a
// warm-up, then the median of `runs` forwards and of `runs` forward + backward passes,
// timed with CUDA events on the model's stream.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend.h"
#include "context.cuh"

namespace stx {

stx_status cuda_attention_benchmark(const Layout &L, int32_t device, bool bf16, int32_t B,
                                    int32_t T, int32_t Dq, int32_t Dv, int32_t runs,
                                    double *forward_ms, double *forward_backward_ms) {
    cuda::CudaOps ops;
    stx_status st = cuda::CudaOps::create(device, bf16, &ops);
    if (st != STX_OK) return st;
    // Every run converts q, k, v (and dout) as it did before the operand copies, which would
    // otherwise be converted once for all runs here (in training they change every step).
    ops.use_operand_cache(false);
    if (!cuda::attention_dims_supported(Dq, Dv))
        return fail(STX_ERR_UNSUPPORTED, "head dims Dq %d, Dv %d are not compiled for CUDA", Dq,
                    Dv);
    const size_t H = static_cast<size_t>(L.n_head), N = static_cast<size_t>(B) * T;
    const size_t nq = N * H * Dq, nv = N * H * Dv;
    cuda::CudaOps::Buffer q, k, v, out, lse, dout, dq, dk, dv;
    for (cuda::CudaOps::Buffer *b : {&q, &k, &dq, &dk}) ops.alloc(*b, nq);
    for (cuda::CudaOps::Buffer *b : {&v, &out, &dout, &dv}) ops.alloc(*b, nv);
    ops.alloc(lse, N * H);
    std::vector<float> host(std::max(nq, nv));
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (cuda::CudaOps::Buffer *b : {&q, &k, &v, &dout}) {
        for (size_t i = 0; i < b->size(); ++i) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            host[i] = static_cast<float>(static_cast<double>(s >> 11) / 9007199254740992.0 - 0.5);
        }
        ops.copy_in(b->data(), b->size(), STX_DTYPE_F32, host.data());
    }
    if ((st = ops.status()) != STX_OK) return st;
    const std::shared_ptr<cuda::Context> &ctx = ops.context();
    const double scale = 1.0 / std::sqrt(static_cast<double>(Dq));
    auto forward = [&] {
        ops.attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), L, B, T, Dq, Dv,
                              scale);
    };
    auto backward = [&] {
        ops.zero(dq);
        ops.zero(dk);
        ops.zero(dv);
        ops.attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(),
                               v.data(), out.data(), lse.data(), L, B, T, Dq, Dv, scale);
    };
    cudaEvent_t e0, e1, e2;
    if (!STX_CUDA_CHECK(ctx, cudaEventCreate(&e0)) || !STX_CUDA_CHECK(ctx, cudaEventCreate(&e1)) ||
        !STX_CUDA_CHECK(ctx, cudaEventCreate(&e2)))
        return ctx->err;
    forward(); // warm-up: the device layout is built and cached here
    backward();
    std::vector<double> f, fb;
    for (int32_t r = 0; r < runs && ctx->ok(); ++r) {
        STX_CUDA_CHECK(ctx, cudaEventRecord(e0, ctx->stream));
        forward();
        STX_CUDA_CHECK(ctx, cudaEventRecord(e1, ctx->stream));
        backward();
        STX_CUDA_CHECK(ctx, cudaEventRecord(e2, ctx->stream));
        float a = 0, b = 0;
        if (!STX_CUDA_CHECK(ctx, cudaEventSynchronize(e2)) ||
            !STX_CUDA_CHECK(ctx, cudaEventElapsedTime(&a, e0, e1)) ||
            !STX_CUDA_CHECK(ctx, cudaEventElapsedTime(&b, e0, e2)))
            break;
        f.push_back(a);
        fb.push_back(b);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaEventDestroy(e2);
    if ((st = ops.status()) != STX_OK) return st;
    std::sort(f.begin(), f.end());
    std::sort(fb.begin(), fb.end());
    *forward_ms = f[f.size() / 2];
    *forward_backward_ms = fb[fb.size() / 2];
    return STX_OK;
}

} // namespace stx
