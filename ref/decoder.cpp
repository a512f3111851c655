// decoder.cpp: the CPU decoder (lib/backend.h Decoder): one row per sequence through every
// block with the ref/ ops in the same order as the layer loop (lib/model_loop.h), attending to
// a key/value cache laid out and read by lib/decode_plan.h; a prompt goes through one ordinary
// forward whose keys and values fill the cache. Written to be read: the CUDA decoder is the
// fast one.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "backend.h"
#include "decode_plan.h"
#include "ops.h"

namespace stx {
namespace ref {
namespace {

template <typename S> class RefDecoder final : public Decoder, private ForwardObserver {
public:
    RefDecoder(const DecoderSource<S> &src, int32_t batch)
        : spec_(src.spec), model_(src.model), params_(src.params), B_(batch), d_(src.spec->dims) {}

    stx_status init() {
        stx_status st = build_decode_plans(*spec_, &plans_);
        if (st != STX_OK) return st;
        layouts_ = spec_->layer_layouts; // the user block masks the plans point into
        const size_t B = static_cast<size_t>(B_);
        for (const DecodePlan &p : plans_) {
            const size_t rows = B * static_cast<size_t>(p.n_head) * static_cast<size_t>(p.slots);
            kcache_.emplace_back(rows * static_cast<size_t>(d_.Dq));
            vcache_.emplace_back(rows * static_cast<size_t>(d_.Dv));
        }
        const size_t C = static_cast<size_t>(d_.C), QK = static_cast<size_t>(d_.QK);
        const size_t F = static_cast<size_t>(d_.F);
        for (std::vector<S> *v : {&x_, &h_, &v_, &att_, &p_, &x2_, &f2_}) v->assign(B * C, S(0));
        for (std::vector<S> *v : {&q_, &k_}) v->assign(B * QK, S(0));
        for (std::vector<S> *v : {&f1_, &g_}) v->assign(B * F, S(0));
        for (std::vector<S> *v : {&mean_, &rstd_}) v->assign(B, S(0));
        logits_.assign(B * STX_VOCAB, S(0));
        return reset();
    }

    stx_status reset() override {
        const S *start = param(spec_->table.start);
        for (int32_t b = 0; b < B_; ++b)
            std::copy(start, start + d_.C, x_.begin() + static_cast<size_t>(b) * d_.C);
        pos_ = 0;
        run_row(0);
        return STX_OK;
    }

    stx_status prefill(const uint8_t *tokens, int32_t n) override {
        const stx_status st = run_prefill(*model_, this, tokens, B_, n, &prefill_);
        if (st != STX_OK) return st;
        pos_ = n;
        return STX_OK;
    }

    stx_status step(const uint8_t *bytes) override {
        const int64_t row = pos_ + 1;
        embed(bytes, pos_);
        run_row(row);
        pos_ = row;
        return STX_OK;
    }

    stx_status logits_read(stx_dtype dtype, void *dst) const override {
        for (size_t i = 0; i < logits_.size(); ++i) {
            if (dtype == STX_DTYPE_F64)
                static_cast<double *>(dst)[i] = static_cast<double>(logits_[i]);
            else
                static_cast<float *>(dst)[i] = static_cast<float>(logits_[i]);
        }
        return STX_OK;
    }

    int64_t position() const override { return pos_; }

private:
    const S *param(int32_t t) const {
        return params_ + spec_->table.tensors[static_cast<size_t>(t)].offset;
    }

    // x_ = the input of the row after position `pos`: tok[bytes[b]] + the position embeddings
    // of `pos` (the layer loop's shift right, ref/embedding.cpp).
    void embed(const uint8_t *bytes, int64_t pos) {
        int32_t coord[STX_MAX_POS_AXES] = {0, 0, 0, 0};
        int64_t rest = pos;
        for (int32_t a = d_.n_axes - 1; a >= 0; --a) {
            coord[a] = static_cast<int32_t>(rest % d_.pos_shape[a]);
            rest /= d_.pos_shape[a];
        }
        for (int32_t b = 0; b < B_; ++b) {
            S *o = &x_[static_cast<size_t>(b) * d_.C];
            const S *e = param(spec_->table.tok_emb) + static_cast<int64_t>(bytes[b]) * d_.C;
            for (int32_t c = 0; c < d_.C; ++c) o[c] = e[c];
            for (int32_t a = 0; a < d_.n_axes; ++a) {
                const S *pa = param(spec_->table.pos_emb[static_cast<size_t>(a)]) +
                              static_cast<int64_t>(coord[a]) * d_.C;
                for (int32_t c = 0; c < d_.C; ++c) o[c] += pa[c];
            }
        }
    }

    S *cache_row(std::vector<S> &cache, const DecodePlan &p, int32_t b, int32_t h, int64_t slot,
                 int32_t D) {
        return &cache[((static_cast<size_t>(b) * p.n_head + h) * static_cast<size_t>(p.slots) +
                       static_cast<size_t>(slot)) *
                      static_cast<size_t>(D)];
    }

    // Writes position `pos`'s key and value rows of sequences b0 .. b0 + nb (k, v: nb rows
    // of QK and C, k_stride and v_stride apart) into layer l.
    void cache_write(int32_t l, int64_t pos, int32_t b0, int32_t nb, const S *k, int64_t k_stride,
                     const S *v, int64_t v_stride) {
        const DecodePlan &p = plans_[static_cast<size_t>(l)];
        for (int32_t i = 0; i < nb; ++i)
            for (int32_t h = 0; h < d_.H; ++h) {
                const int32_t b = b0 + i;
                int64_t slots[2];
                decode_write_slots(p.heads[static_cast<size_t>(h)], pos, &slots[0], &slots[1]);
                const S *kr = k + i * k_stride + static_cast<int64_t>(h) * d_.Dq;
                const S *vr = v + i * v_stride + static_cast<int64_t>(h) * d_.Dv;
                for (int64_t s : slots) {
                    if (s < 0) continue;
                    std::copy(kr, kr + d_.Dq,
                              cache_row(kcache_[static_cast<size_t>(l)], p, b, h, s, d_.Dq));
                    std::copy(vr, vr + d_.Dv,
                              cache_row(vcache_[static_cast<size_t>(l)], p, b, h, s, d_.Dv));
                }
            }
    }

    // att_ = attention of the query rows q_ at position `row` over layer l's cache.
    void attend(int32_t l, int64_t row) {
        const DecodePlan &p = plans_[static_cast<size_t>(l)];
        const double scale = 1.0 / std::sqrt(static_cast<double>(d_.Dq));
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t bh = 0; bh < static_cast<int64_t>(B_) * d_.H; ++bh) {
            const int32_t b = static_cast<int32_t>(bh / d_.H), h = static_cast<int32_t>(bh % d_.H);
            const DecodeHead &dh = p.heads[static_cast<size_t>(h)];
            const S *q = &q_[static_cast<size_t>(b) * d_.QK + static_cast<size_t>(h) * d_.Dq];
            std::vector<double> score;
            std::vector<int64_t> slot;
            for (int32_t part = 0; part < dh.n_comps; ++part) {
                const int64_t n = decode_candidate_count(dh.comps[part], row);
                for (int64_t t = 0; t < n; ++t) {
                    const int64_t key = decode_candidate(dh.comps[part], h, row, t);
                    if (key < 0 || key > row ||
                        !decode_reads(dh, p.user, p.user_nb, p.user_bs, h, part, row, key))
                        continue;
                    const int64_t s = decode_read_slot(dh, row, key);
                    const S *k = cache_row(kcache_[static_cast<size_t>(l)], p, b, h, s, d_.Dq);
                    double dot = 0.0;
                    for (int32_t i = 0; i < d_.Dq; ++i)
                        dot += static_cast<double>(q[i]) * static_cast<double>(k[i]);
                    score.push_back(dot * scale);
                    slot.push_back(s);
                }
            }
            const double top = *std::max_element(score.begin(), score.end());
            double sum = 0.0;
            for (double &s : score) sum += (s = std::exp(s - top));
            std::vector<double> acc(static_cast<size_t>(d_.Dv), 0.0);
            for (size_t e = 0; e < slot.size(); ++e) {
                const S *v = cache_row(vcache_[static_cast<size_t>(l)], p, b, h, slot[e], d_.Dv);
                for (int32_t i = 0; i < d_.Dv; ++i)
                    acc[static_cast<size_t>(i)] += score[e] * static_cast<double>(v[i]);
            }
            S *o = &att_[static_cast<size_t>(b) * d_.C + static_cast<size_t>(h) * d_.Dv];
            for (int32_t i = 0; i < d_.Dv; ++i)
                o[i] = static_cast<S>(acc[static_cast<size_t>(i)] / sum);
        }
    }

