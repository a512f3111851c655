// test_ref_attention: the reference block-sparse attention (ref/attention.cpp) against its
// dense O(T^2) oracle, and both against finite differences.
//
// For every pattern kind and integration mode (merged across orders, per head, user block
// layouts), on sizes that are not multiples of the block (n_ctx 77 and 100, T = n_ctx and
// T < n_ctx), block sizes 16 and 32, H = 3, B = 2, (Dq, Dv) = (4, 8) and (5, 5):
//  (a) sparse forward == dense forward: out and lse, double <= 1e-12, float <= 1e-5;
//  (b) sparse backward == dense backward in double (<= 1e-12), the sparse one adding into
//      random non-zero gradients (the += rule);
//  (c) finite differences in double of L = sum(out * G) agree with the sparse backward for
//      dq, dk, dv (< 1e-6), element-wise on sampled elements and along a random direction;
//  (d) out and lse are poisoned with NaN before every forward, so an unwritten row shows;
//  plus: rows of a run with T' < T equal the first T' rows of the run with T (causality and
//  the T bound), and the result does not depend on the number of OpenMP threads.
// Errors are max|got - ref| / max|ref| per tensor (harness.h).
// harness.h is C: cmocka 1.1.5's header has no extern "C" of its own, so it is included
// inside one, after the C library headers it pulls in (their C++ forms hold templates, which
// cannot have C linkage); its float INFINITY trips -Wdouble-promotion as C++.
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

#include "layout.h"
#include "pattern.h"

#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {

using stx::Layout;
using Vec = std::vector<double>;
using VecF = std::vector<float>;

const int32_t kBatch = 2;
const int32_t kHeads = 3;

struct Shape {
    int32_t n_ctx, T, Dq, Dv;
};

struct Problem {
    int32_t B, T, H, Dq, Dv;
    double scale;
    Vec q, k, v, g; // g: the upstream gradient dout (L = sum(out * g))
    size_t nq() const { return static_cast<size_t>(B) * T * H * Dq; }
    size_t nv() const { return static_cast<size_t>(B) * T * H * Dv; }
    size_t nlse() const { return static_cast<size_t>(B) * H * T; }
};

Problem make_problem(stx_test_rng *rng, int32_t T, int32_t Dq, int32_t Dv) {
    Problem P;
    P.B = kBatch;
    P.T = T;
    P.H = kHeads;
    P.Dq = Dq;
    P.Dv = Dv;
    P.scale = 1.0 / std::sqrt(static_cast<double>(Dq));
    P.q.resize(P.nq());
    P.k.resize(P.nq());
    P.v.resize(P.nv());
    P.g.resize(P.nv());
    // Scores of a few units, so the softmax is far from uniform and far from one-hot.
    stx_test_fill(rng, P.q.data(), P.q.size(), 2.0);
    stx_test_fill(rng, P.k.data(), P.k.size(), 2.0);
    stx_test_fill(rng, P.v.data(), P.v.size(), 1.0);
    stx_test_fill(rng, P.g.data(), P.g.size(), 1.0);
    return P;
}

VecF to_float(const Vec &x) {
    VecF y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = static_cast<float>(x[i]);
    return y;
}

Vec to_double(const VecF &x) {
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = static_cast<double>(x[i]);
    return y;
}

// (d): every element of a forward output must be written (NaN poison gone) and finite.
template <typename V> void expect_all_finite(const std::string &name, const V &x) {
    for (size_t i = 0; i < x.size(); ++i) {
        if (!std::isfinite(static_cast<double>(x[i]))) {
            fail_msg("%s: element [%zu] of %zu not written or not finite (%g)", name.c_str(), i,
                     x.size(), static_cast<double>(x[i]));
        }
    }
}

void expect_close(const std::string &name, const Vec &got, const Vec &ref, double bound) {
    assert_int_equal(got.size(), ref.size());
    stx_test_expect_close(name.c_str(), got.data(), ref.data(), got.size(), bound);
}

