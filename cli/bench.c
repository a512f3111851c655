/*
 * bench.c: sparsetx-bench, benchmarks that print tables (never timed unit tests).
 *
 *   sparsetx-bench attention [options]   forward and forward+backward time of block-sparse
 *       attention per pattern and length, with useful TFLOP/s: only the (q, k) pairs the
 *       pattern allows count, 4*B*D*pairs forward and 3.5 times that forward+backward.
 *   sparsetx-bench train [options]       a whole training step (forward, backward, AdamW) of
 *       a model (a preset and overrides), tokens/s and peak memory.
 *   sparsetx-bench long [options]        a small strided model (local:L,strided:L, L the
 *       power of two nearest sqrt(n)) at growing n, batch 1: forward, forward+backward and
 *       step time, peak memory, and how time grows against n*sqrt(n).
 *   sparsetx-bench depth [options]       peak memory of the same model at two depths (the
 *       cifar10 preset, 8 and 128 layers) with recomputation, and the difference against the
 *       bytes that must grow with depth: weights, gradients, Adam moments, residual stream.
 *   sparsetx-bench decode [options]      sampling speed: stx_sample over every position, and
 *       the decoder against the naive sampler at chosen positions (bench_decode.c).
 *
 * attention and train take --csv for a machine-readable table (the tests/perf scripts parse it).
 * Uses only the public header.
 */
#include <math.h>
#include <sparsetx.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_modes.h"
#include "common_args.h"
#include "common_progress.h"

static const char *kProg = "sparsetx-bench";

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

/* The next pattern of a ';'-separated list, where a ';' inside [...] (a list over heads)
 * belongs to the pattern; NULL at the end. */
static const char *next_pattern(const char **cursor, char *buf, size_t size) {
    const char *s = *cursor;
    if (!s || !*s) return NULL;
    const char *end = s;
    for (int depth = 0; *end && (depth > 0 || *end != ';'); ++end)
        depth += *end == '[' ? 1 : *end == ']' ? -1 : 0;
    size_t n = (size_t)(end - s);
    if (n >= size) n = size - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    *cursor = *end ? end + 1 : NULL;
    return buf;
}

int parse_int_list(const char *text, const char *option, long long min, long long *out, int max) {
    char buf[32];
    int count = 0;
    const char *cur = text;
    while (next_item(&cur, ',', buf, sizeof buf)) {
        char *end = NULL;
        const long long v = strtoll(buf, &end, 10);
        if (end == buf || *end != '\0' || v < min || v > (1ll << 24))
            stx_cli_fail(kProg, "bad value '%s' in --%s (whole numbers from %lld, at most 2^24)",
                         buf, option, min);
        if (count == max) stx_cli_fail(kProg, "--%s: at most %d values", option, max);
        out[count++] = v;
    }
    if (count == 0) stx_cli_fail(kProg, "--%s: no values", option);
    return count;
}

void bench_preset_config(stx_config *cfg, const char *prog, const char *preset, int layers,
                         int width, int heads, int block, const char *pattern) {
    if (stx_config_preset(cfg, preset) != STX_OK) stx_cli_die(prog, "--preset");
    if (block) cfg->block_size = block;
    if (layers) cfg->n_layer = layers;
    if (width) cfg->n_embd = width;
    if (heads) cfg->n_head = heads;
    if (pattern) snprintf(cfg->pattern, sizeof cfg->pattern, "%s", pattern);
}

void bench_set_backend(stx_config *cfg, int device, int device_index, int precision) {
    cfg->backend = device == 0 ? STX_BACKEND_CPU : STX_BACKEND_CUDA;
    cfg->device = device_index;
    cfg->precision = precision == 0 || device == 0 ? STX_PRECISION_FP32 : STX_PRECISION_BF16;
}

static void random_bytes(unsigned char *dst, size_t n, unsigned long long seed) {
    unsigned long long s = seed;
    for (size_t i = 0; i < n; ++i) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        dst[i] = (unsigned char)(s >> 56);
    }
}

