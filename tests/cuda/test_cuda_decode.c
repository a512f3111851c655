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
 *  - batch 1 in bf16 (on sm_90 the fused step of decode_cluster.cu) against the forward and
 *    against the unfused step;
 *  - the decoder's device memory is at least its state bytes, and goes with it;
 *  - stx_sample on the GPU: the same seed gives the same bytes, another seed others.
 * Without a GPU the test says so and exits 77.
 */
#define _POSIX_C_SOURCE 200809L /* setenv */
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

/* A dense model of one layer at context ctx, decoded from position first on against its
 * forward: many keys a step. Returns the decoder's logits of the last position in last. */
static double check_dense_long(int32_t precision, int B, int ctx, int first, double bound,
                               const char *label, double *last) {
    stx_config cfg;
    CHECK_OK(stx_config_init(&cfg));
    cfg.n_layer = 1;
    cfg.n_embd = 64;
    cfg.n_head = 2;
    cfg.n_ctx = ctx;
    cfg.block_size = 64;
    cfg.backend = STX_BACKEND_CUDA;
    cfg.precision = precision;
    cfg.seed = 3;
    snprintf(cfg.pattern, sizeof cfg.pattern, "dense");
    stx_model *m = NULL;
    CHECK_OK(stx_model_create(&cfg, &m));
    stx_test_randomize(&m, 1, 17, 0.5);
    uint8_t *seq = malloc((size_t)B * ctx), *prompt = malloc((size_t)B * first), col[4];
    double *full = malloc(sizeof *full * B * ctx * STX_VOCAB), got[4 * STX_VOCAB],
           ref[4 * STX_VOCAB];
    assert_true(seq && prompt && full && B <= 4);
    stx_test_rng rng = {5};
    stx_test_fill_bytes(&rng, seq, (size_t)B * ctx);
    CHECK_OK(stx_evaluate(m, seq, B, ctx, NULL));
    CHECK_OK(stx_logits_read(m, STX_DTYPE_F64, full, (size_t)B * ctx * STX_VOCAB));
    stx_decoder *d = NULL;
    CHECK_OK(stx_decoder_create(m, B, &d));
    for (int b = 0; b < B; ++b) memcpy(prompt + b * first, seq + b * ctx, (size_t)first);
    CHECK_OK(stx_decoder_prefill(d, prompt, first));
    double worst = 0.0;
    for (int p = first; p < ctx; ++p) {
        for (int b = 0; b < B; ++b)
            memcpy(ref + b * STX_VOCAB, full + ((size_t)b * ctx + p) * STX_VOCAB,
                   sizeof(double) * STX_VOCAB);
        for (int i = 0; i < B * STX_VOCAB; ++i) got[i] = (double)NAN;
        CHECK_OK(stx_decoder_logits(d, STX_DTYPE_F64, got, B * STX_VOCAB));
        const double e = stx_test_rel_error(got, ref, B * STX_VOCAB, NULL);
        if (!(e <= bound)) fail_msg("%s, position %d: %.3e > %.0e", label, p, e, bound);
        if (e > worst) worst = e;
        if (p + 1 < ctx) {
            for (int b = 0; b < B; ++b) col[b] = seq[b * ctx + p];
            CHECK_OK(stx_decoder_step(d, col));
        }
    }
    if (last) memcpy(last, got, sizeof(double) * B * STX_VOCAB);
    printf("  %s, positions %d .. %d: worst %.2e (bound %.0e)\n", label, first, ctx - 1, worst,
           bound);
    stx_decoder_free(d);
    stx_model_free(m);
    free(seq);
    free(prompt);
    free(full);
    return worst;
}

/* A dense head at n_ctx 640 reads up to 640 keys a step: several CTAs (splits of the
 * candidate keys) per (sequence, head), merged by the last to finish. */
static void test_many_splits(void **state) {
    (void)state;
    check_dense_long(STX_PRECISION_FP32, 2, 640, 500, 1e-5, "dense n_ctx 640, several splits",
                     NULL);
}

static void check_sample_seeds(int B);

/* Whether this GPU and build take the fused batch-1 bf16 step (decode_cluster.cu):
 * STX_CUDA_DECODE_CLUSTER=1 makes a decoder that cannot take it an error. */
