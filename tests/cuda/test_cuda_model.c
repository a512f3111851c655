/*
 * test_cuda_model.c: the whole model on the CUDA backend against the CPU reference, through
 * the public API, for every pattern kind and integration mode and a user layout, with
 * dropout on, ragged n_ctx and T < n_ctx:
 *  - logits, loss and every parameter gradient (fp32: max|cuda - cpu| / max|cpu| <= 1e-4);
 *  - ten AdamW steps on the same batches give the same weights (fp32 <= 1e-4);
 *  - the CUDA backend is deterministic (two runs, the same bits) and reports its memory;
 *  - bf16 training follows fp32: the first 10 losses within 1%, the final loss within twice
 *    the spread fp32 shows under another order of the training windows (at least 2%);
 *  - the bf16 operand copies and pending zeros change no bit: training steps with them and
 *    with STX_CUDA_NO_OPERAND_CACHE=1 give the same losses, gradients and weights;
 *  - recompute 0, 1 and 2 give the same loss and gradients.
 * Without a GPU the test says so and exits 77.
 */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "harness.h"
#include "model_fixtures.h"

#include <math.h>
#include <sparsetx.h>
#include <string.h>

typedef struct model_case {
    const char *name;
    const char *pattern;
    int32_t n_layer, n_embd, n_head, n_ctx, T, block_size;
    float qk_ratio;
    int user_layout_layer;
} model_case;

/* Head dims the CUDA kernels compile: Dq in {32, 64, 128}, Dv = Dq or 2 Dq. */
static const model_case cases[] = {
    {"dense", "dense", 2, 96, 3, 100, 100, 32, 1.0f, -1},
    {"local", "local:40", 2, 96, 3, 100, 77, 16, 1.0f, -1},
    {"strided", "strided:24", 2, 96, 3, 100, 100, 32, 1.0f, -1},
    {"fixed, 3 groups, qk 0.5", "fixed:32:8:3", 2, 192, 3, 100, 90, 16, 0.5f, -1},
    {"merged local+strided", "local:16+strided:16", 2, 96, 3, 100, 100, 32, 1.0f, -1},
    {"interleaved", "local:20,strided:16,fixed:32:8", 3, 96, 3, 100, 100, 32, 1.0f, -1},
    {"multi-head", "[local:16;strided:20+fixed:32:8;dense]", 2, 96, 3, 100, 100, 32, 1.0f, -1},
    {"user layout", "local:16", 2, 96, 3, 100, 100, 32, 1.0f, 1},
};

static stx_model *make_ex(const model_case *mc, int32_t backend, int32_t precision, float dropout,
                          int32_t recompute) {
    stx_config cfg;
    CHECK_OK(stx_config_init(&cfg));
    cfg.n_layer = mc->n_layer;
    cfg.n_embd = mc->n_embd;
    cfg.n_head = mc->n_head;
    cfg.n_ctx = mc->n_ctx;
    cfg.block_size = mc->block_size;
    cfg.qk_ratio = mc->qk_ratio;
    cfg.n_pos_axes = 2; /* [n/10, 10] or [n/8, 8] */
    cfg.pos_shape[1] = mc->n_ctx % 10 == 0 ? 10 : 8;
    cfg.pos_shape[0] = mc->n_ctx / cfg.pos_shape[1];
    cfg.dropout = dropout;
    cfg.backend = backend;
    cfg.precision = precision;
    cfg.seed = 5;
    cfg.recompute = recompute;
    strcpy(cfg.pattern, mc->pattern);
    stx_model *m = NULL;
    CHECK_OK(stx_model_create(&cfg, &m));
    if (mc->user_layout_layer >= 0) stx_test_user_layout(m, mc->user_layout_layer, 17);
    return m;
}

static stx_model *make(const model_case *mc, int32_t backend, int32_t precision, float dropout) {
    stx_config cfg;
    CHECK_OK(stx_config_init(&cfg));
    return make_ex(mc, backend, precision, dropout, cfg.recompute);
}

/* The same fresh random weights in both models (W_out and the gains included). */
static void randomize_both(stx_model *a, stx_model *b, uint64_t seed) {
    stx_model *both[2] = {a, b};
    stx_test_randomize(both, 2, seed, 0.3);
}

