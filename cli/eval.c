/*
 * eval.c: sparsetx-eval, the bits per byte of a checkpoint on a byte range of a data file.
 *
 *   sparsetx-eval CHECKPOINT [DATA] [--split test] [--min-context K] [--batch 4]
 *
 * Every byte of the range is scored exactly once. Without --min-context the range is cut
 * into non-overlapping windows of n_ctx bytes (the last one shorter). With --min-context K
 * (the paper's Table 3) the first window scores all its n_ctx bytes and each later window
 * slides by n_ctx - K and scores only its last n_ctx - K bytes, so every byte after the
 * first window is predicted from at least K bytes before it; the last window is shortened to
 * end at the range's end. The per-byte losses come from the logits (stx_logits_read, in
 * double), with the log-softmax of the target byte computed here; windows of full length
 * are evaluated --batch at a time.
 *
 * DATA defaults to the data file named in the checkpoint (its app_state, written by
 * sparsetx-train), and --kind and --resample to the ones recorded there.
 *
 * Exit status: 0 success, 1 bad input (a file, a range, a value the library refuses),
 * 2 bad usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <sparsetx.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common_args.h"
#include "common_progress.h"

#define PROG "sparsetx-eval"

static const char *const kKindNames[] = {"bytes", "idx", "cifar", "wav"};
static const char *const kSplitNames[] = {"train", "valid", "test", "all"};

/* One window: bytes [start, start + len) of which positions [score_from, len) are scored. */
typedef struct window {
    int64_t start;
    int32_t len, score_from;
} window;

/* Sum over the scored positions of one window of -log softmax(logits)[target], in nats. */
static double window_nats(const double *logits, const uint8_t *tokens, const window *w) {
    double sum = 0.0;
    for (int32_t t = w->score_from; t < w->len; ++t) {
        const double *row = logits + (size_t)t * STX_VOCAB;
        double top = row[0];
        for (int v = 1; v < STX_VOCAB; ++v)
            if (row[v] > top) top = row[v];
        double z = 0.0;
        for (int v = 0; v < STX_VOCAB; ++v) z += exp(row[v] - top);
        sum += top + log(z) - row[tokens[t]];
    }
    return sum;
}

