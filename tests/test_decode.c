/*
 * test_decode.c: the decoder (stx_decoder_*) on the CPU backend.
 *  - after every step, and after a prefill, its distribution equals the last row of a full
 *    forward over the same prefix (fp32: relative 1e-5; fp64: 1e-12), for every pattern kind,
 *    merged, multi-head and interleaved patterns, a user layout and a 2-axis position shape,
 *    at every position of n_ctx 64 (blocks of 16, widths 8 to 32);
 *  - a prefill of more rows than one forward takes goes through in groups of sequences;
 *  - a prompt fed after position 0 (a step per byte) gives the same bits as single steps;
 *  - stx_decoder_state_bytes follows the documented rule (local keeps L, fixed L + n/L * C,
 *    strided and dense n_ctx slots) and equals what a decoder holds;
 *  - stx_sample with the decoder draws the same bytes as the naive sampler within n_ctx (fp64);
 *  - misuse: a full decoder, changed weights, a freed model, bad arguments, each refused with
 *    its message; a reset recovers.
 */
#include "harness.h"

#include "model_fixtures.h"

#include "decode_fixtures.h"

static void test_matches_forward_fp32(void **state) {
    (void)state;
    const int32_t prefills[] = {0, 21};
    const double worst = stx_test_decode_every_case(STX_BACKEND_CPU, STX_PRECISION_FP32, "cpu fp32",
                                                    11, 2, prefills, 2, 100, 1e-5);
    printf("  %zu patterns, every position of n_ctx 64, steps and prefill: worst %.2e "
           "(bound 1e-5)\n",
           sizeof kStxDecodeCases / sizeof kStxDecodeCases[0], worst);
}

static void test_matches_forward_fp64(void **state) {
    (void)state;
    const int32_t prefills[] = {17};
    const double worst = stx_test_decode_every_case(STX_BACKEND_CPU, STX_PRECISION_FP64, "cpu fp64",
                                                    41, 3, prefills, 1, 300, 1e-12);
    printf("  %zu patterns in fp64: worst %.2e (bound 1e-12)\n",
           sizeof kStxDecodeCases / sizeof kStxDecodeCases[0], worst);
}

/* 210 sequences of 41 rows pass the prefill's group limit (8,192 rows): two forwards fill the
 * cache that the 23 steps after them read. */
static void test_prefill_in_groups(void **state) {
    (void)state;
    const stx_test_decode_case c = {"local:8+strided:8", 2, -1, 0};
    stx_model *m = stx_test_decode_model(&c, STX_BACKEND_CPU, STX_PRECISION_FP32, 6);
    const double e = stx_test_decode_check(m, 210, 40, 600, 1e-5, "210 sequences");
    printf("  210 sequences prefilled in two groups: worst %.2e (bound 1e-5)\n", e);
    stx_model_free(m);
}

/* A prompt fed at position > 0 goes a step per byte: the same bits as stepping by hand. */
static void test_late_prefill_equals_steps(void **state) {
    (void)state;
    const stx_test_decode_case c = {"fixed:16:4:2", 4, -1, 0};
    stx_model *m = stx_test_decode_model(&c, STX_BACKEND_CPU, STX_PRECISION_FP32, 5);
    enum { B = 2, N = 30 };
    uint8_t seq[B * N];
    stx_test_rng rng = {77};
    stx_test_fill_bytes(&rng, seq, sizeof seq);
    stx_decoder *a = NULL, *b = NULL;
    CHECK_OK(stx_decoder_create(m, B, &a));
    CHECK_OK(stx_decoder_create(m, B, &b));
    uint8_t first[B * 10], rest[B * (N - 10)], column[B];
    for (int i = 0; i < B; ++i) {
        memcpy(first + i * 10, seq + i * N, 10);
        memcpy(rest + i * (N - 10), seq + i * N + 10, N - 10);
    }
    for (int t = 0; t < 10; ++t) {
        for (int i = 0; i < B; ++i) column[i] = first[i * 10 + t];
        CHECK_OK(stx_decoder_step(a, column));
    }
    CHECK_OK(stx_decoder_prefill(a, rest, N - 10)); /* at position 10: a step per byte */
    for (int t = 0; t < N; ++t) {
        for (int i = 0; i < B; ++i) column[i] = seq[i * N + t];
        CHECK_OK(stx_decoder_step(b, column));
    }
    int32_t pa = 0, pb = 0;
    CHECK_OK(stx_decoder_position(a, &pa));
    CHECK_OK(stx_decoder_position(b, &pb));
    assert_int_equal(pa, N);
    assert_int_equal(pb, N);
    float la[B * STX_VOCAB], lb[B * STX_VOCAB];
    CHECK_OK(stx_decoder_logits(a, STX_DTYPE_F32, la, B * STX_VOCAB));
    CHECK_OK(stx_decoder_logits(b, STX_DTYPE_F32, lb, B * STX_VOCAB));
    assert_memory_equal(la, lb, sizeof la);
    stx_decoder_free(a);
    stx_decoder_free(b);
    stx_model_free(m);
}

static int64_t bytes_for(const char *pattern, int32_t n_head, int32_t precision, int32_t batch) {
    const stx_test_decode_case c = {pattern, n_head, -1, 0};
    stx_model *m = stx_test_decode_model(&c, STX_BACKEND_CPU, precision, 1);
    int64_t bytes = -1;
    CHECK_OK(stx_decoder_state_bytes(m, batch, &bytes));
    stx_model_free(m);
    return bytes;
}