void expect_bitwise_equal(const std::string &name, const Vec &a, const Vec &b) {
    assert_int_equal(a.size(), b.size());
    if (std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) != 0)
        fail_msg("%s: results differ between 1 and 2 OpenMP threads", name.c_str());
}

// Forward in double; out and lse are poisoned with NaN first.
void forward(const Layout &layout, const Problem &P, bool dense, Vec *out, Vec *lse) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    out->assign(P.nv(), nan);
    lse->assign(P.nlse(), nan);
    if (dense) {
        stx::ref::attention_dense_forward(out->data(), lse->data(), P.q.data(), P.k.data(),
                                          P.v.data(), layout, P.B, P.T, P.Dq, P.Dv, P.scale);
    } else {
        stx::ref::attention_forward(out->data(), lse->data(), P.q.data(), P.k.data(), P.v.data(),
                                    layout, P.B, P.T, P.Dq, P.Dv, P.scale);
    }
}

void forward_float(const Layout &layout, const Problem &P, bool dense, Vec *out, Vec *lse) {
    const VecF q = to_float(P.q), k = to_float(P.k), v = to_float(P.v);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    VecF o(P.nv(), nan), l(P.nlse(), nan);
    if (dense) {
        stx::ref::attention_dense_forward(o.data(), l.data(), q.data(), k.data(), v.data(), layout,
                                          P.B, P.T, P.Dq, P.Dv, P.scale);
    } else {
        stx::ref::attention_forward(o.data(), l.data(), q.data(), k.data(), v.data(), layout, P.B,
                                    P.T, P.Dq, P.Dv, P.scale);
    }
    *out = to_double(o);
    *lse = to_double(l);
}

// Backward in double, adding into dq/dk/dv as they are given.
void backward(const Layout &layout, const Problem &P, bool dense, const Vec &out, const Vec &lse,
              Vec *dq, Vec *dk, Vec *dv) {
    if (dense) {
        stx::ref::attention_dense_backward(dq->data(), dk->data(), dv->data(), P.g.data(),
                                           P.q.data(), P.k.data(), P.v.data(), out.data(),
                                           lse.data(), layout, P.B, P.T, P.Dq, P.Dv, P.scale);
    } else {
        stx::ref::attention_backward(dq->data(), dk->data(), dv->data(), P.g.data(), P.q.data(),
                                     P.k.data(), P.v.data(), out.data(), lse.data(), layout, P.B,
                                     P.T, P.Dq, P.Dv, P.scale);
    }
}

double loss(const Layout &layout, const Problem &P) {
    Vec out, lse;
    forward(layout, P, false, &out, &lse);
    double L = 0.0;
    for (size_t i = 0; i < out.size(); ++i) L += out[i] * P.g[i];
    return L;
}

// (c) for one input tensor x (a member of P): central differences on sampled elements and
// along one random direction, against the analytic gradient `grad`.
void check_finite_differences(const std::string &name, const Layout &layout, Problem P,
                              Vec Problem::*x, const Vec &grad, stx_test_rng *rng) {
    const double eps = 1e-5, bound = 1e-6;
    Vec &t = P.*x;
    const size_t n = t.size();
    const int n_samples = 8;
    Vec fd, an;
    for (int s = 0; s < n_samples + 2; ++s) {
        // The first and last element (rows 0 and T-1 of batch 0 / B-1), then random ones.
        size_t i = s == 0 ? 0 : s == 1 ? n - 1 : static_cast<size_t>(stx_test_next(rng) % n);
        const double x0 = t[i];
        t[i] = x0 + eps;
        const double lp = loss(layout, P);
        t[i] = x0 - eps;
        const double lm = loss(layout, P);
        t[i] = x0;
        fd.push_back((lp - lm) / (2.0 * eps));
        an.push_back(grad[i]);
    }
    expect_close(name + " (elements)", an, fd, bound);

    Vec dir(n);
    stx_test_fill(rng, dir.data(), n, 1.0);
    const Vec x0 = t;
    for (size_t i = 0; i < n; ++i) t[i] = x0[i] + eps * dir[i];
    const double lp = loss(layout, P);
    for (size_t i = 0; i < n; ++i) t[i] = x0[i] - eps * dir[i];
    const double lm = loss(layout, P);
    t = x0;
    double directional = 0.0;
    for (size_t i = 0; i < n; ++i) directional += grad[i] * dir[i];
    const Vec got{directional}, ref{(lp - lm) / (2.0 * eps)};
    expect_close(name + " (direction)", got, ref, bound);
}

