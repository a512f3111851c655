/*
 * test_model.c: the whole CPU reference model through the public API, in double:
 *  - finite differences agree with the analytic gradient of every parameter tensor, for
 *    every pattern kind and integration mode and a user-supplied layout, with dropout on,
 *    ragged n_ctx (not a multiple of the block), T < n_ctx, 1-3 position axes;
 *  - recomputation changes nothing: gradients with recompute 0, 1 and 2 are bit-identical;
 *  - backward accumulates across micro-batches until stx_zero_grad;
 *  - a tiny model overfits a short byte string.
 */
#include "harness.h"
#include "model_fixtures.h"

#include <math.h>
#include <sparsetx.h>
#include <string.h>

typedef struct model_case {
    const char *name;
    const char *pattern;
    int32_t n_layer, n_embd, n_head, n_ctx, T, ff_mult, block_size;
    float qk_ratio;
    int32_t n_pos_axes, pos_shape[3];
    int user_layout_layer; /* -1: none; else this layer gets a random user block layout */
} model_case;

static const model_case cases[] = {
    {"dense", "dense", 2, 8, 2, 20, 20, 2, 16, 1.0f, 0, {0}, -1},
    {"local", "local:5", 2, 8, 2, 20, 17, 2, 16, 1.0f, 2, {4, 5}, -1},
    {"strided", "strided:6", 2, 8, 2, 20, 20, 2, 16, 1.0f, 2, {4, 5}, -1},
    {"fixed groups", "fixed:8:2:2", 2, 8, 4, 20, 19, 2, 16, 0.5f, 3, {2, 5, 2}, -1},
    {"merged local+strided", "local:4+strided:4", 2, 8, 2, 20, 20, 2, 16, 1.0f, 0, {0}, -1},
    {"merged fixed+strided", "fixed:6:2+strided:5", 1, 8, 2, 20, 20, 2, 16, 1.0f, 0, {0}, -1},
    {"interleaved", "local:5,strided:4,fixed:6:2", 3, 8, 2, 20, 20, 2, 16, 1.0f, 0, {0}, -1},
    {"multi-head", "[local:4;strided:5+fixed:8:3]", 2, 8, 2, 20, 20, 2, 16, 1.0f, 0, {0}, -1},
    {"user layout", "local:4+strided:4", 2, 8, 2, 40, 37, 2, 16, 1.0f, 2, {8, 5}, 0},
};

static stx_model *make_model(const model_case *mc, int32_t recompute, float dropout) {
    stx_config cfg;
    CHECK_OK(stx_config_init(&cfg));
    cfg.n_layer = mc->n_layer;
    cfg.n_embd = mc->n_embd;
    cfg.n_head = mc->n_head;
    cfg.n_ctx = mc->n_ctx;
    cfg.ff_mult = mc->ff_mult;
    cfg.block_size = mc->block_size;
    cfg.qk_ratio = mc->qk_ratio;
    cfg.n_pos_axes = mc->n_pos_axes;
    for (int a = 0; a < mc->n_pos_axes; ++a) cfg.pos_shape[a] = mc->pos_shape[a];
    cfg.precision = STX_PRECISION_FP64;
    cfg.recompute = recompute;
    cfg.dropout = dropout;
    cfg.n_threads = 1;
    cfg.seed = 77;
    strcpy(cfg.pattern, mc->pattern);
    stx_model *m = NULL;
    CHECK_OK(stx_model_create(&cfg, &m));
    if (mc->user_layout_layer >= 0) stx_test_user_layout(m, mc->user_layout_layer, 99);
    return m;
}

static double loss_at(stx_model *m, const uint8_t *tokens, int32_t B, int32_t T, uint64_t counter) {
    double loss = 0.0;
    CHECK_OK(stx_model_set_dropout_counter(m, counter));
    CHECK_OK(stx_forward(m, tokens, B, T, &loss));
    return loss;
}