/* Per-tensor relative L2 error ||a - b|| / ||b||. */
static double rel_l2(const double *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; ++i) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Gradients: max|a - b| / max|b| <= bound per tensor. Weights after Adam steps: the relative
 * L2 error <= bound per tensor, and the elementwise max is reported. Adam's first step moves
 * every element by about lr * sign(g), so an element whose gradient is within fp32 rounding
 * of zero (about 1e-6 of its tensor's largest) may step +lr on one backend and -lr on the
 * other, whatever lr is: the elementwise max then measures isolated elements, not agreement. */
static void compare_tensors(stx_model *gpu, stx_model *cpu, const char *label, int grads,
                            double bound, double *worst, double *worst_max) {
    int32_t n = 0;
    CHECK_OK(stx_param_count(cpu, &n));
    for (int32_t i = 0; i < n; ++i) {
        const char *name;
        int64_t numel = stx_test_numel(cpu, i, &name);
        double *a = malloc((size_t)numel * sizeof *a), *b = malloc((size_t)numel * sizeof *b);
        if (grads) {
            CHECK_OK(stx_grad_read(gpu, name, STX_DTYPE_F64, a, (size_t)numel));
            CHECK_OK(stx_grad_read(cpu, name, STX_DTYPE_F64, b, (size_t)numel));
        } else {
            CHECK_OK(stx_param_read(gpu, name, STX_DTYPE_F64, a, (size_t)numel));
            CHECK_OK(stx_param_read(cpu, name, STX_DTYPE_F64, b, (size_t)numel));
        }
        char what[200];
        snprintf(what, sizeof what, "%s: %s %s", label, grads ? "gradient" : "weight", name);
        size_t w;
        const double err_max = stx_test_rel_error(a, b, (size_t)numel, &w);
        if (err_max > *worst_max) *worst_max = err_max;
        if (grads) {
            if (err_max > *worst) *worst = err_max;
            stx_test_expect_close(what, a, b, (size_t)numel, bound);
        } else {
            const double err = rel_l2(a, b, (size_t)numel);
            if (err > *worst) *worst = err;
            if (!(err <= bound))
                fail_msg("%s: relative L2 error %.3e > %.1e (elementwise max %.3e)", what, err,
                         bound, err_max);
        }
        free(a);
        free(b);
    }
}

/* Logits, loss and every gradient; then ten AdamW steps on both. */
static void test_matches_reference(void **state) {
    (void)state;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c) {
        const model_case *mc = &cases[c];
        stx_model *gpu = make(mc, STX_BACKEND_CUDA, STX_PRECISION_FP32, 0.1f);
        stx_model *cpu = make(mc, STX_BACKEND_CPU, STX_PRECISION_FP32, 0.1f);
        randomize_both(gpu, cpu, 40 + c);
        const int32_t B = 2, T = mc->T;
        uint8_t *tokens = malloc((size_t)B * T);
        stx_test_rng rng = {900 + c};
        stx_test_fill_bytes(&rng, tokens, (size_t)B * T);
        double lg = 0, lc = 0;
        CHECK_OK(stx_forward(gpu, tokens, B, T, &lg));
        CHECK_OK(stx_forward(cpu, tokens, B, T, &lc));
        const size_t nl = (size_t)B * T * STX_VOCAB;
        double *zg = malloc(nl * sizeof *zg), *zc = malloc(nl * sizeof *zc);
        CHECK_OK(stx_logits_read(gpu, STX_DTYPE_F64, zg, nl));
        CHECK_OK(stx_logits_read(cpu, STX_DTYPE_F64, zc, nl));
        char what[160];
        snprintf(what, sizeof what, "%s: logits", mc->name);
        stx_test_expect_close(what, zg, zc, nl, 1e-4);
        if (!(fabs(lg - lc) <= 1e-5 * fabs(lc)))
            fail_msg("%s: loss %.9f (cuda) vs %.9f (cpu)", mc->name, lg, lc);
        CHECK_OK(stx_zero_grad(gpu));
        CHECK_OK(stx_zero_grad(cpu));
        CHECK_OK(stx_backward(gpu));
        CHECK_OK(stx_backward(cpu));
        double worst_grad = 0, worst_weight = 0, ignored = 0, weight_max = 0;
        compare_tensors(gpu, cpu, mc->name, 1, 1e-4, &worst_grad, &ignored);
        stx_optim_config opt;
        CHECK_OK(stx_optim_config_init(&opt));
        opt.lr = 1e-3;
        CHECK_OK(stx_model_set_optimizer(gpu, &opt));
        CHECK_OK(stx_model_set_optimizer(cpu, &opt));
        for (int step = 0; step < 10; ++step) {
            if (step > 0) {
                stx_test_fill_bytes(&rng, tokens, (size_t)B * T);
                CHECK_OK(stx_forward(gpu, tokens, B, T, NULL));
                CHECK_OK(stx_forward(cpu, tokens, B, T, NULL));
                CHECK_OK(stx_zero_grad(gpu));
                CHECK_OK(stx_zero_grad(cpu));
                CHECK_OK(stx_backward(gpu));
                CHECK_OK(stx_backward(cpu));
            }
            CHECK_OK(stx_optimizer_step(gpu, NULL, NULL));
            CHECK_OK(stx_optimizer_step(cpu, NULL, NULL));
        }
        compare_tensors(gpu, cpu, mc->name, 0, 1e-4, &worst_weight, &weight_max);
        printf("  %-26s loss %.6f vs %.6f, worst gradient %.1e; weights after 10 steps: L2 "
               "%.1e, elementwise max %.1e\n",
               mc->name, lg, lc, worst_grad, worst_weight, weight_max);
        free(zg);
        free(zc);
        free(tokens);
        stx_model_free(gpu);
        stx_model_free(cpu);
    }
}

