/*
 * sample.c: sparsetx-sample, draw samples from a checkpoint.
 *
 *   sparsetx-sample CHECKPOINT [--prompt TEXT | --prompt-file FILE |
 *                   --image-prefix DATAFILE --kind idx|cifar [--index N] [--rows R]]
 *                   [-n N] [--temperature X] [--top-k N] [--top-p X] [--seed N] [--count N]
 *                   [--stop-byte N] [--output FILE] [--wav FILE [--rate HZ]] [--device D]
 *                   [--naive] [--stats]
 *
 * Sampling runs a decoder (a key/value cache that keeps what the attention pattern can still
 * read: one forward over the prompt, then one row per byte); --naive recomputes the whole
 * window for every byte instead, for comparison. --stats prints the speed on stderr.
 *
 * Text models print the samples on stdout (or into --output), separated by a line "----"
 * when there are several. Image models (a position shape [H, W, C]) write one PNG grid of
 * all samples into --output: ceil(sqrt(count)) columns, 2-pixel white gaps, and with
 * --image-prefix an extra first column showing the original image. --wav writes the samples,
 * one after the other, as a mu-law WAV file. Exit 0 on success, 1 on bad input (one message
 * on stderr), 2 on bad usage.
 */
#include <errno.h>
#include <sparsetx.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common_args.h"
#include "common_progress.h"

static const char *const PROG = "sparsetx-sample";

/* Everything the options set. */
typedef struct options {
    int device;
    const char *prompt, *prompt_file, *image_prefix;
    int kind, index, rows, length;
    double temperature, top_p;
    int top_k, stop_byte, count, rate, naive, stats;
    uint64_t seed;
    const char *output, *wav;
} options;

/* The prompt: bytes, and for image completion the original record. */
typedef struct prompt {
    uint8_t *bytes;
    int32_t n;
    uint8_t *original; /* [H, W, C] of the record, or NULL */
} prompt;

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) stx_cli_fail(PROG, "out of memory (%zu bytes)", n);
    return p;
}

