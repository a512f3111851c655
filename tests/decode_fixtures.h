/*
 * decode_fixtures.h: what the decoder tests of both backends share (include after harness.h
 * and model_fixtures.h): a decoder's distribution after every step against the last row of a
 * full forward over the same prefix, and the configurations that cover every pattern kind and
 * integration mode at positions that cross block and stride boundaries.
 */
#ifndef STX_TEST_DECODE_FIXTURES_H
#define STX_TEST_DECODE_FIXTURES_H

#include <math.h>
#include <sparsetx.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct stx_test_decode_case {
    const char *pattern;
    int32_t n_head;
    int32_t user_layer; /* >= 0: that layer reads a random user block layout */
    int32_t n_pos_axes; /* 0, or 2: a [n_ctx / 8, 8] position shape */
} stx_test_decode_case;

/* n_ctx 64 and blocks of 16 in every case: widths 8, 12, 16 and 32 put block and stride
 * boundaries at many different positions. */
static const stx_test_decode_case kStxDecodeCases[] = {
    {"dense", 2, -1, 0},
    {"local:12", 2, -1, 0},
    {"strided:8", 2, -1, 0},
    {"fixed:16:4:2", 4, -1, 0},
    {"local:8+strided:8", 2, -1, 2},
    {"fixed:16:4+strided:16", 2, -1, 0},
    {"local:8+fixed:32:8", 2, -1, 0},
    {"[local:8;strided:8]", 2, -1, 0},
    {"local:8,fixed:16:4", 2, -1, 0},
    {"local:8", 2, 1, 0},
};

enum { STX_DECODE_CTX = 64 };

static inline stx_model *stx_test_decode_model(const stx_test_decode_case *c, int32_t backend,
                                               int32_t precision, uint64_t seed) {
    stx_config cfg;
    CHECK_OK(stx_config_init(&cfg));
    cfg.n_layer = 2;
    cfg.n_embd = 32 * c->n_head; /* head dims 32: compiled on every backend */
    cfg.n_head = c->n_head;
    cfg.n_ctx = STX_DECODE_CTX;
    cfg.block_size = 16;
    cfg.backend = backend;
    cfg.precision = precision;
    cfg.n_threads = 2;
    cfg.seed = seed;
    if (c->n_pos_axes == 2) {
        cfg.n_pos_axes = 2;
        cfg.pos_shape[0] = STX_DECODE_CTX / 8;
        cfg.pos_shape[1] = 8;
    }
    snprintf(cfg.pattern, sizeof cfg.pattern, "%s", c->pattern);
    stx_model *m = NULL;
    CHECK_OK(stx_model_create(&cfg, &m));
    stx_test_randomize(&m, 1, seed * 31u + 7u, 0.5);
    if (c->user_layer >= 0) stx_test_user_layout(m, c->user_layer, seed + 3u);
    return m;
}

/* Feeds B random sequences to a decoder (the first n_prefill bytes through stx_decoder_prefill,
 * the rest a step at a time up to position n_ctx - 1) and compares its logits at every
 * position p with the last row of a forward over the prefix [0, p]. The model is causal, so
 * that row is row p of one forward over the whole sequence; the reference is taken from there,
 * and at a few positions also from a forward over the prefix alone. Returns the worst error
 * (max |diff| / max |ref| over the B rows of a position); fails above `bound`. */
