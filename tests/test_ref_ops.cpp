// test_ref_ops.cpp: the CPU reference ops other than attention (embedding, layernorm,
// linear, gelu, residual dropout, cross-entropy, AdamW, sum of squares). Every backward is
// proven by central finite differences in double on small awkward shapes against the scalar
// L = sum(out * dout) with a random dout, for every gradient it produces; the += write rule
// is checked for each; forwards are checked against naive formulas or hand-computed values;
// the float instantiations are compared with the double ones.
// harness.h is C: cmocka 1.1.5's header has no extern "C" of its own, so it is included
// inside one, after the C library headers it pulls in (their C++ forms hold templates, which
// cannot have C linkage); its `0.0 : INFINITY` (a float in C++) trips -Wdouble-promotion.
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
extern "C" {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#include "harness.h"
#pragma GCC diagnostic pop
}

#include "ops.h"
#include "philox.h"

#include <cmath>
#include <cstring>
#include <vector>

using stx::ref::adamw_update;
using stx::ref::crossentropy_backward;
using stx::ref::crossentropy_forward;
using stx::ref::embedding_backward;
using stx::ref::embedding_forward;
using stx::ref::gelu_backward;
using stx::ref::gelu_forward;
using stx::ref::layernorm_backward;
using stx::ref::layernorm_forward;
using stx::ref::linear_backward;
using stx::ref::linear_forward;
using stx::ref::residual_dropout_backward;
using stx::ref::residual_dropout_forward;
using stx::ref::sum_squares;

typedef std::vector<double> vec;
typedef std::vector<float> fvec;

static const double FD_STEP = 1e-5;
static const double FD_BOUND = 1e-6;     // analytic vs finite-difference gradient, double
static const double ACCUM_BOUND = 1e-12; // R + 2 g against two backward calls onto R
static const double FLOAT_BOUND = 1e-5;  // float instantiation vs double

static vec rand_vec(stx_test_rng *r, size_t n, double scale) {
    vec v(n);
    stx_test_fill(r, v.data(), n, scale);
    return v;
}

static fvec to_float(const vec &v) {
    fvec f(v.size());
    for (size_t i = 0; i < v.size(); ++i) f[i] = static_cast<float>(v[i]);
    return f;
}

static vec to_double(const fvec &f) {
    vec v(f.size());
    for (size_t i = 0; i < f.size(); ++i) v[i] = static_cast<double>(f[i]);
    return v;
}

static double dot(const vec &a, const vec &b) {
    double s = 0.0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
}

static void expect_close(const char *name, const vec &got, const vec &ref, double bound) {
    assert_int_equal(got.size(), ref.size());
    stx_test_expect_close(name, got.data(), ref.data(), got.size(), bound);
}

// Central differences of loss() with respect to every element of x (x is restored).
template <typename F> static vec fd_grad(vec &x, F loss) {
    vec g(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        const double x0 = x[i];
        x[i] = x0 + FD_STEP;
        const double lp = loss();
        x[i] = x0 - FD_STEP;
        const double lm = loss();
        x[i] = x0;
        g[i] = (lp - lm) / (2.0 * FD_STEP);
    }
    return g;
}

// One gradient of an op: its buffer, the value one backward call gives from zero, its name.
struct Grad {
    vec *buf;
    vec single;
    const char *name;
};

// The += rule: pre-fill every gradient with random values R, call backward twice, expect
// R + 2 g for each.
template <typename F>
static void check_accumulates(stx_test_rng *r, std::vector<Grad> &grads, F backward) {
    std::vector<vec> pre;
    for (Grad &g : grads) {
        *g.buf = rand_vec(r, g.single.size(), 1.0);
        pre.push_back(*g.buf);
    }
    backward();
    backward();
    for (size_t k = 0; k < grads.size(); ++k) {
        vec expect(pre[k].size());
        for (size_t i = 0; i < expect.size(); ++i) expect[i] = pre[k][i] + 2.0 * grads[k].single[i];
        expect_close(grads[k].name, *grads[k].buf, expect, ACCUM_BOUND);
    }
}

// ---------------------------------------------------------------------------------------
// Embedding

