/*
 * test_dist.c: data-parallel training, everything that runs without several GPUs:
 *  - the shard arithmetic (stx_shard_batch) and its refusals;
 *  - stx_dataset_sample_shard: for W in {1, 2, 3, 4, 6} and several steps, the W ranks' windows
 *    concatenated are exactly stx_dataset_sample's global batch, and every rank's generator state
 *    stays the single process's; world 1 gives the same bytes; stx_dataset_sample_offsets names
 *    the windows; the refusals;
 *  - dropout under sharding: with the dropout offset at each rank's first sequence, a rank's
 *    logits are bit for bit the rows of the single-process forward on the global batch (so the
 *    masks concatenate to the global masks), and without it they are not; the mean of the
 *    ranks' gradients is the global gradient (fp64, 1e-12);
 *  - the communicator's API: refusals (bad rank, world, id, device, timeout, op, options, W > 1 on
 *    the CPU), world 1 through the same code path on the CPU gives bit-identical training to no
 *    communicator at all (fp32, dropout on, groups of 1, 2 and 3 blocks), bf16 all-reduce rounds
 *    the gradients to bf16, the micro-batch rules, the checksum and the weight check.
 */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include "harness.h"
#include "model_fixtures.h"

#include <sparsetx.h>
#include <string.h>
#include <unistd.h>