static inline double stx_test_decode_check(stx_model *m, int32_t B, int32_t n_prefill,
                                           uint64_t seed, double bound, const char *what) {
    const int32_t T = STX_DECODE_CTX;
    uint8_t *seq = (uint8_t *)malloc((size_t)B * T), *prefix = (uint8_t *)malloc((size_t)B * T);
    uint8_t *column = (uint8_t *)malloc((size_t)B);
    double *full = (double *)malloc((size_t)B * T * STX_VOCAB * sizeof(double));
    double *part = (double *)malloc((size_t)B * T * STX_VOCAB * sizeof(double));
    double *ref = (double *)malloc((size_t)B * STX_VOCAB * sizeof(double));
    double *got = (double *)malloc((size_t)B * STX_VOCAB * sizeof(double));
    assert_true(seq && prefix && column && full && part && ref && got);
    stx_test_rng rng = {seed};
    stx_test_fill_bytes(&rng, seq, (size_t)B * T);

    CHECK_OK(stx_evaluate(m, seq, B, T, NULL));
    CHECK_OK(stx_logits_read(m, STX_DTYPE_F64, full, (size_t)B * T * STX_VOCAB));
    stx_decoder *dec = NULL;
    CHECK_OK(stx_decoder_create(m, B, &dec));
    for (int32_t b = 0; b < B; ++b)
        memcpy(prefix + (size_t)b * n_prefill, seq + (size_t)b * T, (size_t)n_prefill);
    CHECK_OK(stx_decoder_prefill(dec, prefix, n_prefill));
    double worst = 0.0;
    for (int32_t p = n_prefill; p < T; ++p) {
        int32_t at = -1;
        CHECK_OK(stx_decoder_position(dec, &at));
        assert_int_equal(at, p);
        /* Row p of a forward over bytes [0, p] reads bytes [0, p); byte p is not read. */
        const int prefix_only = p == n_prefill || p == T / 2 + 3 || p == T - 1;
        const int32_t rows = prefix_only ? p + 1 : T;
        const double *src = full;
        if (prefix_only) {
            for (int32_t b = 0; b < B; ++b)
                memcpy(prefix + (size_t)b * rows, seq + (size_t)b * T, (size_t)rows);
            CHECK_OK(stx_evaluate(m, prefix, B, rows, NULL));
            CHECK_OK(stx_logits_read(m, STX_DTYPE_F64, part, (size_t)B * rows * STX_VOCAB));
            src = part;
        }
        for (int32_t b = 0; b < B; ++b)
            memcpy(ref + (size_t)b * STX_VOCAB, src + ((size_t)b * rows + p) * STX_VOCAB,
                   STX_VOCAB * sizeof(double));
        for (size_t i = 0; i < (size_t)B * STX_VOCAB; ++i) got[i] = (double)NAN; /* poison */
        CHECK_OK(stx_decoder_logits(dec, STX_DTYPE_F64, got, (size_t)B * STX_VOCAB));
        const double err = stx_test_rel_error(got, ref, (size_t)B * STX_VOCAB, NULL);
        if (!(err <= bound))
            fail_msg("%s: position %d (prefill %d): decoder vs forward relative error %.3e > %.1e",
                     what, p, n_prefill, err, bound);
        if (err > worst) worst = err;
        if (p + 1 < T) {
            for (int32_t b = 0; b < B; ++b) column[b] = seq[(size_t)b * T + p];
            CHECK_OK(stx_decoder_step(dec, column));
        }
    }
    /* Full: one more byte is refused, naming the position. */
    for (int32_t b = 0; b < B; ++b) column[b] = 0;
    assert_int_equal(stx_decoder_step(dec, column), STX_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(stx_last_error(), "position"));
    stx_decoder_free(dec);
    free(seq);
    free(prefix);
    free(column);
    free(full);
    free(part);
    free(ref);
    free(got);
    return worst;
}

/* stx_test_decode_check on every case of kStxDecodeCases: a model each on backend and
 * precision (seed model_seed + i), B sequences, once per prefill length of prefills[] (the
 * k-th with data seed data_seed + 100 k + i); returns the worst error. */
static inline double stx_test_decode_every_case(int32_t backend, int32_t precision,
                                                const char *label, uint64_t model_seed, int32_t B,
                                                const int32_t *prefills, int n_prefills,
                                                uint64_t data_seed, double bound) {
    const size_t n = sizeof kStxDecodeCases / sizeof kStxDecodeCases[0];
    double worst = 0.0;
    for (size_t i = 0; i < n; ++i) {
        stx_model *m =
            stx_test_decode_model(&kStxDecodeCases[i], backend, precision, model_seed + i);
        char what[96];
        snprintf(what, sizeof what, "%s %s", label, kStxDecodeCases[i].pattern);
        for (int k = 0; k < n_prefills; ++k) {
            const double e = stx_test_decode_check(m, B, prefills[k],
                                                   data_seed + 100u * (uint64_t)k + i, bound, what);
            if (e > worst) worst = e;
        }
        stx_model_free(m);
    }
    return worst;
}

#endif