/* Central differences of the mean loss for EVERY element of every parameter tensor. */
static void check_model_gradients(const model_case *mc) {
    const int32_t B = 2, T = mc->T;
    const uint64_t counter = 5;
    const double eps = 1e-5, bound = 1e-6;
    stx_model *m = make_model(mc, 1, 0.25f);
    stx_test_randomize(&m, 1, 1234, 0.5);
    uint8_t tokens[2 * 64];
    stx_test_rng rng = {4321};
    stx_test_fill_bytes(&rng, tokens, (size_t)(B * T));
    loss_at(m, tokens, B, T, counter);
    CHECK_OK(stx_zero_grad(m));
    CHECK_OK(stx_backward(m));
    int32_t n = 0;
    CHECK_OK(stx_param_count(m, &n));
    double worst = 0.0;
    for (int32_t i = 0; i < n; ++i) {
        const char *name;
        int32_t ndim;
        int64_t shape[STX_MAX_DIMS], numel = 1;
        CHECK_OK(stx_param_info(m, i, &name, &ndim, shape));
        for (int32_t d = 0; d < ndim; ++d) numel *= shape[d];
        double *p = malloc((size_t)numel * sizeof *p), *g = malloc((size_t)numel * sizeof *g);
        double *fd = malloc((size_t)numel * sizeof *fd);
        CHECK_OK(stx_param_read(m, name, STX_DTYPE_F64, p, (size_t)numel));
        CHECK_OK(stx_grad_read(m, name, STX_DTYPE_F64, g, (size_t)numel));
        for (int64_t e = 0; e < numel; ++e) {
            const double saved = p[e];
            p[e] = saved + eps;
            CHECK_OK(stx_param_write(m, name, STX_DTYPE_F64, p, (size_t)numel));
            const double lp = loss_at(m, tokens, B, T, counter);
            p[e] = saved - eps;
            CHECK_OK(stx_param_write(m, name, STX_DTYPE_F64, p, (size_t)numel));
            const double lm = loss_at(m, tokens, B, T, counter);
            p[e] = saved;
            fd[e] = (lp - lm) / (2.0 * eps);
        }
        CHECK_OK(stx_param_write(m, name, STX_DTYPE_F64, p, (size_t)numel));
        char label[160];
        snprintf(label, sizeof label, "%s: d loss / d %s", mc->name, name);
        if (strstr(name, "attn.k.b")) {
            /* A key bias adds q.b to every score of a query: softmax is shift-invariant, so
             * this gradient is exactly zero (the library computes it as such) and the finite
             * differences are at rounding level. */
            for (int64_t e = 0; e < numel; ++e)
                if (g[e] != 0.0 || fabs(fd[e]) > 1e-9)
                    fail_msg("%s: must vanish, got analytic %g, differences %g", label, g[e],
                             fd[e]);
        } else {
            size_t w = 0;
            double err = stx_test_rel_error(g, fd, (size_t)numel, &w);
            if (err > worst) worst = err;
            stx_test_expect_close(label, g, fd, (size_t)numel, bound);
        }
        free(p);
        free(g);
        free(fd);
    }
    printf("  %-22s %2d tensors, worst relative error %.2e (bound %.0e)\n", mc->name, n, worst,
           bound);
    stx_model_free(m);
}

/* Every pattern kind and integration mode, dropout 0.25 on. */
static void test_gradients_every_pattern(void **state) {
    (void)state;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c) check_model_gradients(&cases[c]);
}

/* Recomputation replays the same arithmetic and dropout masks: bit-identical losses and
 * gradients with recompute 0 (keep everything), 1 (keep the residual stream) and 2 (also keep
 * the attention outputs: the replay skips attention). */
static void test_recompute_identical(void **state) {
    (void)state;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c) {
        double loss[3];
        double *grads[3];
        size_t n[3];
        uint8_t tokens[2 * 64];
        stx_test_rng rng = {55};
        stx_test_fill_bytes(&rng, tokens, sizeof tokens);
        for (int r = 0; r < 3; ++r) {
            stx_model *m = make_model(&cases[c], r, 0.3f);
            stx_test_randomize(&m, 1, 999, 0.5);
            loss[r] = loss_at(m, tokens, 2, cases[c].T, 3);
            CHECK_OK(stx_zero_grad(m));
            CHECK_OK(stx_backward(m));
            grads[r] = stx_test_grads(m, &n[r]);
            stx_model_free(m);
        }
        for (int r = 1; r < 3; ++r) {
            assert_int_equal(n[0], n[r]);
            if (memcmp(&loss[0], &loss[r], sizeof loss[0]) != 0)
                fail_msg("%s: loss differs with recompute 0 and %d", cases[c].name, r);
            if (memcmp(grads[0], grads[r], n[0] * sizeof(double)) != 0)
                fail_msg("%s: gradients differ with recompute 0 and %d", cases[c].name, r);
        }
        for (int r = 0; r < 3; ++r) free(grads[r]);
    }
}

