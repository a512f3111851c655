/*
 * test_sample.c: stx_sample through the public API.
 *  - the same seed gives the same bytes, also when the batch changes (the draw of a sample
 *    depends only on seed, sample index and position); another seed gives other bytes;
 *  - temperature 1e-4, top_k 1 and a tiny top_p all equal greedy decoding, computed here from
 *    stx_evaluate + stx_logits_read over the same window (also beyond n_ctx), for the decoder
 *    (the context slides by half past n_ctx) and the naive sampler (a window per byte);
 *  - stop_byte ends a sample right after it and lengths[] says so;
 *  - the prompt is copied verbatim in front; unconditional sampling works;
 *  - 4000 single-byte draws from a model with known logits follow softmax(logits / T) for
 *    T = 1 and 0.5 (total variation < 0.05); top_k 5 and top_p stay inside their sets;
 *  - each bad argument is refused with STX_ERR_INVALID_ARGUMENT naming it; logits that are not
 *    finite (NaN weights) are refused by both samplers, naming the sample and position;
 *  - sampling invalidates the training forward: stx_backward then gives STX_ERR_STATE.
 */
#include "harness.h"
#include "model_fixtures.h"

#include <sparsetx.h>
#include <string.h>

/* A small model with every parameter random (W_out too, so the logits are not flat). */
static stx_model *make_model(int32_t n_ctx, int32_t precision, uint64_t seed) {
    stx_config cfg;
    stx_test_small_config(&cfg, n_ctx, precision, 2, seed);
    stx_model *m = NULL;
    CHECK_OK(stx_model_create(&cfg, &m));
    int32_t count = 0;
    CHECK_OK(stx_param_count(m, &count));
    stx_test_rng rng = {seed * 7919u + 1u};
    for (int32_t i = 0; i < count; ++i) {
        const char *name = NULL;
        const size_t n = (size_t)stx_test_numel(m, i, &name);
        double *v = malloc(n * sizeof *v);
        stx_test_fill(&rng, v, n, strcmp(name, "w_out") == 0 ? 1.0 : 0.4);
        CHECK_OK(stx_param_write(m, name, STX_DTYPE_F64, v, n));
        free(v);
    }
    return m;
}

/* Make the logits of every position equal `logits` exactly: ln_f gives the constant vector
 * e_0 (g = 0, b = e_0) and column 0 of W_out holds the logits. */
static void set_logits(stx_model *m, const double *logits) {
    stx_config cfg;
    CHECK_OK(stx_model_get_config(m, &cfg));
    const size_t C = (size_t)cfg.n_embd;
    double *g = calloc(C, sizeof *g), *b = calloc(C, sizeof *b);
    double *w = calloc(STX_VOCAB * C, sizeof *w);
    b[0] = 1.0;
    for (size_t v = 0; v < STX_VOCAB; ++v) w[v * C] = logits[v];
    CHECK_OK(stx_param_write(m, "ln_f.g", STX_DTYPE_F64, g, C));
    CHECK_OK(stx_param_write(m, "ln_f.b", STX_DTYPE_F64, b, C));
    CHECK_OK(stx_param_write(m, "w_out", STX_DTYPE_F64, w, STX_VOCAB * C));
    free(g);
    free(b);
    free(w);
}

static stx_sample_config sample_config(uint64_t seed) {
    stx_sample_config sc;
    CHECK_OK(stx_sample_config_init(&sc));
    sc.seed = seed;
    return sc;
}

