/*
 * test_faults.c: non-finite values in training, through the public API.
 *  - a NaN or an Inf written into one gradient element makes stx_optimizer_step return
 *    STX_STEP_SKIPPED with a message saying the norm is not finite; every parameter is
 *    bit-identical to before, the step count does not move, and the gradients count as
 *    consumed (the next step needs a new forward and backward);
 *  - the Adam moments are untouched too: a model that skipped a bad step and then trains on
 *    good batches ends bit-identical to a twin that only ever saw the good batches (with the
 *    bad step first, before any moment exists, and after good steps);
 *  - a NaN written into a weight makes stx_forward succeed with a NaN loss (the library does
 *    not check weights); backward then gives non-finite gradients and the step is skipped.
 */
#include "harness.h"
#include "model_fixtures.h"

#include <math.h>
#include <sparsetx.h>
#include <string.h>

enum { B = 2, T = 32 };

static stx_model *make_model(int32_t precision) {
    stx_config cfg;
    stx_test_small_config(&cfg, T, precision, 1, 5);
    stx_model *m = NULL;
    CHECK_OK(stx_model_create(&cfg, &m));
    stx_optim_config opt;
    CHECK_OK(stx_optim_config_init(&opt));
    opt.lr = 1e-2;
    opt.weight_decay = 0.1; /* every part of the update in play */
    opt.grad_clip = 0.5;
    opt.warmup_steps = 2;
    opt.total_steps = 50;
    CHECK_OK(stx_model_set_optimizer(m, &opt));
    return m;
}

/* Two models with the same random weights (W_out included, so every gradient is alive). */
static void make_twins(int32_t precision, stx_model **a, stx_model **b) {
    stx_model *pair[2] = {make_model(precision), make_model(precision)};
    stx_test_randomize(pair, 2, 2024, 0.3);
    *a = pair[0];
    *b = pair[1];
}

static void fill_batch(uint8_t *tokens, uint64_t seed) {
    stx_test_rng rng = {seed};
    stx_test_fill_bytes(&rng, tokens, (size_t)B * T);
}

/* Fails naming the first parameter element that differs in its bits. */
static void expect_same_params(stx_model *a, stx_model *b, const char *what) {
    size_t na = 0, nb = 0;
    double *pa = stx_test_params(a, &na), *pb = stx_test_params(b, &nb);
    assert_int_equal(na, nb);
    if (memcmp(pa, pb, na * sizeof *pa) != 0) {
        size_t i = 0;
        while (i < na && memcmp(pa + i, pb + i, sizeof *pa) == 0) ++i;
        fail_msg("%s: parameter element %zu differs: %.17g vs %.17g", what, i, pa[i], pb[i]);
    }
    free(pa);
    free(pb);
}

static void expect_same_snapshot(stx_model *m, const double *before, size_t n, const char *what) {
    size_t n2 = 0;
    double *after = stx_test_params(m, &n2);
    assert_int_equal(n, n2);
    if (memcmp(before, after, n * sizeof *after) != 0) {
        size_t i = 0;
        while (i < n && memcmp(before + i, after + i, sizeof *after) == 0) ++i;
        fail_msg("%s: parameter element %zu changed: %.17g -> %.17g", what, i, before[i], after[i]);
    }
    free(after);
}

static void good_step(stx_model *m, const uint8_t *tokens) {
    double loss = 0.0, lr = 0.0, norm = 0.0;
    CHECK_OK(stx_forward(m, tokens, B, T, &loss));
    assert_true(isfinite(loss));
    CHECK_OK(stx_zero_grad(m));
    CHECK_OK(stx_backward(m));
    CHECK_OK(stx_optimizer_step(m, &lr, &norm));
    assert_true(isfinite(norm) && norm > 0.0);
}

/* fp32 twins that both took one good step on batch `seed` (left in tokens). */
static void make_stepped_twins(stx_model **a, stx_model **b, uint8_t *tokens, uint64_t seed) {
    make_twins(STX_PRECISION_FP32, a, b);
    fill_batch(tokens, seed);
    good_step(*a, tokens);
    good_step(*b, tokens);
}

/* Replace element `at` of the gradient (grad != 0) or weight of tensor `name` with value;
 * the old value through *old (may be NULL). */
