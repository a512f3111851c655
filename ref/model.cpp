// model.cpp: the CPU reference model: the layer loop over the ref/ ops, forward and
// backward, with recomputation (only the residual stream is kept between blocks; each
// block's attention and feed-forward are recomputed in backward, replaying the same
// dropout masks, so gradients are bit-identical with recompute on or off).
//
// Per block l, on the residual stream x (N = B*T rows of C):
//   h1 = LN1(x); q, k, v = h1 Wq^T + bq, ...; a = attn(q, k, v); p = a Wp^T + bp
//   x2 = x + drop(p);  h2 = LN2(x2); f1 = h2 W1^T + b1; g = gelu(f1); f2 = g W2^T + b2
//   x' = x2 + drop(f2)
// then hf = LN_f(x_L), logits = hf W_out^T, loss = mean cross-entropy.
#include <cmath>
#include <cstring>
#include <vector>

#include "backend.h"
#include "error.h"
#include "ops.h"
#include "philox.h"

namespace stx {
namespace {

const double kBlockEps = 1e-5, kFinalEps = 1e-6;

template <typename S> void zero(std::vector<S> *v) {
    std::fill(v->begin(), v->end(), S(0));
}

// One block's intermediate activations (one set with recompute, n_layer sets without).
template <typename S> struct BlockActs {
    std::vector<S> h1, mean1, rstd1, q, k, v, att, lse, p, x2, h2, mean2, rstd2, f1, g, f2;
};

template <typename S> class RefModel final : public Backend {
public:
    explicit RefModel(const ModelSpec &spec) : spec_(spec), d_(spec.dims) {
        const size_t P = static_cast<size_t>(spec.table.total);
        params_.resize(P);
        grads_.assign(P, S(0));
        for (size_t i = 0; i < spec.table.tensors.size(); ++i) {
            const TensorSpec &t = spec.table.tensors[i];
            for (int64_t e = 0; e < t.numel; ++e)
                params_[static_cast<size_t>(t.offset + e)] = static_cast<S>(
                    init_value_at(spec.table, static_cast<int32_t>(i), e, spec.cfg.seed));
        }
    }

    stx_status forward(const ForwardArgs &args, double *loss_nats) override {
        resize(args.B, args.T);
        tokens_.assign(args.tokens, args.tokens + static_cast<size_t>(args.B) * args.T);
        training_ = args.training;
        dropout_step_ = args.dropout_step;
        const int64_t N = rows();
        std::vector<const S *> pos;
        for (int32_t t : spec_.table.pos_emb) pos.push_back(param(t));
        ref::embedding_forward(stream(0), tokens_.data(), param(spec_.table.tok_emb),
                               param(spec_.table.start), pos.data(), d_.pos_shape, d_.n_axes, B_,
                               T_, d_.C);
        for (int32_t l = 0; l < d_.L; ++l) block_forward(l, acts(l), stream(l), stream(l + 1));
        ref::layernorm_forward(hf_.data(), meanf_.data(), rstdf_.data(), stream(d_.L),
                               param(spec_.table.lnf_g), param(spec_.table.lnf_b), N, d_.C,
                               kFinalEps);
        ref::linear_forward(logits_.data(), hf_.data(), param(spec_.table.w_out),
                            static_cast<const S *>(nullptr), N, d_.C, STX_VOCAB);
        ref::crossentropy_forward(losses_.data(), logits_.data(), tokens_.data(), N, STX_VOCAB);
        double sum = 0.0;
        for (int64_t i = 0; i < N; ++i) sum += static_cast<double>(losses_[static_cast<size_t>(i)]);
        *loss_nats = sum / static_cast<double>(N);
        return STX_OK;
    }

    stx_status logits_read(stx_dtype dtype, void *dst) const override {
        convert_out(logits_.data(), logits_.size(), dtype, dst);
        return STX_OK;
    }

    stx_status backward() override {
        const int64_t N = rows();
        const ParamTable &pt = spec_.table;
        zero(&dlogits_);
        ref::crossentropy_backward(dlogits_.data(), logits_.data(), tokens_.data(),
                                   1.0 / static_cast<double>(N), N, STX_VOCAB);
        zero(&dhf_);
        ref::linear_backward(dhf_.data(), grad(pt.w_out), static_cast<S *>(nullptr),
                             dlogits_.data(), hf_.data(), param(pt.w_out), N, d_.C, STX_VOCAB);
        zero(&dx_);
        ref::layernorm_backward(dx_.data(), grad(pt.lnf_g), grad(pt.lnf_b), dhf_.data(),
                                stream(d_.L), param(pt.lnf_g), meanf_.data(), rstdf_.data(), N,
                                d_.C);
        for (int32_t l = d_.L - 1; l >= 0; --l) {
            if (spec_.cfg.recompute) block_forward(l, acts(l), stream(l), stream(l + 1));
            block_backward(l, acts(l), stream(l));
        }
        std::vector<S *> dpos;
        for (int32_t t : pt.pos_emb) dpos.push_back(grad(t));
        ref::embedding_backward(grad(pt.tok_emb), grad(pt.start), dpos.data(), dx_.data(),
                                tokens_.data(), d_.pos_shape, d_.n_axes, B_, T_, d_.C);
        return STX_OK;
    }

    stx_status zero_grad() override {
        zero(&grads_);
        return STX_OK;
    }

    stx_status grad_norm(double *norm) override {
        *norm = std::sqrt(ref::sum_squares(grads_.data(), static_cast<int64_t>(grads_.size())));
        return STX_OK;
    }

    stx_status adamw_step(const stx_optim_config &opt, double lr, double grad_scale,
                          int64_t t) override {
        ensure_moments();
        for (const TensorSpec &ts : spec_.table.tensors) {
            const size_t o = static_cast<size_t>(ts.offset);
            ref::adamw_update(&params_[o], &m_[o], &v_[o], &grads_[o], ts.numel, grad_scale, lr,
                              opt.beta1, opt.beta2, opt.eps, opt.weight_decay, ts.decay, t);
        }
        return STX_OK;
    }

    stx_status tensor_read(TensorKind kind, int32_t index, stx_dtype dtype,
                           void *dst) const override {
        const TensorSpec &ts = spec_.table.tensors[static_cast<size_t>(index)];
        const std::vector<S> &buf = buffer(kind);
        if (buf.empty()) { // Adam moments before the first step
            for (int64_t i = 0; i < ts.numel; ++i) {
                if (dtype == STX_DTYPE_F64)
                    static_cast<double *>(dst)[i] = 0.0;
                else
                    static_cast<float *>(dst)[i] = 0.0f;
            }
            return STX_OK;
        }
        convert_out(&buf[static_cast<size_t>(ts.offset)], static_cast<size_t>(ts.numel), dtype,
                    dst);
        return STX_OK;
    }

    stx_status tensor_write(TensorKind kind, int32_t index, stx_dtype dtype,
                            const void *src) override {
        const TensorSpec &ts = spec_.table.tensors[static_cast<size_t>(index)];
        if (kind == TensorKind::AdamM || kind == TensorKind::AdamV) ensure_moments();
        std::vector<S> &buf = buffer(kind);
        S *dst = &buf[static_cast<size_t>(ts.offset)];
        for (int64_t i = 0; i < ts.numel; ++i)
            dst[i] = dtype == STX_DTYPE_F64 ? static_cast<S>(static_cast<const double *>(src)[i])
                                            : static_cast<S>(static_cast<const float *>(src)[i]);
        return STX_OK;
    }

    void set_layer_layout(int32_t layer, std::shared_ptr<const Layout> layout) override {
        spec_.layer_layouts[static_cast<size_t>(layer)] = std::move(layout);
    }

private:
    void ensure_moments() {
        if (!m_.empty()) return;
        m_.assign(params_.size(), S(0));
        v_.assign(params_.size(), S(0));
    }
    std::vector<S> &buffer(TensorKind kind) {
        switch (kind) {
        case TensorKind::Param:
            return params_;
        case TensorKind::Grad:
            return grads_;
        case TensorKind::AdamM:
            return m_;
        case TensorKind::AdamV:
            return v_;
        }
        return params_;
    }
    const std::vector<S> &buffer(TensorKind kind) const {
        return const_cast<RefModel *>(this)->buffer(kind);
    }
    int64_t rows() const { return static_cast<int64_t>(B_) * T_; }
    S *param(int32_t t) { return &params_[offset(t)]; }
    S *grad(int32_t t) { return &grads_[offset(t)]; }
    size_t offset(int32_t t) const {
        return static_cast<size_t>(spec_.table.tensors[static_cast<size_t>(t)].offset);
    }
    S *stream(int32_t l) {
        return &xs_[static_cast<size_t>(l) * static_cast<size_t>(rows()) * d_.C];
    }
    BlockActs<S> &acts(int32_t l) {
        return acts_[spec_.cfg.recompute ? 0 : static_cast<size_t>(l)];
    }
    double dropout_p() const { return training_ ? static_cast<double>(spec_.cfg.dropout) : 0.0; }

    static void convert_out(const S *src, size_t n, stx_dtype dtype, void *dst) {
        for (size_t i = 0; i < n; ++i) {
            if (dtype == STX_DTYPE_F64)
                static_cast<double *>(dst)[i] = static_cast<double>(src[i]);
            else
                static_cast<float *>(dst)[i] = static_cast<float>(src[i]);
        }
    }

    void resize(int32_t B, int32_t T) {
        if (B == B_ && T == T_) return;
        B_ = B;
        T_ = T;
        const size_t N = static_cast<size_t>(B) * T, C = static_cast<size_t>(d_.C);
        const size_t QK = static_cast<size_t>(d_.QK), F = static_cast<size_t>(d_.F);
        xs_.assign((static_cast<size_t>(d_.L) + 1) * N * C, S(0));
        acts_.assign(spec_.cfg.recompute ? 1 : static_cast<size_t>(d_.L), BlockActs<S>());
        for (BlockActs<S> &a : acts_) {
            for (std::vector<S> *v : {&a.h1, &a.att, &a.p, &a.x2, &a.h2, &a.v, &a.f2})
                v->assign(N * C, S(0));
            for (std::vector<S> *v : {&a.q, &a.k}) v->assign(N * QK, S(0));
            for (std::vector<S> *v : {&a.f1, &a.g}) v->assign(N * F, S(0));
            for (std::vector<S> *v : {&a.mean1, &a.rstd1, &a.mean2, &a.rstd2}) v->assign(N, S(0));
            a.lse.assign(N * static_cast<size_t>(d_.H), S(0));
        }
        hf_.assign(N * C, S(0));
        meanf_.assign(N, S(0));
        rstdf_.assign(N, S(0));
        logits_.assign(N * STX_VOCAB, S(0));
        losses_.assign(N, S(0));
        dlogits_.assign(N * STX_VOCAB, S(0));
        for (std::vector<S> *v : {&dhf_, &dx_, &dxo_, &dx2_, &df2_, &dh_, &dp_, &datt_, &dv_})
            v->assign(N * C, S(0));
        for (std::vector<S> *v : {&dq_, &dk_}) v->assign(N * QK, S(0));
        for (std::vector<S> *v : {&dg_, &df1_}) v->assign(N * F, S(0));
    }

    void block_forward(int32_t l, BlockActs<S> &a, const S *x, S *x_out) {
        const LayerParams &lp = spec_.table.layers[static_cast<size_t>(l)];
        const int64_t N = rows();
        const int32_t C = d_.C;
        const uint64_t seed = spec_.cfg.seed;
        ref::layernorm_forward(a.h1.data(), a.mean1.data(), a.rstd1.data(), x, param(lp.ln1_g),
                               param(lp.ln1_b), N, C, kBlockEps);
        ref::linear_forward(a.q.data(), a.h1.data(), param(lp.q_w), param(lp.q_b), N, C, d_.QK);
        ref::linear_forward(a.k.data(), a.h1.data(), param(lp.k_w), param(lp.k_b), N, C, d_.QK);
        ref::linear_forward(a.v.data(), a.h1.data(), param(lp.v_w), param(lp.v_b), N, C, C);
        ref::attention_forward(a.att.data(), a.lse.data(), a.q.data(), a.k.data(), a.v.data(),
                               layout(l), B_, T_, d_.Dq, d_.Dv, scale());
        ref::linear_forward(a.p.data(), a.att.data(), param(lp.proj_w), param(lp.proj_b), N, C, C);
        ref::residual_dropout_forward(a.x2.data(), x, a.p.data(), N * C, dropout_p(), seed,
                                      dropout_stream(l, 0), dropout_step_);
        ref::layernorm_forward(a.h2.data(), a.mean2.data(), a.rstd2.data(), a.x2.data(),
                               param(lp.ln2_g), param(lp.ln2_b), N, C, kBlockEps);
        ref::linear_forward(a.f1.data(), a.h2.data(), param(lp.w1), param(lp.b1), N, C, d_.F);
        ref::gelu_forward(a.g.data(), a.f1.data(), N * d_.F);
        ref::linear_forward(a.f2.data(), a.g.data(), param(lp.w2), param(lp.b2), N, d_.F, C);
        ref::residual_dropout_forward(x_out, a.x2.data(), a.f2.data(), N * C, dropout_p(), seed,
                                      dropout_stream(l, 1), dropout_step_);
    }

    // dx_ holds the gradient of block l's output on entry and of its input on return.
    void block_backward(int32_t l, BlockActs<S> &a, const S *x) {
        const LayerParams &lp = spec_.table.layers[static_cast<size_t>(l)];
        const int64_t N = rows();
        const int32_t C = d_.C;
        const uint64_t seed = spec_.cfg.seed;
        zero(&dx2_);
        zero(&df2_);
        ref::residual_dropout_backward(dx2_.data(), df2_.data(), dx_.data(), N * C, dropout_p(),
                                       seed, dropout_stream(l, 1), dropout_step_);
        zero(&dg_);
        ref::linear_backward(dg_.data(), grad(lp.w2), grad(lp.b2), df2_.data(), a.g.data(),
                             param(lp.w2), N, d_.F, C);
        zero(&df1_);
        ref::gelu_backward(df1_.data(), dg_.data(), a.f1.data(), N * d_.F);
        zero(&dh_);
        ref::linear_backward(dh_.data(), grad(lp.w1), grad(lp.b1), df1_.data(), a.h2.data(),
                             param(lp.w1), N, C, d_.F);
        ref::layernorm_backward(dx2_.data(), grad(lp.ln2_g), grad(lp.ln2_b), dh_.data(),
                                a.x2.data(), param(lp.ln2_g), a.mean2.data(), a.rstd2.data(), N, C);
        zero(&dxo_);
        zero(&dp_);
        ref::residual_dropout_backward(dxo_.data(), dp_.data(), dx2_.data(), N * C, dropout_p(),
                                       seed, dropout_stream(l, 0), dropout_step_);
        zero(&datt_);
        ref::linear_backward(datt_.data(), grad(lp.proj_w), grad(lp.proj_b), dp_.data(),
                             a.att.data(), param(lp.proj_w), N, C, C);
        zero(&dq_);
        zero(&dk_);
        zero(&dv_);
        ref::attention_backward(dq_.data(), dk_.data(), dv_.data(), datt_.data(), a.q.data(),
                                a.k.data(), a.v.data(), a.att.data(), a.lse.data(), layout(l), B_,
                                T_, d_.Dq, d_.Dv, scale());
        zero(&dh_);
        ref::linear_backward(dh_.data(), grad(lp.q_w), grad(lp.q_b), dq_.data(), a.h1.data(),
                             param(lp.q_w), N, C, d_.QK);
        ref::linear_backward(dh_.data(), grad(lp.k_w), grad(lp.k_b), dk_.data(), a.h1.data(),
                             param(lp.k_w), N, C, d_.QK);
        ref::linear_backward(dh_.data(), grad(lp.v_w), grad(lp.v_b), dv_.data(), a.h1.data(),
                             param(lp.v_w), N, C, C);
        ref::layernorm_backward(dxo_.data(), grad(lp.ln1_g), grad(lp.ln1_b), dh_.data(), x,
                                param(lp.ln1_g), a.mean1.data(), a.rstd1.data(), N, C);
        dx_.swap(dxo_);
    }

    const Layout &layout(int32_t l) const { return *spec_.layer_layouts[static_cast<size_t>(l)]; }
    double scale() const { return 1.0 / std::sqrt(static_cast<double>(d_.Dq)); }

    ModelSpec spec_;
    Dims d_;
    std::vector<S> params_, grads_, m_, v_;
    int32_t B_ = 0, T_ = 0;
    std::vector<uint8_t> tokens_;
    bool training_ = false;
    uint64_t dropout_step_ = 0;
    std::vector<S> xs_; // residual stream at every block boundary, (L+1) x N x C
    std::vector<BlockActs<S>> acts_;
    std::vector<S> hf_, meanf_, rstdf_, logits_, losses_;
    std::vector<S> dlogits_, dhf_, dx_, dxo_, dx2_, df2_, dh_, dp_, datt_, dq_, dk_, dv_, dg_, df1_;
};

} // namespace

stx_status create_ref_backend(const ModelSpec &spec, std::unique_ptr<Backend> *out) {
    if (spec.cfg.precision == STX_PRECISION_FP64)
        out->reset(new RefModel<double>(spec));
    else
        out->reset(new RefModel<float>(spec));
    return STX_OK;
}

} // namespace stx