static void test_config_init(void **state) {
    (void)state;
    stx_sample_config sc;
    memset(&sc, 0xff, sizeof sc);
    CHECK_OK(stx_sample_config_init(&sc));
    assert_true(sc.temperature == 1.0);
    assert_int_equal(sc.top_k, 0);
    assert_int_equal(sc.stop_byte, -1);
    assert_true(sc.top_p == 1.0);
    assert_int_equal(sc.seed, 1);
    assert_int_equal(stx_sample_config_init_v(&sc, sizeof sc - 8, STX_ABI_VERSION),
                     STX_ERR_VERSION);
    assert_int_equal(stx_sample_config_init_v(&sc, sizeof sc, STX_ABI_VERSION + 1),
                     STX_ERR_VERSION);
    assert_int_equal(stx_sample_config_init_v(NULL, sizeof sc, STX_ABI_VERSION),
                     STX_ERR_INVALID_ARGUMENT);
}

static void check_deterministic(int32_t precision) {
    stx_model *m = make_model(32, precision, 5);
    enum { NP = 6, NN = 24, B = 3, L = NP + NN };
    uint8_t prompts[B * NP], a[B * L], b[B * L], one[L], other[B * L];
    stx_test_rng rng = {11};
    stx_test_fill_bytes(&rng, prompts, sizeof prompts);
    int32_t la[B], lb[B], l1[1];
    stx_sample_config sc = sample_config(42);
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, a, la));
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, b, lb));
    assert_memory_equal(a, b, sizeof a);
    for (int i = 0; i < B; ++i) assert_int_equal(la[i], L);
    /* Sample 0 alone draws the same bytes as sample 0 of the batch of three. */
    CHECK_OK(stx_sample(m, prompts, NP, NN, 1, &sc, one, l1));
    assert_memory_equal(one, a, L);
    /* The three samples differ from each other (their own draws), and another seed differs. */
    assert_true(memcmp(a, a + L, L) != 0 || memcmp(a + L, a + 2 * L, L) != 0);
    sc.seed = 43;
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, other, NULL));
    for (int i = 0; i < B; ++i) {
        assert_memory_equal(other + i * L, prompts + i * NP, NP);
        assert_true(memcmp(other + i * L + NP, a + i * L + NP, NN) != 0);
    }
    stx_model_free(m);
}

static void test_deterministic_fp32(void **state) {
    (void)state;
    check_deterministic(STX_PRECISION_FP32);
}

static void test_deterministic_fp64(void **state) {
    (void)state;
    check_deterministic(STX_PRECISION_FP64);
}

/* Greedy decoding through stx_evaluate: the byte at pos is the argmax (lowest byte on ties)
 * of the last row of a forward over a window of T tokens ending at pos. The naive sampler's
 * window is the last min(pos + 1, n_ctx) tokens; the decoder's starts at w, 0 until
 * pos - w would pass n_ctx - 1, then pos - n_ctx / 2 (the context slides by half). */
static void greedy(stx_model *m, int32_t n_ctx, const uint8_t *prompt, int32_t n_prompt,
                   int32_t n_new, int naive, uint8_t *dst) {
    memcpy(dst, prompt, (size_t)n_prompt);
    float *logits = malloc((size_t)n_ctx * STX_VOCAB * sizeof *logits);
    uint8_t *window = malloc((size_t)n_ctx);
    int32_t w = n_prompt <= n_ctx - 1 ? 0 : n_prompt - n_ctx / 2;
    for (int32_t pos = n_prompt; pos < n_prompt + n_new; ++pos) {
        if (pos - w > n_ctx - 1) w = pos - n_ctx / 2;
        const int32_t T = naive ? (pos + 1 < n_ctx ? pos + 1 : n_ctx) : pos - w + 1;
        memcpy(window, dst + pos + 1 - T, (size_t)(T - 1));
        window[T - 1] = 0;
        CHECK_OK(stx_evaluate(m, window, 1, T, NULL));
        CHECK_OK(stx_logits_read(m, STX_DTYPE_F32, logits, (size_t)T * STX_VOCAB));
        const float *row = logits + (size_t)(T - 1) * STX_VOCAB;
        int best = 0;
        for (int v = 1; v < STX_VOCAB; ++v)
            if (row[v] > row[best]) best = v;
        dst[pos] = (uint8_t)best;
    }
    free(window);
    free(logits);
}

