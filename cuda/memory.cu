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
    {
        // Released with the map already empty (a release calls forget, which reads it).
        auto copies = std::move(bf16_copies);
        bf16_copies.clear();
        pending_zeros.clear();
    }
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

// --- the bf16 operand copies and pending zeros (context.cuh) ---

namespace {

bool ranges_meet(uintptr_t a, size_t na, uintptr_t b, size_t nb) {
    return a < b + nb && b < a + na;
}

} // namespace

void Context::written(const void *p, size_t bytes) {
    if (!p || bytes == 0) return;
    parameters_written(static_cast<const float *>(p), (bytes + sizeof(float) - 1) / sizeof(float));
    if (bf16_copies.empty()) return;
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    const uintptr_t from = a > bf16_copy_max_bytes ? a - bf16_copy_max_bytes : 0;
    for (auto it = bf16_copies.lower_bound(std::make_tuple(from, int64_t(0), uint32_t(0)));
         it != bf16_copies.end() && std::get<0>(it->first) < a + bytes; ++it)
        if (ranges_meet(a, bytes, std::get<0>(it->first),
                        static_cast<size_t>(std::get<1>(it->first)) * sizeof(float)))
            it->second.valid = false;
}

void Context::materialize(const void *p, size_t bytes) {
    if (pending_zeros.empty() || !p || bytes == 0) return;
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    for (size_t i = 0; i < pending_zeros.size();) {
        const std::pair<uintptr_t, size_t> z = pending_zeros[i];
        if (!ranges_meet(a, bytes, z.first, z.second)) {
            ++i;
            continue;
        }
        pending_zeros.erase(pending_zeros.begin() + static_cast<std::ptrdiff_t>(i));
        if (ok())
            STX_CUDA_CHECK(this,
                           cudaMemsetAsync(reinterpret_cast<void *>(z.first), 0, z.second, stream));
    }
}

void Context::settle_all() {
    while (!pending_zeros.empty())
        materialize(reinterpret_cast<const void *>(pending_zeros.back().first),
                    pending_zeros.back().second);
    for (auto &c : bf16_copies) c.second.valid = false;
}

void Context::forget(const void *p, size_t bytes) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    for (size_t i = 0; i < pending_zeros.size();) {
        if (ranges_meet(a, bytes, pending_zeros[i].first, pending_zeros[i].second))
            pending_zeros.erase(pending_zeros.begin() + static_cast<std::ptrdiff_t>(i));
        else
            ++i;
    }
    if (bf16_copies.empty()) return;
    std::vector<Bf16Copy> gone; // released on return, with the map consistent
    const uintptr_t from = a > bf16_copy_max_bytes ? a - bf16_copy_max_bytes : 0;
    for (auto it = bf16_copies.lower_bound(std::make_tuple(from, int64_t(0), uint32_t(0)));
         it != bf16_copies.end() && std::get<0>(it->first) < a + bytes;) {
        if (ranges_meet(a, bytes, std::get<0>(it->first),
                        static_cast<size_t>(std::get<1>(it->first)) * sizeof(float))) {
            gone.push_back(std::move(it->second));
            it = bf16_copies.erase(it);
        } else {
            ++it;
        }
    }
}

void Context::zero(void *p, size_t bytes) {
    if (!ok() || !p || bytes == 0) return;
    written(p, bytes);
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    for (const auto &z : pending_zeros)
        if (z.first == a && z.second == bytes) return; // already pending
    materialize(p, bytes); // a pending zero meeting part of this range: its own bytes now
    // The parameters are read outside the ops (the decoder's weight casts): zeroed now.
    const bool meets_params = params && ranges_meet(a, bytes, reinterpret_cast<uintptr_t>(params),
                                                    params_n * sizeof(float));
    if (operand_cache_off || meets_params) {
        STX_CUDA_CHECK(this, cudaMemsetAsync(p, 0, bytes, stream));
        return;
    }
    pending_zeros.emplace_back(a, bytes);
}