/* The whole file (or pipe) at path; *n its size. */
static uint8_t *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) stx_cli_fail(PROG, "cannot open %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    uint8_t *buf = xmalloc(cap);
    for (;;) {
        if (len == cap) {
            uint8_t *grown = realloc(buf, cap *= 2);
            if (!grown) stx_cli_fail(PROG, "%s: out of memory", path);
            buf = grown;
        }
        const size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    if (ferror(f)) stx_cli_fail(PROG, "cannot read %s: %s", path, strerror(errno));
    fclose(f);
    *n = len;
    return buf;
}

/* The first `rows` rows of record `index` of an image dataset, for image completion. */
static prompt image_prompt(const options *o, const stx_config *cfg) {
    prompt p = {NULL, 0, NULL};
    const int32_t H = cfg->pos_shape[0], W = cfg->pos_shape[1], C = cfg->pos_shape[2];
    stx_dataset *ds = NULL;
    const stx_data_kind kind = o->kind == 1 ? STX_DATA_CIFAR : STX_DATA_IDX;
    if (stx_dataset_open(o->image_prefix, kind, 0, &ds) != STX_OK) stx_cli_die(PROG, "open data");
    stx_data_info info;
    if (stx_dataset_info(ds, &info) != STX_OK) stx_cli_die(PROG, "data info");
    if (info.n_axes != 3 || info.shape[0] != H || info.shape[1] != W || info.shape[2] != C)
        stx_cli_fail(PROG,
                     "--image-prefix: the images of %s are [%d, %d, %d], the model's are "
                     "[%d, %d, %d]",
                     o->image_prefix, info.shape[0], info.shape[1], info.shape[2], H, W, C);
    if (o->index < 0 || o->index >= info.n_records)
        stx_cli_fail(PROG, "--index (%d) must be in [0, %lld): %s has %lld images", o->index,
                     (long long)info.n_records, o->image_prefix, (long long)info.n_records);
    const int rows = o->rows < 0 ? H / 2 : o->rows;
    if (rows > H) stx_cli_fail(PROG, "--rows (%d) must be in [0, %d]", o->rows, H);
    const int64_t record = (int64_t)H * W * C;
    p.original = xmalloc((size_t)record);
    if (stx_dataset_read(ds, (int64_t)o->index * info.record_size, p.original, record) != STX_OK)
        stx_cli_die(PROG, "read image");
    p.n = (int32_t)((int64_t)rows * W * C);
    p.bytes = xmalloc((size_t)p.n);
    memcpy(p.bytes, p.original, (size_t)p.n);
    stx_dataset_free(ds);
    return p;
}

static prompt make_prompt(const options *o, const stx_config *cfg) {
    prompt p = {NULL, 0, NULL};
    if (o->image_prefix) return image_prompt(o, cfg);
    size_t n = 0;
    if (o->prompt_file) {
        p.bytes = read_file(o->prompt_file, &n);
    } else if (o->prompt) {
        n = strlen(o->prompt);
        p.bytes = xmalloc(n);
        memcpy(p.bytes, o->prompt, n);
    }
    if (n > (size_t)INT32_MAX / 2) stx_cli_fail(PROG, "the prompt (%zu bytes) is too long", n);
    p.n = (int32_t)n;
    return p;
}

/* All samples in one PNG: a grid of ceil(sqrt(count)) columns with 2-pixel white gaps, and
 * the original image in an extra first column of every row when there is one. */
static void write_grid(const char *path, const stx_config *cfg, const uint8_t *out, size_t row,
                       const int32_t *lengths, int count, const uint8_t *original) {
    const int64_t H = cfg->pos_shape[0], W = cfg->pos_shape[1], C = cfg->pos_shape[2];
    const int64_t gap = 2, image = H * W * C;
    int64_t cols = 1;
    while (cols * cols < count) ++cols;
    const int64_t grid_rows = (count + cols - 1) / cols;
    const int64_t total_cols = cols + (original ? 1 : 0);
    const int64_t gw = total_cols * W + (total_cols - 1) * gap,
                  gh = grid_rows * H + (grid_rows - 1) * gap;
    if (gw > INT32_MAX || gh > INT32_MAX || (double)gw * (double)gh * (double)C > 4e9)
        stx_cli_fail(PROG, "the grid of %d samples is too large for one PNG", count);
    uint8_t *pix = xmalloc((size_t)(gw * gh * C));
    memset(pix, 255, (size_t)(gw * gh * C));
    for (int64_t r = 0; r < grid_rows; ++r)
        for (int64_t c = 0; c < total_cols; ++c) {
            const uint8_t *src;
            int64_t n; /* bytes of src; the rest of the cell is black */
            if (original && c == 0) {
                src = original;
                n = image;
            } else {
                const int64_t s = r * cols + c - (original ? 1 : 0);
                if (s >= count) continue;
                src = out + (size_t)s * row;
                n = lengths[s] < image ? lengths[s] : image;
            }
            const int64_t x0 = c * (W + gap), y0 = r * (H + gap);
            for (int64_t y = 0; y < H; ++y)
                for (int64_t x = 0; x < W * C; ++x) {
                    const int64_t i = y * W * C + x;
                    pix[((y0 + y) * gw + x0) * C + x] = i < n ? src[i] : 0;
                }
        }
    if (stx_png_write(path, pix, (int32_t)gw, (int32_t)gh, (int32_t)C) != STX_OK)
        stx_cli_die(PROG, "write PNG");
    free(pix);
}

/* Text: each sample, then a newline; a line "----" between samples. */
static void write_text(FILE *f, const char *name, const uint8_t *out, size_t row,
                       const int32_t *lengths, int count) {
    for (int b = 0; b < count; ++b) {
        if (b > 0) fputs("----\n", f);
        fwrite(out + (size_t)b * row, 1, (size_t)lengths[b], f);
        fputc('\n', f);
    }
    if (fflush(f) != 0 || ferror(f))
        stx_cli_fail(PROG, "cannot write %s: %s", name, strerror(errno));
}

int main(int argc, char **argv) {
    options o = {.device = STX_BACKEND_AUTO,
                 .kind = -1,
                 .index = 0,
                 .rows = -1,   /* half the image */
                 .length = -1, /* fill the context */
                 .temperature = 1.0,
                 .top_p = 1.0,
                 .top_k = 0,
                 .stop_byte = -1,
                 .count = 1,
                 .rate = 12000,
                 .seed = 1};
    stx_cli_opt opts[] = {
        STX_OPT_CHOICE("device", 0, &o.device, "cpu|cuda|auto", "auto",
                       "backend to load the checkpoint onto"),
        STX_OPT_META("prompt", 0, STX_OPT_STRING, &o.prompt, "TEXT", "none",
                     "text the samples continue"),
        STX_OPT_META("prompt-file", 0, STX_OPT_STRING, &o.prompt_file, "FILE", "none",
                     "a file whose bytes the samples continue"),
        STX_OPT_META("image-prefix", 0, STX_OPT_STRING, &o.image_prefix, "DATAFILE", "none",
                     "complete the first --rows rows of image --index of this file"),
        STX_OPT_CHOICE("kind", 0, &o.kind, "idx|cifar", NULL,
                       "format of the --image-prefix file (required with it)"),
        STX_OPT("index", 0, STX_OPT_INT, &o.index, "0", "image (record) of --image-prefix"),
        STX_OPT_META("rows", 0, STX_OPT_INT, &o.rows, "R", "half the image",
                     "rows of the image given as the prompt"),
        STX_OPT("length", 'n', STX_OPT_INT, &o.length,
                "n_ctx - prompt length, or the rest of the image", "bytes to generate"),
        STX_OPT("temperature", 0, STX_OPT_DOUBLE, &o.temperature, "1", "divides the logits"),
        STX_OPT("top-k", 0, STX_OPT_INT, &o.top_k, "0 = all", "keep the k most likely bytes"),
        STX_OPT("top-p", 0, STX_OPT_DOUBLE, &o.top_p, "1",
                "keep the smallest set of bytes with this probability"),
        STX_OPT("seed", 0, STX_OPT_UINT64, &o.seed, "1", "same seed, same samples"),
        STX_OPT("count", 0, STX_OPT_INT, &o.count, "1", "number of samples"),
        STX_OPT("stop-byte", 0, STX_OPT_INT, &o.stop_byte, "-1 = never",
                "end a sample after this byte (0-255)"),
        STX_OPT_META("output", 'o', STX_OPT_STRING, &o.output, "FILE", "stdout for text",
                     "the text samples, or the PNG grid of an image model"),
        STX_OPT_META("wav", 0, STX_OPT_STRING, &o.wav, "FILE", "none",
                     "write the samples, one after the other, as mu-law WAV"),
        STX_OPT_META("rate", 0, STX_OPT_INT, &o.rate, "HZ", "12000", "sample rate of --wav"),
        STX_OPT("naive", 0, STX_OPT_FLAG, &o.naive, NULL,
                "recompute the whole window for every byte (slow; the key/value cache is the "
                "default)"),
        STX_OPT("stats", 0, STX_OPT_FLAG, &o.stats, NULL,
                "print bytes/s and the decoder's state size on stderr"),
        STX_OPT_END};
    stx_cli cli = {PROG, "CHECKPOINT [options]",
                   "Draw samples from a checkpoint written by sparsetx-train. Text models print "
                   "them (a line \"----\"\nbetween samples); image models (position shape [H, W, "
                   "C]) write one PNG grid to --output.",
                   opts};
    const char *pos[1] = {NULL};
    int n_pos = 0;
    int rc = stx_cli_parse(&cli, argc, argv, pos, 1, &n_pos);
    if (rc != STX_CLI_CONTINUE) return rc;
    if (n_pos != 1) return stx_cli_usage_error(&cli, "give one CHECKPOINT");
    if ((o.prompt != NULL) + (o.prompt_file != NULL) + (o.image_prefix != NULL) > 1)
        return stx_cli_usage_error(&cli,
                                   "give at most one of --prompt, --prompt-file, --image-prefix");
    if (o.image_prefix && o.kind < 0)
        return stx_cli_usage_error(&cli, "--image-prefix needs --kind idx|cifar");
    if (!o.image_prefix && (stx_cli_find(&cli, "kind")->seen || stx_cli_find(&cli, "index")->seen ||
                            stx_cli_find(&cli, "rows")->seen))
        return stx_cli_usage_error(&cli, "--kind, --index and --rows go with --image-prefix");
    if (o.count < 1) stx_cli_fail(PROG, "--count (%d) must be at least 1", o.count);
    if (stx_cli_find(&cli, "length")->seen && o.length < 0)
        stx_cli_fail(PROG, "--length (%d) must be >= 0", o.length);
    if (stx_cli_find(&cli, "rows")->seen && o.rows < 0)
        stx_cli_fail(PROG, "--rows (%d) must be >= 0", o.rows);

    stx_model *model = NULL;
    if (stx_model_load(pos[0], o.device, 0, &model) != STX_OK) stx_cli_die(PROG, "load");
    stx_config cfg;
    if (stx_model_get_config(model, &cfg) != STX_OK) stx_cli_die(PROG, "config");
    const int is_image = cfg.n_pos_axes == 3;
    if (o.image_prefix && !is_image)
        stx_cli_fail(PROG,
                     "--image-prefix: %s is not an image model (its position shape has %d "
                     "axes, not [H, W, C])",
                     pos[0], cfg.n_pos_axes);
    if (is_image && !o.output && !o.wav)
        return stx_cli_usage_error(&cli, "%s is an image model: give --output FILE.png", pos[0]);

    prompt p = make_prompt(&o, &cfg);
    int32_t n_new = o.length;
    if (n_new < 0) /* the default: fill the context (the rest of the image) */
        n_new = p.n < cfg.n_ctx ? cfg.n_ctx - p.n : (o.image_prefix ? 0 : cfg.n_ctx);
    const size_t row = (size_t)p.n + (size_t)n_new;
    if ((double)row * (double)o.count > 1e11)
        stx_cli_fail(PROG, "%d samples of %zu bytes are too many", o.count, row);
    uint8_t *prompts = xmalloc((size_t)p.n * (size_t)o.count);
    for (int b = 0; b < o.count && p.n > 0; ++b)
        memcpy(prompts + (size_t)b * (size_t)p.n, p.bytes, (size_t)p.n);
    uint8_t *out = xmalloc(row * (size_t)o.count);
    int32_t *lengths = xmalloc(sizeof *lengths * (size_t)o.count);

    stx_sample_config sc;
    if (stx_sample_config_init(&sc) != STX_OK) stx_cli_die(PROG, "sample config");
    sc.temperature = o.temperature;
    sc.top_k = o.top_k;
    sc.top_p = o.top_p;
    sc.stop_byte = o.stop_byte;
    sc.seed = o.seed;
    sc.naive = o.naive;
    const double t0 = cli_now();
    if (stx_sample(model, prompts, p.n, n_new, o.count, &sc, out, lengths) != STX_OK)
        stx_cli_die(PROG, "sample");
    if (o.stats) {
        const double dt = cli_now() - t0;
        int64_t generated = 0, state = 0;
        for (int b = 0; b < o.count; ++b) generated += lengths[b] - p.n;
        if (stx_decoder_state_bytes(model, o.count, &state) != STX_OK)
            stx_cli_die(PROG, "state bytes");
        fprintf(stderr,
                "%s: %lld bytes in %.3f s (%.0f bytes/s, %s sampler); decoder state %.3f MB\n",
                PROG, (long long)generated, dt, dt > 0 ? (double)generated / dt : 0.0,
                o.naive ? "naive" : "key/value cache", (double)state / 1e6);
    }

    if (o.wav) {
        size_t total = 0;
        for (int b = 0; b < o.count; ++b) total += (size_t)lengths[b];
        uint8_t *audio = xmalloc(total);
        size_t at = 0;
        for (int b = 0; b < o.count; ++b) {
            memcpy(audio + at, out + (size_t)b * row, (size_t)lengths[b]);
            at += (size_t)lengths[b];
        }
        if (stx_wav_write_mulaw(o.wav, audio, (int64_t)total, o.rate) != STX_OK)
            stx_cli_die(PROG, "write WAV");
        free(audio);
        printf("%s: wrote %s (%d sample%s, %zu bytes at %d Hz)\n", PROG, o.wav, o.count,
               o.count == 1 ? "" : "s", total, o.rate);
    }
    if (is_image) {
        if (o.output) {
            write_grid(o.output, &cfg, out, row, lengths, o.count, p.original);
            printf("%s: wrote %s (%d sample%s of [%d, %d, %d]%s)\n", PROG, o.output, o.count,
                   o.count == 1 ? "" : "s", cfg.pos_shape[0], cfg.pos_shape[1], cfg.pos_shape[2],
                   p.original ? ", the original first" : "");
        }
    } else if (o.output) {
        FILE *f = fopen(o.output, "wb");
        if (!f) stx_cli_fail(PROG, "cannot open %s: %s", o.output, strerror(errno));
        write_text(f, o.output, out, row, lengths, o.count);
        if (fclose(f) != 0) stx_cli_fail(PROG, "cannot write %s: %s", o.output, strerror(errno));
    } else if (!o.wav) {
        write_text(stdout, "stdout", out, row, lengths, o.count);
    }
    free(lengths);
    free(out);
    free(prompts);
    free(p.bytes);
    free(p.original);
    stx_model_free(model);
    return 0;
}