static void test_greedy(void **state) {
    (void)state;
    enum { CTX = 16, NP = 5, NN = 20, B = 2, L = NP + NN };
    stx_model *m = make_model(CTX, STX_PRECISION_FP32, 9);
    uint8_t prompts[B * NP] = {'h', 'e', 'l', 'l', 'o', 'w', 'o', 'r', 'l', 'd'};
    for (int naive = 0; naive <= 1; ++naive) {
        uint8_t want[B * L], got[B * L];
        for (int b = 0; b < B; ++b) greedy(m, CTX, prompts + b * NP, NP, NN, naive, want + b * L);
        /* The draws must not be constant, or the comparison proves little. */
        int distinct = 0;
        for (int i = NP + 1; i < L; ++i) distinct += want[i] != want[NP];
        assert_true(distinct > 0);

        stx_sample_config sc = sample_config(3);
        sc.naive = naive;
        sc.temperature = 0.0001;
        CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, got, NULL));
        assert_memory_equal(got, want, sizeof want);

        sc = sample_config(4);
        sc.naive = naive;
        sc.top_k = 1;
        memset(got, 0, sizeof got);
        CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, got, NULL));
        assert_memory_equal(got, want, sizeof want);

        sc = sample_config(5);
        sc.naive = naive;
        sc.top_p = 1e-9;
        memset(got, 0, sizeof got);
        CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, got, NULL));
        assert_memory_equal(got, want, sizeof want);
    }
    stx_model_free(m);
}

static void test_stop_byte(void **state) {
    (void)state;
    enum { NP = 4, NN = 30, B = 8, L = NP + NN };
    stx_model *m = make_model(32, STX_PRECISION_FP32, 13);
    const uint8_t prompt[NP] = {'a', 'b', 'c', 'd'};
    uint8_t prompts[B * NP], out[B * L];
    for (int b = 0; b < B; ++b) memcpy(prompts + b * NP, prompt, NP);
    int32_t lengths[B];

    /* 'x' overwhelmingly likely: every sample stops at its first new byte. */
    double logits[STX_VOCAB];
    for (int v = 0; v < STX_VOCAB; ++v) logits[v] = 0.0;
    logits['x'] = 60.0;
    set_logits(m, logits);
    stx_sample_config sc = sample_config(7);
    sc.stop_byte = 'x';
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, out, lengths));
    for (int b = 0; b < B; ++b) {
        assert_int_equal(lengths[b], NP + 1);
        assert_memory_equal(out + b * L, prompt, NP);
        assert_int_equal(out[b * L + NP], 'x');
    }
    /* Without a stop byte the same model writes NN x's. */
    sc.stop_byte = -1;
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, out, lengths));
    for (int b = 0; b < B; ++b) {
        assert_int_equal(lengths[b], L);
        for (int i = NP; i < L; ++i) assert_int_equal(out[b * L + i], 'x');
    }

    /* 'x' with probability about 0.2: samples stop at different places, each right after
     * its first 'x', and one that never drew 'x' runs to the end. */
    for (int v = 0; v < STX_VOCAB; ++v) logits[v] = v >= 'a' && v < 'k' ? 0.0 : -5.0;
    logits['x'] = 1.0;
    set_logits(m, logits);
    sc.stop_byte = 'x';
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, out, lengths));
    int min_len = L, max_len = 0;
    for (int b = 0; b < B; ++b) {
        const uint8_t *s = out + b * L;
        assert_true(lengths[b] > NP && lengths[b] <= L);
        assert_memory_equal(s, prompt, NP);
        for (int i = NP; i < lengths[b] - 1; ++i) assert_int_not_equal(s[i], 'x');
        if (lengths[b] < L) assert_int_equal(s[lengths[b] - 1], 'x');
        for (int i = lengths[b]; i < L; ++i) assert_int_equal(s[i], 0); /* untouched tail */
        if (lengths[b] < min_len) min_len = lengths[b];
        if (lengths[b] > max_len) max_len = lengths[b];
    }
    assert_true(min_len < max_len);
    assert_true(min_len < L);
    stx_model_free(m);
}

