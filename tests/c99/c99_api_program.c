/*
 * c99_api_program.c: the public header used from strict C99 (-std=c99 -pedantic -Werror),
 * linked against the shared library only, as a C user would. It walks the whole life of a
 * small CPU model through the API: versions, status strings, config, create, forward (the
 * loss at init is exactly ln 256 because W_out starts at zero), backward, an optimizer step,
 * parameter enumeration and read-back, and the error path of a bad config. One line per
 * check; the exit status is 0 when every check passed, 1 otherwise.
 *
 * Only <sparsetx.h> and the C standard library; no libm (ln 256 is a literal).
 */
#include <sparsetx.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LN_256 5.545177444479562

static int n_failed = 0;

static void check(int ok, const char *what) {
    printf("%s: %s\n", ok ? "PASS" : "FAIL", what);
    if (!ok) ++n_failed;
}

/* check() for an API call: prints the status and the last error on failure. */
static int check_status(stx_status st, stx_status want, const char *what) {
    int ok = st == want;
    if (ok) {
        printf("PASS: %s\n", what);
    } else {
        printf("FAIL: %s: got %d (%s), wanted %d: %s\n", what, (int)st, stx_status_string(st),
               (int)want, stx_last_error());
        ++n_failed;
    }
    return ok;
}

static double absd(double x) {
    return x < 0 ? -x : x;
}

/* A small xorshift generator: fresh, fixed-seed random bytes (never zeros). */
static unsigned long long rng_state = 0x9E3779B97F4A7C15ull;
static unsigned rng_next(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state >> 32);
}

static void check_versions(void) {
    check(stx_version_number() == STX_VERSION_NUMBER, "stx_version_number() == STX_VERSION_NUMBER");
    check(stx_version_string() != NULL && strcmp(stx_version_string(), STX_VERSION_STRING) == 0,
          "stx_version_string() == STX_VERSION_STRING");
    check((stx_build_features() &
           ~(uint32_t)(STX_FEATURE_CUDA | STX_FEATURE_OPENMP | STX_FEATURE_NCCL)) == 0,
          "stx_build_features() has only known bits");
    check(stx_backend_available(STX_BACKEND_CPU) == 1, "the CPU backend is available");
    check(stx_backend_available(STX_BACKEND_AUTO) == 1, "STX_BACKEND_AUTO is always available");
    printf("INFO: library %s, features 0x%x\n", stx_version_string(),
           (unsigned)stx_build_features());
}

static void check_status_strings(void) {
    int s, all = 1;
    for (s = STX_ERR_INTERNAL; s <= STX_OK; ++s) {
        const char *text = stx_status_string((stx_status)s);
        if (text == NULL || text[0] == '\0') {
            printf("  status %d has no string\n", s);
            all = 0;
        }
    }
    check(all, "every status (STX_OK .. STX_ERR_INTERNAL) has a non-empty string");
    check(stx_status_string((stx_status)-1000) != NULL, "an unknown status still has a string");
}

static void check_bad_config(void) {
    stx_config cfg;
    stx_model *model = (stx_model *)&cfg; /* must be reset to NULL on failure */
    stx_config_init(&cfg);
    cfg.n_embd = 30;
    cfg.n_head = 4;
    stx_clear_error();
    check_status(stx_config_validate(&cfg), STX_ERR_INVALID_ARGUMENT,
                 "stx_config_validate refuses n_embd 30 with n_head 4");
    check_status(stx_model_create(&cfg, &model), STX_ERR_INVALID_ARGUMENT,
                 "stx_model_create refuses n_embd 30 with n_head 4");
    check(model == NULL, "stx_model_create sets *out = NULL on failure");
    printf("INFO: stx_last_error() = \"%s\"\n", stx_last_error());
    check(stx_last_error()[0] != '\0' && strstr(stx_last_error(), "n_embd") != NULL,
          "stx_last_error() names n_embd");
    stx_clear_error();
    check(stx_last_error()[0] == '\0', "stx_clear_error() empties the message");
    check_status(stx_config_init_v(&cfg, sizeof cfg - 1, STX_ABI_VERSION), STX_ERR_VERSION,
                 "stx_config_init_v refuses a wrong struct size");
    check_status(stx_config_init_v(&cfg, sizeof cfg, STX_ABI_VERSION + 1), STX_ERR_VERSION,
                 "stx_config_init_v refuses a wrong ABI version");
    check_status(stx_forward(NULL, (const uint8_t *)"ab", 1, 2, NULL), STX_ERR_INVALID_ARGUMENT,
                 "stx_forward(NULL model) is an invalid argument");
    stx_model_free(NULL);
    check(1, "stx_model_free(NULL) is a no-op");
}