Context::Bf16Copy *Context::bf16_copy(const float *src, int64_t n, uint32_t phase_bytes,
                                      bool create) {
    if (operand_cache_off || !bf16 || !src || n <= 0 || !ok()) return nullptr;
    const auto key = std::make_tuple(reinterpret_cast<uintptr_t>(src), n, phase_bytes % 256);
    auto it = bf16_copies.find(key);
    if (it != bf16_copies.end()) return &it->second;
    if (!create) return nullptr;
    // Room for the copy: under a memory limit, and on the device with a sixteenth of it left
    // free after (the copies are a convenience: an op converts into scratch without one).
    const size_t elems = static_cast<size_t>(n) + 128, bytes = elems * sizeof(__nv_bfloat16);
    if (limit > 0 && in_use + static_cast<int64_t>(bytes) > limit) return nullptr;
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
    }
    if (free_b < bytes + total_b / 16) return nullptr;
    Bf16Copy c;
    c.data.allocate_for_context(this, elems, true);
    if (!c.data.data() || !ok()) return nullptr;
    const uintptr_t base = reinterpret_cast<uintptr_t>(c.data.data());
    c.at = ((std::get<2>(key) + 256 - base % 256) % 256) / sizeof(__nv_bfloat16);
    Bf16Copy &slot = bf16_copies[key];
    slot = std::move(c);
    const size_t src_bytes = static_cast<size_t>(n) * sizeof(float);
    if (src_bytes > bf16_copy_max_bytes) bf16_copy_max_bytes = src_bytes;
    return &slot;
}

const __nv_bfloat16 *Context::bf16_operand(const float *src, int64_t n, __nv_bfloat16 *fallback) {
    if (!ok()) return nullptr;
    if (n <= 0) return fallback;
    materialize(src, static_cast<size_t>(n) * sizeof(float));
    Bf16Copy *c =
        bf16_copy(src, n, static_cast<uint32_t>(reinterpret_cast<uintptr_t>(fallback) % 256), true);
    if (c && c->valid) return c->ptr();
    __nv_bfloat16 *dst = c ? c->ptr() : fallback;
    launch_to_bf16(stream, dst, src, n);
    if (!STX_LAUNCH_CHECK(this, "to_bf16_kernel")) return nullptr;
    if (c) c->valid = true;
    return dst;
}

OpAccess::OpAccess(Context *ctx, const std::vector<Span> &in, const std::vector<Span> &out,
                   const std::vector<Span> &acc)
    : ctx_(ctx) {
    fresh_.assign(acc.size(), false);
    auto meets = [](const Span &x, const Span &y) {
        return x.bytes && y.bytes &&
               ranges_meet(reinterpret_cast<uintptr_t>(x.p), x.bytes,
                           reinterpret_cast<uintptr_t>(y.p), y.bytes);
    };
    if (!ctx->pending_zeros.empty()) {
        // fresh: exactly one pending zero, meeting no other range of the op
        for (size_t i = 0; i < acc.size(); ++i) {
            if (!acc[i].bytes) continue;
            bool exact = false;
            for (const auto &z : ctx->pending_zeros)
                exact = exact || (z.first == reinterpret_cast<uintptr_t>(acc[i].p) &&
                                  z.second == acc[i].bytes);
            if (!exact) continue;
            bool alone = true;
            for (const Span &x : in) alone = alone && !meets(acc[i], x);
            for (const Span &x : out) alone = alone && !meets(acc[i], x);
            for (size_t j = 0; j < acc.size(); ++j)
                alone = alone && (j == i || !meets(acc[i], acc[j]));
            fresh_[i] = alone;
        }
        for (const Span &x : in) ctx->materialize(x.p, x.bytes);
        for (const Span &x : out) ctx->materialize(x.p, x.bytes);
        for (size_t i = 0; i < acc.size(); ++i) {
            if (!fresh_[i]) {
                ctx->materialize(acc[i].p, acc[i].bytes);
                continue;
            }
            auto &z = ctx->pending_zeros;
            for (size_t k = 0; k < z.size(); ++k)
                if (z[k].first == reinterpret_cast<uintptr_t>(acc[i].p)) {
                    z.erase(z.begin() + static_cast<std::ptrdiff_t>(k));
                    break;
                }
        }
    }
    for (const Span &x : out)
        if (x.bytes) written_.push_back(x);
    for (const Span &x : acc)
        if (x.bytes) written_.push_back(x);
}