static void test_prompt_and_unconditional(void **state) {
    (void)state;
    stx_model *m = make_model(32, STX_PRECISION_FP32, 17);
    enum { NP = 12, NN = 8, B = 2, L = NP + NN };
    const char *text = "Hello, world";
    uint8_t prompts[B * NP], out[B * L];
    memcpy(prompts, text, NP);
    memcpy(prompts + NP, "0123456789ab", NP);
    int32_t lengths[B];
    stx_sample_config sc = sample_config(1);
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, out, lengths));
    assert_memory_equal(out, text, NP);
    assert_memory_equal(out + L, "0123456789ab", NP);
    assert_int_equal(lengths[0], L);
    assert_int_equal(lengths[1], L);

    /* n_prompt 0 (prompts may be NULL) */
    uint8_t u[3 * 10], u2[3 * 10];
    int32_t ul[3];
    CHECK_OK(stx_sample(m, NULL, 0, 10, 3, &sc, u, ul));
    for (int b = 0; b < 3; ++b) assert_int_equal(ul[b], 10);
    CHECK_OK(stx_sample(m, NULL, 0, 10, 3, &sc, u2, NULL));
    assert_memory_equal(u, u2, sizeof u);
    /* n_new 0 copies the prompt */
    uint8_t p[B * NP];
    CHECK_OK(stx_sample(m, prompts, NP, 0, B, &sc, p, lengths));
    assert_memory_equal(p, prompts, sizeof p);
    assert_int_equal(lengths[0], NP);
    stx_model_free(m);
}

static void test_beyond_ctx(void **state) {
    (void)state;
    enum { CTX = 16, NP = 10, NN = 30, B = 2, L = NP + NN };
    stx_model *m = make_model(CTX, STX_PRECISION_FP32, 21);
    uint8_t prompts[B * NP], out[B * L], again[B * L];
    stx_test_rng rng = {5};
    stx_test_fill_bytes(&rng, prompts, sizeof prompts);
    int32_t lengths[B];
    stx_sample_config sc = sample_config(99);
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, out, lengths));
    for (int b = 0; b < B; ++b) {
        assert_int_equal(lengths[b], L);
        assert_memory_equal(out + b * L, prompts + b * NP, NP);
    }
    CHECK_OK(stx_sample(m, prompts, NP, NN, B, &sc, again, NULL));
    assert_memory_equal(out, again, sizeof out);
    /* A prompt longer than n_ctx is fine too: the window holds its last bytes. */
    uint8_t long_prompt[40], long_out[45];
    stx_test_fill_bytes(&rng, long_prompt, sizeof long_prompt);
    CHECK_OK(stx_sample(m, long_prompt, 40, 5, 1, &sc, long_out, lengths));
    assert_int_equal(lengths[0], 45);
    assert_memory_equal(long_out, long_prompt, 40);
    stx_model_free(m);
}

enum { NDRAW = 4000 };

/* Total variation between the histogram of draws and probabilities p. */
static double total_variation(const uint8_t *draws, int32_t stride, int32_t at, const double *p) {
    double count[STX_VOCAB] = {0};
    for (int i = 0; i < NDRAW; ++i) count[draws[(size_t)i * (size_t)stride + (size_t)at]] += 1.0;
    double tv = 0.0;
    for (int v = 0; v < STX_VOCAB; ++v) tv += fabs(count[v] / NDRAW - p[v]);
    return 0.5 * tv;
}