static void poke(stx_model *m, const char *name, int grad, size_t at, double value, double *old) {
    int32_t count = 0;
    CHECK_OK(stx_param_count(m, &count));
    for (int32_t i = 0; i < count; ++i) {
        const char *pname;
        const int64_t numel = stx_test_numel(m, i, &pname);
        if (strcmp(pname, name) != 0) continue;
        assert_true(at < (size_t)numel);
        double *v = (double *)malloc((size_t)numel * sizeof *v);
        assert_non_null(v);
        if (grad)
            CHECK_OK(stx_grad_read(m, name, STX_DTYPE_F64, v, (size_t)numel));
        else
            CHECK_OK(stx_param_read(m, name, STX_DTYPE_F64, v, (size_t)numel));
        if (old) *old = v[at];
        v[at] = value;
        if (grad)
            CHECK_OK(stx_grad_write(m, name, STX_DTYPE_F64, v, (size_t)numel));
        else
            CHECK_OK(stx_param_write(m, name, STX_DTYPE_F64, v, (size_t)numel));
        free(v);
        return;
    }
    fail_msg("no parameter named %s", name);
}

/* The status and its text. */
static void test_status(void **state) {
    (void)state;
    assert_true(STX_STEP_SKIPPED > 0); /* not an error */
    assert_string_equal(stx_status_string(STX_STEP_SKIPPED), "step skipped: non-finite gradients");
}

/* `good_before` good steps on both twins; then model a gets a bad step (value written into
 * one gradient element after its backward), which must be skipped and change nothing; then
 * both take the same good steps and must end bit-identical. */
static void skip_case(int32_t precision, int good_before, double value) {
    const char *what = isnan(value) ? "NaN" : value > 0 ? "+Inf" : "-Inf";
    stx_model *a, *b;
    make_twins(precision, &a, &b);
    uint8_t tokens[B * T];
    uint64_t seed = 100;
    for (int i = 0; i < good_before; ++i) {
        fill_batch(tokens, seed++);
        good_step(a, tokens);
        good_step(b, tokens);
    }
    expect_same_params(a, b, "twins before the bad step");

    /* The bad step on a. */
    fill_batch(tokens, 999);
    double loss = 0.0;
    CHECK_OK(stx_forward(a, tokens, B, T, &loss));
    assert_true(isfinite(loss));
    CHECK_OK(stx_zero_grad(a));
    CHECK_OK(stx_backward(a));
    poke(a, "h.0.ff.w1", 1, 3, value, NULL);
    size_t n = 0;
    double *before = stx_test_params(a, &n);
    const int64_t step_before = stx_test_step(a);
    stx_optim_config opt;
    CHECK_OK(stx_model_get_optimizer(a, &opt));
    double lr = -1.0, norm = 0.0;
    stx_clear_error();
    const stx_status st = stx_optimizer_step(a, &lr, &norm);
    if (st != STX_STEP_SKIPPED)
        fail_msg("%s gradient: stx_optimizer_step gave %d (%s), wanted STX_STEP_SKIPPED", what,
                 (int)st, stx_status_string(st));
    const char *msg = stx_last_error();
    printf("  %s gradient, %s, after %d good steps: %s\n", what,
           precision == STX_PRECISION_FP64 ? "fp64" : "fp32", good_before, msg);
    if (!strstr(msg, "not finite") || !strstr(msg, "stx_optimizer_step"))
        fail_msg("the message does not say the norm is not finite: \"%s\"", msg);
    if (isnan(value))
        assert_true(isnan(norm));
    else
        assert_true(isinf(norm) && norm > 0.0);
    assert_true(lr == stx_optim_lr_at(&opt, step_before)); /* the rate it would have used */
    expect_same_snapshot(a, before, n, "after a skipped step");
    free(before);
    assert_int_equal(stx_test_step(a), step_before);

    /* The gradients are consumed: a step or a backward now is out of order. */
    assert_int_equal(stx_optimizer_step(a, NULL, NULL), STX_ERR_STATE);
    assert_int_equal(stx_backward(a), STX_ERR_STATE);

    /* The same good batches for both: a ends where b does, so the skipped step left the Adam
     * moments (and the step count in their bias correction) exactly as they were. */
    for (int i = 0; i < 3; ++i) {
        fill_batch(tokens, seed++);
        good_step(a, tokens);
        good_step(b, tokens);
    }
    assert_int_equal(stx_test_step(a), good_before + 3);
    assert_int_equal(stx_test_step(b), good_before + 3);
    expect_same_params(a, b, "skipped-step model vs its twin after 3 good steps");
    stx_model_free(a);
    stx_model_free(b);
}