// Hand-checked case: pos_shape (2, 3), so position p has coordinates (p / 3, p % 3).
static void test_embedding_forward_hand(void **state) {
    (void)state;
    const int32_t B = 1, T = 6, C = 2;
    const int32_t shape[2] = {2, 3};
    const uint8_t tokens[6] = {7, 3, 7, 200, 1, 9};
    vec tok(256 * C), start = {-1.0, -2.0}, pos0(2 * C), pos1(3 * C);
    for (int v = 0; v < 256; ++v)
        for (int c = 0; c < C; ++c) tok[v * C + c] = 1000.0 * v + c;
    for (int j = 0; j < 2; ++j)
        for (int c = 0; c < C; ++c) pos0[j * C + c] = 100.0 * (j + 1) + 0.5 * c;
    for (int j = 0; j < 3; ++j)
        for (int c = 0; c < C; ++c) pos1[j * C + c] = 10.0 * (j + 1);
    const double *pos[2] = {pos0.data(), pos1.data()};
    vec out(B * T * C);
    embedding_forward(out.data(), tokens, tok.data(), start.data(), pos, shape, 2, B, T, C);
    const vec expect = {-1.0,     -2.0,     // slot 0: start only
                        7110.0,   7111.5,   // x=7,   p=0 -> (0,0)
                        3120.0,   3121.5,   // x=3,   p=1 -> (0,1)
                        7130.0,   7131.5,   // x=7,   p=2 -> (0,2)
                        200210.0, 200211.5, // x=200, p=3 -> (1,0)
                        1220.0,   1221.5};  // x=1,   p=4 -> (1,1)
    expect_close("embedding out", out, expect, 0.0);
}

static void check_embedding_fd(const std::vector<int32_t> &shape, uint64_t seed) {
    stx_test_rng rng = {seed};
    const int32_t B = 2, T = 5, C = 6;
    const int32_t n_axes = static_cast<int32_t>(shape.size());
    std::vector<uint8_t> tokens(B * T);
    stx_test_fill_bytes(&rng, tokens.data(), tokens.size());
    for (size_t i = 0; i < tokens.size(); i += 2) tokens[i] &= 7; // force repeated tokens
    vec tok = rand_vec(&rng, 256 * C, 1.0), start = rand_vec(&rng, C, 1.0);
    std::vector<vec> pos;
    for (int32_t a = 0; a < n_axes; ++a) pos.push_back(rand_vec(&rng, shape[a] * C, 1.0));
    const vec dout = rand_vec(&rng, B * T * C, 1.0);
    vec out(B * T * C);
    auto loss = [&]() {
        std::vector<const double *> pp;
        for (vec &p : pos) pp.push_back(p.data());
        embedding_forward(out.data(), tokens.data(), tok.data(), start.data(), pp.data(),
                          shape.data(), n_axes, B, T, C);
        return dot(out, dout);
    };
    vec dtok(tok.size()), dstart(C);
    std::vector<vec> dpos;
    for (int32_t a = 0; a < n_axes; ++a) dpos.push_back(vec(pos[a].size()));
    auto backward = [&]() {
        std::vector<double *> dp;
        for (vec &d : dpos) dp.push_back(d.data());
        embedding_backward(dtok.data(), dstart.data(), dp.data(), dout.data(), tokens.data(),
                           shape.data(), n_axes, B, T, C);
    };
    loss();
    backward();
    expect_close("dtok", dtok, fd_grad(tok, loss), FD_BOUND);
    expect_close("dstart", dstart, fd_grad(start, loss), FD_BOUND);
    for (int32_t a = 0; a < n_axes; ++a)
        expect_close("dpos", dpos[a], fd_grad(pos[a], loss), FD_BOUND);
    std::vector<Grad> grads = {{&dtok, dtok, "dtok (+=)"}, {&dstart, dstart, "dstart (+=)"}};
    for (int32_t a = 0; a < n_axes; ++a) grads.push_back({&dpos[a], dpos[a], "dpos (+=)"});
    check_accumulates(&rng, grads, backward);
}

static void test_embedding_fd(void **state) {
    (void)state;
    check_embedding_fd({5}, 101);
    check_embedding_fd({3, 2}, 102);
    check_embedding_fd({2, 2, 2}, 103);
}

// ---------------------------------------------------------------------------------------
// LayerNorm