static int compare_doubles(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_of(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, compare_doubles);
    return v[n / 2];
}

/* Prints a pattern as a CSV field: quoted, since a model pattern may hold commas. */
static void csv_pattern(const char *pattern) {
    putchar('"');
    for (const char *c = pattern; *c; ++c) {
        if (*c == '"') putchar('"');
        putchar(*c);
    }
    putchar('"');
}

static int bench_attention(int argc, char **argv) {
    const char *patterns = "dense;local:128;strided:128;fixed:128:32";
    const char *lengths = "4096,16384";
    int tokens = 65536, heads = 16, dim = 64, block = 64, runs = 5, device_index = 0;
    int device = 1, precision = 1, csv = 0;
    stx_cli_opt opts[] = {
        STX_OPT("patterns", 'p', STX_OPT_STRING, &patterns,
                "dense;local:128;strided:128;fixed:128:32",
                "layer patterns to time, separated by ';' (a head list [a;b] is one pattern)"),
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
        STX_OPT("csv", 0, STX_OPT_FLAG, &csv, NULL,
                "print CSV (exact allowed pairs, summed over heads) instead of a table"),
        STX_OPT_END};
    stx_cli cli = {"sparsetx-bench attention", "[options]",
                   "Times block-sparse attention forward and forward+backward.", opts};
    int rc = stx_cli_parse(&cli, argc, argv, NULL, 0, NULL);
    if (rc != STX_CLI_CONTINUE) return rc;
    if (tokens < 1 || heads < 1 || dim < 1 || runs < 1)
        return stx_cli_usage_error(&cli, "--tokens, --heads, --dim and --runs must be positive");
    const int32_t backend = device == 0 ? STX_BACKEND_CPU : STX_BACKEND_CUDA;
    const int32_t prec = precision == 0 ? STX_PRECISION_FP32 : STX_PRECISION_BF16;
    if (csv) {
        printf("pattern,n,batch,heads,dim,block,device,precision,runs,pairs,dense_pairs,fwd_ms,"
               "fwdbwd_ms,fwd_tflops,fwdbwd_tflops\n");
    } else {
        printf("attention, %s %s, %d heads, head dim %d, block %d, batch x n = %d, median of %d\n",
               backend == STX_BACKEND_CPU ? "cpu" : "cuda",
               prec == STX_PRECISION_FP32 ? "fp32" : "bf16", heads, dim, block, tokens, runs);
        printf(
            "| pattern | n | batch | allowed pairs / dense | fwd ms | fwd+bwd ms | fwd TFLOP/s | "
            "fwd+bwd TFLOP/s |\n|---|---|---|---|---|---|---|---|\n");
    }
    char nbuf[32], pbuf[STX_PATTERN_MAX];
    const char *ncur = lengths;
    while (next_item(&ncur, ',', nbuf, sizeof nbuf)) {
        const int n = atoi(nbuf);
        if (n < 1) stx_cli_fail(kProg, "bad length '%s' in --n", nbuf);
        const int batch = tokens / n > 0 ? tokens / n : 1;
        const char *pcur = patterns;
        while (next_pattern(&pcur, pbuf, sizeof pbuf)) {
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
            if (csv) {
                csv_pattern(pbuf);
                printf(",%d,%d,%d,%d,%d,%s,%s,%d,%.0f,%.0f,%.6g,%.6g,%.6g,%.6g\n", n, batch, heads,
                       dim, block, backend == STX_BACKEND_CPU ? "cpu" : "cuda",
                       prec == STX_PRECISION_FP32 ? "fp32" : "bf16", runs, pairs, dense, fwd,
                       fwdbwd, flops / (fwd * 1e9), 3.5 * flops / (fwdbwd * 1e9));
            } else {
                printf("| %s | %d | %d | %.3f | %.3f | %.3f | %.2f | %.2f |\n", pbuf, n, batch,
                       pairs / dense, fwd, fwdbwd, flops / (fwd * 1e9),
                       3.5 * flops / (fwdbwd * 1e9));
            }
            fflush(stdout);
            stx_layout_free(lay);
        }
    }
    return 0;
}

