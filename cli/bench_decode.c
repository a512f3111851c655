/*
 * bench_decode.c: `sparsetx-bench decode`, the speed of sampling.
 *
 * Two tables for one model (a preset, with overrides):
 *  1. mean bytes/s of stx_sample (the decoder: draws included) generating every position
 *     0 .. n_ctx - 1 of each batch size, unconditionally;
 *  2. per position p: the keys one query of head 0 reads there (from the layouts, the mean
 *     over layers), the
 *     decoder's ms per step (prefill p bytes, then the mean of --steps steps, each with its
 *     logits read back) and the naive sampler's ms per byte (stx_sample with --naive: one
 *     forward over the window for every byte).
 * Uses only the public header.
 */
#include <sparsetx.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_modes.h"
#include "common_args.h"
#include "common_progress.h"

static const char *kDecodeProg = "sparsetx-bench decode";

/* Keys the query at position p of head 0 reads, averaged over the layers (each layer's
 * pattern is an item of the model pattern's top-level list, cycled), through the layouts. */
static double keys_read(const stx_config *cfg, int64_t p) {
    double per_item[64];
    int n_items = 0;
    const char *s = cfg->pattern;
    while (*s && n_items < 64) {
        char item[STX_PATTERN_MAX];
        size_t i = 0;
        int depth = 0;
        for (; s[i] && i + 1 < sizeof item; ++i) {
            if (s[i] == '[') ++depth;
            if (s[i] == ']') --depth;
            if (s[i] == ',' && depth == 0) break;
            item[i] = s[i];
        }
        item[i] = '\0';
        s += s[i] == ',' ? i + 1 : i;
        stx_layout *lay = NULL;
        if (stx_layout_create(item, cfg->n_ctx, cfg->n_head, cfg->block_size, &lay) != STX_OK)
            return -1.0;
        int64_t n = 0;
        for (int64_t k = 0; k <= p; ++k) n += stx_layout_allows(lay, 0, p, k) == 1;
        stx_layout_free(lay);
        per_item[n_items++] = (double)n;
    }
    if (n_items == 0) return -1.0;
    double sum = 0.0;
    for (int32_t l = 0; l < cfg->n_layer; ++l) sum += per_item[l % n_items];
    return sum / cfg->n_layer;
}

/* Mean ms of `steps` decoder steps (logits read each time) after prefilling p bytes. */
static double decoder_ms(stx_model *m, int32_t batch, int32_t p, int32_t steps) {
    stx_decoder *d = NULL;
    if (stx_decoder_create(m, batch, &d) != STX_OK) stx_cli_die(kDecodeProg, "decoder");
    uint8_t *prompt = calloc((size_t)batch * (size_t)(p > 0 ? p : 1), 1);
    float *logits = malloc(sizeof *logits * (size_t)batch * STX_VOCAB);
    uint8_t *col = calloc((size_t)batch, 1);
    if (!prompt || !logits || !col) stx_cli_fail(kDecodeProg, "out of memory");
    for (int32_t i = 0; i < batch * p; ++i) prompt[i] = (uint8_t)(i * 37 + 11);
    if (stx_decoder_prefill(d, prompt, p) != STX_OK) stx_cli_die(kDecodeProg, "prefill");
    for (int32_t i = 0; i < 3; ++i) /* warm-up */
        if (stx_decoder_step(d, col) != STX_OK ||
            stx_decoder_logits(d, STX_DTYPE_F32, logits, (size_t)batch * STX_VOCAB) != STX_OK)
            stx_cli_die(kDecodeProg, "step");
    const double t0 = cli_now();
    for (int32_t i = 0; i < steps; ++i) {
        col[0] = (uint8_t)logits[i % STX_VOCAB]; /* the next input depends on the logits */
        if (stx_decoder_step(d, col) != STX_OK ||
            stx_decoder_logits(d, STX_DTYPE_F32, logits, (size_t)batch * STX_VOCAB) != STX_OK)
            stx_cli_die(kDecodeProg, "step");
    }
    const double ms = (cli_now() - t0) * 1e3 / steps;
    stx_decoder_free(d);
    free(prompt);
    free(logits);
    free(col);
    return ms;
}