static void test_layernorm_forward(void **state) {
    (void)state;
    stx_test_rng rng = {201};
    const int64_t N = 7;
    const int32_t C = 6;
    const double eps = 1e-5;
    vec inp = rand_vec(&rng, N * C, 2.0);
    for (int64_t n = 0; n < N; ++n)
        for (int32_t c = 0; c < C; ++c) inp[n * C + c] += 3.0 * static_cast<double>(n) - 7.0;
    vec ones(C, 1.0), zeros(C, 0.0), out(N * C), mean(N), rstd(N);
    layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), ones.data(), zeros.data(),
                      N, C, eps);
    vec naive_mean(N), naive_rstd(N);
    for (int64_t n = 0; n < N; ++n) {
        double m = 0.0, v = 0.0, om = 0.0, ov = 0.0;
        for (int32_t c = 0; c < C; ++c) m += inp[n * C + c] / C;
        for (int32_t c = 0; c < C; ++c) v += (inp[n * C + c] - m) * (inp[n * C + c] - m) / C;
        naive_mean[n] = m;
        naive_rstd[n] = 1.0 / std::sqrt(v + eps);
        for (int32_t c = 0; c < C; ++c) om += out[n * C + c] / C;
        for (int32_t c = 0; c < C; ++c) ov += (out[n * C + c] - om) * (out[n * C + c] - om) / C;
        assert_true(std::fabs(om) < 1e-12);
        assert_true(std::fabs(ov - v / (v + eps)) < 1e-12); // var 1 up to the eps
        assert_true(std::fabs(ov - 1.0) < 1e-3);
    }
    expect_close("layernorm mean", mean, naive_mean, 1e-14);
    expect_close("layernorm rstd", rstd, naive_rstd, 1e-14);
    // With a gain and a bias.
    vec g = rand_vec(&rng, C, 1.0), b = rand_vec(&rng, C, 1.0), expect(N * C);
    layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), g.data(), b.data(), N, C,
                      eps);
    for (int64_t n = 0; n < N; ++n)
        for (int32_t c = 0; c < C; ++c)
            expect[n * C + c] = (inp[n * C + c] - naive_mean[n]) * naive_rstd[n] * g[c] + b[c];
    expect_close("layernorm out", out, expect, 1e-14);
}

static void test_layernorm_fd(void **state) {
    (void)state;
    stx_test_rng rng = {202};
    const int64_t N = 7;
    const int32_t C = 6;
    const double eps = 1e-5;
    vec inp = rand_vec(&rng, N * C, 2.0), g = rand_vec(&rng, C, 1.5), b = rand_vec(&rng, C, 1.0);
    const vec dout = rand_vec(&rng, N * C, 1.0);
    vec out(N * C), mean(N), rstd(N);
    auto loss = [&]() {
        layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), g.data(), b.data(), N,
                          C, eps);
        return dot(out, dout);
    };
    loss();
    vec dinp(N * C), dg(C), db(C);
    auto backward = [&]() {
        layernorm_backward(dinp.data(), dg.data(), db.data(), dout.data(), inp.data(), g.data(),
                           mean.data(), rstd.data(), N, C);
    };
    backward();
    expect_close("layernorm dinp", dinp, fd_grad(inp, loss), FD_BOUND);
    expect_close("layernorm dg", dg, fd_grad(g, loss), FD_BOUND);
    expect_close("layernorm db", db, fd_grad(b, loss), FD_BOUND);
    loss(); // restore the saved statistics of the unperturbed input
    std::vector<Grad> grads = {
        {&dinp, dinp, "layernorm dinp (+=)"}, {&dg, dg, "dg (+=)"}, {&db, db, "db (+=)"}};
    check_accumulates(&rng, grads, backward);
}

// ---------------------------------------------------------------------------------------
// Linear

static void test_linear_forward(void **state) {
    (void)state;
    stx_test_rng rng = {301};
    const int64_t N = 7;
    const int32_t IC = 6, OC = 3;
    vec inp = rand_vec(&rng, N * IC, 1.0), w = rand_vec(&rng, OC * IC, 1.0),
        bias = rand_vec(&rng, OC, 1.0), out(N * OC), expect(N * OC), expect_nb(N * OC);
    for (int64_t n = 0; n < N; ++n)
        for (int32_t o = 0; o < OC; ++o) {
            double s = 0.0;
            for (int32_t i = 0; i < IC; ++i) s += inp[n * IC + i] * w[o * IC + i];
            expect_nb[n * OC + o] = s;
            expect[n * OC + o] = s + bias[o];
        }
    linear_forward(out.data(), inp.data(), w.data(), bias.data(), N, IC, OC);
    expect_close("linear out", out, expect, 1e-14);
    linear_forward(out.data(), inp.data(), w.data(), static_cast<const double *>(nullptr), N, IC,
                   OC);
    expect_close("linear out (no bias)", out, expect_nb, 1e-14);
}

static void test_linear_fd(void **state) {
    (void)state;
    stx_test_rng rng = {302};
    const int64_t N = 7;
    const int32_t IC = 6, OC = 3;
    vec inp = rand_vec(&rng, N * IC, 1.0), w = rand_vec(&rng, OC * IC, 1.0),
        bias = rand_vec(&rng, OC, 1.0);
    const vec dout = rand_vec(&rng, N * OC, 1.0);
    vec out(N * OC);
    auto loss = [&]() {
        linear_forward(out.data(), inp.data(), w.data(), bias.data(), N, IC, OC);
        return dot(out, dout);
    };
    vec dinp(N * IC), dw(OC * IC), dbias(OC);
    auto backward = [&]() {
        linear_backward(dinp.data(), dw.data(), dbias.data(), dout.data(), inp.data(), w.data(), N,
                        IC, OC);
    };
    backward();
    expect_close("linear dinp", dinp, fd_grad(inp, loss), FD_BOUND);
    expect_close("linear dw", dw, fd_grad(w, loss), FD_BOUND);
    expect_close("linear dbias", dbias, fd_grad(bias, loss), FD_BOUND);
    // No bias: same dinp and dw, dbias NULL is not touched.
    vec dinp2(N * IC), dw2(OC * IC);
    linear_backward(dinp2.data(), dw2.data(), static_cast<double *>(nullptr), dout.data(),
                    inp.data(), w.data(), N, IC, OC);
    expect_close("linear dinp (no bias)", dinp2, dinp, 0.0);
    expect_close("linear dw (no bias)", dw2, dw, 0.0);
    std::vector<Grad> grads = {
        {&dinp, dinp, "linear dinp (+=)"}, {&dw, dw, "dw (+=)"}, {&dbias, dbias, "dbias (+=)"}};
    check_accumulates(&rng, grads, backward);
}

