/*
 * test_cuda_dist.c: data parallel through NCCL on one GPU (world size 1), on the same code path
 * as several GPUs (the NCCL communicator, its stream, the grouped all-reduces overlapped with the
 * backward, the host waits with a timeout):
 *  - the gradients after an fp32 all-reduce equal the gradients without a communicator, bit for
 *    bit, for groups of 1, 2 and 3 blocks; a bf16 all-reduce gives them rounded to bf16;
 *  - ten AdamW steps with dropout give the same losses and weights, bit for bit, as without a
 *    communicator; the checksums agree and stx_dist_check_weights says all equal;
 *  - host all-reduces are the identity; a model and a communicator on different devices are
 *    refused;
 *  - a world of 2 whose second rank never comes gives STX_ERR_COMM after the timeout (3 s),
 *    with a message, instead of hanging.
 * Without a GPU, or in a build without NCCL, the test says so and exits 77.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "harness.h"
#include "model_fixtures.h"

#include <sparsetx.h>
#include <string.h>
#include <time.h>

static stx_model *make(int32_t backend, float dropout) {
    stx_config cfg;
    CHECK_OK(stx_config_init(&cfg));
    cfg.n_layer = 3;
    cfg.n_embd = 64;
    cfg.n_head = 2;
    cfg.n_ctx = 96;
    cfg.block_size = 32;
    cfg.dropout = dropout;
    cfg.backend = backend;
    cfg.precision = STX_PRECISION_FP32;
    cfg.seed = 9;
    strcpy(cfg.pattern, "local:32+strided:32");
    stx_model *m = NULL;
    CHECK_OK(stx_model_create(&cfg, &m));
    return m;
}

static float bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

static void test_grads_after_allreduce(void **state) {
    (void)state;
    uint8_t tokens[4 * 96];
    stx_test_rng rng = {31};
    stx_test_fill_bytes(&rng, tokens, sizeof tokens);
    for (int k = 0; k < 4; ++k) {
        const int32_t bucket = k < 3 ? k + 1 : 2;
        const int use_bf16 = k == 3;
        stx_model *plain = make(STX_BACKEND_CUDA, 0.1f), *dp = make(STX_BACKEND_CUDA, 0.1f);
        stx_model *both[2] = {plain, dp};
        stx_test_randomize(both, 2, 100 + (uint64_t)k, 0.3);
        stx_dist *d = NULL;
        CHECK_OK(stx_dist_create(0, 1, NULL, 0, 30.0, &d));
        stx_dist_options o;
        CHECK_OK(stx_dist_options_init(&o));
        o.bucket_layers = bucket;
        o.grads = use_bf16 ? STX_DIST_GRADS_BF16 : STX_DIST_GRADS_FP32;
        CHECK_OK(stx_model_set_dist(dp, d, &o));
        double la = 0, lb = 0;
        CHECK_OK(stx_zero_grad(plain));
        CHECK_OK(stx_forward(plain, tokens, 4, 96, &la));
        CHECK_OK(stx_backward(plain));
        CHECK_OK(stx_zero_grad(dp));
        CHECK_OK(stx_forward(dp, tokens, 4, 96, &lb));
        CHECK_OK(stx_backward(dp));
        assert_true(la == lb);
        size_t n = 0, n2 = 0;
        double *ga = stx_test_grads(plain, &n), *gb = stx_test_grads(dp, &n2);
        assert_int_equal(n, n2);
        size_t bad = 0;
        for (size_t i = 0; i < n; ++i) {
            const float want = use_bf16 ? bf16((float)ga[i]) : (float)ga[i], got = (float)gb[i];
            if (memcmp(&want, &got, sizeof want) != 0 && bad++ < 5)
                print_message("element %zu: %.9g, want %.9g\n", i, (double)got, (double)want);
        }
        print_message("%s, groups of %d blocks: %zu of %zu gradient elements differ\n",
                      use_bf16 ? "bf16" : "fp32", bucket, bad, n);
        assert_int_equal(bad, 0);
        free(ga);
        free(gb);
        stx_model_free(plain);
        stx_model_free(dp);
        stx_dist_free(d);
    }
}

static void test_training_identical(void **state) {
    (void)state;
    const int steps = 10;
    uint8_t *data = malloc((size_t)steps * 4 * 96);
    assert_non_null(data);
    stx_test_rng rng = {32};
    stx_test_fill_bytes(&rng, data, (size_t)steps * 4 * 96);
    stx_model *plain = make(STX_BACKEND_CUDA, 0.1f), *dp = make(STX_BACKEND_CUDA, 0.1f);
    stx_model *both[2] = {plain, dp};
    stx_test_randomize(both, 2, 7, 0.3);
    stx_optim_config opt;
    CHECK_OK(stx_optim_config_init(&opt));
    opt.lr = 3e-3;
    opt.grad_clip = 0.5;
    CHECK_OK(stx_model_set_optimizer(plain, &opt));
    CHECK_OK(stx_model_set_optimizer(dp, &opt));
    stx_dist *d = NULL;
    CHECK_OK(stx_dist_create(0, 1, NULL, 0, 30.0, &d));
    CHECK_OK(stx_model_set_dist(dp, d, NULL));
    CHECK_OK(stx_model_set_dropout_offset(dp, 0));
    for (int s = 0; s < steps; ++s) {
        double la = 0, lb = 0, na = 0, nb = 0;
        stx_model *ms[2] = {plain, dp};
        double *l[2] = {&la, &lb}, *nn[2] = {&na, &nb};
        for (int k = 0; k < 2; ++k) {
            CHECK_OK(stx_zero_grad(ms[k]));
            CHECK_OK(stx_forward(ms[k], data + (size_t)s * 4 * 96, 4, 96, l[k]));
            CHECK_OK(stx_backward(ms[k]));
            CHECK_OK(stx_optimizer_step(ms[k], NULL, nn[k]));
        }
        if (la != lb || na != nb)
            fail_msg("step %d: loss %.17g vs %.17g, norm %.17g vs %.17g", s, la, lb, na, nb);
    }
    uint64_t ca = 0, cb = 1;
    int32_t equal = 0;
    CHECK_OK(stx_model_weights_checksum(plain, &ca));
    CHECK_OK(stx_dist_check_weights(d, dp, &cb, &equal));
    print_message("checksums after %d steps: %016llx %016llx\n", steps, (unsigned long long)ca,
                  (unsigned long long)cb);
    assert_true(ca == cb);
    assert_int_equal(equal, 1);
    double v[2] = {2.5, -1.0};
    CHECK_OK(stx_dist_allreduce(d, v, 2, STX_REDUCE_SUM));
    assert_true(v[0] == 2.5 && v[1] == -1.0);
    CHECK_OK(stx_dist_allreduce(d, v, 2, STX_REDUCE_MAX));
    assert_true(v[0] == 2.5 && v[1] == -1.0);
    /* Mismatched devices. */
    stx_model *cpu = make(STX_BACKEND_CPU, 0.0f);
    stx_status st = stx_model_set_dist(cpu, d, NULL);
    assert_int_equal(st, STX_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(stx_last_error(), "same device"));
    stx_dist *cd = NULL;
    CHECK_OK(stx_dist_create(0, 1, NULL, STX_DIST_CPU, 0, &cd));
    st = stx_model_set_dist(dp, cd, NULL);
    assert_int_equal(st, STX_ERR_INVALID_ARGUMENT);
    stx_dist_free(cd);
    stx_model_free(cpu);
    free(data);
    stx_model_free(plain);
    stx_model_free(dp);
    stx_dist_free(d);
}

static void test_missing_peer_times_out(void **state) {
    (void)state;
    stx_dist_id id;
    CHECK_OK(stx_dist_unique_id(&id));
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    stx_dist *d = NULL;
    const stx_status st = stx_dist_create(0, 2, &id, 0, 3.0, &d);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const double took = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    print_message("world 2 without its rank 1: status %d after %.1f s: %s\n", (int)st, took,
                  stx_last_error());
    assert_int_equal(st, STX_ERR_COMM);
    assert_null(d);
    assert_true(took >= 2.5 && took < 60.0);
}

int main(void) {
    if (!stx_backend_available(STX_BACKEND_CUDA) || !(stx_build_features() & STX_FEATURE_NCCL)) {
        printf("SKIP: test_cuda_dist needs a CUDA device and a build with NCCL (build features "
               "0x%x, CUDA usable: %d)\n",
               stx_build_features(), stx_backend_available(STX_BACKEND_CUDA));
        return STX_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grads_after_allreduce),
        cmocka_unit_test(test_training_identical),
        cmocka_unit_test(test_missing_peer_times_out),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