#define CHECK_STATUS(call, want, needle)                                                           \
    do {                                                                                           \
        stx_status st_ = (call);                                                                   \
        if (st_ != (want))                                                                         \
            fail_msg("%s -> %d (want %d): %s", #call, (int)st_, (int)(want), stx_last_error());    \
        const char *needle_ = (needle);                                                            \
        if (needle_ && !strstr(stx_last_error(), needle_))                                         \
            fail_msg("%s: message '%s' lacks '%s'", #call, stx_last_error(), needle_);             \
    } while (0)

/* ---------------------------------------------------------------- shards */

static void test_shard_batch(void **state) {
    (void)state;
    int32_t first = -1, count = -1;
    for (int32_t world = 1; world <= 8; ++world)
        for (int32_t rank = 0; rank < world; ++rank) {
            CHECK_OK(stx_shard_batch(24 * world, world, rank, &first, &count));
            assert_int_equal(count, 24);
            assert_int_equal(first, 24 * rank);
        }
    CHECK_STATUS(stx_shard_batch(10, 4, 0, &first, &count), STX_ERR_INVALID_ARGUMENT,
                 "global batch (10) must be divisible by the world size (4)");
    CHECK_STATUS(stx_shard_batch(8, 4, 4, &first, &count), STX_ERR_INVALID_ARGUMENT,
                 "rank (4) must be in [0, 4)");
    CHECK_STATUS(stx_shard_batch(8, 4, -1, &first, &count), STX_ERR_INVALID_ARGUMENT, "rank (-1)");
    CHECK_STATUS(stx_shard_batch(8, 0, 0, &first, &count), STX_ERR_INVALID_ARGUMENT,
                 "world size (0)");
    CHECK_STATUS(stx_shard_batch(0, 1, 0, &first, &count), STX_ERR_INVALID_ARGUMENT,
                 "global batch (0)");
    CHECK_STATUS(stx_shard_batch(8, 2, 0, NULL, &count), STX_ERR_INVALID_ARGUMENT, "first");
}

/* A raw byte file of n random bytes in a fresh directory; the path goes to path[]. */
static stx_dataset *random_dataset(char *dir, char *path, size_t n, uint64_t seed) {
    strcpy(dir, "/tmp/stx_test_dist.XXXXXX");
    assert_non_null(mkdtemp(dir));
    sprintf(path, "%s/data.bin", dir);
    uint8_t *bytes = malloc(n);
    assert_non_null(bytes);
    stx_test_rng rng = {seed};
    stx_test_fill_bytes(&rng, bytes, n);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    fclose(f);
    free(bytes);
    stx_dataset *ds = NULL;
    CHECK_OK(stx_dataset_open(path, STX_DATA_BYTES, 0, &ds));
    return ds;
}

static void remove_dataset(stx_dataset *ds, const char *dir, const char *path) {
    stx_dataset_free(ds);
    unlink(path);
    rmdir(dir);
}

static void test_sample_shard(void **state) {
    (void)state;
    char dir[64], path[96];
    stx_dataset *ds = random_dataset(dir, path, 5000, 11);
    const int32_t B = 12, T = 37;
    const int32_t worlds[] = {1, 2, 3, 4, 6};
    uint8_t global[12 * 37], shard[12 * 37];
    int64_t offsets[12];
    for (size_t w = 0; w < sizeof worlds / sizeof *worlds; ++w) {
        const int32_t W = worlds[w], per = B / W;
        uint64_t rng_single = 0x1234567u + (uint64_t)w, rng_rank[6];
        for (int32_t r = 0; r < W; ++r) rng_rank[r] = rng_single;
        for (int step = 0; step < 7; ++step) {
            uint64_t rng_offsets = rng_single;
            CHECK_OK(stx_dataset_sample_offsets(ds, 100, 4900, B, T, &rng_offsets, offsets));
            CHECK_OK(stx_dataset_sample(ds, 100, 4900, B, T, &rng_single, global));
            assert_true(rng_offsets == rng_single);
            for (int32_t b = 0; b < B; ++b) {
                uint8_t window[37];
                assert_true(offsets[b] >= 100 && offsets[b] <= 4900 - T);
                CHECK_OK(stx_dataset_read(ds, offsets[b], window, T));
                assert_memory_equal(window, global + b * T, (size_t)T);
            }
            for (int32_t r = 0; r < W; ++r) {
                memset(shard, 0, sizeof shard);
                CHECK_OK(stx_dataset_sample_shard(ds, 100, 4900, B, T, r, W, &rng_rank[r], shard));
                assert_memory_equal(shard, global + (size_t)r * per * T, (size_t)per * T);
                assert_true(rng_rank[r] == rng_single); /* every rank keeps the global state */
            }
        }
    }
    uint64_t rng = 5, before = 5;
    CHECK_STATUS(stx_dataset_sample_shard(ds, 0, 5000, 10, T, 0, 4, &rng, shard),
                 STX_ERR_INVALID_ARGUMENT, "must be divisible by the world size (4)");
    CHECK_STATUS(stx_dataset_sample_shard(ds, 0, 5000, 8, T, 5, 4, &rng, shard),
                 STX_ERR_INVALID_ARGUMENT, "rank (5)");
    CHECK_STATUS(stx_dataset_sample_shard(ds, 0, 20, 8, T, 0, 4, &rng, shard),
                 STX_ERR_INVALID_ARGUMENT, "fewer than one window");
    CHECK_STATUS(stx_dataset_sample_shard(ds, 0, 5000, 8, T, 0, 4, &rng, NULL),
                 STX_ERR_INVALID_ARGUMENT, "dst is NULL");
    CHECK_STATUS(stx_dataset_sample_offsets(ds, 0, 5000, 8, T, &rng, NULL),
                 STX_ERR_INVALID_ARGUMENT, "offsets is NULL");
    assert_true(rng == before); /* refusals do not move the generator */
    remove_dataset(ds, dir, path);
}

/* ---------------------------------------------------------------- dropout under sharding */

static stx_model *small_model(int32_t precision, float dropout, int32_t layers) {
    stx_config cfg;
    CHECK_OK(stx_config_init(&cfg));
    cfg.n_layer = layers;
    cfg.n_embd = 32;
    cfg.n_head = 2;
    cfg.n_ctx = 24;
    cfg.block_size = 16;
    cfg.dropout = dropout;
    cfg.precision = precision;
    cfg.seed = 7;
    cfg.n_threads = 2;
    strcpy(cfg.pattern, "local:8+strided:8");
    stx_model *m = NULL;
    CHECK_OK(stx_model_create(&cfg, &m));
    return m;
}

static void test_dropout_shards(void **state) {
    (void)state;
    const int32_t B = 6, T = 24, W = 3, per = B / W;
    stx_test_rng rng = {21};
    uint8_t tokens[6 * 24];
    stx_test_fill_bytes(&rng, tokens, sizeof tokens);
    stx_model *global = small_model(STX_PRECISION_FP64, 0.3f, 2);
    stx_model *rank = small_model(STX_PRECISION_FP64, 0.3f, 2);
    stx_model *both[2] = {global, rank};
    stx_test_randomize(both, 2, 99, 0.3);
    CHECK_OK(stx_model_set_dropout_counter(global, 5));
    double loss = 0;
    CHECK_OK(stx_zero_grad(global));
    CHECK_OK(stx_forward(global, tokens, B, T, &loss));
    CHECK_OK(stx_backward(global));
    const size_t nl = (size_t)B * T * 256;
    double *logits = malloc(nl * sizeof *logits), *mine = malloc(nl * sizeof *mine);
    assert_non_null(logits);
    assert_non_null(mine);
    CHECK_OK(stx_logits_read(global, STX_DTYPE_F64, logits, nl));
    size_t n = 0;
    double *g_global = stx_test_grads(global, &n), *g_mean = calloc(n, sizeof(double));
    assert_non_null(g_mean);
    for (int32_t r = 0; r < W; ++r) {
        CHECK_OK(stx_model_set_dropout_counter(rank, 5));
        CHECK_OK(stx_model_set_dropout_offset(rank, (int64_t)r * per));
        int64_t got = -1;
        CHECK_OK(stx_model_get_dropout_offset(rank, &got));
        assert_int_equal(got, r * per);
        CHECK_OK(stx_zero_grad(rank));
        CHECK_OK(stx_forward(rank, tokens + (size_t)r * per * T, per, T, &loss));
        CHECK_OK(stx_backward(rank));
        const size_t rows = (size_t)per * T * 256;
        CHECK_OK(stx_logits_read(rank, STX_DTYPE_F64, mine, rows));
        /* The same masks give the same rows, to the bit. */
        assert_memory_equal(mine, logits + (size_t)r * rows, rows * sizeof(double));
        size_t m = 0;
        double *g = stx_test_grads(rank, &m);
        for (size_t i = 0; i < n; ++i) g_mean[i] += g[i] / W;
        free(g);
        if (r > 0) { /* without the offset, rank r would reuse rank 0's masks */
            CHECK_OK(stx_model_set_dropout_counter(rank, 5));
            CHECK_OK(stx_model_set_dropout_offset(rank, 0));
            CHECK_OK(stx_evaluate(rank, tokens, 1, T, &loss)); /* (no dropout: not a test) */
            CHECK_OK(stx_forward(rank, tokens + (size_t)r * per * T, per, T, &loss));
            CHECK_OK(stx_logits_read(rank, STX_DTYPE_F64, mine, rows));
            assert_true(memcmp(mine, logits + (size_t)r * rows, rows * sizeof(double)) != 0);
        }
    }
    stx_test_expect_close("mean of the shards' gradients vs the global gradient", g_mean, g_global,
                          n, 1e-12);
    CHECK_STATUS(stx_model_set_dropout_offset(rank, -1), STX_ERR_INVALID_ARGUMENT, ">= 0");
    free(g_global);
    free(g_mean);
    free(logits);
    free(mine);
    stx_model_free(global);
    stx_model_free(rank);
}

/* ---------------------------------------------------------------- the communicator */

static void test_dist_errors(void **state) {
    (void)state;
    stx_dist *d = (stx_dist *)0x1;
    stx_dist_id id;
    memset(&id, 7, sizeof id);
    CHECK_STATUS(stx_dist_create(0, 1, NULL, STX_DIST_CPU, 0, NULL), STX_ERR_INVALID_ARGUMENT,
                 "out is NULL");
    CHECK_STATUS(stx_dist_create(2, 2, &id, STX_DIST_CPU, 0, &d), STX_ERR_INVALID_ARGUMENT,
                 "rank (2) must be in [0, 2)");
    assert_null(d);
    CHECK_STATUS(stx_dist_create(-1, 2, &id, STX_DIST_CPU, 0, &d), STX_ERR_INVALID_ARGUMENT,
                 "rank (-1)");
    CHECK_STATUS(stx_dist_create(0, 0, &id, STX_DIST_CPU, 0, &d), STX_ERR_INVALID_ARGUMENT,
                 "world size (0)");
    CHECK_STATUS(stx_dist_create(0, 2, NULL, STX_DIST_CPU, 0, &d), STX_ERR_INVALID_ARGUMENT,
                 "id is NULL but the world has 2 ranks");
    CHECK_STATUS(stx_dist_create(0, 1, NULL, STX_DIST_CPU, -1.0, &d), STX_ERR_INVALID_ARGUMENT,
                 "timeout_s");
    CHECK_STATUS(stx_dist_create(0, 1, NULL, STX_DIST_CPU, NAN, &d), STX_ERR_INVALID_ARGUMENT,
                 "timeout_s");
    CHECK_STATUS(stx_dist_create(0, 1, NULL, -2, 0, &d), STX_ERR_INVALID_ARGUMENT, "device (-2)");
    CHECK_STATUS(stx_dist_create(1, 2, &id, STX_DIST_CPU, 0, &d), STX_ERR_UNSUPPORTED,
                 "CPU communicator has one rank only");
    /* A GPU communicator on a machine or build that has none: refused with a reason. */
    if (!stx_backend_available(STX_BACKEND_CUDA)) {
        const stx_status st = stx_dist_create(0, 1, NULL, 0, 0, &d);
        assert_true(st == STX_ERR_UNSUPPORTED || st == STX_ERR_INVALID_ARGUMENT);
        assert_null(d);
        assert_true(strstr(stx_last_error(), "NCCL") || strstr(stx_last_error(), "CUDA") ||
                    strstr(stx_last_error(), "not there"));
    }
    if (!(stx_build_features() & STX_FEATURE_NCCL))
        CHECK_STATUS(stx_dist_unique_id(&id), STX_ERR_UNSUPPORTED, "built without NCCL");
    CHECK_STATUS(stx_dist_unique_id(NULL), STX_ERR_INVALID_ARGUMENT, "id is NULL");

    CHECK_OK(stx_dist_create(0, 1, NULL, STX_DIST_CPU, 0, &d));
    int32_t rank = -1, world = -1, device = 0;
    CHECK_OK(stx_dist_info(d, &rank, &world, &device));
    assert_int_equal(rank, 0);
    assert_int_equal(world, 1);
    assert_int_equal(device, STX_DIST_CPU);
    double v[3] = {1.5, -2.0, 3.25};
    for (int op = 0; op < 3; ++op) {
        CHECK_OK(stx_dist_allreduce(d, v, 3, (stx_reduce_op)op));
        assert_true(v[0] == 1.5 && v[1] == -2.0 && v[2] == 3.25); /* one rank: the identity */
    }
    CHECK_STATUS(stx_dist_allreduce(d, v, 3, (stx_reduce_op)7), STX_ERR_INVALID_ARGUMENT,
                 "not an stx_reduce_op");
    CHECK_STATUS(stx_dist_allreduce(d, v, -1, STX_REDUCE_SUM), STX_ERR_INVALID_ARGUMENT,
                 "negative");
    CHECK_STATUS(stx_dist_allreduce(d, NULL, 2, STX_REDUCE_SUM), STX_ERR_INVALID_ARGUMENT,
                 "values is NULL");
    CHECK_STATUS(stx_dist_allreduce(NULL, v, 2, STX_REDUCE_SUM), STX_ERR_INVALID_ARGUMENT,
                 "dist is NULL");

    stx_model *m = small_model(STX_PRECISION_FP32, 0.0f, 1);
    stx_dist_options o;
    CHECK_OK(stx_dist_options_init(&o));
    assert_int_equal(o.grads, STX_DIST_GRADS_FP32);
    assert_int_equal(o.bucket_layers, 2);
    o.grads = 5;
    CHECK_STATUS(stx_model_set_dist(m, d, &o), STX_ERR_INVALID_ARGUMENT, "grads (5)");
    o.grads = STX_DIST_GRADS_BF16;
    o.bucket_layers = 0;
    CHECK_STATUS(stx_model_set_dist(m, d, &o), STX_ERR_INVALID_ARGUMENT, "bucket_layers (0)");
    CHECK_STATUS(stx_model_set_dist_v(m, d, &o, sizeof o - 4, STX_ABI_VERSION), STX_ERR_VERSION,
                 NULL);
    CHECK_STATUS(stx_model_set_dist(NULL, d, NULL), STX_ERR_INVALID_ARGUMENT, NULL);
    CHECK_STATUS(stx_model_set_grad_sync(m, 2), STX_ERR_INVALID_ARGUMENT, "must be 0 or 1");
    CHECK_OK(stx_model_set_dist(m, d, NULL));
    /* The handle may go first: the model keeps the communicator. */
    stx_dist_free(d);
    stx_dist_free(d); /* a second free is a no-op */
    CHECK_STATUS(stx_dist_info(d, &rank, NULL, NULL), STX_ERR_INVALID_ARGUMENT, "not a live");
    CHECK_STATUS(stx_model_set_dist(m, d, NULL), STX_ERR_INVALID_ARGUMENT, "not a live");
    uint8_t tokens[2 * 24];
    stx_test_rng rng = {3};
    stx_test_fill_bytes(&rng, tokens, sizeof tokens);
    double loss;
    CHECK_OK(stx_zero_grad(m));
    CHECK_OK(stx_forward(m, tokens, 2, 24, &loss));
    CHECK_OK(stx_backward(m));
    CHECK_OK(stx_optimizer_step(m, NULL, NULL));
    CHECK_OK(stx_model_set_dist(m, NULL, NULL)); /* alone again */
    CHECK_OK(stx_forward(m, tokens, 2, 24, &loss));
    CHECK_OK(stx_backward(m)); /* no reduction: accumulating without zero_grad is fine alone */
    CHECK_OK(stx_optimizer_step(m, NULL, NULL));
    stx_model_free(m);
}

/* Trains `steps` steps; returns the losses' bits in losses[] and leaves the model trained. */
static void train(stx_model *m, const uint8_t *data, int32_t B, int32_t T, int steps,
                  double *losses) {
    for (int s = 0; s < steps; ++s) {
        CHECK_OK(stx_zero_grad(m));
        CHECK_OK(stx_forward(m, data + (size_t)s * B * T, B, T, &losses[s]));
        CHECK_OK(stx_backward(m));
        CHECK_OK(stx_optimizer_step(m, NULL, NULL));
    }
}

static void expect_same_weights(stx_model *a, stx_model *b) {
    int32_t count = 0;
    CHECK_OK(stx_param_count(a, &count));
    for (int32_t i = 0; i < count; ++i) {
        const char *name;
        const int64_t numel = stx_test_numel(a, i, &name);
        float *x = malloc((size_t)numel * sizeof *x), *y = malloc((size_t)numel * sizeof *y);
        assert_non_null(x);
        assert_non_null(y);
        CHECK_OK(stx_param_read(a, name, STX_DTYPE_F32, x, (size_t)numel));
        CHECK_OK(stx_param_read(b, name, STX_DTYPE_F32, y, (size_t)numel));
        if (memcmp(x, y, (size_t)numel * sizeof *x) != 0) fail_msg("%s differs", name);
        free(x);
        free(y);
    }
}

static void test_world_one_bit_identical(void **state) {
    (void)state;
    const int32_t B = 3, T = 24, steps = 4, L = 3;
    uint8_t data[4 * 3 * 24];
    stx_test_rng rng = {77};
    stx_test_fill_bytes(&rng, data, sizeof data);
    for (int32_t bucket = 1; bucket <= 3; ++bucket) {
        stx_model *plain = small_model(STX_PRECISION_FP32, 0.2f, L);
        stx_model *dp = small_model(STX_PRECISION_FP32, 0.2f, L);
        stx_model *both[2] = {plain, dp};
        stx_test_randomize(both, 2, 5 + (uint64_t)bucket, 0.2);
        stx_optim_config opt;
        CHECK_OK(stx_optim_config_init(&opt));
        opt.lr = 1e-2;
        opt.grad_clip = 0.5; /* clipping on: it must see the same (global) norm */
        CHECK_OK(stx_model_set_optimizer(plain, &opt));
        CHECK_OK(stx_model_set_optimizer(dp, &opt));
        stx_dist *d = NULL;
        CHECK_OK(stx_dist_create(0, 1, NULL, STX_DIST_CPU, 0, &d));
        stx_dist_options o;
        CHECK_OK(stx_dist_options_init(&o));
        o.bucket_layers = bucket;
        CHECK_OK(stx_model_set_dist(dp, d, &o));
        CHECK_OK(stx_model_set_dropout_offset(dp, 0));
        double la[4], lb[4];
        train(plain, data, B, T, steps, la);
        train(dp, data, B, T, steps, lb);
        assert_memory_equal(la, lb, sizeof la);
        expect_same_weights(plain, dp);
        uint64_t ca = 0, cb = 1;
        int32_t equal = 0;
        CHECK_OK(stx_model_weights_checksum(plain, &ca));
        CHECK_OK(stx_dist_check_weights(d, dp, &cb, &equal));
        assert_true(ca == cb);
        assert_int_equal(equal, 1);
        stx_model_free(plain);
        stx_model_free(dp);
        stx_dist_free(d);
    }
}

static void test_bf16_and_micro_batches(void **state) {
    (void)state;
    const int32_t B = 2, T = 24;
    uint8_t data[2 * 2 * 24];
    stx_test_rng rng = {8};
    stx_test_fill_bytes(&rng, data, sizeof data);
    stx_model *plain = small_model(STX_PRECISION_FP32, 0.0f, 2);
    stx_model *dp = small_model(STX_PRECISION_FP32, 0.0f, 2);
    stx_model *both[2] = {plain, dp};
    stx_test_randomize(both, 2, 1234, 0.3);
    stx_dist *d = NULL;
    CHECK_OK(stx_dist_create(0, 1, NULL, STX_DIST_CPU, 0, &d));
    stx_dist_options o;
    CHECK_OK(stx_dist_options_init(&o));
    o.grads = STX_DIST_GRADS_BF16;
    o.bucket_layers = 1;
    CHECK_OK(stx_model_set_dist(dp, d, &o));
    double loss;
    for (int k = 0; k < 2; ++k) {
        stx_model *m = k ? dp : plain;
        CHECK_OK(stx_zero_grad(m));
        CHECK_OK(stx_forward(m, data, B, T, &loss));
        CHECK_OK(stx_backward(m));
    }
    size_t n = 0, n2 = 0;
    double *ga = stx_test_grads(plain, &n), *gb = stx_test_grads(dp, &n2);
    assert_int_equal(n, n2);
    size_t changed = 0;
    for (size_t i = 0; i < n; ++i) {
        /* The all-reduce sends bf16: one rank's average is its gradient rounded to bf16. */
        const float a = (float)ga[i];
        float want;
        uint32_t u;
        memcpy(&u, &a, sizeof u);
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
        memcpy(&want, &u, sizeof want);
        if ((float)gb[i] != want)
            fail_msg("element %zu: %g, want bf16(%g) = %g", i, gb[i], (double)a, (double)want);
        changed += gb[i] != ga[i];
    }
    assert_true(changed > n / 2); /* it did round (random weights: most values are not bf16) */
    free(ga);
    free(gb);

    /* A second reducing backward without zero_grad would reduce twice. */
    CHECK_OK(stx_forward(dp, data, B, T, &loss));
    CHECK_STATUS(stx_backward(dp), STX_ERR_STATE, "already all-reduced");
    /* Micro-batches: accumulate without reducing, reduce on the last. */
    CHECK_OK(stx_zero_grad(dp));
    CHECK_OK(stx_model_set_grad_sync(dp, 0));
    CHECK_OK(stx_forward(dp, data, B, T, &loss));
    CHECK_OK(stx_backward(dp));
    CHECK_STATUS(stx_optimizer_step(dp, NULL, NULL), STX_ERR_STATE, "this rank's alone");
    CHECK_OK(stx_model_set_grad_sync(dp, 1));
    CHECK_OK(stx_forward(dp, data + B * T, B, T, &loss));
    CHECK_OK(stx_backward(dp));
    CHECK_OK(stx_optimizer_step(dp, NULL, NULL));
    stx_model_free(plain);
    stx_model_free(dp);
    stx_dist_free(d);
}

static void test_checksum(void **state) {
    (void)state;
    stx_model *a = small_model(STX_PRECISION_FP32, 0.0f, 1);
    stx_model *b = small_model(STX_PRECISION_FP32, 0.0f, 1);
    uint64_t ca = 0, cb = 0;
    CHECK_OK(stx_model_weights_checksum(a, &ca));
    CHECK_OK(stx_model_weights_checksum(b, &cb));
    assert_true(ca == cb); /* same seed, same weights */
    float one = 0.5f;
    float *w = malloc(256 * 32 * sizeof *w);
    assert_non_null(w);
    CHECK_OK(stx_param_read(b, "w_out", STX_DTYPE_F32, w, 256 * 32));
    w[17] = one;
    CHECK_OK(stx_param_write(b, "w_out", STX_DTYPE_F32, w, 256 * 32));
    CHECK_OK(stx_model_weights_checksum(b, &cb));
    assert_true(ca != cb);
    CHECK_STATUS(stx_model_weights_checksum(a, NULL), STX_ERR_INVALID_ARGUMENT, "NULL");
    stx_dist *d = NULL;
    CHECK_OK(stx_dist_create(0, 1, NULL, STX_DIST_CPU, 5.0, &d));
    int32_t equal = 0;
    CHECK_STATUS(stx_dist_check_weights(d, a, &ca, NULL), STX_ERR_INVALID_ARGUMENT, "all_equal");
    CHECK_OK(stx_dist_check_weights(d, b, NULL, &equal));
    assert_int_equal(equal, 1); /* one rank always agrees with itself */
    free(w);
    stx_dist_free(d);
    stx_model_free(a);
    stx_model_free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shard_batch),
        cmocka_unit_test(test_sample_shard),
        cmocka_unit_test(test_dropout_shards),
        cmocka_unit_test(test_dist_errors),
        cmocka_unit_test(test_world_one_bit_identical),
        cmocka_unit_test(test_bf16_and_micro_batches),
        cmocka_unit_test(test_checksum),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