// ---------------------------------------------------------------------------------------
// GELU

static void test_gelu(void **state) {
    (void)state;
    stx_test_rng rng = {401};
    const int64_t n = 43;
    vec inp = rand_vec(&rng, n, 4.0), out(n), expect(n);
    const vec dout = rand_vec(&rng, n, 1.0);
    gelu_forward(out.data(), inp.data(), n);
    for (int64_t i = 0; i < n; ++i) expect[i] = inp[i] / (1.0 + std::exp(-1.702 * inp[i]));
    expect_close("gelu out", out, expect, 1e-14);
    auto loss = [&]() {
        gelu_forward(out.data(), inp.data(), n);
        return dot(out, dout);
    };
    vec dinp(n);
    auto backward = [&]() { gelu_backward(dinp.data(), dout.data(), inp.data(), n); };
    backward();
    expect_close("gelu dinp", dinp, fd_grad(inp, loss), FD_BOUND);
    std::vector<Grad> grads = {{&dinp, dinp, "gelu dinp (+=)"}};
    check_accumulates(&rng, grads, backward);
}

// ---------------------------------------------------------------------------------------
// Residual dropout

static void test_dropout_identity(void **state) {
    (void)state;
    stx_test_rng rng = {501};
    const int64_t n = 1001;
    const vec resid = rand_vec(&rng, n, 1.0), branch = rand_vec(&rng, n, 1.0),
              dout = rand_vec(&rng, n, 1.0);
    vec out(n), sum(n);
    for (int64_t i = 0; i < n; ++i) sum[i] = resid[i] + branch[i];
    residual_dropout_forward(out.data(), resid.data(), branch.data(), n, 0.0, 7, 3, 11);
    expect_close("dropout p=0 out", out, sum, 0.0);
    const fvec rf = to_float(resid), bf = to_float(branch);
    fvec outf(n);
    residual_dropout_forward(outf.data(), rf.data(), bf.data(), n, 0.0, 7, 3, 11);
    for (int64_t i = 0; i < n; ++i) assert_true(outf[i] == rf[i] + bf[i]);
    vec dr = rand_vec(&rng, n, 1.0), db = rand_vec(&rng, n, 1.0);
    vec expect_dr(n), expect_db(n);
    for (int64_t i = 0; i < n; ++i) {
        expect_dr[i] = dr[i] + dout[i];
        expect_db[i] = db[i] + dout[i];
    }
    residual_dropout_backward(dr.data(), db.data(), dout.data(), n, 0.0, 7, 3, 11);
    expect_close("dropout p=0 dresid", dr, expect_dr, 0.0);
    expect_close("dropout p=0 dbranch", db, expect_db, 0.0);
}

// The mask as the op applies it: dbranch from zero is dout / (1 - p) where kept, 0 elsewhere.
static std::vector<uint8_t> dropout_mask(int64_t n, double p, uint64_t seed, uint32_t stream,
                                         uint64_t step) {
    vec dout(n, 1.0), dr(n), db(n);
    residual_dropout_backward(dr.data(), db.data(), dout.data(), n, p, seed, stream, step);
    std::vector<uint8_t> mask(n);
    for (int64_t i = 0; i < n; ++i) mask[i] = db[i] != 0.0;
    return mask;
}

static double mask_difference(const std::vector<uint8_t> &a, const std::vector<uint8_t> &b) {
    size_t d = 0;
    for (size_t i = 0; i < a.size(); ++i) d += a[i] != b[i];
    return static_cast<double>(d) / static_cast<double>(a.size());
}