/* softmax(logits / T) restricted to the k largest (ties: lower byte), renormalized. */
static void expected_probs(const double *logits, double T, int k, double *p) {
    int rank_ok[STX_VOCAB];
    for (int v = 0; v < STX_VOCAB; ++v) {
        int above = 0;
        for (int w = 0; w < STX_VOCAB; ++w)
            above += logits[w] > logits[v] || (logits[w] == logits[v] && w < v);
        rank_ok[v] = above < k;
    }
    double mx = -(double)INFINITY, sum = 0.0;
    for (int v = 0; v < STX_VOCAB; ++v)
        if (logits[v] > mx) mx = logits[v];
    for (int v = 0; v < STX_VOCAB; ++v) {
        p[v] = rank_ok[v] ? exp((logits[v] - mx) / T) : 0.0;
        sum += p[v];
    }
    for (int v = 0; v < STX_VOCAB; ++v) p[v] /= sum;
}

static void test_distribution(void **state) {
    (void)state;
    enum { NP = 3, L = NP + 1 };
    stx_model *m = make_model(16, STX_PRECISION_FP32, 23);
    double set[STX_VOCAB];
    stx_test_rng rng = {77};
    for (int v = 0; v < STX_VOCAB; ++v) set[v] = -8.0 + stx_test_uniform(&rng);
    for (int v = 'a'; v < 'a' + 12; ++v) set[v] = 1.5 * stx_test_uniform(&rng);
    set_logits(m, set);

    uint8_t *prompts = malloc((size_t)NDRAW * NP), *out = malloc((size_t)NDRAW * L);
    for (int i = 0; i < NDRAW * NP; ++i) prompts[i] = (uint8_t)("xyz"[i % NP]);
    /* The logits the model really gives at the drawn position (fp32 rounding included). */
    double logits[L * STX_VOCAB];
    CHECK_OK(stx_evaluate(m, prompts, 1, L, NULL));
    CHECK_OK(stx_logits_read(m, STX_DTYPE_F64, logits, L * STX_VOCAB));
    const double *row = logits + (size_t)NP * STX_VOCAB;
    for (int v = 0; v < STX_VOCAB; ++v) assert_true(fabs(row[v] - set[v]) < 1e-5);

    const double temps[2] = {1.0, 0.5};
    double p[STX_VOCAB];
    for (int t = 0; t < 2; ++t) {
        stx_sample_config sc = sample_config(1000 + (uint64_t)t);
        sc.temperature = temps[t];
        CHECK_OK(stx_sample(m, prompts, NP, 1, NDRAW, &sc, out, NULL));
        expected_probs(row, temps[t], STX_VOCAB, p);
        const double tv = total_variation(out, L, NP, p);
        print_message("T = %.1f: total variation %.4f over %d draws\n", temps[t], tv, NDRAW);
        assert_true(tv < 0.05);
    }

    /* top_k 5: never outside the 5 most likely bytes, and their renormalized softmax. */
    stx_sample_config sc = sample_config(2000);
    sc.top_k = 5;
    CHECK_OK(stx_sample(m, prompts, NP, 1, NDRAW, &sc, out, NULL));
    expected_probs(row, 1.0, 5, p);
    for (int i = 0; i < NDRAW; ++i) assert_true(p[out[(size_t)i * L + NP]] > 0.0);
    const double tv_k = total_variation(out, L, NP, p);
    print_message("top_k 5: total variation %.4f\n", tv_k);
    assert_true(tv_k < 0.05);

    /* top_p 0.5: only the smallest descending prefix holding half the probability. */
    sc = sample_config(3000);
    sc.top_p = 0.5;
    CHECK_OK(stx_sample(m, prompts, NP, 1, NDRAW, &sc, out, NULL));
    expected_probs(row, 1.0, STX_VOCAB, p);
    int nucleus = 0;
    double mass = 0.0;
    while (mass < 0.5) { /* add bytes in descending order */
        int best = -1;
        for (int v = 0; v < STX_VOCAB; ++v)
            if (p[v] >= 0.0 && (best < 0 || p[v] > p[best])) best = v;
        mass += p[best];
        p[best] = -1.0 - p[best]; /* mark as taken, keeping the value recoverable */
        ++nucleus;
    }
    for (int v = 0; v < STX_VOCAB; ++v) p[v] = p[v] < 0.0 ? (-1.0 - p[v]) / mass : 0.0;
    for (int i = 0; i < NDRAW; ++i) assert_true(p[out[(size_t)i * L + NP]] > 0.0);
    const double tv_p = total_variation(out, L, NP, p);
    print_message("top_p 0.5 (%d bytes): total variation %.4f\n", nucleus, tv_p);
    assert_true(nucleus >= 2);
    assert_true(tv_p < 0.05);
    free(prompts);
    free(out);
    stx_model_free(m);
}

