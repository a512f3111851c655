/*
 * test_fuzz_regressions.c: inputs found by the libFuzzer harnesses (tests/fuzz), replayed
 * through the same public API, each expected to fail cleanly with a status and a message.
 *
 *  1. fuzz_checkpoint: a 36 KB checkpoint whose config asks for n_ctx 2^24 (position axes
 *     [4096, 4096], so the tensors stay tiny) with a dense pattern made stx_model_load build a
 *     block layout of n_ctx^2 / (2 * 16^2) = 5.5e11 entries (2.2 TB): it ran for hours and
 *     grew without bound instead of failing. Layouts are now checked against the machine's
 *     memory before they are built (lib/layout.cpp, check_layout_fits), which also covers
 *     stx_model_create and stx_layout_create with such sizes; sparse patterns over the same
 *     context are still built.
 * The checkpoint is written here from the format in lib/checkpoint.cpp, in a fresh mkdtemp
 * directory under /tmp that is removed at the end.
 */
#define _XOPEN_SOURCE 700 /* mkdtemp under -std=c99 */
#include "harness.h"
#include "model_fixtures.h"

#include <sparsetx.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define LONG_CTX (1 << 24)
#define AXIS     4096

static char tmp_dir[64];
static char ckpt_path[128];

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The refusals below assume less than 2.2 TB of memory; skip the case on a larger machine. */
static int machine_too_large(void) {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 && (double)pages * (double)page > 2e12;
}

static void expect_out_of_memory(stx_status st, const char *fragment) {
    if (st != STX_ERR_OUT_OF_MEMORY)
        fail_msg("status %d (%s), expected out of memory; message: %s", (int)st,
                 stx_status_string(st), stx_last_error());
    if (!strstr(stx_last_error(), fragment))
        fail_msg("message \"%s\" does not contain \"%s\"", stx_last_error(), fragment);
}

/* ---------------------------------------------------------- a checkpoint writer */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = (uint8_t *)realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void put_u(buf *b, uint64_t v, int bytes) {
    uint8_t le[8];
    for (int i = 0; i < bytes; ++i) le[i] = (uint8_t)(v >> (8 * i));
    put(b, le, (size_t)bytes);
}

static void put_f32(buf *b, float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    put_u(b, u, 4);
}

static void put_f64(buf *b, double v) {
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    put_u(b, u, 8);
}

static void put_section(buf *file, const char tag[4], const buf *payload) {
    put(file, tag, 4);
    put_u(file, payload->n, 8);
    put(file, payload->p, payload->n);
    put_u(file, crc32(0, payload->p, (uInt)payload->n), 4);
}

/* A checkpoint of the model `shape` (tensor names and shapes) under config `cfg`, with the
 * position tables given the shapes of cfg's axes, zero weights and no Adam moments. */
static void write_checkpoint(const char *path, const stx_config *cfg, const stx_model *shape) {
    int32_t count = 0;
    CHECK_OK(stx_param_count(shape, &count));
    buf file = {NULL, 0, 0}, s = {NULL, 0, 0};
    put(&file, "STXCKPT", 8);
    put_u(&file, 1, 4);
    put_u(&file, (uint64_t)count + 4, 4);

    const int32_t head[] = {cfg->n_layer, cfg->n_embd,     cfg->n_head,    cfg->n_ctx,
                            cfg->ff_mult, cfg->block_size, cfg->n_pos_axes};
    for (size_t i = 0; i < sizeof head / sizeof head[0]; ++i) put_u(&s, (uint32_t)head[i], 4);
    for (int a = 0; a < STX_MAX_POS_AXES; ++a) put_u(&s, (uint32_t)cfg->pos_shape[a], 4);
    const int32_t tail[] = {STX_BACKEND_CPU, 0, cfg->precision, cfg->n_threads, cfg->recompute};
    for (size_t i = 0; i < sizeof tail / sizeof tail[0]; ++i) put_u(&s, (uint32_t)tail[i], 4);
    put_f32(&s, cfg->qk_ratio);
    put_f32(&s, cfg->dropout);
    put_u(&s, cfg->seed, 8);
    put_u(&s, strlen(cfg->pattern), 4);
    put(&s, cfg->pattern, strlen(cfg->pattern));
    put_section(&file, "CONF", &s);

    s.n = 0;
    const double optim[] = {3e-4, 0.0, 0.9, 0.999, 1e-8, 0.01, 1.0};
    for (size_t i = 0; i < sizeof optim / sizeof optim[0]; ++i) put_f64(&s, optim[i]);
    for (int i = 0; i < 4; ++i) put_u(&s, 0, 8); /* warmup, total, step, dropout counter */
    put_u(&s, 1, 1);                             /* training */
    put_u(&s, 0, 1);                             /* has_moments */
    put_section(&file, "OPTM", &s);

    for (int32_t t = 0; t < count; ++t) {
        const char *name = NULL;
        int32_t ndim = 0;
        int64_t dims[STX_MAX_DIMS];
        CHECK_OK(stx_param_info(shape, t, &name, &ndim, dims));
        if (strncmp(name, "pos_emb.", 8) == 0) dims[0] = cfg->pos_shape[atoi(name + 8)];
        int64_t numel = 1;
        for (int32_t d = 0; d < ndim; ++d) numel *= dims[d];
        s.n = 0;
        put_u(&s, 0, 4);
        put_u(&s, strlen(name), 4);
        put(&s, name, strlen(name));
        put_u(&s, (uint32_t)ndim, 4);
        for (int32_t d = 0; d < ndim; ++d) put_u(&s, (uint64_t)dims[d], 8);
        put_u(&s, 0, 4); /* f32 */
        for (int64_t i = 0; i < numel; ++i) put_f32(&s, 0.0f);
        put_section(&file, "TENS", &s);
    }
    s.n = 0;
    put_section(&file, "APPS", &s);
    put_section(&file, "END", &s); /* "END\0": the string literal's NUL */

    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(file.p, 1, file.n, f), file.n);
    assert_int_equal(fclose(f), 0);
    free(file.p);
    free(s.p);
}