static void test_state_bytes(void **state) {
    (void)state;
    /* 2 layers, 2 heads of dims 32 + 32, batch 3, 4-byte floats: 2*3*2*slots*64*4 bytes. */
    const int64_t per_slot = 2 * 3 * 2 * 64 * 4;
    assert_int_equal(bytes_for("dense", 2, STX_PRECISION_FP32, 3), per_slot * 64);
    assert_int_equal(bytes_for("strided:8", 2, STX_PRECISION_FP32, 3), per_slot * 64);
    assert_int_equal(bytes_for("local:12", 2, STX_PRECISION_FP32, 3), per_slot * 12);
    /* fixed:16:4: the current block (16) and 4 cells of each of the 4 blocks. */
    assert_int_equal(bytes_for("fixed:16:4", 2, STX_PRECISION_FP32, 3), per_slot * (16 + 4 * 4));
    /* local and fixed merged: a ring of the larger width plus the summaries. */
    assert_int_equal(bytes_for("local:8+fixed:32:4", 2, STX_PRECISION_FP32, 3),
                     per_slot * (32 + 2 * 4));
    assert_int_equal(bytes_for("local:12", 2, STX_PRECISION_FP64, 3), 2 * per_slot * 12);
}

static void test_sample_cached_equals_naive(void **state) {
    (void)state;
    enum { NP = 9, NN = 50, B = 3, L = NP + NN };
    const stx_test_decode_case c = {"local:8+strided:8", 2, -1, 0};
    stx_model *m = stx_test_decode_model(&c, STX_BACKEND_CPU, STX_PRECISION_FP64, 8);
    uint8_t prompts[B * NP], cached[B * L], naive[B * L];
    stx_test_rng rng = {9};
    stx_test_fill_bytes(&rng, prompts, sizeof prompts);
    stx_sample_config sc;
    CHECK_OK(stx_sample_config_init(&sc));
    assert_int_equal(sc.naive, 0);
    sc.seed = 1234;
    sc.temperature = 0.8;
    int32_t len_c[B], len_n[B];
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, cached, len_c));
    sc.naive = 1;
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, naive, len_n));
    assert_memory_equal(cached, naive, sizeof cached);
    assert_memory_equal(len_c, len_n, sizeof len_c);
    /* The draws are not all the same byte, or equality proves little. */
    int distinct = 0;
    for (int i = NP + 1; i < L; ++i) distinct += cached[i] != cached[NP];
    assert_true(distinct > 10);
    stx_model_free(m);
}

static void test_misuse(void **state) {
    (void)state;
    const stx_test_decode_case c = {"local:8", 2, -1, 0};
    stx_model *m = stx_test_decode_model(&c, STX_BACKEND_CPU, STX_PRECISION_FP32, 4);
    stx_decoder *d = NULL;
    assert_int_equal(stx_decoder_create(NULL, 1, &d), STX_ERR_INVALID_ARGUMENT);
    assert_int_equal(stx_decoder_create(m, 0, &d), STX_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(stx_last_error(), "batch"));
    assert_int_equal(stx_decoder_create(m, 1, NULL), STX_ERR_INVALID_ARGUMENT);
    CHECK_OK(stx_decoder_create(m, 2, &d));
    float logits[2 * STX_VOCAB];
    assert_int_equal(stx_decoder_logits(d, STX_DTYPE_F32, logits, STX_VOCAB),
                     STX_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(stx_last_error(), "count"));
    assert_int_equal(stx_decoder_logits(d, (stx_dtype)7, logits, 2 * STX_VOCAB),
                     STX_ERR_INVALID_ARGUMENT);
    assert_int_equal(stx_decoder_step(d, NULL), STX_ERR_INVALID_ARGUMENT);
    assert_int_equal(stx_decoder_prefill(d, NULL, 3), STX_ERR_INVALID_ARGUMENT);
    assert_int_equal(stx_decoder_prefill(d, NULL, -1), STX_ERR_INVALID_ARGUMENT);
    uint8_t big[2 * STX_DECODE_CTX] = {0};
    assert_int_equal(stx_decoder_prefill(d, big, STX_DECODE_CTX), STX_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(stx_last_error(), "n_ctx - 1"));
    int32_t pos = -1;
    CHECK_OK(stx_decoder_position(d, &pos));
    assert_int_equal(pos, 0); /* a refused call changes nothing */
    CHECK_OK(stx_decoder_prefill(d, big, 5));

    /* The weights change: the decoder refuses until reset, then starts at 0. */
    const uint8_t col[2] = {1, 2};
    float g[64];
    for (int i = 0; i < 64; ++i) g[i] = 1.0f;
    CHECK_OK(stx_param_write(m, "h.0.ln1.g", STX_DTYPE_F32, g, 64));
    assert_int_equal(stx_decoder_step(d, col), STX_ERR_STATE);
    assert_non_null(strstr(stx_last_error(), "stx_decoder_reset"));
    CHECK_OK(stx_decoder_reset(d));
    CHECK_OK(stx_decoder_position(d, &pos));
    assert_int_equal(pos, 0);
    CHECK_OK(stx_decoder_step(d, col));

    /* The model goes: every call but free says so. */
    stx_model_free(m);
    assert_int_equal(stx_decoder_step(d, col), STX_ERR_STATE);
    assert_non_null(strstr(stx_last_error(), "freed"));
    assert_int_equal(stx_decoder_reset(d), STX_ERR_STATE);
    stx_decoder_free(d);
    stx_decoder_free(d); /* a second free is a no-op */
    assert_int_equal(stx_decoder_step(d, col), STX_ERR_INVALID_ARGUMENT);
    stx_decoder_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_forward_fp32),
        cmocka_unit_test(test_matches_forward_fp64),
        cmocka_unit_test(test_prefill_in_groups),
        cmocka_unit_test(test_late_prefill_equals_steps),
        cmocka_unit_test(test_state_bytes),
        cmocka_unit_test(test_sample_cached_equals_naive),
        cmocka_unit_test(test_misuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