/* Two CUDA models, same inputs: bit-identical loss and gradients; memory is reported. */
static void test_deterministic_and_memory(void **state) {
    (void)state;
    const model_case *mc = &cases[4];
    double loss[2];
    double *g[2];
    int64_t total = 0;
    for (int r = 0; r < 2; ++r) {
        stx_model *m = make(mc, STX_BACKEND_CUDA, STX_PRECISION_FP32, 0.2f);
        stx_model *twin = make(mc, STX_BACKEND_CPU, STX_PRECISION_FP32, 0.2f);
        randomize_both(m, twin, 77);
        uint8_t tokens[2 * 100];
        stx_test_rng rng = {3};
        stx_test_fill_bytes(&rng, tokens, sizeof tokens);
        CHECK_OK(stx_forward(m, tokens, 2, 100, &loss[r]));
        CHECK_OK(stx_zero_grad(m));
        CHECK_OK(stx_backward(m));
        CHECK_OK(stx_param_total(m, &total));
        g[r] = malloc((size_t)total * sizeof(float));
        int32_t n = 0;
        size_t at = 0;
        CHECK_OK(stx_param_count(m, &n));
        for (int32_t i = 0; i < n; ++i) {
            const char *name;
            int64_t numel = stx_test_numel(m, i, &name);
            CHECK_OK(stx_grad_read(m, name, STX_DTYPE_F32, (float *)g[r] + at, (size_t)numel));
            at += (size_t)numel;
        }
        int64_t in_use = 0, peak = 0;
        CHECK_OK(stx_model_memory(m, &in_use, &peak));
        if (r == 0)
            printf("  device memory: %lld bytes in use, peak %lld\n", (long long)in_use,
                   (long long)peak);
        assert_true(in_use >= 2 * total * (int64_t)sizeof(float)); /* weights and gradients */
        assert_true(peak >= in_use);
        stx_model_free(m);
        stx_model_free(twin);
    }
    assert_true(memcmp(&loss[0], &loss[1], sizeof loss[0]) == 0);
    if (memcmp(g[0], g[1], (size_t)total * sizeof(float)) != 0)
        fail_msg("CUDA gradients differ between two identical runs");
    free(g[0]);
    free(g[1]);
}

/* Trains `mc` for 150 AdamW steps on windows of a short text drawn in the order of
 * `order_seed`; returns the mean evaluation loss over the text, and the first 10 training
 * losses through early[]. */
static double train_text(const model_case *mc, int32_t precision, unsigned long long order_seed,
                         double *early) {
    const char *text =
        "In the beginning God created the heaven and the earth. And the earth was without form, "
        "and void; and darkness was upon the face of the deep. And the Spirit of God moved upon "
        "the face of the waters. And God said, Let there be light: and there was light. ";
    const int32_t n = (int32_t)strlen(text), T = 64, B = 8;
    stx_model *m = make(mc, STX_BACKEND_CUDA, precision, 0.0f);
    stx_optim_config opt;
    CHECK_OK(stx_optim_config_init(&opt));
    opt.lr = 2e-3;
    CHECK_OK(stx_model_set_optimizer(m, &opt));
    uint8_t batch[8 * 64];
    unsigned long long r = order_seed;
    double loss = 0;
    for (int step = 0; step < 150; ++step) {
        for (int b = 0; b < B; ++b) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            memcpy(batch + b * T, text + (r >> 33) % (unsigned long long)(n - T), (size_t)T);
        }
        CHECK_OK(stx_forward(m, batch, B, T, &loss));
        if (step < 10) early[step] = loss;
        CHECK_OK(stx_zero_grad(m));
        CHECK_OK(stx_backward(m));
        CHECK_OK(stx_optimizer_step(m, NULL, NULL));
    }
    double eval = 0, sum = 0;
    for (int w = 0; w + T <= n; w += T) {
        CHECK_OK(stx_evaluate(m, (const uint8_t *)text + w, 1, T, &eval));
        sum += eval;
    }
    stx_model_free(m);
    return sum / (n / T);
}