/* n_ctx 2^24 over position axes [4096, 4096] with the given pattern: tiny tensors. */
static void long_context_config(stx_config *cfg, const char *pattern) {
    CHECK_OK(stx_config_init(cfg));
    cfg->n_layer = 1;
    cfg->n_embd = 1;
    cfg->n_head = 1;
    cfg->n_ctx = LONG_CTX;
    cfg->ff_mult = 1;
    cfg->block_size = 16;
    cfg->n_pos_axes = 2;
    cfg->pos_shape[0] = AXIS;
    cfg->pos_shape[1] = AXIS;
    cfg->n_threads = 1;
    strcpy(cfg->pattern, pattern);
}

/* The same tensors with position axes [4, 4]: the names and shapes for the writer. */
static stx_model *shape_model(void) {
    stx_config cfg;
    long_context_config(&cfg, "dense");
    cfg.n_ctx = 16;
    cfg.pos_shape[0] = cfg.pos_shape[1] = 4;
    stx_model *m = NULL;
    CHECK_OK(stx_model_create(&cfg, &m));
    return m;
}

/* -------------------------------------------------------------------------- tests */

static void test_checkpoint_dense_long_context(void **state) {
    (void)state;
    if (machine_too_large()) skip();
    stx_config cfg;
    long_context_config(&cfg, "dense");
    stx_model *shape = shape_model();
    write_checkpoint(ckpt_path, &cfg, shape);
    stx_model_free(shape);

    stx_model *m = (stx_model *)(uintptr_t)1;
    const double t0 = seconds_now();
    expect_out_of_memory(stx_model_load(ckpt_path, STX_BACKEND_CPU, 0, &m), "block layout");
    assert_null(m);
    assert_non_null(strstr(stx_last_error(), ckpt_path));
    if (seconds_now() - t0 > 5.0) fail_msg("the refusal took %.1f s", seconds_now() - t0);
}

static void test_checkpoint_local_long_context_loads(void **state) {
    (void)state;
    stx_config cfg;
    long_context_config(&cfg, "local:4");
    stx_model *shape = shape_model();
    write_checkpoint(ckpt_path, &cfg, shape);
    stx_model_free(shape);

    stx_model *m = NULL;
    CHECK_OK(stx_model_load(ckpt_path, STX_BACKEND_CPU, 0, &m));
    stx_config got;
    CHECK_OK(stx_model_get_config(m, &got));
    assert_int_equal(got.n_ctx, LONG_CTX);
    const uint8_t tokens[4] = {1, 2, 3, 4};
    double loss = 0.0;
    CHECK_OK(stx_evaluate(m, tokens, 1, 4, &loss));
    stx_model_free(m);
}

static void test_create_and_layout_dense_long_context(void **state) {
    (void)state;
    if (machine_too_large()) skip();
    stx_config cfg;
    long_context_config(&cfg, "dense");
    stx_model *m = (stx_model *)(uintptr_t)1;
    expect_out_of_memory(stx_model_create(&cfg, &m), "block layout of pattern \"dense\"");
    assert_null(m);

    stx_layout *lay = (stx_layout *)(uintptr_t)1;
    expect_out_of_memory(stx_layout_create("local:8+dense", LONG_CTX, 2, 16, &lay), "GB");
    assert_null(lay);
    lay = NULL;
    CHECK_OK(stx_layout_create("local:4", LONG_CTX, 1, 16, &lay));
    assert_int_equal(stx_layout_allows(lay, 0, LONG_CTX - 1, LONG_CTX - 4), 1);
    assert_int_equal(stx_layout_allows(lay, 0, LONG_CTX - 1, LONG_CTX - 5), 0);
    stx_layout_free(lay);
}

static int setup(void **state) {
    (void)state;
    strcpy(tmp_dir, "/tmp/stx-fuzz-regress-XXXXXX");
    if (!mkdtemp(tmp_dir)) return -1;
    snprintf(ckpt_path, sizeof ckpt_path, "%s/model.ckpt", tmp_dir);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    unlink(ckpt_path);
    return rmdir(tmp_dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checkpoint_dense_long_context),
        cmocka_unit_test(test_checkpoint_local_long_context_loads),
        cmocka_unit_test(test_create_and_layout_dense_long_context),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