/* Waits for the backend's queued work by reading a tiny tensor back (a gradient or a
 * parameter: both are stream-ordered copies on CUDA). */
static stx_status sync_model(stx_model *m, int grad, float *buf, size_t count) {
    return grad ? stx_grad_read(m, "start", STX_DTYPE_F32, buf, count)
                : stx_param_read(m, "start", STX_DTYPE_F32, buf, count);
}

typedef struct step_timing {
    double fwd_ms, fwdbwd_ms, step_ms; /* medians: forward, forward+backward, whole step */
    int64_t peak_fwdbwd;               /* peak after a forward+backward, before any Adam state */
    int64_t peak_step;                 /* peak after whole steps (Adam moments included) */
    double loss;
} step_timing;

/* One warm-up training step, then `runs` timed ones, each phase ended by a read-back so the
 * device clock is not ahead of the host: forward (stx_forward returns the loss), zero_grad +
 * backward, optimizer step. Returns the first failing status (stx_last_error says why). */
static stx_status time_steps(stx_model *m, const uint8_t *tokens, int32_t B, int32_t T, int32_t C,
                             int runs, step_timing *out) {
    float *buf = malloc((size_t)C * sizeof *buf);
    double *f = malloc((size_t)runs * sizeof *f), *fb = malloc((size_t)runs * sizeof *fb);
    double *st = malloc((size_t)runs * sizeof *st);
    stx_status s = STX_OK;
    if (!buf || !f || !fb || !st) stx_cli_fail(kProg, "out of memory");
    memset(out, 0, sizeof *out);
    for (int r = -1; r < runs && s == STX_OK; ++r) {
        const double t0 = cli_now();
        if ((s = stx_forward(m, tokens, B, T, &out->loss)) != STX_OK) break;
        const double t1 = cli_now();
        if ((s = stx_zero_grad(m)) != STX_OK || (s = stx_backward(m)) != STX_OK ||
            (s = sync_model(m, 1, buf, (size_t)C)) != STX_OK)
            break;
        const double t2 = cli_now();
        if (r < 0) stx_model_memory(m, NULL, &out->peak_fwdbwd); /* no Adam moments yet */
        s = stx_optimizer_step(m, NULL, NULL);
        if (s == STX_STEP_SKIPPED) s = STX_OK; /* a non-finite gradient: timed all the same */
        if (s != STX_OK || (s = sync_model(m, 0, buf, (size_t)C)) != STX_OK) break;
        const double t3 = cli_now();
        if (r >= 0) {
            f[r] = 1e3 * (t1 - t0);
            fb[r] = 1e3 * (t2 - t0);
            st[r] = 1e3 * (t3 - t0);
        }
    }
    if (s == STX_OK) {
        out->fwd_ms = median_of(f, runs);
        out->fwdbwd_ms = median_of(fb, runs);
        out->step_ms = median_of(st, runs);
        stx_model_memory(m, NULL, &out->peak_step);
    }
    free(buf);
    free(f);
    free(fb);
    free(st);
    return s;
}

