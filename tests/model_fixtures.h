/*
 * model_fixtures.h: what the whole-model tests share (include after harness.h): CHECK_OK,
 * the element count of a parameter tensor, the step and dropout counters, every parameter or
 * gradient read back, a small model's config, fresh random weights written into one or more
 * models (W_out included: at its zero init every other gradient vanishes and a comparison
 * would pass vacuously), and a random causal user layout for a layer.
 */
#ifndef STX_TEST_MODEL_FIXTURES_H
#define STX_TEST_MODEL_FIXTURES_H

#include <sparsetx.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_OK(call)                                                                             \
    do {                                                                                           \
        stx_status st_ = (call);                                                                   \
        if (st_ != STX_OK) fail_msg("%s -> %d: %s", #call, (int)st_, stx_last_error());            \
    } while (0)

/* Elements of parameter tensor i; its name through *name. */
static inline int64_t stx_test_numel(const stx_model *m, int32_t i, const char **name) {
    int32_t ndim;
    int64_t shape[STX_MAX_DIMS], n = 1;
    CHECK_OK(stx_param_info(m, i, name, &ndim, shape));
    for (int32_t d = 0; d < ndim; ++d) n *= shape[d];
    return n;
}

/* The model's optimizer step count and its dropout counter. */
static inline int64_t stx_test_step(const stx_model *m) {
    int64_t s = -1;
    CHECK_OK(stx_model_get_step(m, &s));
    return s;
}

static inline uint64_t stx_test_dropout_counter(const stx_model *m) {
    uint64_t c = 0;
    CHECK_OK(stx_model_get_dropout_counter(m, &c));
    return c;
}

/* Every parameter (grads 0) or every parameter gradient (grads 1) of the model in table
 * order, as doubles (exact for float ones): malloc'ed, *total elements. */
static inline double *stx_test_tensors(const stx_model *m, int grads, size_t *total) {
    int32_t count = 0;
    int64_t n = 0;
    CHECK_OK(stx_param_count(m, &count));
    CHECK_OK(stx_param_total(m, &n));
    double *all = (double *)malloc((size_t)n * sizeof *all);
    assert_non_null(all);
    size_t at = 0;
    for (int32_t i = 0; i < count; ++i) {
        const char *name;
        const int64_t numel = stx_test_numel(m, i, &name);
        if (grads)
            CHECK_OK(stx_grad_read(m, name, STX_DTYPE_F64, all + at, (size_t)numel));
        else
            CHECK_OK(stx_param_read(m, name, STX_DTYPE_F64, all + at, (size_t)numel));
        at += (size_t)numel;
    }
    assert_int_equal(at, (size_t)n);
    *total = at;
    return all;
}

static inline double *stx_test_grads(const stx_model *m, size_t *total) {
    return stx_test_tensors(m, 1, total);
}

static inline double *stx_test_params(const stx_model *m, size_t *total) {
    return stx_test_tensors(m, 0, total);
}

/* The small model of the training, sampling and misuse tests: 2 layers, n_embd 16, 2 heads,
 * block 16, local:8+strided:8; stx_config_init's defaults for the rest. */
static inline void stx_test_small_config(stx_config *cfg, int32_t n_ctx, int32_t precision,
                                         int32_t n_threads, uint64_t seed) {
    CHECK_OK(stx_config_init(cfg));
    cfg->n_layer = 2, cfg->n_embd = 16, cfg->n_head = 2, cfg->block_size = 16;
    cfg->n_ctx = n_ctx, cfg->precision = precision, cfg->n_threads = n_threads, cfg->seed = seed;
    strcpy(cfg->pattern, "local:8+strided:8");
}

/* The same uniform(-scale, scale) values in every tensor of each of the n models (LayerNorm
 * gains near 1 keep LayerNorm well conditioned). */
static inline void stx_test_randomize(stx_model **models, int n, uint64_t seed, double scale) {
    stx_test_rng rng = {seed};
    int32_t count = 0;
    CHECK_OK(stx_param_count(models[0], &count));
    for (int32_t i = 0; i < count; ++i) {
        const char *name;
        const int64_t numel = stx_test_numel(models[0], i, &name);
        double *v = (double *)malloc((size_t)numel * sizeof *v);
        assert_non_null(v);
        stx_test_fill(&rng, v, (size_t)numel, scale);
        if (strstr(name, ".g"))
            for (int64_t e = 0; e < numel; ++e) v[e] += 1.0;
        for (int k = 0; k < n; ++k)
            CHECK_OK(stx_param_write(models[k], name, STX_DTYPE_F64, v, (size_t)numel));
        free(v);
    }
}

/* Layer `layer` reads a random causal block layout (the diagonal always, each lower block
 * with probability about 1/2, different per head). */
static inline void stx_test_user_layout(stx_model *m, int32_t layer, uint64_t seed) {
    stx_config cfg;
    CHECK_OK(stx_model_get_config(m, &cfg));
    const int32_t nb = (cfg.n_ctx + cfg.block_size - 1) / cfg.block_size;
    uint8_t *blocks = (uint8_t *)calloc((size_t)cfg.n_head * nb * nb, 1);
    assert_non_null(blocks);
    stx_test_rng rng = {seed};
    for (int32_t h = 0; h < cfg.n_head; ++h)
        for (int32_t i = 0; i < nb; ++i)
            for (int32_t j = 0; j <= i; ++j)
                blocks[((size_t)h * nb + i) * nb + j] =
                    (uint8_t)(i == j || stx_test_uniform(&rng) > 0.0);
    stx_layout *lay = NULL;
    CHECK_OK(stx_layout_create_from_blocks(cfg.n_ctx, cfg.n_head, cfg.block_size, blocks, &lay));
    CHECK_OK(stx_model_set_layer_layout(m, layer, lay));
    stx_layout_free(lay);
    free(blocks);
}

#endif