/* bf16 mixed precision trains like fp32. Memorizing a 256-byte text is chaotic: a rounding
 * difference early on moves the loss reached after 150 steps by several percent, so the
 * final losses are compared against the spread fp32 itself shows when only the order of the
 * training windows changes (measured here, in the same run): bf16 must stay within twice
 * that spread (and within 2% if the spread is smaller). Before chaos takes over, the first
 * 10 training losses of bf16 and fp32 (same order) must agree within 1%. */
static void test_bf16_follows_fp32(void **state) {
    (void)state;
    model_case mc = {"bf16", "local:32+strided:16", 2, 128, 4, 64, 64, 32, 1.0f, -1};
    double early32[10], early16[10], early_other[10];
    const double fp32 = train_text(&mc, STX_PRECISION_FP32, 12345, early32);
    const double fp32_other = train_text(&mc, STX_PRECISION_FP32, 777, early_other);
    const double bf16 = train_text(&mc, STX_PRECISION_BF16, 12345, early16);
    double early_worst = 0.0;
    for (int i = 0; i < 10; ++i) {
        const double d = fabs(early16[i] - early32[i]) / early32[i];
        if (d > early_worst) early_worst = d;
    }
    const double spread = fabs(fp32_other - fp32) / fp32, rel = fabs(bf16 - fp32) / fp32;
    const double bound = spread * 2 > 0.02 ? spread * 2 : 0.02;
    printf("  first 10 steps: bf16 vs fp32 at most %.3f%% apart (bound 1%%)\n", 100 * early_worst);
    printf("  final loss fp32 %.4f, bf16 %.4f (%.2f%% apart); fp32 with another window order "
           "%.4f (%.2f%%): bound %.2f%%\n",
           fp32, bf16, 100 * rel, fp32_other, 100 * spread, 100 * bound);
    assert_true(fp32 < 2.0 && bf16 < 2.0); /* both learned: ln 256 = 5.55 at the start */
    assert_true(early_worst <= 0.01);
    assert_true(rel <= bound);
}

/* Every gradient of m as float, in table order (total floats). */
static float *read_all_grads(stx_model *m, int64_t total) {
    float *g = malloc((size_t)total * sizeof(float));
    assert_non_null(g);
    int32_t n = 0;
    size_t at = 0;
    CHECK_OK(stx_param_count(m, &n));
    for (int32_t i = 0; i < n; ++i) {
        const char *name;
        const int64_t numel = stx_test_numel(m, i, &name);
        CHECK_OK(stx_grad_read(m, name, STX_DTYPE_F32, g + at, (size_t)numel));
        at += (size_t)numel;
    }
    return g;
}

static float *read_all_params(stx_model *m, int64_t total) {
    float *p = malloc((size_t)total * sizeof(float));
    assert_non_null(p);
    int32_t n = 0;
    size_t at = 0;
    CHECK_OK(stx_param_count(m, &n));
    for (int32_t i = 0; i < n; ++i) {
        const char *name;
        const int64_t numel = stx_test_numel(m, i, &name);
        CHECK_OK(stx_param_read(m, name, STX_DTYPE_F32, p + at, (size_t)numel));
        at += (size_t)numel;
    }
    return p;
}

/* The bf16 operand copies kept between ops and the pending zeros (cuda/context.cuh) only
 * remove repeated identical conversions and memsets whose zeros would be added to: training
 * steps with them on and with STX_CUDA_NO_OPERAND_CACHE=1 must give the same bits (losses,
 * logits, every gradient, the weights after each step, an evaluation), in fp32 and bf16, with
 * recomputation on and off, dropout on, over single- and multi-pass layouts and the Hopper
 * head dims. */
