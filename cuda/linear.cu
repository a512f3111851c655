// linear.cu: y = x W^T + b and its backward through cuBLAS. Row-major [N, IC] x [OC, IC]^T
// is the column-major product W^T-view times x, so no transposes are materialized.
// fp32 mode: cublasSgemm under CUBLAS_PEDANTIC_MATH (no TF32). bf16 mode: both operands are
// rounded to bf16 copies and multiplied with fp32 accumulation and fp32 output
// (cublasGemmEx, CUBLAS_COMPUTE_32F).
#include <algorithm>
#include <utility>

#include "context.cuh"

namespace stx {
namespace cuda {
namespace {

// out[n, o] = bias[o] (or 0): a row per CTA, 4 columns a thread where the row is 16-byte
// aligned (no 64-bit division per element).
__global__ void bias_broadcast_kernel(float *out, const float *bias, int32_t OC) {
    float *row = out + static_cast<int64_t>(blockIdx.x) * OC;
    if (OC % 4 == 0 && (reinterpret_cast<uintptr_t>(row) & 15) == 0 &&
        (!bias || (reinterpret_cast<uintptr_t>(bias) & 15) == 0)) {
        for (int32_t o = threadIdx.x * 4; o < OC; o += blockDim.x * 4)
            *reinterpret_cast<float4 *>(row + o) =
                bias ? *reinterpret_cast<const float4 *>(bias + o) : make_float4(0, 0, 0, 0);
        return;
    }
    for (int32_t o = threadIdx.x; o < OC; o += blockDim.x) row[o] = bias ? bias[o] : 0.0f;
}

// dst = bf16(src): 8 elements (two 16-byte loads, one 16-byte store) a thread where both are
// aligned, one at a time otherwise.
__global__ void to_bf16_kernel(__nv_bfloat16 *dst, const float *src, int64_t n) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if ((reinterpret_cast<uintptr_t>(src) & 15) == 0 &&
        (reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
        const int64_t n8 = n / 8;
        for (int64_t i = first; i < n8; i += stride) {
            const float4 a = reinterpret_cast<const float4 *>(src)[2 * i];
            const float4 b = reinterpret_cast<const float4 *>(src)[2 * i + 1];
            __nv_bfloat162 h[4] = {__floats2bfloat162_rn(a.x, a.y), __floats2bfloat162_rn(a.z, a.w),
                                   __floats2bfloat162_rn(b.x, b.y),
                                   __floats2bfloat162_rn(b.z, b.w)};
            reinterpret_cast<uint4 *>(dst)[i] = *reinterpret_cast<const uint4 *>(h);
        }
        for (int64_t i = n8 * 8 + first; i < n; i += stride) dst[i] = __float2bfloat16(src[i]);
        return;
    }
    for (int64_t i = first; i < n; i += stride) dst[i] = __float2bfloat16(src[i]);
}

// fp32 mode: C (m x n, column-major, ldc) = op(A) op(B) + beta C.
void gemm_fp32(const std::shared_ptr<Context> &ctx, cublasOperation_t ta, cublasOperation_t tb,
               int m, int n, int k, const float *A, int lda, const float *B, int ldb, float beta,
               float *C, int ldc) {
    if (!ctx->ok()) return;
    const float alpha = 1.0f;
    STX_BLAS_CHECK(
        ctx, cublasSgemm(ctx->cublas, ta, tb, m, n, k, &alpha, A, lda, B, ldb, &beta, C, ldc));
}

// bf16 mode: the same on bf16 operands, fp32 accumulation and output.
void gemm_bf16(const std::shared_ptr<Context> &ctx, cublasOperation_t ta, cublasOperation_t tb,
               int m, int n, int k, const __nv_bfloat16 *A, int lda, const __nv_bfloat16 *B,
               int ldb, float beta, float *C, int ldc) {
    if (!ctx->ok()) return;
    const float alpha = 1.0f;
    STX_BLAS_CHECK(ctx, cublasGemmEx(ctx->cublas, ta, tb, m, n, k, &alpha, A, CUDA_R_16BF, lda, B,
                                     CUDA_R_16BF, ldb, &beta, C, CUDA_R_32F, ldc,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// Where the bf16 operands of a product lie. cuBLAS chooses its kernel (and so the order of
// the fp32 sums) partly by operand alignment, so every operand keeps the address modulo 256
// bytes it has always had: A at the start of an allocation (256-byte aligned, as the weight
// copies are), B at the next 16-byte boundary after A's elements.
int64_t padded8(int64_t n) {
    return (n + 7) / 8 * 8;
}
const int64_t kAlignElems = 128; // 256 bytes of bf16

void to_bf16(const std::shared_ptr<Context> &ctx, __nv_bfloat16 *dst, const float *src, int64_t n) {
    if (!ctx->ok()) return;
    launch_to_bf16(ctx->stream, dst, src, n);
    STX_LAUNCH_CHECK(ctx, "to_bf16_kernel");
}

__nv_bfloat16 *cast_base(const std::shared_ptr<Context> &ctx, int64_t elems) {
    if (!ctx->reserve(ctx->cast_scratch, static_cast<size_t>(elems) * sizeof(__nv_bfloat16)))
        return nullptr;
    return reinterpret_cast<__nv_bfloat16 *>(ctx->cast_scratch.data());
}

// The bf16 copy of weight matrix w (elems floats) when it lies in the parameter buffer,
// converted now if the parameters changed since; nullptr otherwise.
const __nv_bfloat16 *weight_copy(const std::shared_ptr<Context> &ctx, const float *w,
                                 int64_t elems) {
    if (!ctx->params || elems <= 0) return nullptr;
    const uintptr_t a = reinterpret_cast<uintptr_t>(w);
    const uintptr_t base = reinterpret_cast<uintptr_t>(ctx->params);
    const uintptr_t end = base + ctx->params_n * sizeof(float);
    if (a < base || a >= end || (a - base) % sizeof(float) != 0 ||
        static_cast<uint64_t>(elems) > (end - a) / sizeof(float))
        return nullptr;
    const auto key = std::make_pair(static_cast<size_t>(w - ctx->params), elems);
    if (!ctx->weight_copies.count(key) && ctx->limit > 0 &&
        ctx->in_use + elems * static_cast<int64_t>(sizeof(__nv_bfloat16)) > ctx->limit)
        return nullptr; // under a memory limit with no room for the copy: convert as before
    Context::WeightCopy &copy = ctx->weight_copies[key];
    if (copy.data.size() != static_cast<size_t>(elems)) {
        copy.data.allocate_for_context(ctx.get(), static_cast<size_t>(elems));
        copy.version = 0;
        if (!ctx->ok()) return nullptr;
    }
    if (copy.version != ctx->params_version) {
        to_bf16(ctx, copy.data.data(), w, elems);
        if (!ctx->ok()) return nullptr;
        copy.version = ctx->params_version;
    }
    return copy.data.data();
}

// Whether [a, a + na) and [b, b + nb) share an element.
bool overlap(const float *a, int64_t na, const float *b, int64_t nb) {
    const uintptr_t pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
    return pa < pb + static_cast<uintptr_t>(nb) * sizeof(float) &&
           pb < pa + static_cast<uintptr_t>(na) * sizeof(float);
}

} // namespace

void launch_to_bf16(cudaStream_t stream, __nv_bfloat16 *dst, const float *src, int64_t n) {
    if (n > 0) to_bf16_kernel<<<blocks_for((n + 7) / 8, 256), 256, 0, stream>>>(dst, src, n);
}

void CudaOps::linear_forward(float *out, const float *inp, const float *w, const float *bias,
                             int64_t N, int32_t IC, int32_t OC) {
    if (!ctx_->ok() || N == 0) return;
    OpAccess io(ctx_.get(),
                {Span(inp, N * IC), Span(w, static_cast<int64_t>(OC) * IC), Span(bias, OC)},
                {Span(out, N * OC)});
    bias_broadcast_kernel<<<static_cast<unsigned>(N), 128, 0, ctx_->stream>>>(out, bias, OC);
    if (!STX_LAUNCH_CHECK(ctx_, "bias_broadcast_kernel")) return;
    // out^T (OC x N) = W (OC x IC) x^T (IC x N) + out^T
    const int64_t w_elems = static_cast<int64_t>(OC) * IC, x_elems = N * IC;
    if (!ctx_->bf16) {
        gemm_fp32(ctx_, CUBLAS_OP_T, CUBLAS_OP_N, OC, static_cast<int>(N), IC, w, IC, inp, IC, 1.0f,
                  out, OC);
        return;
    }
    const __nv_bfloat16 *w16 = weight_copy(ctx_, w, w_elems);
    __nv_bfloat16 *s = cast_base(ctx_, padded8(w_elems) + x_elems);
    if (!s) return;
    if (!w16) {
        to_bf16(ctx_, s, w, w_elems);
        w16 = s;
    }
    const __nv_bfloat16 *x16 = ctx_->bf16_operand(inp, x_elems, s + padded8(w_elems));
    gemm_bf16(ctx_, CUBLAS_OP_T, CUBLAS_OP_N, OC, static_cast<int>(N), IC, w16, IC, x16, IC, 1.0f,
              out, OC);
}

void CudaOps::linear_backward(float *dinp, float *dw, float *dbias, const float *dout,
                              const float *inp, const float *w, int64_t N, int32_t IC, int32_t OC) {
    if (!ctx_->ok() || N == 0) return;
    const int64_t w_elems = static_cast<int64_t>(OC) * IC, x_elems = N * IC, d_elems = N * OC;
    OpAccess io(ctx_.get(), {Span(dout, d_elems), Span(inp, x_elems), Span(w, w_elems)},
                {Span(dw, w_elems), Span(dbias, OC)}, {Span(dinp, x_elems)});
    const float dinp_beta = io.fresh(0) ? 0.0f : 1.0f; // a pending zero: written, not added to
    // dinp^T (IC x N) += W^T (IC x OC) dout^T (OC x N)
    // dW^T (IC x OC) += x^T (IC x N) dout (N x OC)
    if (!ctx_->bf16) {
        gemm_fp32(ctx_, CUBLAS_OP_N, CUBLAS_OP_N, IC, static_cast<int>(N), OC, w, IC, dout, OC,
                  dinp_beta, dinp, IC);
        gemm_fp32(ctx_, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, static_cast<int>(N), inp, IC, dout, OC,
                  1.0f, dw, IC);
    } else {
        const __nv_bfloat16 *w16 = weight_copy(ctx_, w, w_elems);
        // Both products read dout as B: one bf16 copy serves both where it can sit at B's
        // place of each (the same address modulo 256 bytes) and the first product's output
        // does not overwrite dout before the second reads it.
        const int64_t b1 = padded8(w_elems), b2 = padded8(x_elems);
        const bool share = (b1 - b2) % kAlignElems == 0 && !overlap(dinp, x_elems, dout, d_elems);
        const int64_t d_at = share ? std::max(b1, b2) : 0;
        __nv_bfloat16 *s = cast_base(ctx_, std::max(b1, b2) + d_elems);
        if (!s) return;
        if (share) to_bf16(ctx_, s + d_at, dout, d_elems);
        if (!w16) {
            to_bf16(ctx_, s, w, w_elems);
            w16 = s;
        }
        if (!share) to_bf16(ctx_, s + b1, dout, d_elems);
        gemm_bf16(ctx_, CUBLAS_OP_N, CUBLAS_OP_N, IC, static_cast<int>(N), OC, w16, IC,
                  s + (share ? d_at : b1), OC, dinp_beta, dinp, IC);
        const __nv_bfloat16 *x16 = ctx_->bf16_operand(inp, x_elems, s);
        if (!share) to_bf16(ctx_, s + b2, dout, d_elems);
        gemm_bf16(ctx_, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, static_cast<int>(N), x16, IC,
                  s + (share ? d_at : b2), OC, 1.0f, dw, IC);
    }
    if (dbias) column_sum_add(ctx_.get(), dbias, dout, N, OC);
}

} // namespace cuda
} // namespace stx