// Rows t < T' of a [B, T, W] buffer, repacked as [B, T', W].
Vec prefix_rows(const Vec &x, int32_t B, int32_t T, int32_t T2, size_t W) {
    Vec y;
    for (int32_t b = 0; b < B; ++b) {
        const double *row = x.data() + static_cast<size_t>(b) * T * W;
        y.insert(y.end(), row, row + static_cast<size_t>(T2) * W);
    }
    return y;
}

void check_layout(const std::string &tag, const stx::Layout &layout, const Shape &sh,
                  stx_test_rng *rng, bool with_fd) {
    char buf[96];
    snprintf(buf, sizeof buf, " bs%d n%d T%d Dq%d Dv%d", layout.block_size, sh.n_ctx, sh.T, sh.Dq,
             sh.Dv);
    const std::string name = tag + buf;
    const Problem P = make_problem(rng, sh.T, sh.Dq, sh.Dv);

    // (a), (d): forward, double.
    Vec out_d, lse_d, out_s, lse_s;
    forward(layout, P, true, &out_d, &lse_d);
    forward(layout, P, false, &out_s, &lse_s);
    expect_all_finite(name + ": dense out", out_d);
    expect_all_finite(name + ": dense lse", lse_d);
    expect_all_finite(name + ": sparse out", out_s);
    expect_all_finite(name + ": sparse lse", lse_s);
    expect_close(name + ": out (double)", out_s, out_d, 1e-12);
    expect_close(name + ": lse (double)", lse_s, lse_d, 1e-12);

    // (a), (d): forward, float, against the double oracle.
    Vec out_f, lse_f, out_fd, lse_fd;
    forward_float(layout, P, false, &out_f, &lse_f);
    forward_float(layout, P, true, &out_fd, &lse_fd);
    expect_all_finite(name + ": sparse out (float)", out_f);
    expect_all_finite(name + ": sparse lse (float)", lse_f);
    expect_close(name + ": out (float sparse)", out_f, out_d, 1e-5);
    expect_close(name + ": lse (float sparse)", lse_f, lse_d, 1e-5);
    expect_close(name + ": out (float dense)", out_fd, out_d, 1e-5);
    expect_close(name + ": lse (float dense)", lse_fd, lse_d, 1e-5);

    // (b): backward. The oracle starts from zero; the sparse one adds into random values.
    Vec dq_d(P.nq(), 0.0), dk_d(P.nq(), 0.0), dv_d(P.nv(), 0.0);
    backward(layout, P, true, out_d, lse_d, &dq_d, &dk_d, &dv_d);
    Vec base_q(P.nq()), base_k(P.nq()), base_v(P.nv());
    stx_test_fill(rng, base_q.data(), base_q.size(), 1.0);
    stx_test_fill(rng, base_k.data(), base_k.size(), 1.0);
    stx_test_fill(rng, base_v.data(), base_v.size(), 1.0);
    Vec dq_s = base_q, dk_s = base_k, dv_s = base_v;
    backward(layout, P, false, out_s, lse_s, &dq_s, &dk_s, &dv_s);
    for (size_t i = 0; i < dq_s.size(); ++i) dq_s[i] -= base_q[i];
    for (size_t i = 0; i < dk_s.size(); ++i) dk_s[i] -= base_k[i];
    for (size_t i = 0; i < dv_s.size(); ++i) dv_s[i] -= base_v[i];
    expect_close(name + ": dq", dq_s, dq_d, 1e-12);
    expect_close(name + ": dk", dk_s, dk_d, 1e-12);
    expect_close(name + ": dv", dv_s, dv_d, 1e-12);

    // Causality and the T bound: a shorter run on the prefix gives the same rows.
    const int32_t T2 = sh.T - 13;
    Problem P2 = P;
    P2.T = T2;
    P2.q = prefix_rows(P.q, P.B, P.T, T2, static_cast<size_t>(P.H * P.Dq));
    P2.k = prefix_rows(P.k, P.B, P.T, T2, static_cast<size_t>(P.H * P.Dq));
    P2.v = prefix_rows(P.v, P.B, P.T, T2, static_cast<size_t>(P.H * P.Dv));
    P2.g = prefix_rows(P.g, P.B, P.T, T2, static_cast<size_t>(P.H * P.Dv));
    Vec out2, lse2;
    forward(layout, P2, false, &out2, &lse2);
    expect_all_finite(name + ": prefix out", out2);
    expect_close(name + ": prefix out", out2,
                 prefix_rows(out_s, P.B, P.T, T2, static_cast<size_t>(P.H * P.Dv)), 1e-12);
    Vec lse_prefix; // lse is [B, H, T]: T is the innermost axis
    for (size_t bh = 0; bh < static_cast<size_t>(P.B * P.H); ++bh) {
        const double *row = lse_s.data() + bh * static_cast<size_t>(P.T);
        lse_prefix.insert(lse_prefix.end(), row, row + T2);
    }
    expect_close(name + ": prefix lse", lse2, lse_prefix, 1e-12);

    if (!with_fd) return;

    // Determinism across thread counts (only where the machine has 2 threads to give).
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    Vec out1, lse1;
    forward(layout, P, false, &out1, &lse1);
    Vec dq1 = base_q, dk1 = base_k, dv1 = base_v;
    backward(layout, P, false, out1, lse1, &dq1, &dk1, &dv1);
    omp_set_num_threads(threads > 1 ? threads : 2);
    Vec outn, lsen;
    forward(layout, P, false, &outn, &lsen);
    Vec dqn = base_q, dkn = base_k, dvn = base_v;
    backward(layout, P, false, outn, lsen, &dqn, &dkn, &dvn);
    omp_set_num_threads(threads);
    expect_bitwise_equal(name + ": out", out1, outn);
    expect_bitwise_equal(name + ": lse", lse1, lsen);
    expect_bitwise_equal(name + ": dq", dq1, dqn);
    expect_bitwise_equal(name + ": dk", dk1, dkn);
    expect_bitwise_equal(name + ": dv", dv1, dvn);

    // (c): finite differences of L = sum(out * g) against the sparse backward.
    check_finite_differences(name + ": dq vs finite differences", layout, P, &Problem::q, dq_s,
                             rng);
    check_finite_differences(name + ": dk vs finite differences", layout, P, &Problem::k, dk_s,
                             rng);
    check_finite_differences(name + ": dv vs finite differences", layout, P, &Problem::v, dv_s,
                             rng);
}

