// model_loop.h: THE layer loop, written once for every backend: forward and backward of the
// whole model over an op policy (ref/: host loops; cuda/: device kernels and cuBLAS), with
// recomputation (only the residual stream is kept between blocks; each block's attention and
// feed-forward are recomputed in backward, replaying the same dropout masks, so gradients are
// bit-identical with recompute on or off; recompute 2 also keeps each block's attention output
// and log-sum-exp, so the replay skips the attention, the costliest op, for N (C + H) more
// elements a block).
//
// Per block l, on the residual stream x (N = B*T rows of C):
//   h1 = LN1(x); q, k, v = h1 Wq^T + bq, ...; a = attn(q, k, v); p = a Wp^T + bp
//   x2 = x + drop(p);  h2 = LN2(x2); f1 = h2 W1^T + b1; g = gelu(f1); f2 = g W2^T + b2
//   x' = x2 + drop(f2)
// then hf = LN_f(x_L), logits = hf W_out^T, loss = mean cross-entropy.
//
// The Ops policy provides: Scalar; Buffer (owns Scalars: data(), size()) and Bytes (owns
// bytes: data()); alloc(Buffer&, n) zero-filled; set_parameters(p, n) (the parameter buffer,
// written from then on only by copy_in, zero and adamw_update, so a backend may keep derived
// copies of it); zero(Buffer&); upload_bytes(Bytes&, host, n);
// copy_in(Scalar *dst, n, dtype, host src) and copy_out(src, n, dtype, host dst); mean(x, n)
// and sum_squares(x, n) in double; status(); native_stream() (a cudaStream_t, or nullptr);
// bytes_in_use(), bytes_peak() and set_memory_limit(bytes); and every op of ref/ops.h under the
// same name with the same arguments (device pointers where the backend is a device).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "backend.h"
#include "philox.h"