static void expect_invalid(stx_status st, const char *needle) {
    if (st != STX_ERR_INVALID_ARGUMENT)
        fail_msg("expected STX_ERR_INVALID_ARGUMENT for %s, got %d (%s)", needle, (int)st,
                 stx_last_error());
    if (!strstr(stx_last_error(), needle))
        fail_msg("the message \"%s\" does not name %s", stx_last_error(), needle);
}

static void test_bad_arguments(void **state) {
    (void)state;
    stx_model *m = make_model(16, STX_PRECISION_FP32, 1);
    uint8_t prompt[4] = {1, 2, 3, 4}, out[64];
    int32_t len[2];
    stx_sample_config good = sample_config(1), sc;
    expect_invalid(stx_sample(NULL, prompt, 4, 4, 1, &good, out, len), "model");
    expect_invalid(stx_sample(m, prompt, 4, 4, 1, &good, NULL, len), "out");
    expect_invalid(stx_sample(m, NULL, 4, 4, 1, &good, out, len), "prompts");
    expect_invalid(stx_sample(m, prompt, 4, 4, 0, &good, out, len), "batch");
    expect_invalid(stx_sample(m, prompt, 4, 4, -1, &good, out, len), "batch");
    expect_invalid(stx_sample(m, prompt, -1, 4, 1, &good, out, len), "n_prompt");
    expect_invalid(stx_sample(m, prompt, 4, -1, 1, &good, out, len), "n_new");
    expect_invalid(stx_sample(m, NULL, 0, 0, 1, &good, out, len), "n_new");
    expect_invalid(stx_sample_v(m, prompt, 4, 4, 1, NULL, sizeof good, STX_ABI_VERSION, out, len),
                   "sc");
    assert_int_equal(
        stx_sample_v(m, prompt, 4, 4, 1, &good, sizeof good - 8, STX_ABI_VERSION, out, len),
        STX_ERR_VERSION);
    const double bad_t[4] = {0.0, -1.0, (double)NAN, (double)INFINITY};
    for (int i = 0; i < 4; ++i) {
        sc = good;
        sc.temperature = bad_t[i];
        expect_invalid(stx_sample(m, prompt, 4, 4, 1, &sc, out, len), "temperature");
    }
    const int32_t bad_k[2] = {-1, 257};
    for (int i = 0; i < 2; ++i) {
        sc = good;
        sc.top_k = bad_k[i];
        expect_invalid(stx_sample(m, prompt, 4, 4, 1, &sc, out, len), "top_k");
    }
    const double bad_p[4] = {0.0, -0.5, 1.5, (double)NAN};
    for (int i = 0; i < 4; ++i) {
        sc = good;
        sc.top_p = bad_p[i];
        expect_invalid(stx_sample(m, prompt, 4, 4, 1, &sc, out, len), "top_p");
    }
    const int32_t bad_stop[2] = {-2, 256};
    for (int i = 0; i < 2; ++i) {
        sc = good;
        sc.stop_byte = bad_stop[i];
        expect_invalid(stx_sample(m, prompt, 4, 4, 1, &sc, out, len), "stop_byte");
    }
    const int32_t bad_naive[2] = {-1, 2};
    for (int i = 0; i < 2; ++i) {
        sc = good;
        sc.naive = bad_naive[i];
        expect_invalid(stx_sample(m, prompt, 4, 4, 1, &sc, out, len), "naive");
    }
    /* The edges of every range are accepted. */
    sc = good;
    sc.top_k = 256;
    sc.top_p = 1.0;
    sc.stop_byte = 255;
    sc.temperature = 1e-300;
    CHECK_OK(stx_sample(m, prompt, 4, 4, 1, &sc, out, len));
    sc.stop_byte = 0;
    sc.top_k = 0;
    sc.temperature = 1e300;
    CHECK_OK(stx_sample(m, prompt, 4, 4, 1, &sc, out, NULL));
    CHECK_OK(stx_sample(m, NULL, 0, 1, 1, &sc, out, NULL));
    stx_model_free(m);
}