static int bench_train(int argc, char **argv) {
    const char *preset = "enwik8";
    int layers = 0, width = 0, heads = 0, block = 0, ctx = 0, batch = 1, steps = 3;
    int device_index = 0, recompute = -1, device = 1, precision = 1, csv = 0;
    const char *pattern = NULL;
    stx_cli_opt opts[] = {
        BENCH_PRESET_OPTS(&preset, &layers, &width, &heads),
        STX_OPT("block", 0, STX_OPT_INT, &block, "preset",
                "override the attention block size (32, 64 or 128: Hopper's wgmma kernels)"),
        STX_OPT("ctx", 0, STX_OPT_INT, &ctx, "preset", "override n_ctx (one position axis)"),
        STX_OPT("pattern", 0, STX_OPT_STRING, &pattern, "preset", "override the pattern"),
        STX_OPT("recompute", 0, STX_OPT_INT, &recompute, "preset", "0, 1 or 2"),
        STX_OPT("batch", 0, STX_OPT_INT, &batch, "1", "sequences per step"),
        STX_OPT("steps", 0, STX_OPT_INT, &steps, "3", "timed steps after one warm-up step"),
        BENCH_BACKEND_OPTS(&device, &device_index, &precision),
        STX_OPT("csv", 0, STX_OPT_FLAG, &csv, NULL, "print CSV instead of a table"),
        STX_OPT_END};
    stx_cli cli = {"sparsetx-bench train", "[options]",
                   "Times whole training steps (forward, backward, AdamW): the mean of --steps "
                   "steps after a warm-up one, each ended by a read-back from the device.",
                   opts};
    int rc = stx_cli_parse(&cli, argc, argv, NULL, 0, NULL);
    if (rc != STX_CLI_CONTINUE) return rc;
    stx_config cfg;
    bench_preset_config(&cfg, kProg, preset, layers, width, heads, block, pattern);
    if (ctx) {
        cfg.n_ctx = ctx;
        cfg.n_pos_axes = 0;
    }
    if (recompute >= 0) cfg.recompute = recompute;
    bench_set_backend(&cfg, device, device_index, precision);
    if (batch < 1 || steps < 1)
        return stx_cli_usage_error(&cli, "--batch and --steps must be positive");
    stx_model *m = NULL;
    if (stx_model_create(&cfg, &m) != STX_OK) stx_cli_die(kProg, "model");
    int64_t n_params = 0;
    stx_param_total(m, &n_params);
    const size_t n = (size_t)batch * (size_t)cfg.n_ctx;
    unsigned char *tokens = malloc(n);
    float *buf = malloc((size_t)cfg.n_embd * sizeof *buf);
    if (!tokens || !buf) stx_cli_fail(kProg, "out of memory");
    random_bytes(tokens, n, 88172645463325252ull);
    double total = 0, loss = 0;
    for (int step = 0; step <= steps; ++step) {
        const double t0 = cli_now();
        stx_status s = stx_forward(m, tokens, batch, cfg.n_ctx, &loss);
        if (s == STX_OK && (s = stx_zero_grad(m)) == STX_OK && (s = stx_backward(m)) == STX_OK &&
            (s = stx_optimizer_step(m, NULL, NULL)) >= STX_OK)
            s = sync_model(m, 0, buf, (size_t)cfg.n_embd);
        if (s != STX_OK) stx_cli_die(kProg, "training step");
        if (step > 0) total += cli_now() - t0; /* step 0 warms up */
    }
    int64_t in_use = 0, peak = 0;
    stx_model_memory(m, &in_use, &peak);
    const double per_step = total / steps;
    const char *prec = cfg.precision == STX_PRECISION_BF16 ? "bf16" : "fp32";
    if (csv) {
        printf("preset,layers,width,heads,params,block,pattern,n,batch,device,precision,recompute,"
               "steps,step_ms,tokens_per_s,peak_bytes\n%s,%d,%d,%d,%lld,%d,",
               preset, cfg.n_layer, cfg.n_embd, cfg.n_head, (long long)n_params, cfg.block_size);
        csv_pattern(cfg.pattern);
        printf(",%d,%d,%s,%s,%d,%d,%.6g,%.6g,%lld\n", cfg.n_ctx, batch,
               cfg.backend == STX_BACKEND_CPU ? "cpu" : "cuda", prec, cfg.recompute, steps,
               1e3 * per_step, (double)n / per_step, (long long)peak);
    } else {
        printf("| model | params | pattern | block | n | batch | precision | recompute | step ms | "
               "tokens/s | peak memory GB |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        printf("| %s %dL d%d %dH | %.1fM | %s | %d | %d | %d | %s | %d | %.1f | %.0f | %.2f |\n",
               preset, cfg.n_layer, cfg.n_embd, cfg.n_head, (double)n_params / 1e6, cfg.pattern,
               cfg.block_size, cfg.n_ctx, batch, prec, cfg.recompute, 1e3 * per_step,
               (double)n / per_step, (double)peak / 1e9);
    }
    free(buf);
    free(tokens);
    stx_model_free(m);
    return 0;
}