static void test_dropout_mask(void **state) {
    (void)state;
    stx_test_rng rng = {502};
    const int64_t n = 100000;
    const double p = 0.3, scale = 1.0 / (1.0 - p);
    const uint64_t seed = 0x1234567890ABCDEFull, step = 5;
    const uint32_t stream = 3;
    const vec resid = rand_vec(&rng, n, 1.0), branch = rand_vec(&rng, n, 1.0),
              dout = rand_vec(&rng, n, 1.0);
    vec out(n), dr(n), db(n);
    residual_dropout_forward(out.data(), resid.data(), branch.data(), n, p, seed, stream, step);
    residual_dropout_backward(dr.data(), db.data(), dout.data(), n, p, seed, stream, step);
    int64_t kept = 0;
    const uint64_t threshold = stx::dropout_threshold(p);
    for (int64_t i = 0; i < n; ++i) {
        const bool keep =
            stx::dropout_keep(seed, stream, step, static_cast<uint64_t>(i), threshold);
        kept += keep;
        assert_true(dr[i] == dout[i]);
        if (keep) {
            assert_true(out[i] == resid[i] + branch[i] * scale);
            assert_true(db[i] == dout[i] * scale);
        } else {
            assert_true(out[i] == resid[i]);
            assert_true(db[i] == 0.0);
        }
    }
    const double frac = static_cast<double>(kept) / static_cast<double>(n);
    if (!(std::fabs(frac - 0.7) < 0.005))
        fail_msg("kept fraction %.5f, expected 0.7 +- 0.005", frac);
    const std::vector<uint8_t> base = dropout_mask(n, p, seed, stream, step);
    assert_true(mask_difference(base, dropout_mask(n, p, seed, stream, step)) == 0.0);
    // Independent masks differ on 2 p (1 - p) = 42% of the elements.
    assert_true(mask_difference(base, dropout_mask(n, p, seed + 1, stream, step)) > 0.35);
    assert_true(mask_difference(base, dropout_mask(n, p, seed, stream + 1, step)) > 0.35);
    assert_true(mask_difference(base, dropout_mask(n, p, seed, stream, step + 1)) > 0.35);
    assert_true(mask_difference(base, dropout_mask(n, p, seed ^ (1ull << 40), stream, step)) >
                0.35);
}

static void test_dropout_fd(void **state) {
    (void)state;
    stx_test_rng rng = {503};
    const int64_t n = 2 * 5 * 6;
    const double p = 0.3;
    const uint64_t seed = 99, step = 4;
    const uint32_t stream = 1;
    vec resid = rand_vec(&rng, n, 1.0), branch = rand_vec(&rng, n, 1.0);
    const vec dout = rand_vec(&rng, n, 1.0);
    vec out(n);
    auto loss = [&]() {
        residual_dropout_forward(out.data(), resid.data(), branch.data(), n, p, seed, stream, step);
        return dot(out, dout);
    };
    vec dr(n), db(n);
    auto backward = [&]() {
        residual_dropout_backward(dr.data(), db.data(), dout.data(), n, p, seed, stream, step);
    };
    backward();
    int64_t dropped = 0;
    for (int64_t i = 0; i < n; ++i) dropped += db[i] == 0.0;
    assert_true(dropped > 0 && dropped < n); // the check covers both kinds of element
    expect_close("dropout dresid", dr, fd_grad(resid, loss), FD_BOUND);
    expect_close("dropout dbranch", db, fd_grad(branch, loss), FD_BOUND);
    std::vector<Grad> grads = {{&dr, dr, "dresid (+=)"}, {&db, db, "dbranch (+=)"}};
    check_accumulates(&rng, grads, backward);
}

// ---------------------------------------------------------------------------------------
// Cross-entropy

static void test_crossentropy_forward(void **state) {
    (void)state;
    stx_test_rng rng = {601};
    const int64_t N = 5;
    const int32_t V = 256;
    const vec logits = rand_vec(&rng, N * V, 3.0);
    std::vector<uint8_t> targets(N);
    stx_test_fill_bytes(&rng, targets.data(), N);
    vec losses(N), expect(N);
    crossentropy_forward(losses.data(), logits.data(), targets.data(), N, V);
    for (int64_t n = 0; n < N; ++n) {
        double z = 0.0;
        for (int32_t v = 0; v < V; ++v) z += std::exp(logits[n * V + v]);
        expect[n] = -std::log(std::exp(logits[n * V + targets[n]]) / z);
    }
    expect_close("crossentropy losses", losses, expect, 1e-13);
    // Stability: a large shift leaves the losses unchanged and finite (float and double).
    vec shifted(logits);
    for (double &x : shifted) x += 1000.0;
    vec ls(N);
    crossentropy_forward(ls.data(), shifted.data(), targets.data(), N, V);
    expect_close("crossentropy losses (shifted)", ls, expect, 1e-10);
    const fvec sf = to_float(shifted);
    fvec lf(N);
    crossentropy_forward(lf.data(), sf.data(), targets.data(), N, V);
    vec ref_f(N);
    crossentropy_forward(ref_f.data(), to_double(sf).data(), targets.data(), N, V);
    expect_close("crossentropy losses (float, shifted)", to_double(lf), ref_f, FLOAT_BOUND);
}

