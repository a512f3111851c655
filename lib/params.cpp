// params.cpp: the parameter table and the initializer of the released code (DESIGN.md):
// linear weights std sqrt(0.125 / fan_in), W_p and W_2 also / sqrt(2 N), token table and
// start vector std 0.01, each position table 0.01 / sqrt(axes), biases 0, gains 1, W_out 0.
#include "params.h"

#include <cmath>
#include <cstring>

#include "philox.h"

namespace stx {
namespace {

int32_t add(ParamTable *t, const std::string &name, std::initializer_list<int64_t> shape,
            double std_dev, double value, bool decay) {
    TensorSpec s;
    s.name = name;
    s.ndim = static_cast<int32_t>(shape.size());
    s.numel = 1;
    int32_t i = 0;
    for (int64_t v : shape) {
        s.shape[i++] = v;
        s.numel *= v;
    }
    s.offset = t->total;
    s.decay = decay;
    s.init_std = std_dev;
    s.init_value = value;
    t->total += s.numel;
    t->tensors.push_back(s);
    return static_cast<int32_t>(t->tensors.size() - 1);
}

int32_t matrix(ParamTable *t, const std::string &name, int64_t out, int64_t in, double scale) {
    return add(t, name, {out, in}, std::sqrt(0.125 / static_cast<double>(in)) * scale, 0.0, true);
}

int32_t vec(ParamTable *t, const std::string &name, int64_t n, double value) {
    return add(t, name, {n}, 0.0, value, false);
}

} // namespace

ParamTable build_param_table(const Dims &d) {
    ParamTable t;
    t.tok_emb = add(&t, "tok_emb", {STX_VOCAB, d.C}, 0.01, 0.0, true);
    t.start = add(&t, "start", {d.C}, 0.01, 0.0, false);
    for (int32_t a = 0; a < d.n_axes; ++a)
        t.pos_emb.push_back(add(&t, "pos_emb." + std::to_string(a), {d.pos_shape[a], d.C},
                                0.01 / std::sqrt(static_cast<double>(d.n_axes)), 0.0, true));
    const double resid_scale = 1.0 / std::sqrt(2.0 * d.L);
    for (int32_t l = 0; l < d.L; ++l) {
        const std::string p = "h." + std::to_string(l) + ".";
        LayerParams lp;
        lp.ln1_g = vec(&t, p + "ln1.g", d.C, 1.0);
        lp.ln1_b = vec(&t, p + "ln1.b", d.C, 0.0);
        lp.q_w = matrix(&t, p + "attn.q.w", d.QK, d.C, 1.0);
        lp.q_b = vec(&t, p + "attn.q.b", d.QK, 0.0);
        lp.k_w = matrix(&t, p + "attn.k.w", d.QK, d.C, 1.0);
        lp.k_b = vec(&t, p + "attn.k.b", d.QK, 0.0);
        lp.v_w = matrix(&t, p + "attn.v.w", d.C, d.C, 1.0);
        lp.v_b = vec(&t, p + "attn.v.b", d.C, 0.0);
        lp.proj_w = matrix(&t, p + "attn.proj.w", d.C, d.C, resid_scale);
        lp.proj_b = vec(&t, p + "attn.proj.b", d.C, 0.0);
        lp.ln2_g = vec(&t, p + "ln2.g", d.C, 1.0);
        lp.ln2_b = vec(&t, p + "ln2.b", d.C, 0.0);
        lp.w1 = matrix(&t, p + "ff.w1", d.F, d.C, 1.0);
        lp.b1 = vec(&t, p + "ff.b1", d.F, 0.0);
        lp.w2 = matrix(&t, p + "ff.w2", d.C, d.F, resid_scale);
        lp.b2 = vec(&t, p + "ff.b2", d.C, 0.0);
        t.layers.push_back(lp);
    }
    t.lnf_g = vec(&t, "ln_f.g", d.C, 1.0);
    t.lnf_b = vec(&t, "ln_f.b", d.C, 0.0);
    t.w_out = add(&t, "w_out", {STX_VOCAB, d.C}, 0.0, 0.0, true); // zero at init (2.3)
    return t;
}

int32_t ParamTable::find(const char *name) const {
    if (!name) return -1;
    for (size_t i = 0; i < tensors.size(); ++i)
        if (tensors[i].name == name) return static_cast<int32_t>(i);
    return -1;
}

double init_value_at(const ParamTable &t, int32_t tensor, int64_t index, uint64_t seed) {
    const TensorSpec &s = t.tensors[static_cast<size_t>(tensor)];
    if (s.init_std <= 0.0) return s.init_value;
    // Box-Muller on two 32-bit draws; stream 0x80000000 + tensor keeps init apart from the
    // dropout streams (2 * layer + branch).
    Philox4 r = philox4x32_10(static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0,
                              0, static_cast<uint32_t>(seed) ^ static_cast<uint32_t>(seed >> 32),
                              0x80000000u + static_cast<uint32_t>(tensor));
    const double u1 = (static_cast<double>(r.v[0]) + 1.0) / 4294967296.0; // (0, 1]
    const double u2 = static_cast<double>(r.v[1]) / 4294967296.0;
    return s.init_std * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

} // namespace stx