/* Bytes of the model's own buffers at B sequences (lib/model_loop.h of sparsetx 0.1: the
 * residual stream at every block boundary, one block's activations with recomputation or every
 * block's without (recompute 2: and every block's attention output), the backward's gradient
 * buffers, logits and their gradient, all fp32) plus weights, gradients and Adam moments (fp32).
 * Backend scratch (bf16 operand copies, attention partials) is not counted: an estimate to size
 * runs, printed beside the measured peak. */
static double estimate_bytes(const stx_config *c, int64_t n_params, int64_t B) {
    const double N = (double)B * c->n_ctx, C = c->n_embd, F = (double)c->ff_mult * c->n_embd;
    const double QK = floor((double)c->qk_ratio * C + 0.5), H = c->n_head, L = c->n_layer;
    const double block = 7 * C + 2 * QK + 2 * F + 4 + H; /* h1 att p x2 h2 v f2, q k, f1 g, .. */
    const double grads = 9 * C + 2 * QK + 2 * F;         /* dhf dx dxo dx2 df2 dh dp datt dv .. */
    const double kept = c->recompute == 2 ? L * (C + H) : 0; /* every block's att and lse */
    const double per_row =
        (L + 1) * C + (c->recompute ? 1 : L) * block + kept + C + 3 + 2 * STX_VOCAB;
    return 4.0 * N * (per_row + grads) + N + 16.0 * (double)n_params;
}

/* The power of two nearest sqrt(n) (the strided model's L for n a power of four: 256 at 65,536,
 * 512 at 262,144, 1,024 at 1,048,576). */
static int stride_for(long long n) {
    int l = 1;
    while ((double)l * 2.0 <= sqrt((double)n) * sqrt(2.0)) l *= 2;
    return l;
}

/* Least-squares slope of log y over log x. */
static double loglog_slope(const double *x, const double *y, int n) {
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (int i = 0; i < n; ++i) {
        const double a = log(x[i]), b = log(y[i]);
        sx += a, sy += b, sxx += a * a, sxy += a * b;
    }
    const double den = n * sxx - sx * sx;
    return den > 0 ? (n * sxy - sx * sy) / den : (double)NAN;
}

enum { kMaxRows = 16 };

