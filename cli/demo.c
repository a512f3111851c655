/*
 * demo.c: sparsetx-demo, a small training run through the C API (the main job until the
 * full sparsetx-train tool exists). It reads a byte file, holds out its last 5% for
 * validation, trains a small fixed-pattern model on the CPU and prints the training loss,
 * the validation bits per byte and a greedy continuation of a prompt.
 *
 *   sparsetx-demo FILE [--steps N] [--threads N] [--seed N]
 */
#include <math.h>
#include <sparsetx.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N_CTX 128
#define BATCH 8

static void die(const char *what) {
    fprintf(stderr, "sparsetx-demo: %s: %s\n", what, stx_last_error());
    exit(1);
}

static unsigned char *read_file(const char *path, long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "sparsetx-demo: cannot open %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    *size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc((size_t)*size + 1);
    if (!data || fread(data, 1, (size_t)*size, f) != (size_t)*size) {
        fprintf(stderr, "sparsetx-demo: cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    return data;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Mean loss over up to max_windows consecutive windows of the validation bytes. */
static double validation_nats(stx_model *m, const unsigned char *val, long n, int max_windows) {
    double sum = 0.0;
    int windows = 0;
    for (long at = 0; at + N_CTX <= n && windows < max_windows; at += N_CTX, ++windows) {
        double loss;
        if (stx_evaluate(m, val + at, 1, N_CTX, &loss) != STX_OK) die("evaluate");
        sum += loss;
    }
    return windows ? sum / windows : (double)NAN;
}

int main(int argc, char **argv) {
    const char *path = NULL;
    int steps = 300, threads = 0;
    unsigned long long seed = 1;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else if (argv[i][0] != '-' && !path)
            path = argv[i];
        else {
            fprintf(stderr, "usage: sparsetx-demo FILE [--steps N] [--threads N] [--seed N]\n");
            return 2;
        }
    }
    if (!path || steps < 1) {
        fprintf(stderr, "usage: sparsetx-demo FILE [--steps N] [--threads N] [--seed N]\n");
        return 2;
    }
    long size = 0;
    unsigned char *data = read_file(path, &size);
    const long n_val = size / 20, n_train = size - n_val;
    if (n_train < N_CTX + 1 || n_val < N_CTX) {
        fprintf(stderr, "sparsetx-demo: %s has %ld bytes; need at least %d\n", path, size,
                21 * N_CTX);
        return 1;
    }

    stx_config cfg;
    stx_config_init(&cfg);
    cfg.n_layer = 2;
    cfg.n_embd = 64;
    cfg.n_head = 4;
    cfg.n_ctx = N_CTX;
    cfg.block_size = 16;
    cfg.n_pos_axes = 2; /* row and column at the pattern's width, as the paper's text models */
    cfg.pos_shape[0] = N_CTX / 32;
    cfg.pos_shape[1] = 32;
    cfg.n_threads = threads;
    cfg.seed = seed;
    strcpy(cfg.pattern, "fixed:32:8:2");
    stx_model *m = NULL;
    if (stx_model_create(&cfg, &m) != STX_OK) die("create");
    stx_optim_config opt;
    stx_optim_config_init(&opt);
    opt.lr = 3e-3;
    opt.warmup_steps = steps / 10;
    opt.total_steps = steps;
    opt.min_lr = 3e-4;
    if (stx_model_set_optimizer(m, &opt) != STX_OK) die("optimizer");
    int64_t n_params = 0;
    stx_param_total(m, &n_params);
    printf("sparsetx %s: %s, %lld parameters, pattern %s, n_ctx %d; %ld train / %ld validation "
           "bytes\n",
           stx_version_string(), path, (long long)n_params, cfg.pattern, N_CTX, n_train, n_val);

    unsigned char batch[BATCH * N_CTX];
    unsigned long long rng = seed * 0x9E3779B97F4A7C15ull + 1;
    const double t0 = now();
    double loss = 0.0;
    for (int step = 0; step < steps; ++step) {
        for (int b = 0; b < BATCH; ++b) { /* random windows of the training bytes */
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            long at = (long)(rng % (unsigned long long)(n_train - N_CTX));
            memcpy(batch + b * N_CTX, data + at, N_CTX);
        }
        if (stx_forward(m, batch, BATCH, N_CTX, &loss) != STX_OK) die("forward");
        if (stx_zero_grad(m) != STX_OK || stx_backward(m) != STX_OK) die("backward");
        double lr = 0.0;
        if (stx_optimizer_step(m, &lr, NULL) != STX_OK) die("step");
        if (step % 25 == 0 || step == steps - 1)
            printf("step %4d  loss %.3f nats  %.3f bits/byte  lr %.2e  %.0f bytes/s\n", step, loss,
                   loss / log(2.0), lr, (double)(step + 1) * BATCH * N_CTX / (now() - t0));
    }
    const double val = validation_nats(m, data + n_train, n_val, 64);
    printf("validation: %.3f bits per byte (uniform is 8.000)\n", val / log(2.0));

    /* Greedy continuation of the first bytes of the validation text. */
    unsigned char text[N_CTX];
    int len = 48;
    memcpy(text, data + n_train, (size_t)len);
    float logits[N_CTX * STX_VOCAB];
    while (len < N_CTX) {
        double ignored;
        if (stx_evaluate(m, text, 1, len + 1, &ignored) != STX_OK) die("evaluate");
        if (stx_logits_read(m, STX_DTYPE_F32, logits, (size_t)(len + 1) * STX_VOCAB) != STX_OK)
            die("logits");
        const float *row = logits + (size_t)len * STX_VOCAB; /* predicts byte `len` */
        int best = 0;
        for (int v = 1; v < STX_VOCAB; ++v)
            if (row[v] > row[best]) best = v;
        text[len++] = (unsigned char)best;
    }
    printf("prompt + greedy sample:\n");
    for (int i = 0; i < len; ++i) putchar(text[i] >= 32 && text[i] < 127 ? text[i] : ' ');
    putchar('\n');
    stx_model_free(m);
    free(data);
    return 0;
}
