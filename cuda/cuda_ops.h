// cuda_ops.h: the op policy of lib/model_loop.h on a CUDA device: the same op names and
// arguments as ref/ops.h, on device pointers, in float (fp32 exact: no TF32 anywhere) or
// bf16 mixed precision (matrix and attention inputs rounded to bf16, fp32 accumulation,
// fp32 master weights, softmax statistics and loss). Plain C++: no CUDA header is needed to
// use it, so white-box tests and the loop compile against it.
//
// Errors: the first failing CUDA or cuBLAS call (or allocation) is recorded in the shared
// context with its message (stx_last_error) and every later op does nothing; status()
// returns it, so the loop returns it at the end of the call. After an STX_ERR_DEVICE the
// model should be freed.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

#include "backend.h"
#include "layout.h"
#include "sparsetx.h"

namespace stx {
namespace cuda {

struct Context; // device, stream, cuBLAS handle, first error, layout cache, scratch

// Zero-filled device memory on the context's device (nullptr and the error recorded on
// failure) and its release; both keep the context's byte counts. cuda/memory.cu.
// quiet: a refusal (memory limit, no device memory) returns nullptr without recording an
// error (for memory the context can do without: the bf16 operand copies).
void *device_alloc(Context *ctx, size_t bytes, bool quiet = false);
void device_free(Context *ctx, void *ptr, size_t bytes);

// Owns device memory of n elements of T (zero-filled on alloc).
template <typename T> class DeviceBuffer {
public:
    DeviceBuffer() = default;
    DeviceBuffer(const DeviceBuffer &) = delete;
    DeviceBuffer &operator=(const DeviceBuffer &) = delete;
    DeviceBuffer(DeviceBuffer &&o) noexcept { swap(o); }
    DeviceBuffer &operator=(DeviceBuffer &&o) noexcept {
        swap(o);
        return *this;
    }
    ~DeviceBuffer() { release(); }
    T *data() { return ptr_; }
    const T *data() const { return ptr_; }
    size_t size() const { return n_; }
    void swap(DeviceBuffer &o) noexcept {
        std::swap(ptr_, o.ptr_);
        std::swap(n_, o.n_);
        std::swap(ctx_, o.ctx_);
        std::swap(keep_, o.keep_);
    }
    // A failure is recorded in ctx (with the bytes asked for and free) and leaves it empty.
    // The buffer keeps its Context alive.
    void allocate(const std::shared_ptr<Context> &ctx, size_t n) {
        allocate_for_context(ctx.get(), n);
        keep_ = ctx;
    }
    // For a buffer the Context owns itself (its scratch, cached layouts, weight copies): no
    // reference, which would be a cycle keeping the Context, its stream, cuBLAS handle and
    // all that scratch alive after its model is freed.
    void allocate_for_context(Context *ctx, size_t n, bool quiet = false) {
        release();
        ctx_ = ctx;
        ptr_ = static_cast<T *>(device_alloc(ctx_, n * sizeof(T), quiet));
        n_ = ptr_ ? n : 0;
    }
    void release() {
        if (ptr_) device_free(ctx_, ptr_, n_ * sizeof(T));
        ptr_ = nullptr;
        n_ = 0;
        keep_.reset();
    }

private:
    T *ptr_ = nullptr;
    size_t n_ = 0;
    Context *ctx_ = nullptr;
    std::shared_ptr<Context> keep_;
};

class CudaOps {
public:
    using Scalar = float;
    using Buffer = DeviceBuffer<float>;
    using Bytes = DeviceBuffer<uint8_t>;

    // A context on `device`; bf16 selects mixed precision. STX_ERR_DEVICE/UNSUPPORTED with a
    // message when there is no usable device.
    static stx_status create(int32_t device, bool bf16, CudaOps *out);

