/*
 * bench.c: sparsetx-bench, benchmarks that print tables (never timed unit tests).
 *
 *   sparsetx-bench attention [options]   forward and forward+backward time of block-sparse
 *       attention per pattern and length, with useful TFLOP/s: only the (q, k) pairs the
 *       pattern allows count, 4*B*D*pairs forward and 3.5 times that forward+backward.
 *   sparsetx-bench train [options]       a whole training step (forward, backward, AdamW) of
 *       a model (a preset and overrides), tokens/s and peak memory.
 *
 * Uses only the public header.
 */
#include <math.h>
#include <sparsetx.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common_args.h"

static const char *kProg = "sparsetx-bench";

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The next item of a separator-delimited list, copied into buf; NULL at the end. */
static const char *next_item(const char **cursor, char sep, char *buf, size_t size) {
    const char *s = *cursor;
    if (!s || !*s) return NULL;
    const char *end = strchr(s, sep);
    size_t n = end ? (size_t)(end - s) : strlen(s);
    if (n >= size) n = size - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    *cursor = end ? end + 1 : NULL;
    return buf;
}

static int bench_attention(int argc, char **argv) {
    const char *patterns = "dense;local:128;strided:128;fixed:128:32";
    const char *lengths = "4096,16384";
    int tokens = 65536, heads = 16, dim = 64, block = 64, runs = 5, device_index = 0;
    int device = 1, precision = 1;
    stx_cli_opt opts[] = {
        STX_OPT("patterns", 'p', STX_OPT_STRING, &patterns,
                "dense;local:128;strided:128;fixed:128:32",
                "layer patterns to time, separated by ';' (use [..;..] inside quotes)"),
        STX_OPT("n", 'n', STX_OPT_STRING, &lengths, "4096,16384",
                "sequence lengths, comma-separated"),
        STX_OPT("tokens", 0, STX_OPT_INT, &tokens, "65536",
                "batch x n (batch = tokens / n, at least 1)"),
        STX_OPT("heads", 0, STX_OPT_INT, &heads, "16", "attention heads"),
        STX_OPT("dim", 0, STX_OPT_INT, &dim, "64", "head dim (queries, keys and values)"),
        STX_OPT("block", 0, STX_OPT_INT, &block, "64", "block size: 16, 32, 64 or 128"),
        STX_OPT("runs", 0, STX_OPT_INT, &runs, "5", "timed runs; the median is printed"),
        STX_OPT_CHOICE("device", 0, &device, "cpu|cuda", "cuda", "backend"),
        STX_OPT("device-index", 0, STX_OPT_INT, &device_index, "0", "CUDA device"),
        STX_OPT_CHOICE("precision", 0, &precision, "fp32|bf16", "bf16", "operand precision"),
        STX_OPT_END};
    stx_cli cli = {"sparsetx-bench attention", "[options]",
                   "Times block-sparse attention forward and forward+backward.", opts};
    int rc = stx_cli_parse(&cli, argc, argv, NULL, 0, NULL);
    if (rc != STX_CLI_CONTINUE) return rc;
    if (tokens < 1 || heads < 1 || dim < 1 || runs < 1)
        return stx_cli_usage_error(&cli, "--tokens, --heads, --dim and --runs must be positive");
    const int32_t backend = device == 0 ? STX_BACKEND_CPU : STX_BACKEND_CUDA;
    const int32_t prec = precision == 0 ? STX_PRECISION_FP32 : STX_PRECISION_BF16;
    printf("attention, %s %s, %d heads, head dim %d, block %d, batch x n = %d, median of %d\n",
           backend == STX_BACKEND_CPU ? "cpu" : "cuda",
           prec == STX_PRECISION_FP32 ? "fp32" : "bf16", heads, dim, block, tokens, runs);
    printf("| pattern | n | batch | allowed pairs / dense | fwd ms | fwd+bwd ms | fwd TFLOP/s | "
           "fwd+bwd TFLOP/s |\n|---|---|---|---|---|---|---|---|\n");
    char nbuf[32], pbuf[STX_PATTERN_MAX];
    const char *ncur = lengths;
    while (next_item(&ncur, ',', nbuf, sizeof nbuf)) {
        const int n = atoi(nbuf);
        if (n < 1) stx_cli_fail(kProg, "bad length '%s' in --n", nbuf);
        const int batch = tokens / n > 0 ? tokens / n : 1;
        const char *pcur = patterns;
        while (next_item(&pcur, ';', pbuf, sizeof pbuf)) {
            stx_layout *lay = NULL;
            if (stx_layout_create(pbuf, n, heads, block, &lay) != STX_OK) stx_cli_die(kProg, pbuf);
            double pairs = 0;
            for (int h = 0; h < heads; ++h) {
                int64_t blocks = 0, p = 0;
                if (stx_layout_stats(lay, h, &blocks, &p) != STX_OK) stx_cli_die(kProg, "stats");
                pairs += (double)p;
            }
            double fwd = 0, fwdbwd = 0;
            if (stx_attention_benchmark(lay, backend, device_index, prec, batch, n, dim, dim, runs,
                                        &fwd, &fwdbwd) != STX_OK)
                stx_cli_die(kProg, pbuf);
            const double flops = 4.0 * batch * dim * pairs; /* pairs already summed over heads */
            const double dense = (double)heads * n * (n + 1.0) / 2.0;
            printf("| %s | %d | %d | %.3f | %.3f | %.3f | %.2f | %.2f |\n", pbuf, n, batch,
                   pairs / dense, fwd, fwdbwd, flops / (fwd * 1e9), 3.5 * flops / (fwdbwd * 1e9));
            fflush(stdout);
            stx_layout_free(lay);
        }
    }
    return 0;
}

