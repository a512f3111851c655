// linear.cu: y = x W^T + b and its backward through cuBLAS. Row-major [N, IC] x [OC, IC]^T
// is the column-major product W^T-view times x, so no transposes are materialized.
// fp32 mode: cublasSgemm under CUBLAS_PEDANTIC_MATH (no TF32). bf16 mode: both operands are
// rounded to bf16 copies and multiplied with fp32 accumulation and fp32 output
// (cublasGemmEx, CUBLAS_COMPUTE_32F).
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

// C (m x n, column-major, ldc) = alpha op(A) op(B) + beta C, A and B given as float.
void gemm(const std::shared_ptr<Context> &ctx, cublasOperation_t ta, cublasOperation_t tb, int m,
          int n, int k, const float *A, int lda, int64_t a_elems, const float *B, int ldb,
          int64_t b_elems, float beta, float *C, int ldc) {
    if (!ctx->ok()) return;
    const float alpha = 1.0f;
    if (!ctx->bf16) {
        STX_BLAS_CHECK(
            ctx, cublasSgemm(ctx->cublas, ta, tb, m, n, k, &alpha, A, lda, B, ldb, &beta, C, ldc));
        return;
    }
    const int64_t a_padded = (a_elems + 7) / 8 * 8; // b16 starts 16-byte aligned
    const size_t bytes = static_cast<size_t>(a_padded + b_elems) * sizeof(__nv_bfloat16);
    if (!ctx->reserve(ctx->cast_scratch, bytes, ctx)) return;
    __nv_bfloat16 *a16 = reinterpret_cast<__nv_bfloat16 *>(ctx->cast_scratch.data());
    __nv_bfloat16 *b16 = a16 + a_padded;
    to_bf16_kernel<<<blocks_for((a_elems + 7) / 8, 256), 256, 0, ctx->stream>>>(a16, A, a_elems);
    to_bf16_kernel<<<blocks_for((b_elems + 7) / 8, 256), 256, 0, ctx->stream>>>(b16, B, b_elems);
    if (!STX_LAUNCH_CHECK(ctx, "to_bf16_kernel")) return;
    STX_BLAS_CHECK(ctx, cublasGemmEx(ctx->cublas, ta, tb, m, n, k, &alpha, a16, CUDA_R_16BF, lda,
                                     b16, CUDA_R_16BF, ldb, &beta, C, CUDA_R_32F, ldc,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

} // namespace

void CudaOps::linear_forward(float *out, const float *inp, const float *w, const float *bias,
                             int64_t N, int32_t IC, int32_t OC) {
    if (!ctx_->ok() || N == 0) return;
    bias_broadcast_kernel<<<static_cast<unsigned>(N), 128, 0, ctx_->stream>>>(out, bias, OC);
    if (!STX_LAUNCH_CHECK(ctx_, "bias_broadcast_kernel")) return;
    // out^T (OC x N) = W (OC x IC) x^T (IC x N) + out^T
    gemm(ctx_, CUBLAS_OP_T, CUBLAS_OP_N, OC, static_cast<int>(N), IC, w, IC,
         static_cast<int64_t>(OC) * IC, inp, IC, N * IC, 1.0f, out, OC);
}

void CudaOps::linear_backward(float *dinp, float *dw, float *dbias, const float *dout,
                              const float *inp, const float *w, int64_t N, int32_t IC, int32_t OC) {
    if (!ctx_->ok() || N == 0) return;
    // dinp^T (IC x N) += W^T (IC x OC) dout^T (OC x N)
    gemm(ctx_, CUBLAS_OP_N, CUBLAS_OP_N, IC, static_cast<int>(N), OC, w, IC,
         static_cast<int64_t>(OC) * IC, dout, OC, N * OC, 1.0f, dinp, IC);
    // dW^T (IC x OC) += x^T (IC x N) dout (N x OC)
    gemm(ctx_, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, static_cast<int>(N), inp, IC, N * IC, dout, OC,
         N * OC, 1.0f, dw, IC);
    if (dbias) column_sum_add(ctx_.get(), ctx_, dbias, dout, N, OC);
}

} // namespace cuda
} // namespace stx