static void test_operand_cache_same_bits(void **state) {
    (void)state;
    const model_case cache_cases[] = {
        cases[4], /* merged passes, Dq 32, blocks of 32 */
        cases[3], /* Dq 32, Dv 64, blocks of 16, T < n_ctx */
        {"wgmma dims", "local:32+strided:16", 2, 128, 2, 64, 64, 32, 1.0f, -1}, /* Dq 64 */
        {"blocks of 64", "fixed:64:16:2", 2, 128, 2, 130, 111, 64, 1.0f, -1},
    };
    const int32_t B = 3;
    for (size_t c = 0; c < sizeof cache_cases / sizeof cache_cases[0]; ++c)
        for (int prec = 0; prec < 2; ++prec)
            for (int recompute = 0; recompute < 2; ++recompute) {
                const model_case *mc = &cache_cases[c];
                const int32_t precision = prec ? STX_PRECISION_BF16 : STX_PRECISION_FP32;
                stx_model *on = make_ex(mc, STX_BACKEND_CUDA, precision, 0.2f, recompute);
                assert_int_equal(setenv("STX_CUDA_NO_OPERAND_CACHE", "1", 1), 0);
                stx_model *off = make_ex(mc, STX_BACKEND_CUDA, precision, 0.2f, recompute);
                assert_int_equal(unsetenv("STX_CUDA_NO_OPERAND_CACHE"), 0);
                randomize_both(on, off, 300 + c);
                stx_optim_config opt;
                CHECK_OK(stx_optim_config_init(&opt));
                opt.lr = 1e-3;
                CHECK_OK(stx_model_set_optimizer(on, &opt));
                CHECK_OK(stx_model_set_optimizer(off, &opt));
                int64_t total = 0;
                CHECK_OK(stx_param_total(on, &total));
                const int32_t T = mc->T;
                uint8_t *tokens = malloc((size_t)B * T);
                const size_t nl = (size_t)B * T * STX_VOCAB;
                float *z[2] = {malloc(nl * sizeof(float)), malloc(nl * sizeof(float))};
                stx_test_rng rng = {4000 + 10 * c + 2 * (size_t)prec + (size_t)recompute};
                char what[200];
                snprintf(what, sizeof what, "%s, %s, recompute %d", mc->name,
                         prec ? "bf16" : "fp32", recompute);
                for (int step = 0; step < 3; ++step) {
                    stx_test_fill_bytes(&rng, tokens, (size_t)B * T);
                    double loss[2];
                    stx_model *m[2] = {on, off};
                    float *g[2], *p[2];
                    for (int r = 0; r < 2; ++r) {
                        CHECK_OK(stx_forward(m[r], tokens, B, T, &loss[r]));
                        CHECK_OK(stx_logits_read(m[r], STX_DTYPE_F32, z[r], nl));
                        CHECK_OK(stx_zero_grad(m[r]));
                        CHECK_OK(stx_backward(m[r]));
                        g[r] = read_all_grads(m[r], total);
                        CHECK_OK(stx_optimizer_step(m[r], NULL, NULL));
                        p[r] = read_all_params(m[r], total);
                    }
                    if (memcmp(&loss[0], &loss[1], sizeof loss[0]) != 0)
                        fail_msg("%s, step %d: loss %.17g with the operand cache, %.17g without",
                                 what, step, loss[0], loss[1]);
                    if (memcmp(z[0], z[1], nl * sizeof(float)) != 0)
                        fail_msg("%s, step %d: logits differ with the operand cache", what, step);
                    for (int64_t i = 0; i < total; ++i)
                        if (memcmp(&g[0][i], &g[1][i], sizeof(float)) != 0)
                            fail_msg("%s, step %d: gradient %lld is %.9g with the operand cache, "
                                     "%.9g without",
                                     what, step, (long long)i, (double)g[0][i], (double)g[1][i]);
                    if (memcmp(p[0], p[1], (size_t)total * sizeof(float)) != 0)
                        fail_msg("%s, step %d: weights differ with the operand cache", what, step);
                    for (int r = 0; r < 2; ++r) {
                        free(g[r]);
                        free(p[r]);
                    }
                }
                double eval[2];
                CHECK_OK(stx_evaluate(on, tokens, B, T, &eval[0]));
                CHECK_OK(stx_evaluate(off, tokens, B, T, &eval[1]));
                if (memcmp(&eval[0], &eval[1], sizeof eval[0]) != 0)
                    fail_msg("%s: evaluation loss %.17g with the operand cache, %.17g without",
                             what, eval[0], eval[1]);
                printf("  %-40s same bits with and without the operand cache\n", what);
                free(z[0]);
                free(z[1]);
                free(tokens);
                stx_model_free(on);
                stx_model_free(off);
            }
}