static void test_crossentropy_fd(void **state) {
    (void)state;
    stx_test_rng rng = {602};
    const int64_t N = 3;
    const int32_t V = 256;
    vec logits = rand_vec(&rng, N * V, 3.0);
    std::vector<uint8_t> targets(N);
    stx_test_fill_bytes(&rng, targets.data(), N);
    const double scale = 0.5 + 0.25 * stx_test_uniform(&rng);
    vec losses(N);
    auto loss = [&]() {
        crossentropy_forward(losses.data(), logits.data(), targets.data(), N, V);
        double s = 0.0;
        for (double l : losses) s += scale * l;
        return s;
    };
    vec dlogits(N * V);
    auto backward = [&]() {
        crossentropy_backward(dlogits.data(), logits.data(), targets.data(), scale, N, V);
    };
    backward();
    expect_close("crossentropy dlogits", dlogits, fd_grad(logits, loss), FD_BOUND);
    std::vector<Grad> grads = {{&dlogits, dlogits, "dlogits (+=)"}};
    check_accumulates(&rng, grads, backward);
}

// ---------------------------------------------------------------------------------------
// AdamW and the sum of squares

static void test_adamw(void **state) {
    (void)state;
    const int64_t n = 7;
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1, gscale = 0.25;
    for (int decay = 0; decay < 2; ++decay) {
        stx_test_rng rng = {701};
        vec p = rand_vec(&rng, n, 1.0), m(n, 0.0), v(n, 0.0);
        vec hp(p), hm(m), hv(v); // the hand-computed reference
        fvec pf = to_float(p), mf(n, 0.0f), vf(n, 0.0f);
        for (int64_t t = 1; t <= 3; ++t) {
            const vec g = rand_vec(&rng, n, 2.0);
            adamw_update(p.data(), m.data(), v.data(), g.data(), n, gscale, lr, b1, b2, eps, wd,
                         decay != 0, t);
            const fvec gf = to_float(g);
            adamw_update(pf.data(), mf.data(), vf.data(), gf.data(), n, gscale, lr, b1, b2, eps, wd,
                         decay != 0, t);
            for (int64_t i = 0; i < n; ++i) {
                const double gi = gscale * g[i];
                hm[i] = b1 * hm[i] + (1.0 - b1) * gi;
                hv[i] = b2 * hv[i] + (1.0 - b2) * gi * gi;
                if (decay) hp[i] = hp[i] - lr * wd * hp[i];
                const double mhat = hm[i] / (1.0 - std::pow(b1, static_cast<double>(t)));
                const double vhat = hv[i] / (1.0 - std::pow(b2, static_cast<double>(t)));
                hp[i] = hp[i] - lr * mhat / (std::sqrt(vhat) + eps);
            }
            expect_close("adamw p", p, hp, 1e-14);
            expect_close("adamw m", m, hm, 1e-14);
            expect_close("adamw v", v, hv, 1e-14);
            expect_close("adamw p (float)", to_double(pf), hp, FLOAT_BOUND);
            expect_close("adamw m (float)", to_double(mf), hm, FLOAT_BOUND);
            expect_close("adamw v (float)", to_double(vf), hv, FLOAT_BOUND);
        }
    }
    // Decay on and off really differ, and decay pulls toward zero.
    stx_test_rng rng = {702};
    const vec p0 = rand_vec(&rng, n, 1.0), g = rand_vec(&rng, n, 1.0);
    vec pa(p0), pb(p0), ma(n, 0.0), va(n, 0.0), mb(n, 0.0), vb(n, 0.0);
    adamw_update(pa.data(), ma.data(), va.data(), g.data(), n, 1.0, lr, b1, b2, eps, wd, false, 1);
    adamw_update(pb.data(), mb.data(), vb.data(), g.data(), n, 1.0, lr, b1, b2, eps, wd, true, 1);
    for (int64_t i = 0; i < n; ++i)
        assert_true(std::fabs(pb[i] - (pa[i] - lr * wd * p0[i])) < 1e-15);
}

static void test_sum_squares(void **state) {
    (void)state;
    stx_test_rng rng = {801};
    const int64_t n = 200003; // several chunks, the last one partial
    const vec x = rand_vec(&rng, n, 3.0);
    double expect = 0.0;
    for (double xi : x) expect += xi * xi;
    const double got = sum_squares(x.data(), n);
    assert_true(std::fabs(got - expect) <= 1e-12 * expect);
    const fvec xf = to_float(x);
    double expect_f = 0.0;
    for (float xi : xf) expect_f += static_cast<double>(xi) * static_cast<double>(xi);
    const double got_f = sum_squares(xf.data(), n);
    assert_true(std::fabs(got_f - expect_f) <= 1e-12 * expect_f);
    assert_true(sum_squares(x.data(), 0) == 0.0);
    assert_true(sum_squares(x.data(), 1) == x[0] * x[0]);
    assert_true(got == sum_squares(x.data(), n)); // deterministic
}

