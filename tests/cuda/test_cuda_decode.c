/*
 * test_cuda_decode.c: the CUDA decoder (one CUDA graph per step) through the public API.
 *  - fp32: after every step, and after a prefill, its distribution equals the last row of the
 *    CUDA forward over the same prefix within relative 1e-5, for every case of
 *    tests/decode_fixtures.h (every pattern kind and integration mode, a user layout, a
 *    2-axis position shape), and the CPU reference's within 1e-4 (two fp32 backends);
 *  - bf16: the decoder rounds what the bf16 forward rounds (GEMM inputs, q, k, v); only the
 *    order of fp32 sums differs, which can move a bf16 rounding by one unit (2^-8) and carry
 *    through the layers: bound 3e-2 relative (the bf16 forward itself is ~1e-2 from fp32);
 *  - batch 64 (the cuBLAS path; batches up to 4 take the fused GEMV path) against the forward;
 *  - a dense head at n_ctx 640: the keys of a step split over several CTAs and merged;
 *  - the decoder's device memory is at least its state bytes, and goes with it;
 *  - stx_sample on the GPU: the same seed gives the same bytes, another seed others.
 * Without a GPU the test says so and exits 77.
 */
#include "harness.h"

#include "model_fixtures.h"

#include "decode_fixtures.h"

static void test_fp32_matches_forward(void **state) {
    (void)state;
    const int32_t prefills[] = {0, 21};
    const double worst = stx_test_decode_every_case(STX_BACKEND_CUDA, STX_PRECISION_FP32,
                                                    "cuda fp32", 11, 2, prefills, 2, 100, 1e-5);
    printf("  %zu patterns, every position, steps and prefill: worst %.2e (bound 1e-5)\n",
           sizeof kStxDecodeCases / sizeof kStxDecodeCases[0], worst);
}

/* The same weights on both backends: the GPU decoder against the CPU decoder. */
static void test_fp32_matches_cpu(void **state) {
    (void)state;
    const size_t n = sizeof kStxDecodeCases / sizeof kStxDecodeCases[0];
    enum { B = 2, N = STX_DECODE_CTX - 1 };
    double worst = 0.0;
    for (size_t i = 0; i < n; ++i) {
        stx_model *g = stx_test_decode_model(&kStxDecodeCases[i], STX_BACKEND_CUDA,
                                             STX_PRECISION_FP32, 51u + i);
        stx_model *c = stx_test_decode_model(&kStxDecodeCases[i], STX_BACKEND_CPU,
                                             STX_PRECISION_FP32, 51u + i);
        uint8_t seq[B * N];
        stx_test_rng rng = {i + 1};
        stx_test_fill_bytes(&rng, seq, sizeof seq);
        stx_decoder *dg = NULL, *dc = NULL;
        CHECK_OK(stx_decoder_create(g, B, &dg));
        CHECK_OK(stx_decoder_create(c, B, &dc));
        CHECK_OK(stx_decoder_prefill(dg, seq, N));
        CHECK_OK(stx_decoder_prefill(dc, seq, N));
        double lg[B * STX_VOCAB], lc[B * STX_VOCAB];
        CHECK_OK(stx_decoder_logits(dg, STX_DTYPE_F64, lg, B * STX_VOCAB));
        CHECK_OK(stx_decoder_logits(dc, STX_DTYPE_F64, lc, B * STX_VOCAB));
        const double e = stx_test_rel_error(lg, lc, B * STX_VOCAB, NULL);
        if (!(e <= 1e-4))
            fail_msg("%s: GPU vs CPU decoder %.3e > 1e-4", kStxDecodeCases[i].pattern, e);
        if (e > worst) worst = e;
        stx_decoder_free(dg);
        stx_decoder_free(dc);
        stx_model_free(g);
        stx_model_free(c);
    }
    printf("  GPU vs CPU decoder at position %d: worst %.2e (bound 1e-4)\n", N, worst);
}

static void test_bf16_matches_forward(void **state) {
    (void)state;
    const int32_t prefills[] = {13};
    const double worst = stx_test_decode_every_case(STX_BACKEND_CUDA, STX_PRECISION_BF16,
                                                    "cuda bf16", 61, 2, prefills, 1, 400, 3e-2);
    printf("  %zu patterns in bf16: worst %.2e (bound 3e-2)\n",
           sizeof kStxDecodeCases / sizeof kStxDecodeCases[0], worst);
}

static void test_batch64(void **state) {
    (void)state;
    const stx_test_decode_case c = {"fixed:16:4:2", 4, -1, 0};
    stx_model *m = stx_test_decode_model(&c, STX_BACKEND_CUDA, STX_PRECISION_FP32, 71);
    const double e = stx_test_decode_check(m, 64, 30, 500, 1e-5, "cuda fp32 batch 64");
    printf("  batch 64: worst %.2e (bound 1e-5)\n", e);
    stx_model_free(m);
}

/* A dense head at n_ctx 640 reads up to 640 keys a step: several CTAs (splits of the
 * candidate keys) per (sequence, head), merged by the last to finish. */
