// model.cpp: the CPU reference backend: the one layer loop (lib/model_loop.h) over the
// ref/ ops, on host memory, in float or double.
#include <cstdio>
#include <cstring>
#include <vector>

#include "backend.h"
#include "decode_plan.h"
#include "error.h"
#include "model_loop.h"
#include "ops.h"

namespace stx {
namespace ref {
// ref/decoder.cpp
template <typename S>
stx_status create_decoder(const DecoderSource<S> &src, int32_t batch,
                          std::unique_ptr<Decoder> *out);
} // namespace ref

namespace {

// The op policy of lib/model_loop.h for host memory: each op is its ref:: twin.
template <typename S> struct RefOps {
    using Scalar = S;
    using Buffer = std::vector<S>;
    using Bytes = std::vector<uint8_t>;

    void alloc(Buffer &b, size_t n) {
        const int64_t delta = (static_cast<int64_t>(n) - static_cast<int64_t>(b.size())) *
                              static_cast<int64_t>(sizeof(S));
        if (limit_ > 0 && delta > 0 && in_use_ + delta > limit_) {
            MemoryLimitError e;
            std::snprintf(e.message, sizeof e.message,
                          "the memory limit (%lld bytes) refuses %lld more bytes (%lld in use)",
                          static_cast<long long>(limit_), static_cast<long long>(delta),
                          static_cast<long long>(in_use_));
            throw e;
        }
        in_use_ += delta;
        if (in_use_ > peak_) peak_ = in_use_;
        b.assign(n, S(0));
    }
    void set_parameters(const S *, size_t) {} // nothing derived from them to keep in step
    void zero(Buffer &b) { std::fill(b.begin(), b.end(), S(0)); }
    void upload_bytes(Bytes &b, const uint8_t *src, size_t n) { b.assign(src, src + n); }
    void copy_in(S *dst, size_t n, stx_dtype dtype, const void *src) {
        for (size_t i = 0; i < n; ++i)
            dst[i] = dtype == STX_DTYPE_F64 ? static_cast<S>(static_cast<const double *>(src)[i])
                                            : static_cast<S>(static_cast<const float *>(src)[i]);
    }
    void copy_out(const S *src, size_t n, stx_dtype dtype, void *dst) const {
        for (size_t i = 0; i < n; ++i) {
            if (dtype == STX_DTYPE_F64)
                static_cast<double *>(dst)[i] = static_cast<double>(src[i]);
            else
                static_cast<float *>(dst)[i] = static_cast<float>(src[i]);
        }
    }
    double mean(const S *x, int64_t n) const {
        double sum = 0.0;
        for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]);
        return sum / static_cast<double>(n);
    }
    double sum_squares(const S *x, int64_t n) const { return ref::sum_squares(x, n); }
    stx_status status() const { return STX_OK; }
    void *native_stream() const { return nullptr; } // host work is done when an op returns
    int64_t bytes_in_use() const { return in_use_; }
    int64_t bytes_peak() const { return peak_; }
    void set_memory_limit(int64_t bytes) { limit_ = bytes; }

    template <typename... A> void embedding_forward(A... a) { ref::embedding_forward<S>(a...); }
    template <typename... A> void embedding_backward(A... a) { ref::embedding_backward<S>(a...); }
    template <typename... A> void layernorm_forward(A... a) { ref::layernorm_forward<S>(a...); }
    template <typename... A> void layernorm_backward(A... a) { ref::layernorm_backward<S>(a...); }
    template <typename... A> void linear_forward(A... a) { ref::linear_forward<S>(a...); }
    template <typename... A> void linear_backward(A... a) { ref::linear_backward<S>(a...); }
    template <typename... A> void gelu_forward(A... a) { ref::gelu_forward<S>(a...); }
    template <typename... A> void gelu_backward(A... a) { ref::gelu_backward<S>(a...); }
    template <typename... A> void residual_dropout_forward(A... a) {
        ref::residual_dropout_forward<S>(a...);
    }
    template <typename... A> void residual_dropout_backward(A... a) {
        ref::residual_dropout_backward<S>(a...);
    }
    template <typename... A> void crossentropy_forward(A... a) {
        ref::crossentropy_forward<S>(a...);
    }
    template <typename... A> void crossentropy_backward(A... a) {
        ref::crossentropy_backward<S>(a...);
    }
    void attention_forward(S *out, S *lse, const S *q, const S *k, const S *v, const Layout &layout,
                           int32_t B, int32_t T, int32_t Dq, int32_t Dv, double scale) {
        ref::attention_forward<S>(out, lse, q, k, v, layout, B, T, Dq, Dv, scale);
    }
    void attention_backward(S *dq, S *dk, S *dv, const S *dout, const S *q, const S *k, const S *v,
                            const S *out, const S *lse, const Layout &layout, int32_t B, int32_t T,
                            int32_t Dq, int32_t Dv, double scale) {
        ref::attention_backward<S>(dq, dk, dv, dout, q, k, v, out, lse, layout, B, T, Dq, Dv,
                                   scale);
    }
    template <typename... A> void adamw_update(A... a) { ref::adamw_update<S>(a...); }
    stx_status create_decoder(const DecoderSource<S> &src, int32_t batch,
                              std::unique_ptr<Decoder> *out) const {
        return ref::create_decoder<S>(src, batch, out);
    }
    int64_t decoder_state_bytes(const ModelSpec &spec, int32_t batch) const {
        return decode_state_bytes(spec, batch, static_cast<int32_t>(sizeof(S)));
    }

    int64_t in_use_ = 0, peak_ = 0, limit_ = 0; // the loop's buffers' bytes; 0: no limit
};

} // namespace

stx_status create_ref_backend(const ModelSpec &spec, std::unique_ptr<Backend> *out) {
    if (spec.cfg.precision == STX_PRECISION_FP64)
        out->reset(new LoopModel<RefOps<double>>(spec, RefOps<double>()));
    else
        out->reset(new LoopModel<RefOps<float>>(spec, RefOps<float>()));
    return STX_OK;
}

} // namespace stx