// ---------------------------------------------------------------------------------------
// The float instantiations against the double ones (same inputs, rounded to float).

static void test_float_matches_double(void **state) {
    (void)state;
    stx_test_rng rng = {901};
    const int32_t B = 2, T = 5, C = 6, OC = 3, V = 256;
    const int64_t N = B * T;
    // LayerNorm.
    {
        const fvec inp = to_float(rand_vec(&rng, N * C, 2.0)), g = to_float(rand_vec(&rng, C, 1.0)),
                   b = to_float(rand_vec(&rng, C, 1.0)),
                   dout = to_float(rand_vec(&rng, N * C, 1.0));
        fvec out(N * C), mean(N), rstd(N), dinp(N * C), dg(C), db(C);
        layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), g.data(), b.data(), N,
                          C, 1e-5);
        layernorm_backward(dinp.data(), dg.data(), db.data(), dout.data(), inp.data(), g.data(),
                           mean.data(), rstd.data(), N, C);
        vec outd(N * C), meand(N), rstdd(N), dinpd(N * C), dgd(C), dbd(C);
        layernorm_forward(outd.data(), meand.data(), rstdd.data(), to_double(inp).data(),
                          to_double(g).data(), to_double(b).data(), N, C, 1e-5);
        layernorm_backward(dinpd.data(), dgd.data(), dbd.data(), to_double(dout).data(),
                           to_double(inp).data(), to_double(g).data(), meand.data(), rstdd.data(),
                           N, C);
        expect_close("layernorm out (float)", to_double(out), outd, FLOAT_BOUND);
        expect_close("layernorm dinp (float)", to_double(dinp), dinpd, FLOAT_BOUND);
        expect_close("layernorm dg (float)", to_double(dg), dgd, FLOAT_BOUND);
        expect_close("layernorm db (float)", to_double(db), dbd, FLOAT_BOUND);
    }
    // Linear.
    {
        const fvec inp = to_float(rand_vec(&rng, N * C, 1.0)),
                   w = to_float(rand_vec(&rng, OC * C, 1.0)),
                   bias = to_float(rand_vec(&rng, OC, 1.0)),
                   dout = to_float(rand_vec(&rng, N * OC, 1.0));
        fvec out(N * OC), dinp(N * C), dw(OC * C), dbias(OC);
        linear_forward(out.data(), inp.data(), w.data(), bias.data(), N, C, OC);
        linear_backward(dinp.data(), dw.data(), dbias.data(), dout.data(), inp.data(), w.data(), N,
                        C, OC);
        vec outd(N * OC), dinpd(N * C), dwd(OC * C), dbiasd(OC);
        linear_forward(outd.data(), to_double(inp).data(), to_double(w).data(),
                       to_double(bias).data(), N, C, OC);
        linear_backward(dinpd.data(), dwd.data(), dbiasd.data(), to_double(dout).data(),
                        to_double(inp).data(), to_double(w).data(), N, C, OC);
        expect_close("linear out (float)", to_double(out), outd, FLOAT_BOUND);
        expect_close("linear dinp (float)", to_double(dinp), dinpd, FLOAT_BOUND);
        expect_close("linear dw (float)", to_double(dw), dwd, FLOAT_BOUND);
        expect_close("linear dbias (float)", to_double(dbias), dbiasd, FLOAT_BOUND);
    }
    // GELU.
    {
        const fvec inp = to_float(rand_vec(&rng, N * C, 4.0)),
                   dout = to_float(rand_vec(&rng, N * C, 1.0));
        fvec out(N * C), dinp(N * C);
        gelu_forward(out.data(), inp.data(), N * C);
        gelu_backward(dinp.data(), dout.data(), inp.data(), N * C);
        vec outd(N * C), dinpd(N * C);
        gelu_forward(outd.data(), to_double(inp).data(), N * C);
        gelu_backward(dinpd.data(), to_double(dout).data(), to_double(inp).data(), N * C);
        expect_close("gelu out (float)", to_double(out), outd, FLOAT_BOUND);
        expect_close("gelu dinp (float)", to_double(dinp), dinpd, FLOAT_BOUND);
    }
    // Dropout: the same mask in both precisions.
    {
        const fvec resid = to_float(rand_vec(&rng, N * C, 1.0)),
                   branch = to_float(rand_vec(&rng, N * C, 1.0)),
                   dout = to_float(rand_vec(&rng, N * C, 1.0));
        fvec out(N * C), dr(N * C), db(N * C);
        residual_dropout_forward(out.data(), resid.data(), branch.data(), N * C, 0.1, 5, 2, 3);
        residual_dropout_backward(dr.data(), db.data(), dout.data(), N * C, 0.1, 5, 2, 3);
        vec outd(N * C), drd(N * C), dbd(N * C);
        residual_dropout_forward(outd.data(), to_double(resid).data(), to_double(branch).data(),
                                 N * C, 0.1, 5, 2, 3);
        residual_dropout_backward(drd.data(), dbd.data(), to_double(dout).data(), N * C, 0.1, 5, 2,
                                  3);
        expect_close("dropout out (float)", to_double(out), outd, FLOAT_BOUND);
        expect_close("dropout dresid (float)", to_double(dr), drd, FLOAT_BOUND);
        expect_close("dropout dbranch (float)", to_double(db), dbd, FLOAT_BOUND);
    }
    // Cross-entropy.
    {
        const fvec logits = to_float(rand_vec(&rng, N * V, 3.0));
        std::vector<uint8_t> targets(N);
        stx_test_fill_bytes(&rng, targets.data(), N);
        fvec losses(N), dl(N * V);
        crossentropy_forward(losses.data(), logits.data(), targets.data(), N, V);
        crossentropy_backward(dl.data(), logits.data(), targets.data(), 0.7, N, V);
        vec lossesd(N), dld(N * V);
        crossentropy_forward(lossesd.data(), to_double(logits).data(), targets.data(), N, V);
        crossentropy_backward(dld.data(), to_double(logits).data(), targets.data(), 0.7, N, V);
        expect_close("crossentropy losses (float)", to_double(losses), lossesd, FLOAT_BOUND);
        expect_close("crossentropy dlogits (float)", to_double(dl), dld, FLOAT_BOUND);
    }
    // Embedding.
    {
        const int32_t shape[2] = {3, 2};
        std::vector<uint8_t> tokens(N);
        stx_test_fill_bytes(&rng, tokens.data(), N);
        const fvec tok = to_float(rand_vec(&rng, 256 * C, 1.0)),
                   start = to_float(rand_vec(&rng, C, 1.0)),
                   pos0 = to_float(rand_vec(&rng, 3 * C, 1.0)),
                   pos1 = to_float(rand_vec(&rng, 2 * C, 1.0)),
                   dout = to_float(rand_vec(&rng, N * C, 1.0));
        const float *pos[2] = {pos0.data(), pos1.data()};
        fvec out(N * C), dtok(256 * C), dstart(C), dpos0(3 * C), dpos1(2 * C);
        float *dpos[2] = {dpos0.data(), dpos1.data()};
        embedding_forward(out.data(), tokens.data(), tok.data(), start.data(), pos, shape, 2, B, T,
                          C);
        embedding_backward(dtok.data(), dstart.data(), dpos, dout.data(), tokens.data(), shape, 2,
                           B, T, C);
        const vec tokd = to_double(tok), startd = to_double(start), pos0d = to_double(pos0),
                  pos1d = to_double(pos1);
        const double *posd[2] = {pos0d.data(), pos1d.data()};
        vec outd(N * C), dtokd(256 * C), dstartd(C), dpos0d(3 * C), dpos1d(2 * C);
        double *dposd[2] = {dpos0d.data(), dpos1d.data()};
        embedding_forward(outd.data(), tokens.data(), tokd.data(), startd.data(), posd, shape, 2, B,
                          T, C);
        embedding_backward(dtokd.data(), dstartd.data(), dposd, to_double(dout).data(),
                           tokens.data(), shape, 2, B, T, C);
        expect_close("embedding out (float)", to_double(out), outd, FLOAT_BOUND);
        expect_close("embedding dtok (float)", to_double(dtok), dtokd, FLOAT_BOUND);
        expect_close("embedding dstart (float)", to_double(dstart), dstartd, FLOAT_BOUND);
        expect_close("embedding dpos0 (float)", to_double(dpos0), dpos0d, FLOAT_BOUND);
        expect_close("embedding dpos1 (float)", to_double(dpos1), dpos1d, FLOAT_BOUND);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedding_forward_hand),
        cmocka_unit_test(test_embedding_fd),
        cmocka_unit_test(test_layernorm_forward),
        cmocka_unit_test(test_layernorm_fd),
        cmocka_unit_test(test_linear_forward),
        cmocka_unit_test(test_linear_fd),
        cmocka_unit_test(test_gelu),
        cmocka_unit_test(test_dropout_identity),
        cmocka_unit_test(test_dropout_mask),
        cmocka_unit_test(test_dropout_fd),
        cmocka_unit_test(test_crossentropy_forward),
        cmocka_unit_test(test_crossentropy_fd),
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_sum_squares),
        cmocka_unit_test(test_float_matches_double),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