static int fused_step_available(void) {
    const stx_test_decode_case c = {"dense", 2, -1, 0};
    stx_model *m = stx_test_decode_model(&c, STX_BACKEND_CUDA, STX_PRECISION_BF16, 5);
    setenv("STX_CUDA_DECODE_CLUSTER", "1", 1);
    stx_decoder *d = NULL;
    const stx_status st = stx_decoder_create(m, 1, &d);
    unsetenv("STX_CUDA_DECODE_CLUSTER");
    if (st != STX_OK) {
        assert_int_equal(st, STX_ERR_UNSUPPORTED);
        printf("  the fused batch-1 step does not run here: %s\n", stx_last_error());
    }
    stx_decoder_free(d);
    stx_model_free(m);
    return st == STX_OK;
}

/* Batch 1 in bf16: on sm_90 the fused step (a cluster of CTAs per head, LayerNorm 1 to the
 * projection in one kernel), required through STX_CUDA_DECODE_CLUSTER=1 so that the test
 * cannot pass on the unfused one; every case against the forward, then a dense head reading up
 * to 2,304 keys (three tiles of keys for each CTA of a cluster) against the forward and against
 * the unfused step (STX_CUDA_DECODE_CLUSTER=0). Elsewhere the unfused step, said so. */
static void test_bf16_batch1(void **state) {
    (void)state;
    const int fused = fused_step_available();
    const char *path = fused ? "fused" : "unfused";
    if (fused) setenv("STX_CUDA_DECODE_CLUSTER", "1", 1);
    const int32_t prefills[] = {0, 13};
    const double worst = stx_test_decode_every_case(
        STX_BACKEND_CUDA, STX_PRECISION_BF16, "cuda bf16 batch 1", 71, 1, prefills, 2, 700, 3e-2);
    printf("  %zu patterns in bf16, batch 1, %s step: worst %.2e (bound 3e-2)\n",
           sizeof kStxDecodeCases / sizeof kStxDecodeCases[0], path, worst);
    double a[STX_VOCAB], b[STX_VOCAB];
    check_dense_long(STX_PRECISION_BF16, 1, 2304, 2200, 3e-2,
                     fused ? "bf16 batch 1 dense n_ctx 2304, fused" : "bf16 batch 1 dense", a);
    check_sample_seeds(1);
    unsetenv("STX_CUDA_DECODE_CLUSTER");
    if (!fused) return;
    setenv("STX_CUDA_DECODE_CLUSTER", "0", 1);
    check_dense_long(STX_PRECISION_BF16, 1, 2304, 2200, 3e-2,
                     "bf16 batch 1 dense n_ctx 2304, unfused", b);
    unsetenv("STX_CUDA_DECODE_CLUSTER");
    const double e = stx_test_rel_error(a, b, STX_VOCAB, NULL);
    if (!(e <= 3e-2)) fail_msg("fused vs unfused batch-1 step: %.3e > 3e-2", e);
    printf("  fused vs unfused step at position 2303: %.2e relative\n", e);
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

/* stx_sample on the GPU with B sequences: the same seed gives the same bytes, another
 * seed others. */
static void check_sample_seeds(int B) {
    enum { NP = 7, NN = 90, L = NP + NN }; /* past n_ctx 64: the context slides */
    const stx_test_decode_case c = {"local:8+strided:8", 2, -1, 0};
    stx_model *m = stx_test_decode_model(&c, STX_BACKEND_CUDA, STX_PRECISION_BF16, 91);
    uint8_t prompts[4 * NP], a[4 * L], b[4 * L], other[4 * L];
    assert_true(B <= 4);
    stx_test_rng rng = {3};
    stx_test_fill_bytes(&rng, prompts, sizeof prompts);
    stx_sample_config sc;
    CHECK_OK(stx_sample_config_init(&sc));
    sc.seed = 5;
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, a, NULL));
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, b, NULL));
    assert_memory_equal(a, b, (size_t)B * L);
    sc.seed = 6;
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, other, NULL));
    int differ = 0;
    for (int i = 0; i < B * L; ++i) differ += a[i] != other[i];
    assert_true(differ > 5 * B);
    stx_model_free(m);
}

static void test_sample_seeds(void **state) {
    (void)state;
    check_sample_seeds(4);
}

int main(void) {
    if (!stx_backend_available(STX_BACKEND_CUDA)) {
        printf("SKIP: test_cuda_decode needs a CUDA device (build features 0x%x, none usable "
               "here)\n",
               stx_build_features());
        return STX_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp32_matches_forward),
        cmocka_unit_test(test_fp32_matches_cpu),
        cmocka_unit_test(test_bf16_matches_forward),
        cmocka_unit_test(test_batch64),
        cmocka_unit_test(test_many_splits),
        cmocka_unit_test(test_bf16_batch1),
        cmocka_unit_test(test_memory),
        cmocka_unit_test(test_sample_seeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