    // The row at position `row` (inputs in x_) through every block and the head; the same ops
    // in the same order as LoopModel::block_forward with no dropout.
    void run_row(int64_t row) {
        const int32_t N = B_, C = d_.C;
        const ParamTable &pt = spec_->table;
        for (int32_t l = 0; l < d_.L; ++l) {
            const LayerParams &lp = pt.layers[static_cast<size_t>(l)];
            layernorm_forward<S>(h_.data(), mean_.data(), rstd_.data(), x_.data(), param(lp.ln1_g),
                                 param(lp.ln1_b), N, C, kBlockLayerNormEps);
            linear_forward<S>(q_.data(), h_.data(), param(lp.q_w), param(lp.q_b), N, C, d_.QK);
            linear_forward<S>(k_.data(), h_.data(), param(lp.k_w), param(lp.k_b), N, C, d_.QK);
            linear_forward<S>(v_.data(), h_.data(), param(lp.v_w), param(lp.v_b), N, C, C);
            cache_write(l, row, 0, B_, k_.data(), d_.QK, v_.data(), C);
            attend(l, row);
            linear_forward<S>(p_.data(), att_.data(), param(lp.proj_w), param(lp.proj_b), N, C, C);
            residual_dropout_forward<S>(x2_.data(), x_.data(), p_.data(), int64_t(N) * C, 0.0, 0, 0,
                                        0);
            layernorm_forward<S>(h_.data(), mean_.data(), rstd_.data(), x2_.data(), param(lp.ln2_g),
                                 param(lp.ln2_b), N, C, kBlockLayerNormEps);
            linear_forward<S>(f1_.data(), h_.data(), param(lp.w1), param(lp.b1), N, C, d_.F);
            gelu_forward<S>(g_.data(), f1_.data(), int64_t(N) * d_.F);
            linear_forward<S>(f2_.data(), g_.data(), param(lp.w2), param(lp.b2), N, d_.F, C);
            residual_dropout_forward<S>(x_.data(), x2_.data(), f2_.data(), int64_t(N) * C, 0.0, 0,
                                        0, 0);
        }
        layernorm_forward<S>(h_.data(), mean_.data(), rstd_.data(), x_.data(), param(pt.lnf_g),
                             param(pt.lnf_b), N, C, kFinalLayerNormEps);
        linear_forward<S>(logits_.data(), h_.data(), param(pt.w_out),
                          static_cast<const S *>(nullptr), N, C, STX_VOCAB);
    }