static int bench_train(int argc, char **argv) {
    const char *preset = "enwik8";
    int layers = 0, width = 0, heads = 0, ctx = 0, batch = 1, steps = 3, device_index = 0;
    int recompute = -1, device = 1, precision = 1;
    const char *pattern = NULL;
    stx_cli_opt opts[] = {
        STX_OPT("preset", 0, STX_OPT_STRING, &preset, "enwik8",
                "enwik8, cifar10, imagenet64 or tiny"),
        STX_OPT("layers", 0, STX_OPT_INT, &layers, "preset", "override n_layer"),
        STX_OPT("width", 0, STX_OPT_INT, &width, "preset", "override n_embd"),
        STX_OPT("heads", 0, STX_OPT_INT, &heads, "preset", "override n_head"),
        STX_OPT("ctx", 0, STX_OPT_INT, &ctx, "preset", "override n_ctx (one position axis)"),
        STX_OPT("pattern", 0, STX_OPT_STRING, &pattern, "preset", "override the pattern"),
        STX_OPT("recompute", 0, STX_OPT_INT, &recompute, "preset", "0 or 1"),
        STX_OPT("batch", 0, STX_OPT_INT, &batch, "1", "sequences per step"),
        STX_OPT("steps", 0, STX_OPT_INT, &steps, "3", "timed steps after one warm-up step"),
        STX_OPT_CHOICE("device", 0, &device, "cpu|cuda", "cuda", "backend"),
        STX_OPT("device-index", 0, STX_OPT_INT, &device_index, "0", "CUDA device"),
        STX_OPT_CHOICE("precision", 0, &precision, "fp32|bf16", "bf16", "precision (cpu: fp32)"),
        STX_OPT_END};
    stx_cli cli = {"sparsetx-bench train", "[options]",
                   "Times whole training steps (forward, backward, AdamW).", opts};
    int rc = stx_cli_parse(&cli, argc, argv, NULL, 0, NULL);
    if (rc != STX_CLI_CONTINUE) return rc;
    stx_config cfg;
    if (stx_config_preset(&cfg, preset) != STX_OK) stx_cli_die(kProg, "--preset");
    if (layers) cfg.n_layer = layers;
    if (width) cfg.n_embd = width;
    if (heads) cfg.n_head = heads;
    if (ctx) {
        cfg.n_ctx = ctx;
        cfg.n_pos_axes = 0;
    }
    if (pattern) {
        strncpy(cfg.pattern, pattern, STX_PATTERN_MAX - 1);
        cfg.pattern[STX_PATTERN_MAX - 1] = '\0';
    }
    if (recompute >= 0) cfg.recompute = recompute;
    cfg.backend = device == 0 ? STX_BACKEND_CPU : STX_BACKEND_CUDA;
    cfg.device = device_index;
    cfg.precision = precision == 0 || device == 0 ? STX_PRECISION_FP32 : STX_PRECISION_BF16;
    if (batch < 1 || steps < 1)
        return stx_cli_usage_error(&cli, "--batch and --steps must be positive");
    stx_model *m = NULL;
    if (stx_model_create(&cfg, &m) != STX_OK) stx_cli_die(kProg, "model");
    int64_t n_params = 0;
    stx_param_total(m, &n_params);
    const size_t n = (size_t)batch * (size_t)cfg.n_ctx;
    unsigned char *tokens = malloc(n);
    if (!tokens) stx_cli_fail(kProg, "out of memory");
    unsigned long long s = 88172645463325252ull;
    for (size_t i = 0; i < n; ++i) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        tokens[i] = (unsigned char)(s >> 56);
    }
    double total = 0, loss = 0;
    for (int step = 0; step <= steps; ++step) {
        const double t0 = now_s();
        if (stx_forward(m, tokens, batch, cfg.n_ctx, &loss) != STX_OK ||
            stx_zero_grad(m) != STX_OK || stx_backward(m) != STX_OK ||
            stx_optimizer_step(m, NULL, NULL) != STX_OK)
            stx_cli_die(kProg, "training step");
        if (step > 0) total += now_s() - t0; /* step 0 warms up */
    }
    int64_t in_use = 0, peak = 0;
    stx_model_memory(m, &in_use, &peak);
    const double per_step = total / steps;
    printf("| model | params | pattern | n | batch | precision | recompute | step ms | tokens/s | "
           "peak memory GB |\n|---|---|---|---|---|---|---|---|---|---|\n");
    printf("| %s %dL d%d %dH | %.1fM | %s | %d | %d | %s | %d | %.1f | %.0f | %.2f |\n", preset,
           cfg.n_layer, cfg.n_embd, cfg.n_head, (double)n_params / 1e6, cfg.pattern, cfg.n_ctx,
           batch, cfg.precision == STX_PRECISION_BF16 ? "bf16" : "fp32", cfg.recompute,
           1e3 * per_step, (double)n / per_step, (double)peak / 1e9);
    free(tokens);
    stx_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "attention")) return bench_attention(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "train")) return bench_train(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: sparsetx-bench attention|train [options]   (--help after the command "
               "lists its options)\n");
        return 0;
    }
    fprintf(stderr, "%s: expected a command, attention or train (see %s --help)\n", kProg, kProg);
    return 2;
}
