// linear.cu: y = x W^T + b and its backward through cuBLAS. Row-major [N, IC] x [OC, IC]^T
// is the column-major product W^T-view times x, so no transposes are materialized.
// fp32 mode: cublasSgemm under CUBLAS_PEDANTIC_MATH (no TF32). bf16 mode: both operands are
// rounded to bf16 copies and multiplied with fp32 accumulation and fp32 output
// (cublasGemmEx, CUBLAS_COMPUTE_32F). The forward with a bias runs on cuBLASLt instead (the
// same types and compute modes), which adds the bias in the product's epilogue; the bf16
// backward's bias gradient is summed in the pass that converts dout to bf16.
#include <algorithm>
#include <array>
#include <type_traits>
#include <utility>

#include "context.cuh"

namespace stx {
namespace cuda {
namespace {

// out[n, o] = bias[o]: a row per CTA, 4 columns a thread where the row is 16-byte aligned (no
// 64-bit division per element). Only for a product cuBLASLt cannot add the bias to.
__global__ void bias_broadcast_kernel(float *out, const float *bias, int32_t OC) {
    float *row = out + static_cast<int64_t>(blockIdx.x) * OC;
    if (OC % 4 == 0 && (reinterpret_cast<uintptr_t>(row) & 15) == 0 &&
        (reinterpret_cast<uintptr_t>(bias) & 15) == 0) {
        for (int32_t o = threadIdx.x * 4; o < OC; o += blockDim.x * 4)
            *reinterpret_cast<float4 *>(row + o) = *reinterpret_cast<const float4 *>(bias + o);
        return;
    }
    for (int32_t o = threadIdx.x; o < OC; o += blockDim.x) row[o] = bias[o];
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

// The largest power of two up to 256 that divides p's address: what cuBLASLt's kernels may
// assume of an operand (its heuristic is told, so it only picks kernels that allow it).
uint32_t alignment(const void *p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    uint32_t al = 256;
    while (al > 1 && a % al != 0) al /= 2;
    return al;
}

// cuBLASLt's workspace: enough for the split-k algorithms its heuristic may pick for small
// products; the large ones need none.
const size_t kLtWorkspaceBytes = size_t{4} << 20;

// The cuBLASLt plan for D (m x n, column-major, ld m) = A^T B + bias down each column: A
// stored k x m, B k x n, both fp32 (compute 32F pedantic and FMA kernels only: no TF32, as
// the cuBLAS handle's mode) or both bf16 (compute 32F), bias and D fp32, the bias added in
// the epilogue. Set up once per shape and operand alignment and kept. A combination cuBLASLt
// refuses at any step gives a plan that is not usable (the caller then takes the cuBLAS path),
// not an error: that path computes the same thing.
LtPlan &bias_plan(const std::shared_ptr<Context> &ctx, bool bf16, int m, int n, int k,
                  const void *A, const void *B, const float *bias, const float *D) {
    if (!ctx->lt_workspace_tried) {
        ctx->lt_workspace_tried = true;
        // Under a memory limit with no room for it: none (the heuristic is told so).
        if (ctx->limit == 0 || ctx->in_use + static_cast<int64_t>(kLtWorkspaceBytes) <= ctx->limit)
            ctx->reserve(ctx->lt_workspace, kLtWorkspaceBytes);
    }
    const uint64_t ws = ctx->lt_workspace.size();
    const uint32_t al_a = alignment(A), al_b = alignment(B), al_d = alignment(D);
    const std::array<int64_t, 9> key = {
        bf16, m, n, k, al_a, al_b, al_d, alignment(bias), static_cast<int64_t>(ws)};
    auto found = ctx->lt_plans.find(key);
    if (found != ctx->lt_plans.end()) return found->second;
    LtPlan &p = ctx->lt_plans[key];
    const cudaDataType_t ab = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t compute = bf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_PEDANTIC;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const int32_t bias_type = CUDA_R_32F;
    cublasStatus_t st = cublasLtMatmulDescCreate(&p.op, compute, CUDA_R_32F);
    const auto set = [&](cublasLtMatmulDescAttributes_t attr, const void *v, size_t bytes) {
        if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulDescSetAttribute(p.op, attr, v, bytes);
    };
    set(CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    set(CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    set(CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue);
    set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type);
    set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias); // the heuristic reads its alignment
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&p.a, ab, k, m, k);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&p.b, ab, k, n, k);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&p.d, CUDA_R_32F, m, n, m);
    cublasLtMatmulPreference_t pref = nullptr;
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulPreferenceCreate(&pref);
    const auto prefer = [&](cublasLtMatmulPreferenceAttributes_t attr, const void *v,
                            size_t bytes) {
        if (st == CUBLAS_STATUS_SUCCESS)
            st = cublasLtMatmulPreferenceSetAttribute(pref, attr, v, bytes);
    };
    prefer(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a);
    prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b);
    prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof al_d); // C is D (beta 0)
    prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof al_d);
    // fp32: plain fp32 FMA kernels only, never a tensor-core one (TF32 or an emulation).
    const uint64_t fma_only = ~uint64_t{CUBLASLT_NUMERICAL_IMPL_FLAGS_TENSOR_OP_MASK};
    if (!bf16) prefer(CUBLASLT_MATMUL_PREF_IMPL_MASK, &fma_only, sizeof fma_only);
    cublasLtMatmulHeuristicResult_t result = {};
    int count = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(ctx->cublaslt, p.op, p.a, p.b, p.d, p.d, pref, 1,
                                            &result, &count);
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (st == CUBLAS_STATUS_SUCCESS && count > 0 && result.state == CUBLAS_STATUS_SUCCESS &&
        result.workspaceSize <= ws) {
        p.algo = result.algo;
        p.workspace = result.workspaceSize;
        p.usable = true;
    }
    return p;
}