OpAccess::~OpAccess() {
    for (const Span &x : written_) ctx_->written(x.p, x.bytes);
    for (const auto &key : produced_) {
        auto it = ctx_->bf16_copies.find(key);
        if (it != ctx_->bf16_copies.end()) it->second.valid = ctx_->ok();
    }
}

__nv_bfloat16 *OpAccess::produce(const float *dst, int64_t n) {
    if (!ctx_->ok() || !ctx_->bf16) return nullptr;
    Context::Bf16Copy *c = ctx_->bf16_copy(dst, n, 0, true);
    if (!c) return nullptr;
    produced_.push_back(std::make_tuple(reinterpret_cast<uintptr_t>(dst), n, uint32_t(0)));
    return c->ptr();
}

// --- device memory ---

void *device_alloc(Context *ctx, size_t bytes, bool quiet) {
    if (!ctx->ok()) return nullptr;
    if (bytes == 0) bytes = 1;
    if (ctx->limit > 0 && ctx->in_use + static_cast<int64_t>(bytes) > ctx->limit) {
        if (quiet) return nullptr;
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
        if (quiet) return nullptr;
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
    ctx->forget(p, bytes); // anything recorded about memory that was freed there is gone
    ctx->in_use += static_cast<int64_t>(bytes);
    if (ctx->in_use > ctx->peak) ctx->peak = ctx->in_use;
    return p;
}

void device_free(Context *ctx, void *ptr, size_t bytes) {
    if (!ptr) return;
    ctx->forget(ptr, bytes == 0 ? 1 : bytes);
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
    // For comparisons (tests): every activation operand converted at each use, every zero a
    // memset at once.
    const char *no_cache = getenv("STX_CUDA_NO_OPERAND_CACHE");
    ctx->operand_cache_off = no_cache && strcmp(no_cache, "1") == 0;
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
    ctx_->zero(b.data(), b.size() * sizeof(float));
}

void CudaOps::upload_bytes(Bytes &b, const uint8_t *src, size_t n) {
    if (b.size() != n) b.allocate(ctx_, n);
    if (!ctx_->ok()) return;
    OpAccess io(ctx_.get(), {}, {Span(b.data(), static_cast<int64_t>(n))});
    STX_CUDA_CHECK(ctx_, cudaMemcpyAsync(b.data(), src, n, cudaMemcpyHostToDevice, ctx_->stream));
}

void CudaOps::copy_in(float *dst, size_t n, stx_dtype dtype, const void *src) {
    if (!ctx_->ok()) return;
    OpAccess io(ctx_.get(), {}, {Span(dst, static_cast<int64_t>(n))});
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
    OpAccess io(ctx_.get(), {Span(src, static_cast<int64_t>(n))}, {});
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
    OpAccess io(ctx.get(), {Span(x, n)}, {});
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
void CudaOps::use_operand_cache(bool on) {
    if (on) {
        ctx_->operand_cache_off = false;
        return;
    }
    ctx_->settle_all();
    auto copies = std::move(ctx_->bf16_copies); // released on return
    ctx_->bf16_copies.clear();
    ctx_->operand_cache_off = true;
}
// The stream is handed to work outside the ops (the gradient all-reduce reads and writes the
// gradients on it): no zero may be left pending for it and no copy may outlive what it writes.
void *CudaOps::native_stream() const {
    ctx_->settle_all();
    return ctx_->stream;
}
void CudaOps::synchronize() const {
    if (ctx_->ok()) STX_CUDA_CHECK(ctx_, cudaStreamSynchronize(ctx_->stream));
}

} // namespace cuda
} // namespace stx