static int bench_long(int argc, char **argv) {
    const char *lengths = "65536,262144,1048576";
    int layers = 4, width = 256, heads = 4, block = 64, stride = 0, runs = 3, device_index = 0;
    int recompute = 1, device = 1, precision = 1;
    stx_cli_opt opts[] = {
        STX_OPT("n", 'n', STX_OPT_STRING, &lengths, "65536,262144,1048576",
                "sequence lengths, comma-separated (batch 1)"),
        STX_OPT("layers", 0, STX_OPT_INT, &layers, "4", "layers, alternating local and strided"),
        STX_OPT("width", 0, STX_OPT_INT, &width, "256", "model width d"),
        STX_OPT("heads", 0, STX_OPT_INT, &heads, "4", "attention heads"),
        STX_OPT("block", 0, STX_OPT_INT, &block, "64", "attention block size"),
        STX_OPT("stride", 0, STX_OPT_INT, &stride, "power of two nearest sqrt(n)",
                "L of local:L,strided:L"),
        STX_OPT("runs", 0, STX_OPT_INT, &runs, "3", "timed steps after a warm-up; medians"),
        STX_OPT("recompute", 0, STX_OPT_INT, &recompute, "1", "0 or 1"),
        BENCH_BACKEND_OPTS(&device, &device_index, &precision),
        STX_OPT_END};
    stx_cli cli = {"sparsetx-bench long", "[options]",
                   "Long sequences: a strided model (local:L,strided:L, L the power of two "
                   "nearest sqrt(n), positions [n/L, L]) at batch 1 and growing n: forward, "
                   "forward+backward and whole-step time, peak memory, and the growth of time "
                   "against n*sqrt(n). A length that fails (out of memory) is reported and "
                   "skipped.",
                   opts};
    int rc = stx_cli_parse(&cli, argc, argv, NULL, 0, NULL);
    if (rc != STX_CLI_CONTINUE) return rc;
    if (layers < 1 || width < 1 || heads < 1 || runs < 1 || stride < 0 ||
        (recompute != 0 && recompute != 1))
        return stx_cli_usage_error(&cli, "--layers, --width, --heads and --runs must be positive, "
                                         "--stride >= 0, --recompute 0 or 1");
    long long ns[kMaxRows];
    const int count = parse_int_list(lengths, "n", 1, ns, kMaxRows);
    const int cpu = device == 0;
    printf("long sequences: %d layers local:L,strided:L, d %d, %d heads, block %d, batch 1, "
           "recompute %d, %s %s, median of %d steps after a warm-up\n",
           layers, width, heads, block, recompute, cpu ? "cpu" : "cuda",
           cpu || precision == 0 ? "fp32" : "bf16", runs);
    printf("| n | L | params | fwd ms | fwd+bwd ms | step ms | tokens/s | peak fwd+bwd GB | "
           "peak step GB | est. GB | fwd+bwd / n^1.5 (first = 1) |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|\n");
    double xn[kMaxRows], tfb[kMaxRows], mem[kMaxRows];
    int ok = 0;
    for (int i = 0; i < count; ++i) {
        const long long n = ns[i];
        const int l = stride ? stride : stride_for(n);
        stx_config cfg;
        stx_config_init(&cfg);
        cfg.n_layer = layers, cfg.n_embd = width, cfg.n_head = heads;
        cfg.n_ctx = (int32_t)n, cfg.block_size = block, cfg.recompute = recompute;
        if (n % l == 0 && n / l > 1) { /* text and audio positions: [n/L, L] */
            cfg.n_pos_axes = 2;
            cfg.pos_shape[0] = (int32_t)(n / l), cfg.pos_shape[1] = l;
        }
        snprintf(cfg.pattern, sizeof cfg.pattern, "local:%d,strided:%d", l, l);
        bench_set_backend(&cfg, device, device_index, precision);
        stx_model *m = NULL;
        step_timing t;
        stx_status s = stx_model_create(&cfg, &m);
        int64_t n_params = 0;
        unsigned char *tokens = malloc((size_t)n);
        if (!tokens) stx_cli_fail(kProg, "out of memory");
        random_bytes(tokens, (size_t)n, 0x2545F4914F6CDD1Dull + (unsigned long long)n);
        if (s == STX_OK) {
            stx_param_total(m, &n_params);
            s = time_steps(m, tokens, 1, (int32_t)n, cfg.n_embd, runs, &t);
        }
        if (s != STX_OK) {
            printf("| %lld | %d | failed: %s |\n", n, l, stx_last_error());
        } else {
            xn[ok] = (double)n, tfb[ok] = t.fwdbwd_ms, mem[ok] = (double)t.peak_fwdbwd;
            const double rel = (t.fwdbwd_ms / pow((double)n, 1.5)) / (tfb[0] / pow(xn[0], 1.5));
            printf(
                "| %lld | %d | %.2fM | %.2f | %.2f | %.2f | %.0f | %.3f | %.3f | %.3f | %.3f |\n",
                n, l, (double)n_params / 1e6, t.fwd_ms, t.fwdbwd_ms, t.step_ms,
                (double)n / (t.step_ms / 1e3), (double)t.peak_fwdbwd / 1e9,
                (double)t.peak_step / 1e9, estimate_bytes(&cfg, n_params, 1) / 1e9, rel);
            ++ok;
        }
        fflush(stdout);
        free(tokens);
        stx_model_free(m);
    }
    if (ok >= 2) {
        /* t = c * n^1.5 by least squares through the origin */
        double sxy = 0, sxx = 0;
        for (int i = 0; i < ok; ++i) {
            const double x = pow(xn[i], 1.5);
            sxy += x * tfb[i], sxx += x * x;
        }
        const double c = sxy / sxx;
        printf("\nn*sqrt(n) fit of fwd+bwd time, t = c * n^1.5 (least squares): c = %.4g ns;",
               1e6 * c);
        for (int i = 0; i < ok; ++i)
            printf(" n %.0f: measured / fit %.2f%s", xn[i], tfb[i] / (c * pow(xn[i], 1.5)),
                   i + 1 < ok ? "," : "\n");
        printf("log-log slopes: fwd+bwd time ~ n^%.2f (n*sqrt(n) is 1.5), peak fwd+bwd memory ~ "
               "n^%.2f (linear is 1)\n",
               loglog_slope(xn, tfb, ok), loglog_slope(xn, mem, ok));
        const double grow = xn[ok - 1] / xn[0];
        printf("n %.0f -> %.0f (x%.0f): fwd+bwd time x%.2f (n*sqrt(n) allows x%.1f), peak memory "
               "x%.2f (linear: x%.0f)\n",
               xn[0], xn[ok - 1], grow, tfb[ok - 1] / tfb[0], pow(grow, 1.5), mem[ok - 1] / mem[0],
               grow);
    }
    return ok == count ? 0 : 1;
}