// The shapes every layout is checked on; finite differences on the ones marked.
struct ShapeCase {
    Shape shape;
    bool fd;
};
const ShapeCase kShapes[] = {
    {{77, 77, 4, 8}, true},
    {{77, 50, 5, 5}, true},
    {{100, 100, 5, 5}, false},
    {{100, 61, 4, 8}, false},
};

uint64_t seed_of(const std::string &s) {
    uint64_t h = 1469598103934665603ull; // FNV-1a
    for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
    return h;
}

void run_pattern(const char *pattern) {
    stx::LayerPattern lp;
    if (stx::parse_layer_pattern(pattern, &lp) != STX_OK)
        fail_msg("parse_layer_pattern(\"%s\"): %s", pattern, stx_last_error());
    stx_test_rng rng{seed_of(pattern)};
    for (int32_t bs : {16, 32}) {
        for (const ShapeCase &sc : kShapes) {
            stx::Layout layout;
            if (stx::build_layout(lp, sc.shape.n_ctx, kHeads, bs, &layout) != STX_OK)
                fail_msg("build_layout(\"%s\", n_ctx %d, block %d): %s", pattern, sc.shape.n_ctx,
                         bs, stx_last_error());
            assert_int_equal(layout.n_head, kHeads);
            assert_int_equal(layout.heads.size(), kHeads);
            // Finite differences once per pattern and block size keep the test short.
            check_layout(pattern, layout, sc.shape, &rng, sc.fd);
        }
    }
}

