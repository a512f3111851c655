/*
 * test_misuse.c: API misuse gets a status and a message, never a crash: a model or layout
 * used after it was freed, freed twice, or a pointer the library never made; sizes whose
 * products would overflow; and the threading rule of the header (each model confined to one
 * thread at a time, different models on different threads at once) shown to hold: two
 * models trained on two threads give exactly the losses they give one after the other.
 */
#include "harness.h"
#include "model_fixtures.h"

#include <pthread.h>
#include <stdint.h>

static stx_model *small_model(uint64_t seed) {
    stx_config cfg;
    stx_test_small_config(&cfg, 40, STX_PRECISION_FP32, 1, seed); /* fp32: the default */
    cfg.dropout = 0.1f;
    stx_model *m = NULL;
    CHECK_OK(stx_model_create(&cfg, &m));
    return m;
}

#define EXPECT_REFUSED(call, fragment)                                                             \
    do {                                                                                           \
        stx_clear_error();                                                                         \
        stx_status st_ = (call);                                                                   \
        if (st_ != STX_ERR_INVALID_ARGUMENT || !strstr(stx_last_error(), (fragment)))              \
            fail_msg("%s -> %d \"%s\", expected invalid argument with \"%s\"", #call, (int)st_,    \
                     stx_last_error(), (fragment));                                                \
    } while (0)

/* A freed model, a model freed twice, and a pointer the library never made are refused. */
static void test_model_after_free(void **state) {
    (void)state;
    stx_model *m = small_model(1);
    uint8_t tokens[40] = {1, 2, 3};
    double loss = 0;
    CHECK_OK(stx_forward(m, tokens, 1, 40, &loss));
    stx_model_free(m);
    EXPECT_REFUSED(stx_forward(m, tokens, 1, 40, &loss), "not a live model");
    EXPECT_REFUSED(stx_backward(m), "not a live model");
    EXPECT_REFUSED(stx_optimizer_step(m, NULL, NULL), "not a live model");
    int32_t count = 0;
    EXPECT_REFUSED(stx_param_count(m, &count), "not a live model");
    stx_model_free(m); /* a second free is a no-op */
    int64_t fake[64] = {0};
    stx_model *foreign = (stx_model *)fake;
    EXPECT_REFUSED(stx_zero_grad(foreign), "not a live model");
    stx_model_free(foreign); /* never made here: ignored */
    assert_string_equal(stx_model_app_state(m), "");
}

/* The same for layouts. */
static void test_layout_after_free(void **state) {
    (void)state;
    stx_layout *lay = NULL;
    CHECK_OK(stx_layout_create("local:8", 40, 2, 16, &lay));
    int64_t blocks = 0, pairs = 0;
    CHECK_OK(stx_layout_stats(lay, 0, &blocks, &pairs));
    assert_int_equal(stx_layout_allows(lay, 0, 5, 3), 1);
    stx_layout_free(lay);
    EXPECT_REFUSED(stx_layout_stats(lay, 0, &blocks, &pairs), "not a live layout");
    assert_int_equal(stx_layout_allows(lay, 0, 5, 3), 0);
    stx_model *m = small_model(2);
    EXPECT_REFUSED(stx_model_set_layer_layout(m, 0, lay), "not a live layout");
    float q[40 * 16] = {0}, out[40 * 16], lse[80];
    EXPECT_REFUSED(stx_attention_forward(lay, STX_DTYPE_F32, 1, 40, 8, 8, 0.35, q, q, q, out, lse),
                   "not a live layout");
    stx_layout_free(lay); /* a second free is a no-op */
    stx_model_free(m);
}

/* Sizes whose products would overflow are refused before anything is allocated. */
static void test_huge_sizes(void **state) {
    (void)state;
    stx_config cfg;
    CHECK_OK(stx_config_init(&cfg));
    cfg.n_layer = 4096;
    cfg.n_embd = 65536;
    cfg.n_head = 1;
    stx_model *m = NULL;
    stx_clear_error();
    assert_int_equal(stx_model_create(&cfg, &m), STX_ERR_OUT_OF_MEMORY);
    assert_null(m);
    assert_non_null(strstr(stx_last_error(), "GB"));
    m = small_model(3);
    uint8_t tokens[40] = {0};
    EXPECT_REFUSED(stx_forward(m, tokens, INT32_MAX, 40, NULL), "too large");
    EXPECT_REFUSED(stx_param_read(m, "w_out", STX_DTYPE_F32, tokens, SIZE_MAX), "count");
    stx_model_free(m);
}

struct run {
    stx_model *model;
    double losses[6];
};

static void *train(void *arg) {
    struct run *r = (struct run *)arg;
    uint8_t tokens[2 * 40];
    stx_test_rng rng = {42};
    for (int step = 0; step < 6; ++step) {
        stx_test_fill_bytes(&rng, tokens, sizeof tokens);
        if (stx_forward(r->model, tokens, 2, 40, &r->losses[step]) != STX_OK ||
            stx_zero_grad(r->model) != STX_OK || stx_backward(r->model) != STX_OK ||
            stx_optimizer_step(r->model, NULL, NULL) != STX_OK)
            r->losses[step] = -1.0;
    }
    return NULL;
}

/* Two models on two threads at once give exactly what they give one after the other. */
static void test_two_threads(void **state) {
    (void)state;
    struct run serial[2], parallel[2];
    for (int i = 0; i < 2; ++i) {
        serial[i].model = small_model(10 + (uint64_t)i);
        train(&serial[i]);
        parallel[i].model = small_model(10 + (uint64_t)i);
    }
    pthread_t threads[2];
    for (int i = 0; i < 2; ++i)
        assert_int_equal(pthread_create(&threads[i], NULL, train, &parallel[i]), 0);
    for (int i = 0; i < 2; ++i) assert_int_equal(pthread_join(threads[i], NULL), 0);
    for (int i = 0; i < 2; ++i) {
        for (int s = 0; s < 6; ++s) {
            assert_true(serial[i].losses[s] > 0.0);
            if (memcmp(&serial[i].losses[s], &parallel[i].losses[s], sizeof(double)) != 0)
                fail_msg("model %d step %d: %.17g on its own, %.17g beside another thread", i, s,
                         serial[i].losses[s], parallel[i].losses[s]);
        }
        stx_model_free(serial[i].model);
        stx_model_free(parallel[i].model);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_after_free),
        cmocka_unit_test(test_layout_after_free),
        cmocka_unit_test(test_huge_sizes),
        cmocka_unit_test(test_two_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