/* Backward adds into the gradients: g(A) then g(B) without zeroing gives g(A) + g(B). */
static void test_microbatches_accumulate(void **state) {
    (void)state;
    const model_case *mc = &cases[4];
    stx_model *m = make_model(mc, 1, 0.0f);
    stx_test_randomize(&m, 1, 31, 0.5);
    uint8_t a[2 * 20], b[2 * 20];
    stx_test_rng rng = {8};
    stx_test_fill_bytes(&rng, a, sizeof a);
    stx_test_fill_bytes(&rng, b, sizeof b);
    size_t n;
    CHECK_OK(stx_zero_grad(m));
    loss_at(m, a, 2, 20, 0);
    CHECK_OK(stx_backward(m));
    double *ga = stx_test_grads(m, &n);
    CHECK_OK(stx_zero_grad(m));
    loss_at(m, b, 2, 20, 0);
    CHECK_OK(stx_backward(m));
    double *gb = stx_test_grads(m, &n);
    CHECK_OK(stx_zero_grad(m));
    loss_at(m, a, 2, 20, 0);
    CHECK_OK(stx_backward(m));
    loss_at(m, b, 2, 20, 0);
    CHECK_OK(stx_backward(m));
    double *gab = stx_test_grads(m, &n);
    for (size_t i = 0; i < n; ++i) ga[i] += gb[i];
    stx_test_expect_close("accumulated gradients", gab, ga, n, 1e-14);
    free(ga);
    free(gb);
    free(gab);
    stx_model_free(m);
}

/* A tiny float model memorizes a short byte string: the loss falls near zero in seconds. */
static void test_overfit_short_string(void **state) {
    (void)state;
    const char *text = "Sparse Transformers read bytes.";
    const int32_t T = (int32_t)strlen(text);
    stx_config cfg;
    CHECK_OK(stx_config_init(&cfg));
    cfg.n_layer = 2;
    cfg.n_embd = 32;
    cfg.n_head = 2;
    cfg.n_ctx = 32;
    cfg.block_size = 16;
    strcpy(cfg.pattern, "local:8+strided:8");
    stx_model *m = NULL;
    CHECK_OK(stx_model_create(&cfg, &m));
    stx_optim_config opt;
    CHECK_OK(stx_optim_config_init(&opt));
    opt.lr = 1e-2;
    opt.weight_decay = 0.0;
    CHECK_OK(stx_model_set_optimizer(m, &opt));
    double first = 0.0, loss = 0.0;
    for (int step = 0; step < 150; ++step) {
        CHECK_OK(stx_forward(m, (const uint8_t *)text, 1, T, &loss));
        if (step == 0) first = loss;
        CHECK_OK(stx_zero_grad(m));
        CHECK_OK(stx_backward(m));
        CHECK_OK(stx_optimizer_step(m, NULL, NULL));
    }
    CHECK_OK(stx_evaluate(m, (const uint8_t *)text, 1, T, &loss));
    printf("  overfit: loss %.4f -> %.4f nats after 150 steps\n", first, loss);
    assert_true(fabs(first - log(256.0)) < 1e-5); /* W_out = 0 at init: uniform prediction */
    assert_true(loss < 0.05);
    stx_model_free(m);
}

/* A memory limit refuses a larger batch with the bytes named; the model keeps working. */
static void test_memory_limit(void **state) {
    (void)state;
    const model_case *mc = &cases[4];
    stx_model *m = make_model(mc, 1, 0.0f);
    uint8_t tokens[8 * 20];
    stx_test_rng rng = {12};
    stx_test_fill_bytes(&rng, tokens, sizeof tokens);
    double small = 0, again = 0;
    CHECK_OK(stx_forward(m, tokens, 1, 20, &small));
    int64_t in_use = 0, peak = 0;
    CHECK_OK(stx_model_memory(m, &in_use, &peak));
    assert_true(in_use > 0 && peak >= in_use);
    CHECK_OK(stx_model_set_memory_limit(m, in_use + 1024));
    stx_clear_error();
    assert_int_equal(stx_forward(m, tokens, 8, 20, NULL), STX_ERR_OUT_OF_MEMORY);
    assert_non_null(strstr(stx_last_error(), "memory limit"));
    CHECK_OK(stx_forward(m, tokens, 1, 20, &again)); /* smaller batches still run */
    assert_true(again == small);
    CHECK_OK(stx_zero_grad(m));
    CHECK_OK(stx_backward(m));
    CHECK_OK(stx_model_set_memory_limit(m, 0));
    CHECK_OK(stx_forward(m, tokens, 8, 20, NULL));
    assert_int_equal(stx_model_set_memory_limit(m, -1), STX_ERR_INVALID_ARGUMENT);
    stx_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradients_every_pattern),
        cmocka_unit_test(test_recompute_identical),
        cmocka_unit_test(test_microbatches_accumulate),
        cmocka_unit_test(test_overfit_short_string),
        cmocka_unit_test(test_memory_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