static void test_many_splits(void **state) {
    (void)state;
    enum { CTX = 640, B = 2, FIRST = 500 };
    stx_config cfg;
    CHECK_OK(stx_config_init(&cfg));
    cfg.n_layer = 1;
    cfg.n_embd = 64;
    cfg.n_head = 2;
    cfg.n_ctx = CTX;
    cfg.block_size = 64;
    cfg.backend = STX_BACKEND_CUDA;
    cfg.seed = 3;
    snprintf(cfg.pattern, sizeof cfg.pattern, "dense");
    stx_model *m = NULL;
    CHECK_OK(stx_model_create(&cfg, &m));
    stx_test_randomize(&m, 1, 17, 0.5);
    uint8_t *seq = malloc(B * CTX), col[B];
    double *full = malloc(sizeof *full * B * CTX * STX_VOCAB), got[B * STX_VOCAB],
           ref[B * STX_VOCAB];
    assert_true(seq && full);
    stx_test_rng rng = {5};
    stx_test_fill_bytes(&rng, seq, B * CTX);
    CHECK_OK(stx_evaluate(m, seq, B, CTX, NULL));
    CHECK_OK(stx_logits_read(m, STX_DTYPE_F64, full, (size_t)B * CTX * STX_VOCAB));
    stx_decoder *d = NULL;
    CHECK_OK(stx_decoder_create(m, B, &d));
    uint8_t prompt[B * FIRST];
    for (int b = 0; b < B; ++b) memcpy(prompt + b * FIRST, seq + b * CTX, FIRST);
    CHECK_OK(stx_decoder_prefill(d, prompt, FIRST));
    double worst = 0.0;
    for (int p = FIRST; p < CTX; ++p) {
        for (int b = 0; b < B; ++b)
            memcpy(ref + b * STX_VOCAB, full + ((size_t)b * CTX + p) * STX_VOCAB,
                   sizeof(double) * STX_VOCAB);
        for (int i = 0; i < B * STX_VOCAB; ++i) got[i] = (double)NAN;
        CHECK_OK(stx_decoder_logits(d, STX_DTYPE_F64, got, B * STX_VOCAB));
        const double e = stx_test_rel_error(got, ref, B * STX_VOCAB, NULL);
        if (!(e <= 1e-5)) fail_msg("dense n_ctx 640, position %d: %.3e > 1e-5", p, e);
        if (e > worst) worst = e;
        if (p + 1 < CTX) {
            for (int b = 0; b < B; ++b) col[b] = seq[b * CTX + p];
            CHECK_OK(stx_decoder_step(d, col));
        }
    }
    printf("  dense n_ctx 640, positions 500 .. 639 (up to 640 keys, several splits): worst "
           "%.2e (bound 1e-5)\n",
           worst);
    stx_decoder_free(d);
    stx_model_free(m);
    free(seq);
    free(full);
}

static void test_memory(void **state) {
    (void)state;
    const stx_test_decode_case c = {"local:8+strided:8", 2, -1, 0};
    stx_model *m = stx_test_decode_model(&c, STX_BACKEND_CUDA, STX_PRECISION_BF16, 81);
    int64_t state_bytes = 0, before = 0, with = 0, after = 0, peak = 0;
    CHECK_OK(stx_decoder_state_bytes(m, 16, &state_bytes));
    /* 2 layers x 16 x 2 heads x 64 slots x (32 + 32) x 2 bytes */
    assert_int_equal(state_bytes, (int64_t)2 * 16 * 2 * 64 * 64 * 2);
    CHECK_OK(stx_model_memory(m, &before, &peak));
    stx_decoder *d = NULL;
    CHECK_OK(stx_decoder_create(m, 16, &d));
    CHECK_OK(stx_model_memory(m, &with, &peak));
    assert_true(with - before >= state_bytes);
    stx_decoder_free(d);
    CHECK_OK(stx_model_memory(m, &after, &peak));
    assert_int_equal(after, before);
    printf("  state %lld bytes; the decoder held %lld (weights copy, rows, workspace)\n",
           (long long)state_bytes, (long long)(with - before));
    stx_model_free(m);
}

static void test_sample_seeds(void **state) {
    (void)state;
    enum { NP = 7, NN = 90, B = 4, L = NP + NN }; /* past n_ctx 64: the context slides */
    const stx_test_decode_case c = {"local:8+strided:8", 2, -1, 0};
    stx_model *m = stx_test_decode_model(&c, STX_BACKEND_CUDA, STX_PRECISION_BF16, 91);
    uint8_t prompts[B * NP], a[B * L], b[B * L], other[B * L];
    stx_test_rng rng = {3};
    stx_test_fill_bytes(&rng, prompts, sizeof prompts);
    stx_sample_config sc;
    CHECK_OK(stx_sample_config_init(&sc));
    sc.seed = 5;
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, a, NULL));
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, b, NULL));
    assert_memory_equal(a, b, sizeof a);
    sc.seed = 6;
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, other, NULL));
    int differ = 0;
    for (size_t i = 0; i < sizeof a; ++i) differ += a[i] != other[i];
    assert_true(differ > 20);
    stx_model_free(m);
}

int main(void) {
    if (!stx_backend_available(STX_BACKEND_CUDA)) {
        printf("SKIP: test_cuda_decode needs a CUDA device (build features 0x%x, none usable "
               "here)\n",
               stx_build_features());
        return STX_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp32_matches_forward), cmocka_unit_test(test_fp32_matches_cpu),
        cmocka_unit_test(test_bf16_matches_forward), cmocka_unit_test(test_batch64),
        cmocka_unit_test(test_many_splits),          cmocka_unit_test(test_memory),
        cmocka_unit_test(test_sample_seeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