// out^T (OC x N) = W (OC x IC) x^T (IC x N) (+ bias down each column), W and x in fp32 or as
// bf16 copies. With a bias: one write of out, the bias added in cuBLASLt's epilogue (beta 0).
// Where cuBLASLt cannot (no algorithm, or a bias not 16-byte aligned, which its bias epilogue
// may assume), the bias is written into out first and the cuBLAS product adds to it (beta 1).
template <typename T>
void linear_product(const std::shared_ptr<Context> &ctx, float *out, const T *x, const T *w,
                    const float *bias, int64_t N, int32_t IC, int32_t OC) {
    constexpr bool bf16 = std::is_same<T, __nv_bfloat16>::value;
    if (!ctx->ok()) return;
    if (bias && (reinterpret_cast<uintptr_t>(bias) & 15) == 0) {
        LtPlan &p = bias_plan(ctx, bf16, OC, static_cast<int>(N), IC, w, x, bias, out);
        if (!ctx->ok()) return;
        if (p.usable) {
            const float alpha = 1.0f, beta = 0.0f;
            cublasStatus_t st = cublasLtMatmulDescSetAttribute(
                p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
            if (st == CUBLAS_STATUS_SUCCESS)
                st = cublasLtMatmul(ctx->cublaslt, p.op, &alpha, w, p.a, x, p.b, &beta, out, p.d,
                                    out, p.d, &p.algo, ctx->lt_workspace.data(), p.workspace,
                                    ctx->stream);
            if (st != CUBLAS_STATUS_NOT_SUPPORTED) {
                if (ctx->check_blas(st, "cublasLtMatmul (bias epilogue)", __FILE__, __LINE__))
                    ++ctx->bias_epilogue_products;
                return;
            }
            p.usable = false; // refused at the call: the cuBLAS path from now on
        }
    }
    if (bias) {
        bias_broadcast_kernel<<<static_cast<unsigned>(N), 128, 0, ctx->stream>>>(out, bias, OC);
        if (!STX_LAUNCH_CHECK(ctx, "bias_broadcast_kernel")) return;
    }
    const float beta = bias ? 1.0f : 0.0f;
    if constexpr (bf16)
        gemm_bf16(ctx, CUBLAS_OP_T, CUBLAS_OP_N, OC, static_cast<int>(N), IC, w, IC, x, IC, beta,
                  out, OC);
    else
        gemm_fp32(ctx, CUBLAS_OP_T, CUBLAS_OP_N, OC, static_cast<int>(N), IC, w, IC, x, IC, beta,
                  out, OC);
}

// dout's bf16 copy at dst; with a bias gradient the same read of dout also adds its column
// sums (of the fp32 values, in a fixed order) into dbias.
void cast_dout(const std::shared_ptr<Context> &ctx, __nv_bfloat16 *dst, float *dbias,
               const float *dout, int64_t N, int32_t OC) {
    if (dbias)
        to_bf16_column_sum_add(ctx.get(), dst, dbias, dout, N, OC);
    else
        to_bf16(ctx, dst, dout, N * OC);
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

int64_t CudaOps::bias_epilogue_products() const {
    return ctx_->bias_epilogue_products;
}

void CudaOps::linear_forward(float *out, const float *inp, const float *w, const float *bias,
                             int64_t N, int32_t IC, int32_t OC) {
    if (!ctx_->ok() || N == 0) return;
    OpAccess io(ctx_.get(),
                {Span(inp, N * IC), Span(w, static_cast<int64_t>(OC) * IC), Span(bias, OC)},
                {Span(out, N * OC)});
    // out^T (OC x N) = W (OC x IC) x^T (IC x N) + bias: see linear_product
    const int64_t w_elems = static_cast<int64_t>(OC) * IC, x_elems = N * IC;
    if (!ctx_->bf16) {
        linear_product(ctx_, out, inp, w, bias, N, IC, OC);
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
    linear_product<__nv_bfloat16>(ctx_, out, x16, w16, bias, N, IC, OC);
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
        if (dbias) column_sum_add(ctx_.get(), dbias, dout, N, OC);
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
        if (share) cast_dout(ctx_, s + d_at, dbias, dout, N, OC);
        if (!w16) {
            to_bf16(ctx_, s, w, w_elems);
            w16 = s;
        }
        if (!share) cast_dout(ctx_, s + b1, dbias, dout, N, OC);
        gemm_bf16(ctx_, CUBLAS_OP_N, CUBLAS_OP_N, IC, static_cast<int>(N), OC, w16, IC,
                  s + (share ? d_at : b1), OC, dinp_beta, dinp, IC);
        const __nv_bfloat16 *x16 = ctx_->bf16_operand(inp, x_elems, s);
        if (!share) to_bf16(ctx_, s + b2, dout, d_elems);
        gemm_bf16(ctx_, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, static_cast<int>(N), x16, IC,
                  s + (share ? d_at : b2), OC, 1.0f, dw, IC);
    }
}

} // namespace cuda
} // namespace stx