/* Weights holding NaN: both samplers refuse with a message naming the sample and position,
 * given on the calling thread although the draws run in parallel. */
static void test_non_finite_logits(void **state) {
    (void)state;
    stx_model *m = make_model(16, STX_PRECISION_FP32, 2);
    const size_t n = STX_VOCAB * 16;
    float *w = malloc(n * sizeof *w);
    CHECK_OK(stx_param_read(m, "w_out", STX_DTYPE_F32, w, n));
    w[3 * 16 + 5] = (float)NAN; /* byte 3's logit */
    CHECK_OK(stx_param_write(m, "w_out", STX_DTYPE_F32, w, n));
    free(w);
    uint8_t prompt[3 * 2] = {1, 2, 3, 4, 5, 6}, out[3 * 6];
    for (int naive = 0; naive <= 1; ++naive) {
        stx_sample_config sc = sample_config(1);
        sc.naive = naive;
        assert_int_equal(stx_sample(m, prompt, 2, 4, 3, &sc, out, NULL), STX_ERR_INVALID_ARGUMENT);
        const char *msg = stx_last_error();
        if (!strstr(msg, "not finite") || !strstr(msg, "sample 0") || !strstr(msg, "position 2"))
            fail_msg("naive %d: unexpected message: %s", naive, msg);
    }
    stx_model_free(m);
}

static void test_training_state(void **state) {
    (void)state;
    stx_model *m = make_model(16, STX_PRECISION_FP32, 31);
    uint8_t tokens[2 * 16], out[2 * 8];
    stx_test_rng rng = {3};
    stx_test_fill_bytes(&rng, tokens, sizeof tokens);
    uint64_t counter_before = 0, counter_after = 0;
    CHECK_OK(stx_forward(m, tokens, 2, 16, NULL));
    CHECK_OK(stx_model_get_dropout_counter(m, &counter_before));
    stx_sample_config sc = sample_config(1);
    CHECK_OK(stx_sample(m, tokens, 4, 4, 2, &sc, out, NULL));
    CHECK_OK(stx_model_get_dropout_counter(m, &counter_after));
    assert_int_equal(counter_before, counter_after);
    assert_int_equal(stx_backward(m), STX_ERR_STATE);
    float logits[2 * 16 * STX_VOCAB];
    assert_int_equal(stx_logits_read(m, STX_DTYPE_F32, logits, 2 * 16 * STX_VOCAB), STX_ERR_STATE);
    /* A new forward makes backward legal again. */
    CHECK_OK(stx_forward(m, tokens, 2, 16, NULL));
    CHECK_OK(stx_zero_grad(m));
    CHECK_OK(stx_backward(m));
    stx_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_init),        cmocka_unit_test(test_deterministic_fp32),
        cmocka_unit_test(test_deterministic_fp64), cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_stop_byte),          cmocka_unit_test(test_prompt_and_unconditional),
        cmocka_unit_test(test_beyond_ctx),         cmocka_unit_test(test_distribution),
        cmocka_unit_test(test_bad_arguments),      cmocka_unit_test(test_non_finite_logits),
        cmocka_unit_test(test_training_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