static int bench_depth(int argc, char **argv) {
    const char *preset = "cifar10", *depths = "8,128", *pattern = NULL;
    int width = 0, heads = 0, block = 0, ctx = 0, batch = 16, runs = 1, device_index = 0;
    int recompute = 1, device = 1, precision = 1;
    stx_cli_opt opts[] = {
        STX_OPT("preset", 0, STX_OPT_STRING, &preset, "cifar10",
                "enwik8, cifar10, imagenet64 or tiny"),
        STX_OPT("layers", 0, STX_OPT_STRING, &depths, "8,128",
                "depths, comma-separated; each is compared with the first"),
        STX_OPT("width", 0, STX_OPT_INT, &width, "preset", "override n_embd"),
        STX_OPT("heads", 0, STX_OPT_INT, &heads, "preset", "override n_head"),
        STX_OPT("block", 0, STX_OPT_INT, &block, "preset",
                "override the attention block size (32, 64 or 128: Hopper's wgmma kernels)"),
        STX_OPT("ctx", 0, STX_OPT_INT, &ctx, "preset", "override n_ctx (one position axis)"),
        STX_OPT("pattern", 0, STX_OPT_STRING, &pattern, "preset", "override the pattern"),
        STX_OPT("batch", 0, STX_OPT_INT, &batch, "16", "sequences per step"),
        STX_OPT("runs", 0, STX_OPT_INT, &runs, "1", "timed steps after a warm-up"),
        STX_OPT("recompute", 0, STX_OPT_INT, &recompute, "1", "0 or 1"),
        BENCH_BACKEND_OPTS(&device, &device_index, &precision),
        STX_OPT_END};
    stx_cli cli = {"sparsetx-bench depth", "[options]",
                   "Depth: peak memory of whole training steps (Adam moments included) at each "
                   "depth, and the growth from the first depth against what must grow with "
                   "depth: weights, gradients and both Adam moments (16 bytes a parameter) and "
                   "the residual stream kept at every block boundary (4 bytes x batch x n x d a "
                   "layer).",
                   opts};
    int rc = stx_cli_parse(&cli, argc, argv, NULL, 0, NULL);
    if (rc != STX_CLI_CONTINUE) return rc;
    if (batch < 1 || runs < 1 || (recompute != 0 && recompute != 1))
        return stx_cli_usage_error(&cli, "--batch and --runs must be positive, --recompute 0 or 1");
    long long depth[kMaxRows];
    const int count = parse_int_list(depths, "layers", 1, depth, kMaxRows);
    stx_config cfg;
    bench_preset_config(&cfg, kProg, preset, 0, width, heads, block, pattern); /* depth: per row */
    if (ctx) {
        cfg.n_ctx = ctx;
        cfg.n_pos_axes = 0;
    }
    cfg.recompute = recompute;
    bench_set_backend(&cfg, device, device_index, precision);
    printf("depth: %s, d %d, %d heads, %s, n %d, batch %d, recompute %d, %s %s\n", preset,
           cfg.n_embd, cfg.n_head, cfg.pattern, cfg.n_ctx, batch, cfg.recompute,
           cfg.backend == STX_BACKEND_CPU ? "cpu" : "cuda",
           cfg.precision == STX_PRECISION_BF16 ? "bf16" : "fp32");
    printf("| layers | params | step ms | peak fwd+bwd GB | peak step GB | est. GB |\n"
           "|---|---|---|---|---|---|\n");
    const size_t n = (size_t)batch * (size_t)cfg.n_ctx;
    unsigned char *tokens = malloc(n);
    if (!tokens) stx_cli_fail(kProg, "out of memory");
    random_bytes(tokens, n, 0x9E3779B97F4A7C15ull);
    int64_t params[kMaxRows], peak[kMaxRows];
    int good[kMaxRows], failed = 0;
    for (int i = 0; i < count; ++i) {
        cfg.n_layer = (int32_t)depth[i];
        stx_model *m = NULL;
        step_timing t;
        stx_status s = stx_model_create(&cfg, &m);
        params[i] = 0;
        if (s == STX_OK) {
            stx_param_total(m, &params[i]);
            s = time_steps(m, tokens, batch, cfg.n_ctx, cfg.n_embd, runs, &t);
        }
        good[i] = s == STX_OK;
        if (!good[i]) {
            printf("| %lld | failed: %s |\n", depth[i], stx_last_error());
            ++failed;
        } else {
            peak[i] = t.peak_step;
            printf("| %lld | %.2fM | %.1f | %.3f | %.3f | %.3f |\n", depth[i],
                   (double)params[i] / 1e6, t.step_ms, (double)t.peak_fwdbwd / 1e9,
                   (double)t.peak_step / 1e9, estimate_bytes(&cfg, params[i], batch) / 1e9);
        }
        fflush(stdout);
        stx_model_free(m);
    }
    for (int i = 1; i < count; ++i) {
        if (!good[0] || !good[i]) continue;
        const double dw = 16.0 * (double)(params[i] - params[0]);
        const double dr = 4.0 * (double)(depth[i] - depth[0]) * (double)n * cfg.n_embd;
        const double dm = (double)(peak[i] - peak[0]);
        printf("\npeak(%lld layers) - peak(%lld layers) = %.4g GB; predicted %.4g GB = weights, "
               "gradients, Adam moments %.4g GB + residual stream %.4g GB; measured / predicted "
               "%.4f (excess %.4g GB)\n",
               depth[i], depth[0], dm / 1e9, (dw + dr) / 1e9, dw / 1e9, dr / 1e9, dm / (dw + dr),
               (dm - dw - dr) / 1e9);
    }
    free(tokens);
    return failed ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "attention")) return bench_attention(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "train")) return bench_train(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "long")) return bench_long(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "depth")) return bench_depth(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "decode")) return stx_bench_decode(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: sparsetx-bench attention|train|long|depth|decode [options]   (--help after "
               "the command lists its options)\n");
        return 0;
    }
    fprintf(stderr,
            "%s: expected a command, attention, train, long, depth or decode (see %s --help)\n",
            kProg, kProg);
    return 2;
}
