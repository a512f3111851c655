// memory.cu: the CUDA context, device memory with byte accounting, host transfers with
// dtype conversion, and deterministic reductions (mean, sum of squares) in double.
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend.h"
#include "context.cuh"

namespace stx {
namespace cuda {

Context::~Context() {
    layouts.clear();
    scratch.release();
    cast_scratch.release();
    reduce_scratch.release();
    index_scratch.release();
    weight_copies.clear();
    lt_plans.clear();
    lt_workspace.release();
    if (cublaslt) cublasLtDestroy(cublaslt);
    if (cublas) cublasDestroy(cublas);
    if (stream) cudaStreamDestroy(stream);
}

bool Context::check(cudaError_t e, const char *what, const char *file, int line) {
    if (e == cudaSuccess) return true;
    if (err == STX_OK) {
        err = e == cudaErrorMemoryAllocation ? STX_ERR_OUT_OF_MEMORY : STX_ERR_DEVICE;
        fail(err, "CUDA error on device %d: %s (%s) in %s at %s:%d", device, cudaGetErrorString(e),
             cudaGetErrorName(e), what, file, line);
    }
    return false;
}

bool Context::check_blas(cublasStatus_t s, const char *what, const char *file, int line) {
    if (s == CUBLAS_STATUS_SUCCESS) return true;
    if (err == STX_OK) {
        err = s == CUBLAS_STATUS_ALLOC_FAILED ? STX_ERR_OUT_OF_MEMORY : STX_ERR_DEVICE;
        fail(err, "cuBLAS error on device %d: %s (%d) in %s at %s:%d", device,
             cublasGetStatusString(s), static_cast<int>(s), what, file, line);
    }
    return false;
}

void *device_alloc(Context *ctx, size_t bytes) {
    if (!ctx->ok()) return nullptr;
    if (bytes == 0) bytes = 1;
    if (ctx->limit > 0 && ctx->in_use + static_cast<int64_t>(bytes) > ctx->limit) {
        ctx->err = STX_ERR_OUT_OF_MEMORY;
        fail(STX_ERR_OUT_OF_MEMORY,
             "CUDA device %d: the memory limit (%lld bytes) refuses %zu more bytes (%lld in use)",
             ctx->device, static_cast<long long>(ctx->limit), bytes,
             static_cast<long long>(ctx->in_use));
        return nullptr;
    }
    void *p = nullptr;
    cudaError_t e = cudaMallocAsync(&p, bytes, ctx->stream);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        ctx->err = STX_ERR_OUT_OF_MEMORY;
        fail(STX_ERR_OUT_OF_MEMORY,
             "CUDA device %d: cannot allocate %.3f GB (%s); %.3f GB free of %.3f GB, %.3f GB held "
             "by this model",
             ctx->device, static_cast<double>(bytes) / 1e9, cudaGetErrorString(e),
             static_cast<double>(free_b) / 1e9, static_cast<double>(total_b) / 1e9,
             static_cast<double>(ctx->in_use) / 1e9);
        return nullptr;
    }
    if (!STX_CUDA_CHECK(ctx, cudaMemsetAsync(p, 0, bytes, ctx->stream))) return nullptr;
    ctx->in_use += static_cast<int64_t>(bytes);
    if (ctx->in_use > ctx->peak) ctx->peak = ctx->in_use;
    return p;
}

void device_free(Context *ctx, void *ptr, size_t bytes) {
    if (!ptr) return;
    cudaFreeAsync(ptr, ctx->stream);
    ctx->in_use -= static_cast<int64_t>(bytes == 0 ? 1 : bytes);
}

stx_status CudaOps::create(int32_t device, bool bf16, CudaOps *out) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        cudaGetLastError();
        return fail(STX_ERR_UNSUPPORTED, "no CUDA device or driver on this machine");
    }
    if (device < 0 || device >= count)
        return fail(STX_ERR_INVALID_ARGUMENT, "device (%d) must be in [0, %d)", device, count);
    auto ctx = std::make_shared<Context>();
    ctx->device = device;
    ctx->bf16 = bf16;
    // For comparisons on one machine (README): the portable attention kernels on Hopper too.
    const char *portable = getenv("STX_CUDA_PORTABLE_KERNELS");
    ctx->wgmma_off = portable && strcmp(portable, "1") == 0;
    if (!STX_CUDA_CHECK(ctx, cudaSetDevice(device))) return ctx->err;
    if (!STX_CUDA_CHECK(ctx, cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking)))
        return ctx->err;
    if (!STX_BLAS_CHECK(ctx, cublasCreate(&ctx->cublas))) return ctx->err;
    if (!STX_BLAS_CHECK(ctx, cublasSetStream(ctx->cublas, ctx->stream))) return ctx->err;
    // fp32 exact mode: no TF32 or other reduced-precision shortcuts inside cuBLAS.
    if (!STX_BLAS_CHECK(ctx, cublasSetMathMode(ctx->cublas, CUBLAS_PEDANTIC_MATH))) return ctx->err;
    if (!STX_BLAS_CHECK(ctx, cublasLtCreate(&ctx->cublaslt))) return ctx->err;
    out->ctx_ = ctx;
    return STX_OK;
}

bool attention_dims_supported(int32_t Dq, int32_t Dv) {
    return cuda_head_dims_supported(Dq, Dv);
}

void CudaOps::alloc(Buffer &b, size_t n) {
    b.allocate(ctx_, n);
}