static void check_pattern(void) {
    char out[STX_PATTERN_MAX];
    if (check_status(stx_pattern_normalize("local:8+strided:8", out, sizeof out), STX_OK,
                     "stx_pattern_normalize(\"local:8+strided:8\")"))
        check(strcmp(out, "local:8+strided:8") == 0, "the canonical form is unchanged");
    check_status(stx_pattern_normalize("local:", out, sizeof out), STX_ERR_FORMAT,
                 "stx_pattern_normalize refuses \"local:\"");
}

static void check_model(void) {
    enum { B = 2, T = 40 };
    stx_config cfg;
    stx_optim_config opt;
    stx_model *model = NULL;
    uint8_t tokens[B * T];
    float *logits = NULL;
    double loss = -1.0, lr_used = 0.0, grad_norm = 0.0;
    int32_t count = 0, i;
    int64_t total = 0, sum = 0, step = -1;
    size_t k, n_logits = (size_t)B * T * STX_VOCAB;

    check_status(stx_config_init(&cfg), STX_OK, "stx_config_init");
    cfg.n_layer = 2;
    cfg.n_embd = 16;
    cfg.n_head = 2;
    cfg.n_ctx = 40;
    cfg.block_size = 16;
    cfg.backend = STX_BACKEND_CPU;
    strcpy(cfg.pattern, "local:8+strided:8");
    check_status(stx_config_validate(&cfg), STX_OK, "stx_config_validate on the tiny config");
    if (!check_status(stx_model_create(&cfg, &model), STX_OK, "stx_model_create") || !model) return;

    for (k = 0; k < sizeof tokens; ++k) tokens[k] = (uint8_t)(rng_next() >> 24);
    check_status(stx_backward(model), STX_ERR_STATE, "stx_backward before any forward");
    check_status(stx_forward(model, tokens, B, T, &loss), STX_OK, "stx_forward B=2 T=40");
    printf("INFO: loss at init %.9f, ln 256 = %.9f\n", loss, LN_256);
    check(absd(loss - LN_256) < 1e-5, "the loss at init is ln 256 (W_out is zero)");
    check_status(stx_forward(model, tokens, B, T + 1, &loss), STX_ERR_INVALID_ARGUMENT,
                 "stx_forward refuses T > n_ctx");
    check_status(stx_forward(model, tokens, B, T, &loss), STX_OK, "stx_forward again");

    logits = (float *)malloc(n_logits * sizeof *logits);
    if (logits) {
        int zero = 1;
        for (k = 0; k < n_logits; ++k) logits[k] = 1.0f;
        check_status(stx_logits_read(model, STX_DTYPE_F32, logits, n_logits), STX_OK,
                     "stx_logits_read [2, 40, 256]");
        for (k = 0; k < n_logits; ++k) zero &= logits[k] == 0.0f;
        check(zero, "the logits at init are all zero");
        check_status(stx_logits_read(model, STX_DTYPE_F32, logits, n_logits - 1),
                     STX_ERR_INVALID_ARGUMENT, "stx_logits_read refuses a wrong count");
        free(logits);
    }

    check_status(stx_zero_grad(model), STX_OK, "stx_zero_grad");
    check_status(stx_backward(model), STX_OK, "stx_backward");
    check_status(stx_optim_config_init(&opt), STX_OK, "stx_optim_config_init");
    opt.lr = 1e-3;
    check_status(stx_model_set_optimizer(model, &opt), STX_OK, "stx_model_set_optimizer");
    check_status(stx_optimizer_step(model, &lr_used, &grad_norm), STX_OK, "stx_optimizer_step");
    printf("INFO: lr used %g, gradient norm %g\n", lr_used, grad_norm);
    check(absd(lr_used - 1e-3) < 1e-15, "the step used lr 1e-3");
    check(grad_norm > 0.0, "the gradient norm is positive");
    check_status(stx_model_get_step(model, &step), STX_OK, "stx_model_get_step");
    check(step == 1, "one step taken");
    check_status(stx_optimizer_step(model, NULL, NULL), STX_ERR_STATE,
                 "stx_optimizer_step without a new backward");
    check_status(stx_backward(model), STX_ERR_STATE, "stx_backward after the step, no forward");

    check_status(stx_param_count(model, &count), STX_OK, "stx_param_count");
    /* tok_emb, start, pos_emb.0, 16 per layer, ln_f.g, ln_f.b, w_out */
    check(count == 3 + 16 * 2 + 3, "38 parameter tensors for 2 layers and one position axis");
    for (i = 0; i < count; ++i) {
        const char *name = NULL;
        int32_t ndim = 0, d;
        int64_t shape[STX_MAX_DIMS] = {0, 0, 0, 0}, numel = 1;
        stx_status st = stx_param_info(model, i, &name, &ndim, shape);
        if (st != STX_OK || name == NULL || ndim < 1 || ndim > STX_MAX_DIMS) {
            check_status(st, STX_OK, "stx_param_info gives a name and a rank in 1..4");
            break;
        }
        printf("INFO:   %-18s [", name);
        for (d = 0; d < ndim; ++d) {
            printf(d ? ", %lld" : "%lld", (long long)shape[d]);
            numel *= shape[d];
        }
        printf("]\n");
        sum += numel;
    }
    {
        const char *name = NULL;
        int32_t ndim = 0;
        int64_t shape[STX_MAX_DIMS];
        check_status(stx_param_info(model, count, &name, &ndim, shape), STX_ERR_INVALID_ARGUMENT,
                     "stx_param_info refuses index == count");
    }
    check(i == count, "stx_param_info for every index");
    check_status(stx_param_total(model, &total), STX_OK, "stx_param_total");
    printf("INFO: %lld parameters\n", (long long)total);
    check(total == sum, "stx_param_total is the sum over the tensors");

    {
        /* w_out [256, 16] was zero; one Adam step moves every element that had a gradient. */
        double w[STX_VOCAB * 16];
        size_t nonzero = 0;
        check_status(stx_param_read(model, "w_out", STX_DTYPE_F64, w, sizeof w / sizeof w[0]),
                     STX_OK, "stx_param_read(\"w_out\")");
        for (k = 0; k < sizeof w / sizeof w[0]; ++k) nonzero += w[k] != 0.0;
        printf("INFO: w_out has %lu nonzero elements after one step\n", (unsigned long)nonzero);
        check(nonzero > 0, "w_out moved off zero after the step");
        check_status(stx_param_read(model, "no_such_tensor", STX_DTYPE_F64, w, 1),
                     STX_ERR_INVALID_ARGUMENT, "stx_param_read of an unknown name");
        check_status(stx_param_write(model, "w_out", STX_DTYPE_F64, w, sizeof w / sizeof w[0]),
                     STX_OK, "stx_param_write(\"w_out\")");
    }
    check_status(stx_forward(model, tokens, B, T, NULL), STX_OK, "stx_forward (loss NULL)");
    {
        double g = 0.5;
        check_status(stx_param_write(model, "start", STX_DTYPE_F64, &g, 0),
                     STX_ERR_INVALID_ARGUMENT, "stx_param_write refuses a wrong count");
    }
    {
        double start[16];
        check_status(stx_param_read(model, "start", STX_DTYPE_F64, start, 16), STX_OK,
                     "stx_param_read(\"start\")");
        check_status(stx_param_write(model, "start", STX_DTYPE_F64, start, 16), STX_OK,
                     "stx_param_write(\"start\")");
    }
    check_status(stx_backward(model), STX_ERR_STATE,
                 "stx_backward after a parameter write (activations invalidated)");
    check_status(stx_forward(model, tokens, B, T, NULL), STX_OK, "stx_forward");
    check_status(stx_evaluate(model, tokens, B, T, &loss), STX_OK, "stx_evaluate");
    check_status(stx_backward(model), STX_ERR_STATE,
                 "stx_backward after stx_evaluate (activation memory reused)");
    printf("INFO: loss after one step %.9f\n", loss);
    check(loss > 0.0 && loss < 2.0 * LN_256, "the loss after one step is sane");

    stx_model_free(model);
    check(1, "stx_model_free");
}

int main(void) {
    check_versions();
    check_status_strings();
    check_pattern();
    check_model();
    check_bad_config();
    printf("%s: %d check(s) failed\n", n_failed ? "FAILED" : "OK", n_failed);
    return n_failed ? 1 : 0;
}