    // The prefill's forward, layer by layer: every row's key and value into the cache.
    void keys_values(int32_t layer, const void *k, const void *v) override {
        const S *kk = static_cast<const S *>(k), *vv = static_cast<const S *>(v);
        const int64_t T = prefill_.T;
        const int64_t row_k = T * d_.QK, row_v = T * d_.C; // stride between sequences
        for (int64_t t = 0; t < T; ++t)
            cache_write(layer, t, prefill_.b0, prefill_.nb, kk + t * d_.QK, row_k, vv + t * d_.C,
                        row_v);
    }

    void logits(const void *logits) override {
        const S *all = static_cast<const S *>(logits);
        for (int32_t b = 0; b < prefill_.nb; ++b)
            std::copy(all + (static_cast<int64_t>(b) * prefill_.T + prefill_.T - 1) * STX_VOCAB,
                      all + (static_cast<int64_t>(b) * prefill_.T + prefill_.T) * STX_VOCAB,
                      logits_.begin() + static_cast<size_t>(prefill_.b0 + b) * STX_VOCAB);
    }

    const ModelSpec *spec_;
    Backend *model_;
    const S *params_;
    int32_t B_;
    Dims d_;
    std::vector<DecodePlan> plans_;
    std::vector<std::shared_ptr<const Layout>> layouts_;
    std::vector<std::vector<S>> kcache_, vcache_; // per layer [B][H][slots][D]
    std::vector<S> x_, h_, mean_, rstd_, q_, k_, v_, att_, p_, x2_, f1_, g_, f2_, logits_;
    int64_t pos_ = 0;
    PrefillGroup prefill_; // the forward running now
};

} // namespace

template <typename S>
stx_status create_decoder(const DecoderSource<S> &src, int32_t batch,
                          std::unique_ptr<Decoder> *out) {
    std::unique_ptr<RefDecoder<S>> dec(new RefDecoder<S>(src, batch));
    const stx_status st = dec->init();
    if (st != STX_OK) return st;
    *out = std::move(dec);
    return STX_OK;
}

template stx_status create_decoder<float>(const DecoderSource<float> &, int32_t,
                                          std::unique_ptr<Decoder> *);
template stx_status create_decoder<double>(const DecoderSource<double> &, int32_t,
                                           std::unique_ptr<Decoder> *);

} // namespace ref
} // namespace stx