namespace stx {

template <class Ops> class LoopModel final : public Backend {
    using S = typename Ops::Scalar;
    using Buf = typename Ops::Buffer;

    // One block's intermediate activations (one set with recompute, n_layer sets without).
    // With recompute 2 each block keeps its attention output and log-sum-exp (att_kept_,
    // lse_kept_) and the backward's replay of the block skips the attention.
    struct BlockActs {
        Buf h1, mean1, rstd1, q, k, v, att, lse, p, x2, h2, mean2, rstd2, f1, g, f2;
    };

public:
    LoopModel(const ModelSpec &spec, Ops ops) : ops_(std::move(ops)), spec_(spec), d_(spec.dims) {
        const size_t P = static_cast<size_t>(spec.table.total);
        ops_.alloc(params_, P);
        ops_.set_parameters(params_.data(), P);
        ops_.alloc(grads_, P);
        std::vector<double> init(P);
        for (size_t i = 0; i < spec.table.tensors.size(); ++i) {
            const TensorSpec &t = spec.table.tensors[i];
            for (int64_t e = 0; e < t.numel; ++e)
                init[static_cast<size_t>(t.offset + e)] =
                    init_value_at(spec.table, static_cast<int32_t>(i), e, spec.cfg.seed);
        }
        ops_.copy_in(params_.data(), P, STX_DTYPE_F64, init.data());
    }
    // The ops may outlive this model (a decoder shares their context): nothing derived from
    // the parameters may be taken for a later buffer at the same address.
    ~LoopModel() override { ops_.set_parameters(nullptr, 0); }

    stx_status forward(const ForwardArgs &args, double *loss_nats) override {
        resize(args.B, args.T);
        ops_.upload_bytes(tokens_, args.tokens, static_cast<size_t>(args.B) * args.T);
        training_ = args.training;
        dropout_step_ = args.dropout_step;
        dropout_index0_ = static_cast<uint64_t>(args.dropout_sequence0) *
                          static_cast<uint64_t>(args.T) * static_cast<uint64_t>(d_.C);
        const int64_t N = rows();
        const ParamTable &pt = spec_.table;
        std::vector<const S *> pos;
        for (int32_t t : pt.pos_emb) pos.push_back(param(t));
        ops_.embedding_forward(stream(0), tokens_.data(), param(pt.tok_emb), param(pt.start),
                               pos.data(), d_.pos_shape, d_.n_axes, B_, T_, d_.C);
        for (int32_t l = 0; l < d_.L; ++l) {
            block_forward(l, acts(l), stream(l), stream(l + 1));
            if (args.observer) args.observer->keys_values(l, acts(l).k.data(), acts(l).v.data());
        }
        ops_.layernorm_forward(hf_.data(), meanf_.data(), rstdf_.data(), stream(d_.L),
                               param(pt.lnf_g), param(pt.lnf_b), N, d_.C, kFinalLayerNormEps);
        ops_.linear_forward(logits_.data(), hf_.data(), param(pt.w_out),
                            static_cast<const S *>(nullptr), N, d_.C, STX_VOCAB);
        ops_.crossentropy_forward(losses_.data(), logits_.data(), tokens_.data(), N, STX_VOCAB);
        *loss_nats = ops_.mean(losses_.data(), N);
        if (args.observer) args.observer->logits(logits_.data());
        return ops_.status();
    }

    stx_status logits_read(stx_dtype dtype, void *dst) const override {
        ops_.copy_out(logits_.data(), logits_.size(), dtype, dst);
        return ops_.status();
    }

    stx_status backward() override {
        const int64_t N = rows();
        const ParamTable &pt = spec_.table;
        ops_.zero(dlogits_);
        ops_.crossentropy_backward(dlogits_.data(), logits_.data(), tokens_.data(),
                                   1.0 / static_cast<double>(N), N, STX_VOCAB);
        ops_.zero(dhf_);
        ops_.linear_backward(dhf_.data(), grad(pt.w_out), static_cast<S *>(nullptr),
                             dlogits_.data(), hf_.data(), param(pt.w_out), N, d_.C, STX_VOCAB);
        ops_.zero(dx_);
        ops_.layernorm_backward(dx_.data(), grad(pt.lnf_g), grad(pt.lnf_b), dhf_.data(),
                                stream(d_.L), param(pt.lnf_g), meanf_.data(), rstdf_.data(), N,
                                d_.C);
        // The parameter table is laid out embeddings, blocks 0..L-1, final LayerNorm and W_out,
        // and the backward fills it from the end: each group of blocks (with the output layer in
        // the first group) is a contiguous range, final once its last block is done.
        int64_t pending_end = static_cast<int64_t>(grads_.size());
        const int32_t group = sync_ ? sync_->bucket_layers() : 0;
        for (int32_t l = d_.L - 1; l >= 0; --l) {
            if (spec_.cfg.recompute) block_forward(l, acts(l), stream(l), stream(l + 1), true);
            block_backward(l, acts(l), stream(l));
            if (sync_ && l > 0 && (d_.L - l) % group == 0) {
                const int64_t begin = static_cast<int64_t>(offset(pt.layers[l].ln1_g));
                sync_->ready(grads_.data(), begin, pending_end - begin, ops_.native_stream());
                pending_end = begin;
            }
        }
        std::vector<S *> dpos;
        for (int32_t t : pt.pos_emb) dpos.push_back(grad(t));
        ops_.embedding_backward(grad(pt.tok_emb), grad(pt.start), dpos.data(), dx_.data(),
                                tokens_.data(), d_.pos_shape, d_.n_axes, B_, T_, d_.C);
        if (sync_ && ops_.status() == STX_OK) {
            sync_->ready(grads_.data(), 0, pending_end, ops_.native_stream());
            const stx_status s = sync_->finish(ops_.native_stream());
            if (s != STX_OK) return s;
        }
        return ops_.status();
    }

    void set_grad_sync(GradSync *sync) override { sync_ = sync; }

    stx_status zero_grad() override {
        ops_.zero(grads_);
        return ops_.status();
    }

    stx_status grad_norm(double *norm) override {
        *norm = std::sqrt(ops_.sum_squares(grads_.data(), static_cast<int64_t>(grads_.size())));
        return ops_.status();
    }

    stx_status adamw_step(const stx_optim_config &opt, double lr, double grad_scale,
                          int64_t t) override {
        ensure_moments();
        for (const TensorSpec &ts : spec_.table.tensors) {
            const size_t o = static_cast<size_t>(ts.offset);
            ops_.adamw_update(params_.data() + o, m_.data() + o, v_.data() + o, grads_.data() + o,
                              ts.numel, grad_scale, lr, opt.beta1, opt.beta2, opt.eps,
                              opt.weight_decay, ts.decay, t);
        }
        return ops_.status();
    }

    stx_status tensor_read(TensorKind kind, int32_t index, stx_dtype dtype,
                           void *dst) const override {
        const TensorSpec &ts = spec_.table.tensors[static_cast<size_t>(index)];
        const Buf &buf = buffer(kind);
        if (buf.size() == 0) { // Adam moments before the first step
            const size_t size = dtype == STX_DTYPE_F64 ? sizeof(double) : sizeof(float);
            std::fill(static_cast<char *>(dst), static_cast<char *>(dst) + size * ts.numel, 0);
            return STX_OK;
        }
        ops_.copy_out(buf.data() + ts.offset, static_cast<size_t>(ts.numel), dtype, dst);
        return ops_.status();
    }

    stx_status tensor_write(TensorKind kind, int32_t index, stx_dtype dtype,
                            const void *src) override {
        const TensorSpec &ts = spec_.table.tensors[static_cast<size_t>(index)];
        if (kind == TensorKind::AdamM || kind == TensorKind::AdamV) ensure_moments();
        ops_.copy_in(buffer(kind).data() + ts.offset, static_cast<size_t>(ts.numel), dtype, src);
        return ops_.status();
    }

    void set_layer_layout(int32_t layer, std::shared_ptr<const Layout> layout) override {
        spec_.layer_layouts[static_cast<size_t>(layer)] = std::move(layout);
    }

    void set_memory_limit(int64_t bytes) override { ops_.set_memory_limit(bytes); }

    void memory(int64_t *in_use, int64_t *peak) const override {
        *in_use = ops_.bytes_in_use();
        *peak = ops_.bytes_peak();
    }

    stx_status create_decoder(int32_t batch, std::unique_ptr<Decoder> *out) override {
        DecoderSource<S> src;
        src.spec = &spec_;
        src.model = this;
        src.params = params_.data();
        return ops_.create_decoder(src, batch, out);
    }

    int64_t decoder_state_bytes(int32_t batch) const override {
        return ops_.decoder_state_bytes(spec_, batch);
    }

private:
    void ensure_moments() {
        if (m_.size() != 0) return;
        ops_.alloc(m_, params_.size());
        ops_.alloc(v_, params_.size());
    }
    Buf &buffer(TensorKind kind) {
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
    const Buf &buffer(TensorKind kind) const { return const_cast<LoopModel *>(this)->buffer(kind); }

    int64_t rows() const { return static_cast<int64_t>(B_) * T_; }
    S *param(int32_t t) { return params_.data() + offset(t); }
    S *grad(int32_t t) { return grads_.data() + offset(t); }
    size_t offset(int32_t t) const {
        return static_cast<size_t>(spec_.table.tensors[static_cast<size_t>(t)].offset);
    }
    S *stream(int32_t l) {
        return xs_.data() + static_cast<size_t>(l) * static_cast<size_t>(rows()) * d_.C;
    }
    BlockActs &acts(int32_t l) { return acts_[spec_.cfg.recompute ? 0 : static_cast<size_t>(l)]; }
    bool keeps_attention() const { return spec_.cfg.recompute == 2; }
    // Block l's attention output and log-sum-exp: kept per block with recompute 2.
    S *att(int32_t l, BlockActs &a) {
        return keeps_attention() ? att_kept_[static_cast<size_t>(l)].data() : a.att.data();
    }
    S *lse(int32_t l, BlockActs &a) {
        return keeps_attention() ? lse_kept_[static_cast<size_t>(l)].data() : a.lse.data();
    }
    double dropout_p() const { return training_ ? static_cast<double>(spec_.cfg.dropout) : 0.0; }
    const Layout &layout(int32_t l) const { return *spec_.layer_layouts[static_cast<size_t>(l)]; }
    double scale() const { return 1.0 / std::sqrt(static_cast<double>(d_.Dq)); }

    void resize(int32_t B, int32_t T) {
        if (B == B_ && T == T_) return;
        // The shape is recorded only once every buffer has it: an allocation refused half-way
        // (a memory limit) leaves a model that resizes again on the next call.
        B_ = T_ = 0;
        const size_t N = static_cast<size_t>(B) * T, C = static_cast<size_t>(d_.C);
        const size_t QK = static_cast<size_t>(d_.QK), F = static_cast<size_t>(d_.F);
        ops_.alloc(xs_, (static_cast<size_t>(d_.L) + 1) * N * C);
        acts_.resize(spec_.cfg.recompute ? 1 : static_cast<size_t>(d_.L)); // alloc resizes each
        for (BlockActs &a : acts_) {
            for (Buf *v : {&a.h1, &a.p, &a.x2, &a.h2, &a.v, &a.f2}) ops_.alloc(*v, N * C);
            for (Buf *v : {&a.q, &a.k}) ops_.alloc(*v, N * QK);
            for (Buf *v : {&a.f1, &a.g}) ops_.alloc(*v, N * F);
            for (Buf *v : {&a.mean1, &a.rstd1, &a.mean2, &a.rstd2}) ops_.alloc(*v, N);
            if (keeps_attention()) continue; // att(l, a), lse(l, a) are the kept ones
            ops_.alloc(a.att, N * C);
            ops_.alloc(a.lse, N * static_cast<size_t>(d_.H));
        }
        att_kept_.resize(keeps_attention() ? static_cast<size_t>(d_.L) : 0);
        lse_kept_.resize(att_kept_.size());
        for (size_t l = 0; l < att_kept_.size(); ++l) {
            ops_.alloc(att_kept_[l], N * C);
            ops_.alloc(lse_kept_[l], N * static_cast<size_t>(d_.H));
        }
        ops_.alloc(hf_, N * C);
        ops_.alloc(meanf_, N);
        ops_.alloc(rstdf_, N);
        ops_.alloc(logits_, N * STX_VOCAB);
        ops_.alloc(losses_, N);
        ops_.alloc(dlogits_, N * STX_VOCAB);
        for (Buf *v : {&dhf_, &dx_, &dxo_, &dx2_, &df2_, &dh_, &dp_, &datt_, &dv_})
            ops_.alloc(*v, N * C);
        for (Buf *v : {&dq_, &dk_}) ops_.alloc(*v, N * QK);
        for (Buf *v : {&dg_, &df1_}) ops_.alloc(*v, N * F);
        B_ = B;
        T_ = T;
    }

    // replay: the backward's recomputation, which with recompute 2 reuses the kept attention.
    void block_forward(int32_t l, BlockActs &a, const S *x, S *x_out, bool replay = false) {
        const LayerParams &lp = spec_.table.layers[static_cast<size_t>(l)];
        const int64_t N = rows();
        const int32_t C = d_.C;
        const uint64_t seed = spec_.cfg.seed;
        ops_.layernorm_forward(a.h1.data(), a.mean1.data(), a.rstd1.data(), x, param(lp.ln1_g),
                               param(lp.ln1_b), N, C, kBlockLayerNormEps);
        ops_.linear_forward(a.q.data(), a.h1.data(), param(lp.q_w), param(lp.q_b), N, C, d_.QK);
        ops_.linear_forward(a.k.data(), a.h1.data(), param(lp.k_w), param(lp.k_b), N, C, d_.QK);
        ops_.linear_forward(a.v.data(), a.h1.data(), param(lp.v_w), param(lp.v_b), N, C, C);
        if (!(replay && keeps_attention()))
            ops_.attention_forward(att(l, a), lse(l, a), a.q.data(), a.k.data(), a.v.data(),
                                   layout(l), B_, T_, d_.Dq, d_.Dv, scale());
        ops_.linear_forward(a.p.data(), att(l, a), param(lp.proj_w), param(lp.proj_b), N, C, C);
        ops_.residual_dropout_forward(a.x2.data(), x, a.p.data(), N * C, dropout_p(), seed,
                                      dropout_stream(l, 0), dropout_step_, dropout_index0_);
        ops_.layernorm_forward(a.h2.data(), a.mean2.data(), a.rstd2.data(), a.x2.data(),
                               param(lp.ln2_g), param(lp.ln2_b), N, C, kBlockLayerNormEps);
        ops_.linear_forward(a.f1.data(), a.h2.data(), param(lp.w1), param(lp.b1), N, C, d_.F);
        ops_.gelu_forward(a.g.data(), a.f1.data(), N * d_.F);
        ops_.linear_forward(a.f2.data(), a.g.data(), param(lp.w2), param(lp.b2), N, d_.F, C);
        ops_.residual_dropout_forward(x_out, a.x2.data(), a.f2.data(), N * C, dropout_p(), seed,
                                      dropout_stream(l, 1), dropout_step_, dropout_index0_);
    }

    // dx_ holds the gradient of block l's output on entry and of its input on return.
    void block_backward(int32_t l, BlockActs &a, const S *x) {
        const LayerParams &lp = spec_.table.layers[static_cast<size_t>(l)];
        const int64_t N = rows();
        const int32_t C = d_.C;
        const uint64_t seed = spec_.cfg.seed;
        ops_.zero(dx2_);
        ops_.zero(df2_);
        ops_.residual_dropout_backward(dx2_.data(), df2_.data(), dx_.data(), N * C, dropout_p(),
                                       seed, dropout_stream(l, 1), dropout_step_, dropout_index0_);
        ops_.zero(dg_);
        ops_.linear_backward(dg_.data(), grad(lp.w2), grad(lp.b2), df2_.data(), a.g.data(),
                             param(lp.w2), N, d_.F, C);
        ops_.zero(df1_);
        ops_.gelu_backward(df1_.data(), dg_.data(), a.f1.data(), N * d_.F);
        ops_.zero(dh_);
        ops_.linear_backward(dh_.data(), grad(lp.w1), grad(lp.b1), df1_.data(), a.h2.data(),
                             param(lp.w1), N, C, d_.F);
        ops_.layernorm_backward(dx2_.data(), grad(lp.ln2_g), grad(lp.ln2_b), dh_.data(),
                                a.x2.data(), param(lp.ln2_g), a.mean2.data(), a.rstd2.data(), N, C);
        ops_.zero(dxo_);
        ops_.zero(dp_);
        ops_.residual_dropout_backward(dxo_.data(), dp_.data(), dx2_.data(), N * C, dropout_p(),
                                       seed, dropout_stream(l, 0), dropout_step_, dropout_index0_);
        ops_.zero(datt_);
        ops_.linear_backward(datt_.data(), grad(lp.proj_w), grad(lp.proj_b), dp_.data(), att(l, a),
                             param(lp.proj_w), N, C, C);
        ops_.zero(dq_);
        ops_.zero(dk_);
        ops_.zero(dv_);
        ops_.attention_backward(dq_.data(), dk_.data(), dv_.data(), datt_.data(), a.q.data(),
                                a.k.data(), a.v.data(), att(l, a), lse(l, a), layout(l), B_, T_,
                                d_.Dq, d_.Dv, scale());
        ops_.zero(dh_);
        ops_.linear_backward(dh_.data(), grad(lp.q_w), grad(lp.q_b), dq_.data(), a.h1.data(),
                             param(lp.q_w), N, C, d_.QK);
        // The key bias adds q.b_k to every score of a query and softmax ignores such a shift:
        // its gradient is exactly zero, so none is accumulated (rounding noise there would
        // otherwise be turned into +-lr steps by Adam, differently on every backend).
        ops_.linear_backward(dh_.data(), grad(lp.k_w), static_cast<S *>(nullptr), dk_.data(),
                             a.h1.data(), param(lp.k_w), N, C, d_.QK);
        ops_.linear_backward(dh_.data(), grad(lp.v_w), grad(lp.v_b), dv_.data(), a.h1.data(),
                             param(lp.v_w), N, C, C);
        ops_.layernorm_backward(dxo_.data(), grad(lp.ln1_g), grad(lp.ln1_b), dh_.data(), x,
                                param(lp.ln1_g), a.mean1.data(), a.rstd1.data(), N, C);
        std::swap(dx_, dxo_);
    }

    mutable Ops ops_;
    ModelSpec spec_;
    Dims d_;
    Buf params_, grads_, m_, v_;
    int32_t B_ = 0, T_ = 0;
    typename Ops::Bytes tokens_;
    bool training_ = false;
    uint64_t dropout_step_ = 0, dropout_index0_ = 0;
    GradSync *sync_ = nullptr;
    Buf xs_; // residual stream at every block boundary, (L+1) x N x C
    std::vector<BlockActs> acts_;
    std::vector<Buf> att_kept_, lse_kept_; // recompute 2: every block's attention output, lse
    Buf hf_, meanf_, rstdf_, logits_, losses_;
    Buf dlogits_, dhf_, dx_, dxo_, dx2_, df2_, dh_, dp_, datt_, dq_, dk_, dv_, dg_, df1_;
};

} // namespace stx