void CudaOps::set_parameters(const float *p, size_t n) {
    ctx_->weight_copies.clear();
    ctx_->params = p;
    ctx_->params_n = n;
    ++ctx_->params_version;
}

void CudaOps::zero(Buffer &b) {
    if (!ctx_->ok() || b.size() == 0) return;
    ctx_->parameters_written(b.data(), b.size());
    STX_CUDA_CHECK(ctx_, cudaMemsetAsync(b.data(), 0, b.size() * sizeof(float), ctx_->stream));
}

void CudaOps::upload_bytes(Bytes &b, const uint8_t *src, size_t n) {
    if (b.size() != n) b.allocate(ctx_, n);
    if (!ctx_->ok()) return;
    STX_CUDA_CHECK(ctx_, cudaMemcpyAsync(b.data(), src, n, cudaMemcpyHostToDevice, ctx_->stream));
}

void CudaOps::copy_in(float *dst, size_t n, stx_dtype dtype, const void *src) {
    if (!ctx_->ok()) return;
    ctx_->parameters_written(dst, n);
    std::vector<float> host(n);
    for (size_t i = 0; i < n; ++i)
        host[i] = dtype == STX_DTYPE_F64 ? static_cast<float>(static_cast<const double *>(src)[i])
                                         : static_cast<const float *>(src)[i];
    if (STX_CUDA_CHECK(ctx_, cudaMemcpyAsync(dst, host.data(), n * sizeof(float),
                                             cudaMemcpyHostToDevice, ctx_->stream)))
        STX_CUDA_CHECK(ctx_, cudaStreamSynchronize(ctx_->stream)); // host buffer dies here
}

void CudaOps::copy_out(const float *src, size_t n, stx_dtype dtype, void *dst) const {
    if (!ctx_->ok()) return;
    std::vector<float> host(n);
    if (!STX_CUDA_CHECK(ctx_, cudaMemcpyAsync(host.data(), src, n * sizeof(float),
                                              cudaMemcpyDeviceToHost, ctx_->stream)) ||
        !STX_CUDA_CHECK(ctx_, cudaStreamSynchronize(ctx_->stream)))
        return;
    for (size_t i = 0; i < n; ++i) {
        if (dtype == STX_DTYPE_F64)
            static_cast<double *>(dst)[i] = static_cast<double>(host[i]);
        else
            static_cast<float *>(dst)[i] = host[i];
    }
}

namespace {

const int kReduceThreads = 256;
const int kReduceBlocks = 1024;

// Stage 1: block b sums elements b, b + gridDim*blockDim, ... (of x or x^2) in double, in
// a fixed tree order; stage 2 (one block) sums the partials. Deterministic.
template <bool Square>
__global__ void reduce_partial_kernel(const float *x, int64_t n, double *partial) {
    __shared__ double sh[kReduceThreads];
    double acc = 0.0;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const double v = static_cast<double>(x[i]);
        acc += Square ? v * v : v;
    }
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = sh[0];
}

__global__ void reduce_final_kernel(double *partial, int n) {
    __shared__ double sh[kReduceThreads];
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[n] = sh[0];
}

double reduce(const std::shared_ptr<Context> &ctx, const float *x, int64_t n, bool square) {
    if (!ctx->ok() || n <= 0) return 0.0;
    if (!ctx->reserve(ctx->reduce_scratch, kReduceBlocks + 1)) return 0.0;
    double *partial = ctx->reduce_scratch.data();
    const unsigned blocks = static_cast<unsigned>(
        std::min<int64_t>(kReduceBlocks, (n + kReduceThreads - 1) / kReduceThreads));
    if (square)
        reduce_partial_kernel<true><<<blocks, kReduceThreads, 0, ctx->stream>>>(x, n, partial);
    else
        reduce_partial_kernel<false><<<blocks, kReduceThreads, 0, ctx->stream>>>(x, n, partial);
    reduce_final_kernel<<<1, kReduceThreads, 0, ctx->stream>>>(partial, static_cast<int>(blocks));
    if (!STX_LAUNCH_CHECK(ctx, "reduce_kernel")) return 0.0;
    double result = 0.0;
    if (!STX_CUDA_CHECK(ctx, cudaMemcpyAsync(&result, partial + blocks, sizeof(double),
                                             cudaMemcpyDeviceToHost, ctx->stream)) ||
        !STX_CUDA_CHECK(ctx, cudaStreamSynchronize(ctx->stream)))
        return 0.0;
    return result;
}

} // namespace

double CudaOps::mean(const float *x, int64_t n) const {
    return reduce(ctx_, x, n, false) / static_cast<double>(n);
}

double CudaOps::sum_squares(const float *x, int64_t n) const {
    return reduce(ctx_, x, n, true);
}

stx_status CudaOps::status() const {
    return ctx_->err;
}
int64_t CudaOps::bytes_in_use() const {
    return ctx_->in_use;
}
int64_t CudaOps::bytes_peak() const {
    return ctx_->peak;
}
void CudaOps::set_memory_limit(int64_t bytes) {
    ctx_->limit = bytes;
}
void CudaOps::use_hopper_kernels(bool on) {
    ctx_->wgmma_off = !on;
}
void *CudaOps::native_stream() const {
    return ctx_->stream;
}
void CudaOps::synchronize() const {
    if (ctx_->ok()) STX_CUDA_CHECK(ctx_, cudaStreamSynchronize(ctx_->stream));
}

} // namespace cuda
} // namespace stx