    // The buffer holding the model's parameters; they change only through copy_in, zero and
    // adamw_update. In bf16 mode the GEMMs then read bf16 copies of the weight matrices in it.
    void set_parameters(const float *p, size_t n);
    void alloc(Buffer &b, size_t n);
    void zero(Buffer &b);
    void upload_bytes(Bytes &b, const uint8_t *src, size_t n);
    void copy_in(float *dst, size_t n, stx_dtype dtype, const void *src);
    void copy_out(const float *src, size_t n, stx_dtype dtype, void *dst) const;
    double mean(const float *x, int64_t n) const;
    double sum_squares(const float *x, int64_t n) const;
    stx_status status() const;
    int64_t bytes_in_use() const;
    int64_t bytes_peak() const;
    void set_memory_limit(int64_t bytes);
    void synchronize() const;
    // The context's cudaStream_t (every op runs on it), for work ordered after the ops.
    void *native_stream() const;

    void embedding_forward(float *out, const uint8_t *tokens, const float *tok, const float *start,
                           const float *const *pos, const int32_t *pos_shape, int32_t n_axes,
                           int32_t B, int32_t T, int32_t C);
    void embedding_backward(float *dtok, float *dstart, float *const *dpos, const float *dout,
                            const uint8_t *tokens, const int32_t *pos_shape, int32_t n_axes,
                            int32_t B, int32_t T, int32_t C);
    void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *g,
                           const float *b, int64_t N, int32_t C, double eps);
    void layernorm_backward(float *dinp, float *dg, float *db, const float *dout, const float *inp,
                            const float *g, const float *mean, const float *rstd, int64_t N,
                            int32_t C);
    void linear_forward(float *out, const float *inp, const float *w, const float *bias, int64_t N,
                        int32_t IC, int32_t OC);
    void linear_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int64_t N, int32_t IC, int32_t OC);
    void gelu_forward(float *out, const float *inp, int64_t n);
    void gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n);
    void residual_dropout_forward(float *out, const float *resid, const float *branch, int64_t n,
                                  double p, uint64_t seed, uint32_t stream, uint64_t step,
                                  uint64_t index0 = 0);
    void residual_dropout_backward(float *dresid, float *dbranch, const float *dout, int64_t n,
                                   double p, uint64_t seed, uint32_t stream, uint64_t step,
                                   uint64_t index0 = 0);
    void crossentropy_forward(float *losses, const float *logits, const uint8_t *targets, int64_t N,
                              int32_t V);
    void crossentropy_backward(float *dlogits, const float *logits, const uint8_t *targets,
                               double dloss_scale, int64_t N, int32_t V);
    void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                           const Layout &layout, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                           double scale);
    void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                            const float *k, const float *v, const float *out, const float *lse,
                            const Layout &layout, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                            double scale);
    void adamw_update(float *p, float *m, float *v, const float *g, int64_t n, double grad_scale,
                      double lr, double beta1, double beta2, double eps, double weight_decay,
                      bool decay, int64_t t);

    // The CUDA decoder (cuda/decode.cu) over this context and the model's weights.
    stx_status create_decoder(const DecoderSource<float> &src, int32_t batch,
                              std::unique_ptr<Decoder> *out) const;
    int64_t decoder_state_bytes(const ModelSpec &spec, int32_t batch) const;

    // On by default: the sm_90a (wgmma) attention kernels where the device and the build have
    // them. Off: the portable mma.sync kernels everywhere (tests and benchmarks compare both).
    void use_hopper_kernels(bool on);
    // Whether the attention runs on the Hopper kernels (where the block size and head dims
    // allow) in this context.
    bool hopper_kernels() const;
    // On by default (off with STX_CUDA_NO_OPERAND_CACHE=1 in the environment at create): the
    // bf16 copies of activation operands kept between ops and the pending zeros (context.cuh).
    // The results are the same bits either way; off is for tests and comparisons.
    void use_operand_cache(bool on);

    // How many linear_forward products have added their bias in cuBLASLt's epilogue (the
    // rest wrote it first and added the product to it): tests see which path ran.
    int64_t bias_epilogue_products() const;

    const std::shared_ptr<Context> &context() const { return ctx_; }

private:
    std::shared_ptr<Context> ctx_;
};

// Head dims the attention kernels are compiled for: Dq in {32, 64, 128}, Dv = Dq or 2 Dq
// (Dv <= 128 ... 256 for Dq 128 is not compiled).
bool attention_dims_supported(int32_t Dq, int32_t Dv);

} // namespace cuda
} // namespace stx