static void test_nan_gradient_skipped(void **state) {
    (void)state;
    skip_case(STX_PRECISION_FP32, 2, (double)NAN);
    skip_case(STX_PRECISION_FP64, 2, (double)NAN);
}

static void test_inf_gradient_skipped(void **state) {
    (void)state;
    skip_case(STX_PRECISION_FP32, 2, (double)INFINITY);
    skip_case(STX_PRECISION_FP32, 1, -(double)INFINITY);
    skip_case(STX_PRECISION_FP64, 2, (double)INFINITY);
}

/* A bad first step: skipped before any Adam moment exists. */
static void test_bad_first_step(void **state) {
    (void)state;
    skip_case(STX_PRECISION_FP32, 0, (double)NAN);
}

/* Several bad steps in a row change nothing either. */
static void test_consecutive_skips(void **state) {
    (void)state;
    stx_model *a, *b;
    uint8_t tokens[B * T];
    make_stepped_twins(&a, &b, tokens, 1);
    for (int k = 0; k < 4; ++k) {
        fill_batch(tokens, 50 + (uint64_t)k);
        CHECK_OK(stx_forward(a, tokens, B, T, NULL));
        CHECK_OK(stx_zero_grad(a));
        CHECK_OK(stx_backward(a));
        poke(a, k % 2 ? "ln_f.g" : "w_out", 1, 0, k % 2 ? (double)INFINITY : (double)NAN, NULL);
        assert_int_equal(stx_optimizer_step(a, NULL, NULL), STX_STEP_SKIPPED);
        assert_int_equal(stx_test_step(a), 1);
    }
    expect_same_params(a, b, "after 4 skipped steps");
    fill_batch(tokens, 2);
    good_step(a, tokens);
    good_step(b, tokens);
    expect_same_params(a, b, "a good step after 4 skipped ones");
    stx_model_free(a);
    stx_model_free(b);
}

/* A NaN in a weight: stx_forward returns STX_OK and a NaN loss; backward runs and gives
 * non-finite gradients; the step is skipped and nothing changes. With the weight put back,
 * training goes on exactly as the twin's. */
static void test_nan_weight(void **state) {
    (void)state;
    stx_model *a, *b;
    uint8_t tokens[B * T];
    make_stepped_twins(&a, &b, tokens, 7);

    double old = 0.0;
    poke(a, "h.0.ff.w1", 0, 0, (double)NAN, &old);
    fill_batch(tokens, 8);
    double loss = 0.0;
    CHECK_OK(stx_forward(a, tokens, B, T, &loss));
    printf("  NaN weight: stx_forward returns STX_OK with loss %g\n", loss);
    assert_true(isnan(loss));
    double eval_loss = 0.0;
    CHECK_OK(stx_evaluate(a, tokens, B, T, &eval_loss));
    assert_true(isnan(eval_loss));
    CHECK_OK(stx_forward(a, tokens, B, T, &loss));
    CHECK_OK(stx_zero_grad(a));
    CHECK_OK(stx_backward(a));
    size_t n = 0;
    double *before = stx_test_params(a, &n);
    double norm = 0.0;
    stx_clear_error();
    assert_int_equal(stx_optimizer_step(a, NULL, &norm), STX_STEP_SKIPPED);
    assert_true(!isfinite(norm));
    assert_non_null(strstr(stx_last_error(), "not finite"));
    expect_same_snapshot(a, before, n, "NaN weight: after the skipped step");
    free(before);
    assert_int_equal(stx_test_step(a), 1);

    poke(a, "h.0.ff.w1", 0, 0, old, NULL);
    expect_same_params(a, b, "with the weight put back");
    for (int i = 0; i < 2; ++i) {
        fill_batch(tokens, 9 + (uint64_t)i);
        good_step(a, tokens);
        good_step(b, tokens);
    }
    expect_same_params(a, b, "NaN-weight model vs its twin after 2 good steps");
    stx_model_free(a);
    stx_model_free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status),
        cmocka_unit_test(test_nan_gradient_skipped),
        cmocka_unit_test(test_inf_gradient_skipped),
        cmocka_unit_test(test_bad_first_step),
        cmocka_unit_test(test_consecutive_skips),
        cmocka_unit_test(test_nan_weight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