int main(int argc, char **argv) {
    const char *ckpt = NULL, *data = NULL, *device = "auto";
    int kind = 0, split = STX_SPLIT_TEST, batch = 4, threads = 0, json = 0, plain = 0;
    int resample = 0, ctx = 0;
    int64_t begin = 0, end = 0, min_context = 0;
    stx_cli_opt table[] = {
        STX_OPT("checkpoint", 0, STX_OPT_STRING, &ckpt, "the positional CHECKPOINT",
                "checkpoint to evaluate"),
        STX_OPT("data", 0, STX_OPT_STRING, &data, "the checkpoint's training data",
                "data file (raw or gzip)"),
        STX_OPT_CHOICE("kind", 0, &kind, "bytes|idx|cifar|wav", "the checkpoint's, else bytes",
                       "how to read DATA"),
        STX_OPT("resample", 0, STX_OPT_INT, &resample, "the checkpoint's, else 0",
                "wav: resample the audio to this rate in Hz"),
        STX_OPT_CHOICE("split", 0, &split, "train|valid|test|all", "test",
                       "which split to score (90/5/5 of the file)"),
        STX_OPT("begin", 0, STX_OPT_INT64, &begin, "0",
                "score the byte range [begin, end) instead of a split"),
        STX_OPT("end", 0, STX_OPT_INT64, &end, "the file's size", "end of that range"),
        STX_OPT("min-context", 0, STX_OPT_INT64, &min_context, "0",
                "every scored byte after the first window sees at least K bytes before it"),
        STX_OPT("ctx", 0, STX_OPT_INT, &ctx, "the model's n_ctx", "window length (<= n_ctx)"),
        STX_OPT("batch", 0, STX_OPT_INT, &batch, "4", "windows per stx_evaluate call"),
        STX_OPT("device", 0, STX_OPT_STRING, &device, "auto", "cpu, cuda, cuda:N or auto"),
        STX_OPT("threads", 0, STX_OPT_INT, &threads, "0: OpenMP's default", "CPU threads"),
        STX_OPT("json", 0, STX_OPT_FLAG, &json, NULL, "print the result as one JSON object"),
        STX_OPT("plain", 0, STX_OPT_FLAG, &plain, NULL, "no progress bar even on a terminal"),
        STX_OPT_END};
    stx_cli cli = {PROG, "CHECKPOINT [DATA] [options]",
                   "Bits per byte of a checkpoint on a split or byte range of a data file; "
                   "every byte of the range is scored exactly once.",
                   table};
    const char *positional[2] = {NULL, NULL};
    int n_pos = 0;
    int rc = stx_cli_parse(&cli, argc, argv, positional, 2, &n_pos);
    if (rc != STX_CLI_CONTINUE) return rc;
    const int ckpt_seen = stx_cli_find(&cli, "checkpoint")->seen;
    const int data_seen = stx_cli_find(&cli, "data")->seen;
    int next = 0;
    if (!ckpt_seen && next < n_pos) ckpt = positional[next++];
    if (!data_seen && next < n_pos) data = positional[next++];
    if (next < n_pos)
        return stx_cli_usage_error(&cli, "unexpected argument '%s'", positional[next]);
    if (!ckpt) return stx_cli_usage_error(&cli, "no CHECKPOINT given");
    if (batch < 1) return stx_cli_usage_error(&cli, "--batch must be at least 1");
    if (threads < 0) return stx_cli_usage_error(&cli, "--threads must be >= 0 (0: all)");
    if (min_context < 0) return stx_cli_usage_error(&cli, "--min-context must be >= 0");
    if (resample < 0) return stx_cli_usage_error(&cli, "--resample must be >= 0");
    const int begin_seen = stx_cli_find(&cli, "begin")->seen;
    const int end_seen = stx_cli_find(&cli, "end")->seen;
    if ((begin_seen || end_seen) && stx_cli_find(&cli, "split")->seen)
        return stx_cli_usage_error(&cli, "give either --split or --begin/--end, not both");
    int32_t backend = 0, device_index = 0;
    if (stx_cli_parse_device(device, &backend, &device_index) != 0)
        return stx_cli_usage_error(&cli, "--device: '%s' is not cpu, cuda, cuda:N or auto", device);

    /* -------------------------------------------------- the model */
    stx_model *model = NULL;
    if (stx_model_load(ckpt, backend, device_index, &model) != STX_OK)
        stx_cli_die(PROG, "checkpoint");
    const char *app = stx_model_app_state(model);
    char app_data[4096] = "", app_kind[32] = "", app_rate[32] = "";
    if (!data && stx_cli_app_get(app, "data_path", app_data, sizeof app_data)) data = app_data;
    if (!data) {
        stx_model_free(model);
        return stx_cli_usage_error(&cli, "no DATA given and %s does not name its data file", ckpt);
    }
    if (!stx_cli_find(&cli, "kind")->seen &&
        stx_cli_app_get(app, "data_kind", app_kind, sizeof app_kind))
        for (int i = 0; i < 4; ++i)
            if (!strcmp(app_kind, kKindNames[i])) kind = i;
    if (!stx_cli_find(&cli, "resample")->seen &&
        stx_cli_app_get(app, "data_resample", app_rate, sizeof app_rate))
        resample = atoi(app_rate);
    int64_t step = 0, n_params = 0;
    stx_model_get_step(model, &step);
    stx_param_total(model, &n_params);
    if (stx_model_set_threads(model, threads) != STX_OK) stx_cli_die(PROG, "--threads");
    if (stx_model_set_training(model, 0) != STX_OK) stx_cli_die(PROG, "model");
    stx_config cfg;
    if (stx_model_get_config(model, &cfg) != STX_OK) stx_cli_die(PROG, "config");
    const int32_t n_ctx = stx_cli_find(&cli, "ctx")->seen ? ctx : cfg.n_ctx;
    if (n_ctx < 1 || n_ctx > cfg.n_ctx || min_context >= n_ctx) {
        stx_model_free(model);
        if (n_ctx < 1 || n_ctx > cfg.n_ctx)
            return stx_cli_usage_error(&cli, "--ctx (%d) must be in [1, n_ctx = %d]", ctx,
                                       cfg.n_ctx);
        return stx_cli_usage_error(&cli,
                                   "--min-context (%" PRId64 ") must be less than the window "
                                   "length (%d)",
                                   min_context, n_ctx);
    }

    /* -------------------------------------------------- the data range */
    stx_dataset *ds = NULL;
    if (stx_dataset_open(data, (stx_data_kind)kind, resample, &ds) != STX_OK)
        stx_cli_die(PROG, "data");
    stx_data_info info;
    if (stx_dataset_info(ds, &info) != STX_OK) stx_cli_die(PROG, "data");
    char range_name[64];
    if (begin_seen || end_seen) {
        if (!end_seen) end = info.n_bytes;
        if (begin < 0 || end > info.n_bytes || begin >= end)
            stx_cli_fail(
                PROG, "range [%" PRId64 ", %" PRId64 ") is empty or outside %s (%" PRId64 " bytes)",
                begin, end, data, info.n_bytes);
        snprintf(range_name, sizeof range_name, "range");
    } else {
        if (stx_dataset_split(ds, (stx_split)split, &begin, &end) != STX_OK)
            stx_cli_die(PROG, "split");
        if (begin >= end)
            stx_cli_fail(PROG, "the %s split of %s is empty (%" PRId64 " bytes in the file)",
                         kSplitNames[split], data, info.n_bytes);
        snprintf(range_name, sizeof range_name, "%s split", kSplitNames[split]);
    }

    /* -------------------------------------------------- the windows */
    const int64_t N = end - begin, K = min_context, S = n_ctx - min_context;
    /* The first window [begin, begin + min(N, n_ctx)) scores everything; every later chunk
     * of up to S new bytes [c, c + len) is scored by the window [c - K, c + len). */
    int64_t n_windows = 1;
    if (N > n_ctx) n_windows += (N - n_ctx + S - 1) / S;
    const size_t buf_windows = (size_t)batch;
    uint8_t *tokens = malloc(buf_windows * (size_t)n_ctx);
    double *logits = malloc(buf_windows * (size_t)n_ctx * STX_VOCAB * sizeof(double));
    window *wins = malloc(buf_windows * sizeof(window));
    if (!tokens || !logits || !wins)
        stx_cli_fail(PROG, "out of memory for a batch of %d windows of %d bytes", batch, n_ctx);

    cli_progress bar;
    cli_progress_init(&bar, N, 0, "B/s", plain);
    double nats = 0.0;
    int64_t scored = 0, next_window = 0;
    while (next_window < n_windows) {
        /* Gather up to `batch` windows of one length (a shorter last window goes alone). */
        int32_t nb = 0, T = 0;
        while (nb < batch && next_window < n_windows) {
            window w;
            if (next_window == 0) {
                w.start = begin;
                w.len = (int32_t)(N < n_ctx ? N : n_ctx);
                w.score_from = 0;
            } else {
                const int64_t c = begin + n_ctx + (next_window - 1) * S;
                const int64_t len = end - c < S ? end - c : S;
                w.start = c - K;
                w.len = (int32_t)(K + len);
                w.score_from = (int32_t)K;
            }
            if (nb > 0 && w.len != T) break;
            T = w.len;
            wins[nb++] = w;
            ++next_window;
        }
        for (int32_t b = 0; b < nb; ++b)
            if (stx_dataset_read(ds, wins[b].start, tokens + (size_t)b * T, T) != STX_OK)
                stx_cli_die(PROG, "read data");
        if (stx_evaluate(model, tokens, nb, T, NULL) != STX_OK) stx_cli_die(PROG, "evaluate");
        if (stx_logits_read(model, STX_DTYPE_F64, logits, (size_t)nb * T * STX_VOCAB) != STX_OK)
            stx_cli_die(PROG, "logits");
        for (int32_t b = 0; b < nb; ++b) {
            nats +=
                window_nats(logits + (size_t)b * T * STX_VOCAB, tokens + (size_t)b * T, &wins[b]);
            scored += wins[b].len - wins[b].score_from;
        }
        const double secs = cli_progress_elapsed(&bar);
        char text[64];
        snprintf(text, sizeof text, "bpb %.4f", nats / (double)scored / log(2.0));
        cli_progress_update(&bar, scored, secs > 0.0 ? (double)scored / secs : 0.0, text,
                            next_window == n_windows);
    }
    cli_progress_finish(&bar);
    const double seconds = cli_progress_elapsed(&bar);
    if (scored != N)
        stx_cli_fail(PROG, "internal error: scored %" PRId64 " of %" PRId64 " bytes", scored, N);
    const double bpb = nats / (double)scored / log(2.0);

    if (json) {
        printf("{\"checkpoint\":");
        cli_json_write_string(stdout, ckpt);
        printf(",\"data\":");
        cli_json_write_string(stdout, data);
        printf(",\"kind\":\"%s\",\"range\":\"%s\",\"begin\":%" PRId64 ",\"end\":%" PRId64
               ",\"step\":%" PRId64 ",\"n_ctx\":%d,\"min_context\":%" PRId64 ",\"windows\":%" PRId64
               ",\"bytes\":%" PRId64 ",\"nats\":%.17g,\"bpb\":%.17g,\"seconds\":%.3f}\n",
               kKindNames[kind], range_name, begin, end, step, n_ctx, K, n_windows, scored, nats,
               bpb, seconds);
    } else {
        printf("checkpoint: %s (step %" PRId64 ", %" PRId64 " parameters, n_ctx %d, %s)\n", ckpt,
               step, n_params, cfg.n_ctx, cfg.backend == STX_BACKEND_CUDA ? "cuda" : "cpu");
        printf("data: %s (%s), %s [%" PRId64 ", %" PRId64 ")\n", data, kKindNames[kind], range_name,
               begin, end);
        printf("windows: %" PRId64 " of up to %d bytes, min context %" PRId64 "\n", n_windows,
               n_ctx, K);
        printf("bytes scored: %" PRId64 "\n", scored);
        printf("bits per byte: %.6f\n", bpb);
    }
    free(tokens);
    free(logits);
    free(wins);
    stx_dataset_free(ds);
    stx_model_free(model);
    return 0;
}