/* Recomputation on the GPU changes no bit either: recompute 1 replays each block, recompute 2
 * replays all but the attention (kept per block); losses and every gradient of a training step
 * with dropout are those of recompute 0, in fp32 and bf16, on the portable and Hopper kernels. */
static void test_recompute_same_bits(void **state) {
    (void)state;
    const model_case rc_cases[] = {
        cases[4], /* merged passes, blocks of 32 */
        {"wgmma dims", "fixed:32:8:2", 2, 128, 2, 64, 64, 32, 1.0f, -1}, /* Dq 64, blocks of 32 */
    };
    const int32_t B = 2;
    for (size_t c = 0; c < sizeof rc_cases / sizeof rc_cases[0]; ++c)
        for (int prec = 0; prec < 2; ++prec) {
            const model_case *mc = &rc_cases[c];
            const int32_t precision = prec ? STX_PRECISION_BF16 : STX_PRECISION_FP32;
            uint8_t *tokens = malloc((size_t)B * mc->T);
            stx_test_rng rng = {77 + c};
            stx_test_fill_bytes(&rng, tokens, (size_t)B * mc->T);
            double loss[3];
            float *g[3];
            int64_t total = 0;
            for (int r = 0; r < 3; ++r) {
                stx_model *m = make_ex(mc, STX_BACKEND_CUDA, precision, 0.25f, r);
                stx_test_randomize(&m, 1, 500 + c, 0.3);
                CHECK_OK(stx_param_total(m, &total));
                CHECK_OK(stx_forward(m, tokens, B, mc->T, &loss[r]));
                CHECK_OK(stx_zero_grad(m));
                CHECK_OK(stx_backward(m));
                g[r] = read_all_grads(m, total);
                stx_model_free(m);
            }
            for (int r = 1; r < 3; ++r) {
                if (memcmp(&loss[0], &loss[r], sizeof loss[0]) != 0)
                    fail_msg("%s %s: loss %.17g with recompute 0, %.17g with %d", mc->name,
                             prec ? "bf16" : "fp32", loss[0], loss[r], r);
                if (memcmp(g[0], g[r], (size_t)total * sizeof(float)) != 0)
                    fail_msg("%s %s: gradients differ with recompute 0 and %d", mc->name,
                             prec ? "bf16" : "fp32", r);
            }
            printf("  %-14s %s: recompute 0, 1 and 2 give the same loss and gradients\n", mc->name,
                   prec ? "bf16" : "fp32");
            for (int r = 0; r < 3; ++r) free(g[r]);
            free(tokens);
        }
}

/* A device memory limit refuses a larger batch with the bytes named; a status, not a crash. */
static void test_memory_limit(void **state) {
    (void)state;
    stx_model *m = make(&cases[4], STX_BACKEND_CUDA, STX_PRECISION_FP32, 0.0f);
    uint8_t tokens[8 * 100];
    stx_test_rng rng = {21};
    stx_test_fill_bytes(&rng, tokens, sizeof tokens);
    CHECK_OK(stx_forward(m, tokens, 1, 100, NULL));
    int64_t in_use = 0, peak = 0;
    CHECK_OK(stx_model_memory(m, &in_use, &peak));
    CHECK_OK(stx_model_set_memory_limit(m, in_use + 4096));
    stx_clear_error();
    const stx_status st = stx_forward(m, tokens, 8, 100, NULL);
    printf("  limit %lld bytes: %s\n", (long long)(in_use + 4096), stx_last_error());
    assert_int_equal(st, STX_ERR_OUT_OF_MEMORY);
    assert_non_null(strstr(stx_last_error(), "memory limit"));
    stx_model_free(m);
}

int main(void) {
    if (!stx_backend_available(STX_BACKEND_CUDA)) {
        printf("SKIP: test_cuda_model needs a CUDA device (build features 0x%x, none usable "
               "here)\n",
               stx_build_features());
        return STX_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_reference),
        cmocka_unit_test(test_deterministic_and_memory),
        cmocka_unit_test(test_bf16_follows_fp32),
        cmocka_unit_test(test_memory_limit),
        cmocka_unit_test(test_operand_cache_same_bits),
        cmocka_unit_test(test_recompute_same_bits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