// A user layout: per head a random lower-triangular block mask with the diagonal.
void run_user_blocks(double density) {
    stx_test_rng rng{seed_of("user") + static_cast<uint64_t>(density * 1000.0)};
    for (int32_t bs : {16, 32}) {
        for (const ShapeCase &sc : kShapes) {
            const int32_t nb = (sc.shape.n_ctx + bs - 1) / bs;
            std::vector<uint8_t> blocks(static_cast<size_t>(kHeads) * nb * nb, 0);
            for (int32_t h = 0; h < kHeads; ++h) {
                for (int32_t i = 0; i < nb; ++i) {
                    for (int32_t j = 0; j <= i; ++j) {
                        const bool on = i == j || 0.5 * (stx_test_uniform(&rng) + 1.0) < density;
                        blocks[(static_cast<size_t>(h) * nb + i) * nb + j] = on ? 1 : 0;
                    }
                }
            }
            stx::Layout layout;
            if (stx::build_layout_from_blocks(sc.shape.n_ctx, kHeads, bs, blocks.data(), &layout) !=
                STX_OK)
                fail_msg("build_layout_from_blocks(n_ctx %d, block %d): %s", sc.shape.n_ctx, bs,
                         stx_last_error());
            char tag[48];
            snprintf(tag, sizeof tag, "user blocks (density %.2f)", density);
            check_layout(tag, layout, sc.shape, &rng, sc.fd);
        }
    }
}

void test_dense(void **) {
    run_pattern("dense");
}
void test_local(void **) {
    run_pattern("local:7");
}
void test_local_one(void **) {
    run_pattern("local:1");
}
void test_local_long(void **) {
    run_pattern("local:40");
}
void test_strided(void **) {
    run_pattern("strided:9");
}
void test_strided_wide(void **) {
    run_pattern("strided:33");
}
void test_fixed(void **) {
    run_pattern("fixed:16:4");
}
void test_fixed_groups(void **) {
    run_pattern("fixed:16:4:3");
}
void test_fixed_odd(void **) {
    run_pattern("fixed:10:3:2");
}
void test_merged_local_strided(void **) {
    run_pattern("local:8+strided:8");
}
void test_merged_strided_local(void **) {
    run_pattern("strided:8+local:8");
}
void test_merged_fixed_strided(void **) {
    run_pattern("fixed:16:4+strided:16");
}
void test_merged_two_strides(void **) {
    run_pattern("strided:5+strided:7");
}
void test_merged_three(void **) {
    run_pattern("fixed:10:3:3+strided:7+local:5");
}
void test_heads(void **) {
    run_pattern("[local:8;strided:8;dense]");
}
void test_heads_merged(void **) {
    run_pattern("[local:8+strided:8;fixed:12:3:2]");
}
void test_user_sparse(void **) {
    run_user_blocks(0.3);
}
void test_user_dense(void **) {
    run_user_blocks(0.8);
}

} // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense),
        cmocka_unit_test(test_local),
        cmocka_unit_test(test_local_one),
        cmocka_unit_test(test_local_long),
        cmocka_unit_test(test_strided),
        cmocka_unit_test(test_strided_wide),
        cmocka_unit_test(test_fixed),
        cmocka_unit_test(test_fixed_groups),
        cmocka_unit_test(test_fixed_odd),
        cmocka_unit_test(test_merged_local_strided),
        cmocka_unit_test(test_merged_strided_local),
        cmocka_unit_test(test_merged_fixed_strided),
        cmocka_unit_test(test_merged_two_strides),
        cmocka_unit_test(test_merged_three),
        cmocka_unit_test(test_heads),
        cmocka_unit_test(test_heads_merged),
        cmocka_unit_test(test_user_sparse),
        cmocka_unit_test(test_user_dense),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