/* ms per byte of the naive sampler at position p (2 bytes after a prompt of p bytes). */
static double naive_ms(stx_model *m, int32_t p) {
    uint8_t *prompt = calloc((size_t)(p > 0 ? p : 1), 1), *out = malloc((size_t)p + 2);
    if (!prompt || !out) stx_cli_fail(kDecodeProg, "out of memory");
    stx_sample_config sc;
    stx_sample_config_init(&sc);
    sc.naive = 1;
    const double t0 = cli_now();
    if (stx_sample(m, prompt, p, 2, 1, &sc, out, NULL) != STX_OK)
        stx_cli_die(kDecodeProg, "naive sample");
    const double ms = (cli_now() - t0) * 1e3 / 2;
    free(prompt);
    free(out);
    return ms;
}

int stx_bench_decode(int argc, char **argv) {
    const char *preset = "enwik8", *pattern = NULL, *batches = "1,64", *positions = NULL;
    int layers = 0, width = 0, heads = 0, ctx = 0, block = 0, steps = 50, device_index = 0;
    int naive = 1;
    int device = 1, precision = 1, full = 1;
    stx_cli_opt opts[] = {
        BENCH_PRESET_OPTS(&preset, &layers, &width, &heads),
        STX_OPT("ctx", 0, STX_OPT_INT, &ctx, "preset",
                "override n_ctx (position shape [n_ctx / 256, 256])"),
        STX_OPT("pattern", 0, STX_OPT_STRING, &pattern, "preset", "override the pattern"),
        STX_OPT("block", 0, STX_OPT_INT, &block, "preset", "override the block size"),
        STX_OPT("batch", 0, STX_OPT_STRING, &batches, "1,64", "batch sizes of table 1"),
        STX_OPT("full", 0, STX_OPT_INT, &full, "1",
                "1: table 1 (every position of n_ctx); 0: skip it"),
        STX_OPT("positions", 0, STX_OPT_STRING, &positions, "1000,n/3,2n/3,n-300",
                "positions of table 2, comma-separated"),
        STX_OPT("steps", 0, STX_OPT_INT, &steps, "50", "decoder steps timed per position"),
        STX_OPT("naive", 0, STX_OPT_INT, &naive, "1", "1: time the naive sampler too"),
        BENCH_BACKEND_OPTS(&device, &device_index, &precision),
        STX_OPT_END};
    stx_cli cli = {"sparsetx-bench decode", "[options]",
                   "Times sampling: stx_sample over every position, and the decoder against "
                   "the naive sampler at chosen positions.",
                   opts};
    int rc = stx_cli_parse(&cli, argc, argv, NULL, 0, NULL);
    if (rc != STX_CLI_CONTINUE) return rc;
    stx_config cfg;
    bench_preset_config(&cfg, kDecodeProg, preset, layers, width, heads, block, pattern);
    if (ctx) {
        cfg.n_ctx = ctx;
        cfg.n_pos_axes = ctx % 256 == 0 ? 2 : 0;
        cfg.pos_shape[0] = ctx / 256;
        cfg.pos_shape[1] = 256;
    }
    cfg.dropout = 0.0f;
    bench_set_backend(&cfg, device, device_index, precision);
    long long bs[16], ps[16];
    const long long n_b = parse_int_list(batches, "batch", 1, bs, 16);
    long long n_p;
    if (positions) {
        n_p = parse_int_list(positions, "positions", 0, ps, 16);
    } else {
        const long long n = cfg.n_ctx;
        ps[0] = n > 2000 ? 1000 : n / 4;
        ps[1] = n / 3;
        ps[2] = 2 * n / 3;
        ps[3] = n > 600 ? n - 300 : n - n / 8;
        n_p = 4;
    }
    for (long long i = 0; i < n_p; ++i)
        if (ps[i] < 0 || ps[i] + steps + 4 >= cfg.n_ctx)
            return stx_cli_usage_error(&cli,
                                       "--positions: %lld plus --steps %d does not fit in n_ctx %d",
                                       ps[i], steps, cfg.n_ctx);
    for (long long i = 0; i < n_b; ++i)
        if (bs[i] < 1 || bs[i] > 4096) return stx_cli_usage_error(&cli, "--batch: 1 to 4096");
    if (steps < 1) return stx_cli_usage_error(&cli, "--steps must be positive");

    stx_model *m = NULL;
    if (stx_model_create(&cfg, &m) != STX_OK) stx_cli_die(kDecodeProg, "model");
    /* Random weights (the init's zero W_out would make every distribution flat). */
    {
        int64_t numel = (int64_t)STX_VOCAB * cfg.n_embd;
        float *w = malloc(sizeof *w * (size_t)numel);
        if (!w) stx_cli_fail(kDecodeProg, "out of memory");
        unsigned long long r = 7;
        for (int64_t i = 0; i < numel; ++i) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            w[i] = (float)((double)(r >> 11) / 9007199254740992.0 - 0.5) * 0.1f;
        }
        if (stx_param_write(m, "w_out", STX_DTYPE_F32, w, (size_t)numel) != STX_OK)
            stx_cli_die(kDecodeProg, "w_out");
        free(w);
    }
    printf("decoding, %s %s, %d layers, d %d, %d heads, pattern %s, n_ctx %d\n",
           cfg.backend == STX_BACKEND_CUDA ? "cuda" : "cpu",
           cfg.precision == STX_PRECISION_BF16 ? "bf16" : "fp32", cfg.n_layer, cfg.n_embd,
           cfg.n_head, cfg.pattern, cfg.n_ctx);

    if (full) {
        printf("\n| batch | decoder state | positions | seconds | bytes/s (stx_sample) |\n"
               "|---|---|---|---|---|\n");
        for (long long i = 0; i < n_b; ++i) {
            const int32_t B = (int32_t)bs[i];
            int64_t state = 0;
            if (stx_decoder_state_bytes(m, B, &state) != STX_OK) stx_cli_die(kDecodeProg, "state");
            uint8_t *out = malloc((size_t)B * (size_t)cfg.n_ctx);
            if (!out) stx_cli_fail(kDecodeProg, "out of memory");
            stx_sample_config sc;
            stx_sample_config_init(&sc);
            const double t0 = cli_now();
            if (stx_sample(m, NULL, 0, cfg.n_ctx, B, &sc, out, NULL) != STX_OK)
                stx_cli_die(kDecodeProg, "sample");
            const double dt = cli_now() - t0;
            printf("| %d | %.1f MB | 0 .. %d | %.2f | %.0f |\n", B, (double)state / 1e6,
                   cfg.n_ctx - 1, dt, (double)B * cfg.n_ctx / dt);
            fflush(stdout);
            free(out);
        }
    }

    printf(
        "\n| position p | keys a query reads at p + steps/2 (head 0, mean over layers) | decoder "
        "ms/byte (batch 1) | bytes/s | naive ms/byte | naive / decoder |\n"
        "|---|---|---|---|---|---|\n");
    for (long long i = 0; i < n_p; ++i) {
        const int32_t p = (int32_t)ps[i];
        const double ms = decoder_ms(m, 1, p, steps);
        printf("| %d | %.0f | %.3f | %.0f |", p, keys_read(&cfg, p + steps / 2), ms, 1e3 / ms);
        if (naive) {
            const double nm = naive_ms(m, p);
            printf(" %.2f | %.0fx |\n", nm, nm / ms);
        } else {
            printf(" - | - |\n");
        }
        fflush(stdout);
    }
    stx_model_free(m);
    return 0;
}
