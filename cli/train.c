/*
 * train.c: sparsetx-train, the training tool.
 *
 *   sparsetx-train DATA [--preset tiny] [--steps 5000] [--save run.ckpt] [--log run.jsonl]
 *   sparsetx-train --resume run.ckpt                 (continues exactly where it stopped)
 *
 * Each step draws --batch random windows of n_ctx bytes from the train split of DATA
 * (stx_dataset_sample, with a generator state this tool owns), runs forward, backward and
 * one AdamW step (warmup, then cosine decay to --min-lr at --steps). Every --eval-every
 * steps and at the end it measures the validation bits per byte over consecutive windows of
 * the valid split. Checkpoints are written every --save-every steps, at the end and on
 * Ctrl-C; a checkpoint's app_state holds this tool's state as "key=value" lines (data file,
 * kind, generator state, step, the run's settings), so --resume alone continues the run and
 * draws the same batches as an uninterrupted run would: the losses match step for step.
 *
 * A step whose loss or global gradient norm is not finite (NaN or Inf) is skipped: no
 * backward (for a bad loss) and no update (stx_optimizer_step returns STX_STEP_SKIPPED and
 * leaves the weights, Adam moments and step count alone); the step is tried again on the
 * next batch. Each skip is counted, logged as a record {"step": S, "skipped": true,
 * "reason": "gradient norm nan", ...} and printed. After --max-bad-steps consecutive skips
 * the run stops with exit status 1 and one message on stderr, saving nothing, so the last
 * checkpoint written (from before the bad steps) stays as it was. A good step resets the
 * consecutive count; the total is kept in the checkpoint and printed at the end.
 *
 * Exit status: 0 success (also after Ctrl-C, once the checkpoint is saved), 1 bad input
 * (a file, a value the library refuses) or too many consecutive non-finite steps, 2 bad
 * usage, 130 on a second Ctrl-C.
 *
 * Test hooks (for the tests only, not part of the interface; read once at start, so they
 * cost nothing when unset). Both take a list of attempts like "5,6", "5-30" or "3,8-9",
 * where attempt n is the n-th batch drawn by the run (good steps + skipped steps so far + 1,
 * so it equals the step number until the first skip):
 *   STX_TEST_INJECT_NAN=LIST         after the backward of those attempts, gradient element
 *                                    0 of "w_out" is set to NaN (the optimizer step is
 *                                    then skipped: "gradient norm nan");
 *   STX_TEST_INJECT_NAN_WEIGHT=LIST  before the forward of those attempts, weight element 0
 *                                    of "ln_f.g" is set to NaN (the loss is then NaN on
 *                                    every later step: "loss nan").
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <sparsetx.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common_args.h"
#include "common_progress.h"
#include "train_dist.h"

#define PROG       "sparsetx-train"
#define APP_FORMAT "sparsetx-train 1"

/* The name errors carry: "sparsetx-train" alone, "sparsetx-train (rank R of W)" in a
 * data-parallel run. */
static char g_prog[64] = PROG;

static const char *const kKindNames[] = {"bytes", "idx", "cifar", "wav"};
static const char *const kPrecisionNames[] = {"fp32", "fp64", "bf16"};
static const char *const kPresetNames[] = {"enwik8", "cifar10", "imagenet64", "tiny"};

/* ---------------------------------------------------------------- signals */

static volatile sig_atomic_t g_stop = 0;

/* First SIGINT/SIGTERM: finish the step, save, exit 0. Second: leave at once with 130. */
static void on_signal(int sig) {
    (void)sig;
    if (g_stop) _exit(130);
    g_stop = 1;
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* ---------------------------------------------------------------- options */

typedef struct options {
    /* data */
    const char *data;
    int kind;
    int resample;
    /* model */
    int preset;
    int layers, width, heads, block, ctx, ff_mult, recompute, precision, threads;
    const char *pattern, *pos_shape, *device;
    double dropout, qk_ratio;
    uint64_t seed;
    /* optimizer */
    double lr, min_lr, clip, weight_decay;
    int64_t warmup, steps;
    int batch;
    /* run */
    const char *save, *resume, *log;
    int64_t save_every, eval_every, log_every, sample_every;
    int eval_batches, sample_len, plain;
    int64_t max_bad_steps;
    int64_t memory_limit_mb; /* 0: none */
    /* data parallel */
    const char *rendezvous;
    int grad_allreduce, bucket_layers;
    int64_t check_weights_every;
    double dist_timeout;
} options;

/* The model options: not allowed with --resume (the model comes from the checkpoint). */
static const char *const kModelOptions[] = {
    "preset",    "layers",  "width",   "heads",    "pattern",   "block",     "ctx",
    "pos-shape", "dropout", "ff-mult", "qk-ratio", "recompute", "precision", "seed"};

/* "32,32,3" into shape[]; "1d" (or "none", "0") gives 0 axes. -1 when malformed. */
static int parse_shape(const char *text, int32_t shape[STX_MAX_POS_AXES]) {
    if (!strcmp(text, "1d") || !strcmp(text, "none") || !strcmp(text, "0")) return 0;
    int n = 0;
    const char *p = text;
    for (;;) {
        char *end = NULL;
        errno = 0;
        const long v = strtol(p, &end, 10);
        if (end == p || errno || v < 1 || v > (1L << 24) || n == STX_MAX_POS_AXES) return -1;
        shape[n++] = (int32_t)v;
        if (*end == '\0') return n;
        if (*end != ',') return -1;
        p = end + 1;
    }
}

/* path made absolute against the working directory (so a resumed run finds its data from
 * anywhere); -1 when it does not fit. */
static int absolute_path(const char *path, char *out, size_t size) {
    if (path[0] == '/' || !getcwd(out, size)) {
        if (strlen(path) >= size) return -1;
        strcpy(out, path);
        return 0;
    }
    const size_t used = strlen(out);
    const int n = snprintf(out + used, size - used, "/%s", path);
    return n < 0 || (size_t)n >= size - used ? -1 : 0;
}

/* ---------------------------------------------------------------- app_state */

/* Typed reads of app_state values: 1 when found and well formed, 0 when absent; a value that
 * does not parse is bad input (exit 1). */
static int app_i64(const char *text, const char *key, int64_t *out) {
    char buf[64];
    if (!stx_cli_app_get(text, key, buf, sizeof buf)) return 0;
    char *end = NULL;
    errno = 0;
    const long long v = strtoll(buf, &end, 10);
    if (end == buf || *end || errno)
        stx_cli_fail(g_prog, "checkpoint app_state: %s=%s is not a whole number", key, buf);
    *out = (int64_t)v;
    return 1;
}

static int app_u64(const char *text, const char *key, uint64_t *out) {
    char buf[64];
    if (!stx_cli_app_get(text, key, buf, sizeof buf)) return 0;
    char *end = NULL;
    errno = 0;
    const unsigned long long v = strtoull(buf, &end, 10);
    if (end == buf || *end || errno || buf[0] == '-')
        stx_cli_fail(g_prog, "checkpoint app_state: %s=%s is not an unsigned number", key, buf);
    *out = (uint64_t)v;
    return 1;
}

static int app_f64(const char *text, const char *key, double *out) {
    char buf[64];
    if (!stx_cli_app_get(text, key, buf, sizeof buf)) return 0;
    char *end = NULL;
    const double v = strtod(buf, &end);
    if (end == buf || *end || !isfinite(v))
        stx_cli_fail(g_prog, "checkpoint app_state: %s=%s is not a number", key, buf);
    *out = v;
    return 1;
}

static int app_int(const char *text, const char *key, int *out) {
    int64_t v;
    if (!app_i64(text, key, &v)) return 0;
    if (v < INT_MIN || v > INT_MAX)
        stx_cli_fail(g_prog, "checkpoint app_state: %s=%" PRId64 " is out of range", key, v);
    *out = (int)v;
    return 1;
}

/* ---------------------------------------------------------------- the run */

typedef struct run {
    options o;
    stx_model *model;
    stx_config cfg;
    stx_dataset *data;
    char data_path[4096]; /* absolute, as the checkpoint records it */
    char log_path[4096];  /* absolute, "" without --log */
    int64_t train_begin, train_end, valid_begin, valid_end;
    int32_t T;             /* training window: n_ctx */
    uint64_t rng;          /* the data generator state (stx_dataset_sample) */
    double elapsed0;       /* seconds of earlier processes of this run (from app_state) */
    double t_start;        /* cli_now() when this process started training */
    uint8_t *tokens;       /* [batch, T] */
    uint8_t *eval_buf;     /* [batch, T] */
    int64_t skipped;       /* steps skipped for a non-finite loss or gradient norm, whole run */
    const char *ckpt_path; /* the last checkpoint written or resumed from (NULL: none) */
    dist_env env;          /* rank and world size (world 1 when not data parallel) */
    stx_dist *dist;        /* NULL when not data parallel */
    int32_t local_batch;   /* the batch of this rank: --batch / world */
    int32_t shard_first;   /* its first sequence in the global batch */
    int64_t ckpt_step;     /* its step */
} run;

static double elapsed(const run *r) {
    return r->elapsed0 + (cli_now() - r->t_start);
}

/* Splitmix64: the first data generator state from the seed. */
static uint64_t mix_seed(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return (x ^ (x >> 31)) | 1u;
}

static void save_checkpoint(run *r, const char *path) {
    int64_t step = 0;
    if (stx_model_get_step(r->model, &step) != STX_OK) stx_cli_die(g_prog, "step");
    char state[8192];
    const options *o = &r->o;
    const int n = snprintf(
        state, sizeof state,
        "format=%s\ndata_path=%s\nlog_path=%s\ndata_kind=%s\ndata_resample=%d\ndata_rng=%" PRIu64
        "\nstep=%" PRId64 "\nsteps=%" PRId64 "\nbatch=%d\nlr=%.17g\nmin_lr=%.17g\n"
        "warmup=%" PRId64 "\nclip=%.17g\nweight_decay=%.17g\neval_every=%" PRId64
        "\neval_batches=%d\nsave_every=%" PRId64 "\nlog_every=%" PRId64 "\nsample_every=%" PRId64
        "\nsample_len=%d\nelapsed_s=%.3f\nmax_bad_steps=%" PRId64 "\nskipped_steps=%" PRId64
        "\nworld_size=%d\n",
        APP_FORMAT, r->data_path, r->log_path, kKindNames[o->kind], o->resample, r->rng, step,
        o->steps, o->batch, o->lr, o->min_lr, o->warmup, o->clip, o->weight_decay, o->eval_every,
        o->eval_batches, o->save_every, o->log_every, o->sample_every, o->sample_len, elapsed(r),
        o->max_bad_steps, r->skipped, r->env.world);
    if (n < 0 || n >= (int)sizeof state) stx_cli_fail(g_prog, "app_state does not fit");
    if (stx_model_save(r->model, path, state) != STX_OK) stx_cli_die(g_prog, "save");
    r->ckpt_path = path;
    r->ckpt_step = step;
}

/* Validation loss in nats per byte over up to eval_batches batches of consecutive
 * non-overlapping windows from the start of the valid split (0 batches: all of it); a split
 * shorter than n_ctx is one shorter window. NaN when the split is empty. *n_scored gets the
 * bytes scored. */
static double validation_nats(run *r, int64_t *n_scored) {
    const int64_t len = r->valid_end - r->valid_begin;
    *n_scored = 0;
    if (len <= 0) return (double)NAN;
    const int32_t T = len < r->T ? (int32_t)len : r->T;
    int64_t windows = len / T;
    const int64_t cap = (int64_t)r->o.eval_batches * r->o.batch;
    if (cap > 0 && windows > cap) windows = cap;
    /* Data parallel: each rank scores a contiguous share of the windows; the sums are global. */
    const int64_t w_begin = windows * r->env.rank / r->env.world;
    const int64_t w_end = windows * (r->env.rank + 1) / r->env.world;
    double sum = 0.0;
    for (int64_t w = w_begin; w < w_end;) {
        const int32_t nb = w_end - w < r->o.batch ? (int32_t)(w_end - w) : r->o.batch;
        const int64_t at = r->valid_begin + w * T;
        if (stx_dataset_read(r->data, at, r->eval_buf, (int64_t)nb * T) != STX_OK)
            stx_cli_die(g_prog, "read validation data");
        double loss = 0.0;
        if (stx_evaluate(r->model, r->eval_buf, nb, T, &loss) != STX_OK)
            stx_cli_die(g_prog, "evaluate");
        sum += loss * (double)nb * (double)T;
        w += nb;
    }
    if (r->dist) {
        double total[1] = {sum};
        if (stx_dist_allreduce(r->dist, total, 1, STX_REDUCE_SUM) != STX_OK)
            stx_cli_die(g_prog, "validation (all-reduce)");
        sum = total[0];
    }
    *n_scored = windows * T;
    return sum / (double)*n_scored;
}

/* An unconditional sample of sample_len bytes, printed with unprintable bytes as '.'. */
static char *draw_sample(run *r, int64_t step) {
    const int32_t n = r->o.sample_len;
    uint8_t *out = malloc((size_t)n + 1);
    char *text = malloc((size_t)n + 1);
    if (!out || !text) stx_cli_fail(g_prog, "out of memory for a sample of %d bytes", n);
    stx_sample_config sc;
    stx_sample_config_init(&sc);
    sc.seed = r->cfg.seed + (uint64_t)step;
    int32_t length = 0;
    uint8_t no_prompt = 0;
    if (stx_sample(r->model, &no_prompt, 0, n, 1, &sc, out, &length) != STX_OK)
        stx_cli_die(g_prog, "sample");
    for (int32_t i = 0; i < length; ++i) {
        const uint8_t c = out[i];
        text[i] = (char)((c >= 32 && c < 127) || c == '\n' || c == '\t' ? c : '.');
    }
    text[length] = '\0';
    free(out);
    return text;
}

static const char *backend_name(int32_t backend) {
    return backend == STX_BACKEND_CUDA ? "cuda" : backend == STX_BACKEND_CPU ? "cpu" : "auto";
}

/* ---------------------------------------------------------------- non-finite steps */

/* "nan", "inf" or "-inf" for a non-finite value. */
static const char *nonfinite_name(double x) {
    return isnan(x) ? "nan" : x > 0 ? "inf" : "-inf";
}

/* A JSON true/false field (the log helpers have none). */
static void jsonl_bool(cli_jsonl *log, const char *key, int value) {
    if (!log->file) return;
    if (log->fields++) fputc(',', log->file);
    cli_json_write_string(log->file, key);
    fprintf(log->file, ":%s", value ? "true" : "false");
}

/* A test hook's list of attempts ("5,6", "5-30"): ranges [first, last], read from the
 * environment once. Empty (n == 0) when the variable is unset. */
#define MAX_INJECT 16
typedef struct inject_list {
    const char *name;
    int n;
    int64_t first[MAX_INJECT], last[MAX_INJECT];
} inject_list;

static void inject_parse(inject_list *list, const char *name) {
    list->name = name;
    list->n = 0;
    const char *text = getenv(name);
    if (!text || !*text) return;
    for (const char *p = text;;) {
        char *end = NULL;
        errno = 0;
        const long long a = strtoll(p, &end, 10);
        long long b = a;
        int ok = end != p && !errno && a >= 1 && list->n < MAX_INJECT;
        if (ok && *end == '-') {
            p = end + 1;
            b = strtoll(p, &end, 10);
            ok = end != p && !errno && b >= a;
        }
        if (!ok || (*end && *end != ','))
            stx_cli_fail(g_prog, "%s: '%s' is not a list of steps like 5,6 or 5-30", name, text);
        list->first[list->n] = a;
        list->last[list->n] = b;
        ++list->n;
        if (!*end) return;
        p = end + 1;
    }
}

static int inject_at(const inject_list *list, int64_t attempt) {
    for (int i = 0; i < list->n; ++i)
        if (attempt >= list->first[i] && attempt <= list->last[i]) return 1;
    return 0;
}

/* Set element 0 of a parameter (grad == 0) or of its gradient to NaN (a test hook). */
static void inject_nan(run *r, const char *name, int grad) {
    int32_t count = 0;
    if (stx_param_count(r->model, &count) != STX_OK) stx_cli_die(g_prog, "inject");
    for (int32_t i = 0; i < count; ++i) {
        const char *pname = NULL;
        int32_t ndim = 0;
        int64_t shape[STX_MAX_DIMS], numel = 1;
        if (stx_param_info(r->model, i, &pname, &ndim, shape) != STX_OK)
            stx_cli_die(g_prog, "inject");
        if (strcmp(pname, name) != 0) continue;
        for (int32_t d = 0; d < ndim; ++d) numel *= shape[d];
        float *v = malloc((size_t)numel * sizeof *v);
        if (!v) stx_cli_fail(g_prog, "out of memory");
        const stx_status st = grad
                                  ? stx_grad_read(r->model, name, STX_DTYPE_F32, v, (size_t)numel)
                                  : stx_param_read(r->model, name, STX_DTYPE_F32, v, (size_t)numel);
        if (st != STX_OK) stx_cli_die(g_prog, "inject");
        v[0] = NAN;
        const stx_status wt =
            grad ? stx_grad_write(r->model, name, STX_DTYPE_F32, v, (size_t)numel)
                 : stx_param_write(r->model, name, STX_DTYPE_F32, v, (size_t)numel);
        if (wt != STX_OK) stx_cli_die(g_prog, "inject");
        free(v);
        return;
    }
    stx_cli_fail(g_prog, "inject: no parameter named %s", name);
}

/* ---------------------------------------------------------------- data parallel */

/* Stops every rank (each sees the same result) when the replicas' weights differ. */
static void check_weights(run *r, int64_t step) {
    uint64_t sum = 0;
    int32_t equal = 0;
    if (stx_dist_check_weights(r->dist, r->model, &sum, &equal) != STX_OK)
        stx_cli_die(g_prog, "weight check");
    if (!equal)
        stx_cli_fail(g_prog,
                     "the ranks' weights differ at step %" PRId64 " (this rank's checksum "
                     "%016" PRIx64 "): the replicas drifted apart; stopping",
                     step, sum);
}

/* Joins the communicator (rank 0 publishes its id in the rendezvous file, the others read it),
 * attaches it to the model and checks that every rank starts from the same weights. */
static void setup_dist(run *r) {
    const options *o = &r->o;
    stx_dist_id id;
    memset(&id, 0, sizeof id);
    const int world = r->env.world, rank = r->env.rank;
    const int32_t device = r->cfg.backend == STX_BACKEND_CUDA ? r->cfg.device : STX_DIST_CPU;
    /* A CPU world of several ranks has no NCCL id to publish: stx_dist_create refuses it below
     * with the reason, in a build without NCCL too (where stx_dist_unique_id would fail first,
     * saying less). */
    const int publish = world > 1 && rank == 0 && device != STX_DIST_CPU;
    char err[600];
    if (publish) {
        if (stx_dist_unique_id(&id) != STX_OK) stx_cli_die(g_prog, "data parallel");
        if (dist_rendezvous_publish(o->rendezvous, &id, err, sizeof err) != 0)
            stx_cli_fail(g_prog, "%s", err);
    } else if (world > 1 && rank > 0 &&
               dist_rendezvous_read(o->rendezvous, o->dist_timeout, &id, err, sizeof err) != 0) {
        stx_cli_fail(g_prog, "%s", err);
    }
    const stx_status st =
        stx_dist_create(rank, world, world > 1 ? &id : NULL, device, o->dist_timeout, &r->dist);
    if (publish) unlink(o->rendezvous); /* everyone joined (or gave up) */
    if (st != STX_OK) stx_cli_die(g_prog, "data parallel");
    stx_dist_options dopt;
    stx_dist_options_init(&dopt);
    dopt.grads = o->grad_allreduce ? STX_DIST_GRADS_BF16 : STX_DIST_GRADS_FP32;
    dopt.bucket_layers = o->bucket_layers;
    if (stx_model_set_dist(r->model, r->dist, &dopt) != STX_OK ||
        stx_model_set_dropout_offset(r->model, r->shard_first) != STX_OK)
        stx_cli_die(g_prog, "data parallel");
    check_weights(r, 0);
}

/* ---------------------------------------------------------------- setup */

/* The model config of a fresh run: preset (or the library's defaults), the dataset's record
 * shape for image kinds, then the explicit options. Usage errors return 2. */
/* --device as a backend and device; in a data-parallel run each rank takes GPU LOCAL_RANK unless
 * --device names one. 0, or the exit code of a usage error. */
static int parse_rank_device(const stx_cli *cli, const options *o, const dist_env *env,
                             int32_t *backend, int32_t *device) {
    if (stx_cli_parse_device(o->device, backend, device) != 0)
        return stx_cli_usage_error(cli, "--device: '%s' is not cpu, cuda, cuda:N or auto",
                                   o->device);
    if (env->present && !strchr(o->device, ':')) *device = env->local_rank;
    return 0;
}

static int build_config(stx_cli *cli, const options *o, const stx_data_info *info,
                        const dist_env *env, stx_config *cfg) {
    if (stx_cli_find(cli, "preset")->seen) {
        if (stx_config_preset(cfg, kPresetNames[o->preset]) != STX_OK)
            stx_cli_die(g_prog, "--preset");
    } else {
        stx_config_init(cfg);
    }
    const int ctx_seen = stx_cli_find(cli, "ctx")->seen;
    const int shape_seen = stx_cli_find(cli, "pos-shape")->seen;
    if (info->record_size > 0 && info->n_axes > 0) { /* images: one record is one window */
        const int32_t n = ctx_seen ? o->ctx : (int32_t)info->record_size;
        if (n == info->record_size) {
            cfg->n_ctx = n;
            cfg->n_pos_axes = info->n_axes;
            for (int a = 0; a < STX_MAX_POS_AXES; ++a)
                cfg->pos_shape[a] = a < info->n_axes ? info->shape[a] : 0;
        }
    }
    if (ctx_seen) cfg->n_ctx = o->ctx;
    if (shape_seen) {
        int32_t shape[STX_MAX_POS_AXES] = {0, 0, 0, 0};
        const int n = parse_shape(o->pos_shape, shape);
        if (n < 0)
            return stx_cli_usage_error(cli, "--pos-shape: '%s' is not a list like 32,32,3 or 1d",
                                       o->pos_shape);
        cfg->n_pos_axes = n;
        for (int a = 0; a < STX_MAX_POS_AXES; ++a) cfg->pos_shape[a] = shape[a];
    } else if (cfg->n_pos_axes > 0) {
        /* A preset's shape that no longer fits n_ctx: keep the row width of a 2-axis shape
         * ([n_ctx / l, l], the text layout) when it divides n_ctx, else one axis. */
        int64_t prod = 1;
        for (int a = 0; a < cfg->n_pos_axes; ++a) prod *= cfg->pos_shape[a];
        if (prod != cfg->n_ctx) {
            const int32_t l = cfg->pos_shape[cfg->n_pos_axes - 1];
            if (cfg->n_pos_axes == 2 && cfg->n_ctx % l == 0 && cfg->n_ctx > l) {
                cfg->pos_shape[0] = cfg->n_ctx / l;
            } else {
                cfg->n_pos_axes = 0;
                memset(cfg->pos_shape, 0, sizeof cfg->pos_shape);
            }
        }
    }
    if (stx_cli_find(cli, "layers")->seen) cfg->n_layer = o->layers;
    if (stx_cli_find(cli, "width")->seen) cfg->n_embd = o->width;
    if (stx_cli_find(cli, "heads")->seen) cfg->n_head = o->heads;
    if (stx_cli_find(cli, "block")->seen) cfg->block_size = o->block;
    if (stx_cli_find(cli, "ff-mult")->seen) cfg->ff_mult = o->ff_mult;
    if (stx_cli_find(cli, "recompute")->seen) cfg->recompute = o->recompute;
    if (stx_cli_find(cli, "precision")->seen) cfg->precision = o->precision;
    if (stx_cli_find(cli, "dropout")->seen) cfg->dropout = (float)o->dropout;
    if (stx_cli_find(cli, "qk-ratio")->seen) cfg->qk_ratio = (float)o->qk_ratio;
    if (stx_cli_find(cli, "seed")->seen) cfg->seed = o->seed;
    if (stx_cli_find(cli, "pattern")->seen) {
        if (strlen(o->pattern) >= STX_PATTERN_MAX)
            stx_cli_fail(g_prog, "--pattern: longer than %d characters", STX_PATTERN_MAX - 1);
        strcpy(cfg->pattern, o->pattern);
    }
    cfg->n_threads = o->threads;
    int32_t backend = 0, device = 0;
    const int bad = parse_rank_device(cli, o, env, &backend, &device);
    if (bad) return bad;
    cfg->backend = backend;
    cfg->device = device;
    /* fp32 and auto on a machine without CUDA: keep auto; bf16 on auto needs CUDA: say so
     * through the library's message. */
    if (cfg->backend == STX_BACKEND_AUTO && cfg->precision == STX_PRECISION_BF16 &&
        !stx_backend_available(STX_BACKEND_CUDA))
        cfg->backend = STX_BACKEND_CPU;
    return STX_CLI_CONTINUE;
}

/* Settings a resumed run takes from the checkpoint's app_state unless given again. */
static void restore_settings(stx_cli *cli, options *o, const char *app) {
#define SEEN(name) (stx_cli_find(cli, name)->seen)
    if (!SEEN("steps")) app_i64(app, "steps", &o->steps);
    if (!SEEN("batch")) app_int(app, "batch", &o->batch);
    if (!SEEN("lr")) app_f64(app, "lr", &o->lr);
    if (!SEEN("min-lr")) app_f64(app, "min_lr", &o->min_lr);
    if (!SEEN("warmup")) app_i64(app, "warmup", &o->warmup);
    if (!SEEN("clip")) app_f64(app, "clip", &o->clip);
    if (!SEEN("weight-decay")) app_f64(app, "weight_decay", &o->weight_decay);
    if (!SEEN("eval-every")) app_i64(app, "eval_every", &o->eval_every);
    if (!SEEN("eval-batches")) app_int(app, "eval_batches", &o->eval_batches);
    if (!SEEN("save-every")) app_i64(app, "save_every", &o->save_every);
    if (!SEEN("log-every")) app_i64(app, "log_every", &o->log_every);
    if (!SEEN("sample-every")) app_i64(app, "sample_every", &o->sample_every);
    if (!SEEN("sample-len")) app_int(app, "sample_len", &o->sample_len);
    if (!SEEN("resample")) app_int(app, "data_resample", &o->resample);
    if (!SEEN("max-bad-steps")) app_i64(app, "max_bad_steps", &o->max_bad_steps);
    if (!SEEN("kind")) {
        char kind[32];
        if (stx_cli_app_get(app, "data_kind", kind, sizeof kind)) {
            int k = -1;
            for (int i = 0; i < 4; ++i)
                if (!strcmp(kind, kKindNames[i])) k = i;
            if (k < 0) stx_cli_fail(g_prog, "checkpoint app_state: unknown data_kind=%s", kind);
            o->kind = k;
        }
    }
#undef SEEN
}

/* Checks of the numeric options that the library does not see; 2 on a usage error. */
static int check_options(stx_cli *cli, const options *o) {
    if (o->steps < 1) return stx_cli_usage_error(cli, "--steps must be at least 1");
    if (o->batch < 1) return stx_cli_usage_error(cli, "--batch must be at least 1");
    if (o->warmup < 0 || o->warmup >= o->steps)
        return stx_cli_usage_error(cli,
                                   "--warmup (%" PRId64 ") must be >= 0 and less than --steps "
                                   "(%" PRId64 ")",
                                   o->warmup, o->steps);
    if (o->save_every < 0 || o->eval_every < 0 || o->sample_every < 0)
        return stx_cli_usage_error(cli, "--save-every, --eval-every and --sample-every must be "
                                        ">= 0 (0: off)");
    if (o->log_every < 1) return stx_cli_usage_error(cli, "--log-every must be at least 1");
    if (o->eval_batches < 0)
        return stx_cli_usage_error(cli, "--eval-batches must be >= 0 (0: the whole split)");
    if (o->sample_len < 1) return stx_cli_usage_error(cli, "--sample-len must be at least 1");
    if (o->threads < 0) return stx_cli_usage_error(cli, "--threads must be >= 0 (0: all)");
    if (o->resample < 0) return stx_cli_usage_error(cli, "--resample must be >= 0");
    if (o->max_bad_steps < 1) return stx_cli_usage_error(cli, "--max-bad-steps must be at least 1");
    return STX_CLI_CONTINUE;
}

int main(int argc, char **argv) {
    run r;
    memset(&r, 0, sizeof r);
    options *o = &r.o;
    o->device = "auto";
    o->threads = 0;
    o->seed = 1;
    o->lr = 3e-4;
    o->min_lr = 0.0;
    o->warmup = 0;
    o->steps = 1000;
    o->batch = 8;
    o->clip = 1.0;
    o->weight_decay = 0.01;
    o->eval_every = 0;
    o->eval_batches = 8;
    o->log_every = 10;
    o->sample_len = 200;
    o->recompute = 1;
    o->max_bad_steps = 20;
    o->memory_limit_mb = 0;
    o->bucket_layers = 2;
    o->check_weights_every = 100;
    o->dist_timeout = 300.0;

    stx_cli_opt table[] = {
        STX_OPT("data", 0, STX_OPT_STRING, &o->data, "the positional DATA",
                "training data file (raw or gzip)"),
        STX_OPT_CHOICE("kind", 0, &o->kind, "bytes|idx|cifar|wav", "bytes",
                       "how to read DATA: a byte stream, IDX images, CIFAR-10 batch, WAV audio"),
        STX_OPT("resample", 0, STX_OPT_INT, &o->resample, "0: the file's rate",
                "wav: resample the audio to this rate in Hz (the paper: 12000)"),
        STX_OPT_CHOICE("preset", 0, &o->preset, "enwik8|cifar10|imagenet64|tiny",
                       "none: the library's 2 layers, d 64, 2 heads, dense, n_ctx 256",
                       "start from a preset model config; the options below override it"),
        STX_OPT("layers", 0, STX_OPT_INT, &o->layers, "preset", "residual blocks"),
        STX_OPT("width", 0, STX_OPT_INT, &o->width, "preset", "model width d"),
        STX_OPT("heads", 0, STX_OPT_INT, &o->heads, "preset", "attention heads"),
        STX_OPT("pattern", 0, STX_OPT_STRING, &o->pattern, "preset",
                "attention pattern, e.g. fixed:128:32:4 or local:128+strided:128"),
        STX_OPT("block", 0, STX_OPT_INT, &o->block, "preset", "attention block size 16|32|64|128"),
        STX_OPT("ctx", 0, STX_OPT_INT, &o->ctx, "preset; images: the record size",
                "context n_ctx in bytes"),
        STX_OPT("pos-shape", 0, STX_OPT_STRING, &o->pos_shape,
                "preset's if it fits n_ctx; images: [H,W,C]",
                "position shape, e.g. 32,32,3 or 96,128, or 1d"),
        STX_OPT("dropout", 0, STX_OPT_DOUBLE, &o->dropout, "preset", "residual dropout"),
        STX_OPT("ff-mult", 0, STX_OPT_INT, &o->ff_mult, "preset", "feed-forward width / d"),
        STX_OPT("qk-ratio", 0, STX_OPT_DOUBLE, &o->qk_ratio, "preset", "query/key width / d"),
        STX_OPT("recompute", 0, STX_OPT_INT, &o->recompute, "1",
                "1: recompute activations in backward (less memory), 2: all but attention, "
                "0: store them"),
        STX_OPT_CHOICE("precision", 0, &o->precision, "fp32|fp64|bf16", "fp32",
                       "arithmetic (fp64: CPU only, bf16: CUDA only)"),
        STX_OPT("device", 0, STX_OPT_STRING, &o->device, "auto",
                "cpu, cuda, cuda:N or auto (CUDA when present)"),
        STX_OPT("threads", 0, STX_OPT_INT, &o->threads, "0: OpenMP's default", "CPU threads"),
        STX_OPT("memory-limit", 0, STX_OPT_INT64, &o->memory_limit_mb, "0: none",
                "MiB of model memory (weights, optimizer, activations; device memory on CUDA)"),
        STX_OPT("seed", 0, STX_OPT_UINT64, &o->seed, "1",
                "weight init, dropout masks and the data order"),
        STX_OPT("lr", 0, STX_OPT_DOUBLE, &o->lr, "3e-4", "peak learning rate"),
        STX_OPT("min-lr", 0, STX_OPT_DOUBLE, &o->min_lr, "0",
                "learning rate at the end of the cosine decay"),
        STX_OPT("warmup", 0, STX_OPT_INT64, &o->warmup, "0", "linear warmup steps"),
        STX_OPT("steps", 0, STX_OPT_INT64, &o->steps, "1000",
                "total optimizer steps (the cosine decay ends here)"),
        STX_OPT("batch", 0, STX_OPT_INT, &o->batch, "8", "windows of n_ctx bytes per step"),
        STX_OPT("clip", 0, STX_OPT_DOUBLE, &o->clip, "1.0", "gradient global-norm clip, 0: off"),
        STX_OPT("weight-decay", 0, STX_OPT_DOUBLE, &o->weight_decay, "0.01",
                "decoupled weight decay on matrices"),
        STX_OPT("save", 0, STX_OPT_STRING, &o->save, "none; with --resume: the resumed file",
                "checkpoint written at the end, every --save-every steps and on Ctrl-C"),
        STX_OPT("save-every", 0, STX_OPT_INT64, &o->save_every, "0: only at the end",
                "also save every N steps"),
        STX_OPT("resume", 0, STX_OPT_STRING, &o->resume, "none",
                "continue from a checkpoint (model, optimizer, data order, settings)"),
        STX_OPT("eval-every", 0, STX_OPT_INT64, &o->eval_every, "0: only at the end",
                "validation bits per byte every N steps"),
        STX_OPT("eval-batches", 0, STX_OPT_INT, &o->eval_batches, "8",
                "batches of --batch consecutive windows of the valid split; 0: all of it"),
        STX_OPT("log", 0, STX_OPT_STRING, &o->log, "none; with --resume: the run's log",
                "JSON-lines log: one object per log interval and per evaluation (appended "
                "to on --resume; \"\" for none)"),
        STX_OPT("log-every", 0, STX_OPT_INT64, &o->log_every, "10",
                "steps between log lines (and log records)"),
        STX_OPT("sample-every", 0, STX_OPT_INT64, &o->sample_every, "0: never",
                "print an unconditional sample every N steps"),
        STX_OPT("sample-len", 0, STX_OPT_INT, &o->sample_len, "200", "bytes per sample"),
        STX_OPT("max-bad-steps", 0, STX_OPT_INT64, &o->max_bad_steps, "20",
                "stop (exit 1, saving nothing) after N consecutive steps skipped for a "
                "non-finite loss or gradient norm"),
        STX_OPT("dist-rendezvous", 0, STX_OPT_STRING, &o->rendezvous,
                "$STX_DIST_RENDEZVOUS (sparsetx-launch sets it)",
                "data parallel: a file all ranks see, where rank 0 publishes the communicator id "
                "(must not exist before the run); rank and world size come from RANK, "
                "WORLD_SIZE, LOCAL_RANK or OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK"),
        STX_OPT_CHOICE("grad-allreduce", 0, &o->grad_allreduce, "fp32|bf16", "fp32",
                       "data parallel: the precision gradients are all-reduced in"),
        STX_OPT("bucket-layers", 0, STX_OPT_INT, &o->bucket_layers, "2",
                "data parallel: blocks per gradient all-reduce (overlapped with the backward)"),
        STX_OPT("check-weights-every", 0, STX_OPT_INT64, &o->check_weights_every, "100",
                "data parallel: check that every rank holds the same weights every N steps "
                "(and at the start); 0: only at the start"),
        STX_OPT("dist-timeout", 0, STX_OPT_DOUBLE, &o->dist_timeout, "300",
                "data parallel: seconds to wait for the other ranks before giving up"),
        STX_OPT("plain", 0, STX_OPT_FLAG, &o->plain, NULL,
                "plain log lines even on a terminal (no progress bar)"),
        STX_OPT_END};
    stx_cli cli = {PROG, "DATA [options]  |  --resume CHECKPOINT [options]",
                   "Train a Sparse Transformer on a byte file, an image set or audio. Ctrl-C "
                   "saves a checkpoint (--save) and stops; --resume continues it exactly.",
                   table};
    const char *positional[1] = {NULL};
    int n_pos = 0;
    int rc = stx_cli_parse(&cli, argc, argv, positional, 1, &n_pos);
    if (rc != STX_CLI_CONTINUE) return rc;
    if (n_pos && stx_cli_find(&cli, "data")->seen)
        return stx_cli_usage_error(&cli, "DATA given twice (positional and --data)");
    if (n_pos) o->data = positional[0];

    /* -------------------------------------------------- data parallel: who we are */
    char env_err[512];
    if (dist_env_read(&r.env, env_err, sizeof env_err) != 0)
        return stx_cli_usage_error(&cli, "%s", env_err);
    if (!o->rendezvous && getenv("STX_DIST_RENDEZVOUS") && *getenv("STX_DIST_RENDEZVOUS"))
        o->rendezvous = getenv("STX_DIST_RENDEZVOUS");
    if (stx_cli_find(&cli, "dist-rendezvous")->seen && !r.env.present)
        return stx_cli_usage_error(&cli, "--dist-rendezvous needs RANK and WORLD_SIZE (or "
                                         "OMPI_COMM_WORLD_RANK and _SIZE) in the environment; "
                                         "sparsetx-launch sets them");
    if (r.env.world > 1 && !o->rendezvous)
        return stx_cli_usage_error(&cli,
                                   "WORLD_SIZE=%d: give --dist-rendezvous FILE (a file every rank "
                                   "sees) or run under sparsetx-launch",
                                   r.env.world);
    if (o->bucket_layers < 1) return stx_cli_usage_error(&cli, "--bucket-layers must be >= 1");
    if (o->check_weights_every < 0)
        return stx_cli_usage_error(&cli, "--check-weights-every must be >= 0");
    if (!(o->dist_timeout > 0.0)) return stx_cli_usage_error(&cli, "--dist-timeout must be > 0");
    if (r.env.present) {
        snprintf(g_prog, sizeof g_prog, PROG " (rank %d of %d)", r.env.rank, r.env.world);
        if (r.env.rank > 0) {
            /* One voice: rank 0 prints, logs and saves; the others only train. */
            if (!freopen("/dev/null", "w", stdout))
                stx_cli_fail(g_prog, "cannot silence stdout: %s", strerror(errno));
            o->plain = 1;
        }
    }

    /* -------------------------------------------------- the model and its state */
    const char *app = "";
    int64_t step0 = 0;
    if (o->resume) {
        for (size_t i = 0; i < sizeof kModelOptions / sizeof *kModelOptions; ++i)
            if (stx_cli_find(&cli, kModelOptions[i])->seen)
                return stx_cli_usage_error(&cli,
                                           "--%s cannot be combined with --resume (the model "
                                           "comes from the checkpoint)",
                                           kModelOptions[i]);
        int32_t backend = 0, device = 0;
        const int bad = parse_rank_device(&cli, o, &r.env, &backend, &device);
        if (bad) return bad;
        if (stx_model_load(o->resume, backend, device, &r.model) != STX_OK)
            stx_cli_die(g_prog, "resume");
        if (stx_model_get_config(r.model, &r.cfg) != STX_OK) stx_cli_die(g_prog, "config");
        if (stx_model_get_step(r.model, &step0) != STX_OK) stx_cli_die(g_prog, "step");
        app = stx_model_app_state(r.model);
        restore_settings(&cli, o, app);
        if (!o->save) o->save = o->resume;
    }
    if ((rc = check_options(&cli, o)) != STX_CLI_CONTINUE) {
        stx_model_free(r.model);
        return rc;
    }
    /* --batch is the global batch; this rank trains on its contiguous share. */
    if (stx_shard_batch(o->batch, r.env.world, r.env.rank, &r.shard_first, &r.local_batch) !=
        STX_OK) {
        stx_model_free(r.model);
        return stx_cli_usage_error(&cli, "--batch %d with %d ranks (%s): %s", o->batch, r.env.world,
                                   r.env.source, stx_last_error());
    }
    if (r.env.rank > 0) o->save = NULL; /* rank 0 alone writes checkpoints */

    /* -------------------------------------------------- data */
    char app_data[4096] = "";
    if (!o->data && stx_cli_app_get(app, "data_path", app_data, sizeof app_data))
        o->data = app_data;
    if (!o->data) {
        stx_model_free(r.model);
        return stx_cli_usage_error(&cli, o->resume ? "the checkpoint names no data file: give DATA"
                                                   : "no DATA file given");
    }
    if (stx_dataset_open(o->data, (stx_data_kind)o->kind, o->resample, &r.data) != STX_OK)
        stx_cli_die(g_prog, "data");
    stx_data_info info;
    if (stx_dataset_info(r.data, &info) != STX_OK) stx_cli_die(g_prog, "data");
    if (absolute_path(o->data, r.data_path, sizeof r.data_path) != 0)
        stx_cli_fail(g_prog, "data path is too long: %s", o->data);
    if (strchr(r.data_path, '\n'))
        stx_cli_fail(g_prog, "data path contains a newline, which a checkpoint cannot record");
    if (stx_dataset_split(r.data, STX_SPLIT_TRAIN, &r.train_begin, &r.train_end) != STX_OK ||
        stx_dataset_split(r.data, STX_SPLIT_VALID, &r.valid_begin, &r.valid_end) != STX_OK)
        stx_cli_die(g_prog, "data split");

    /* -------------------------------------------------- a fresh model */
    if (!o->resume) {
        if ((rc = build_config(&cli, o, &info, &r.env, &r.cfg)) != STX_CLI_CONTINUE) {
            stx_dataset_free(r.data);
            return rc;
        }
        if (stx_model_create(&r.cfg, &r.model) != STX_OK) stx_cli_die(g_prog, "model");
        if (stx_model_get_config(r.model, &r.cfg) != STX_OK) stx_cli_die(g_prog, "config");
        r.rng = mix_seed(r.cfg.seed);
    } else {
        int64_t app_step = step0;
        const int have_rng = app_u64(app, "data_rng", &r.rng);
        app_i64(app, "step", &app_step);
        app_f64(app, "elapsed_s", &r.elapsed0);
        if (app_i64(app, "skipped_steps", &r.skipped) && r.skipped < 0)
            stx_cli_fail(g_prog, "checkpoint app_state: skipped_steps=%" PRId64 " is negative",
                         r.skipped);
        r.ckpt_path = o->resume;
        r.ckpt_step = step0;
        if (app_step != step0)
            stx_cli_fail(g_prog,
                         "%s: app_state step=%" PRId64 " but the model is at step %" PRId64
                         " (the checkpoint is inconsistent)",
                         o->resume, app_step, step0);
        if (!have_rng) {
            /* A checkpoint written by another program: a new data order from the seed. */
            r.rng = mix_seed(r.cfg.seed ^ (uint64_t)step0);
            fprintf(stderr,
                    PROG ": note: %s has no data_rng; the data order restarts from the seed\n",
                    o->resume);
        }
        if (stx_cli_find(&cli, "threads")->seen) {
            if (stx_model_set_threads(r.model, o->threads) != STX_OK)
                stx_cli_die(g_prog, "--threads");
            r.cfg.n_threads = o->threads;
        }
    }
    if (o->memory_limit_mb < 0) return stx_cli_usage_error(&cli, "--memory-limit must be >= 0");
    if (o->memory_limit_mb > 0 &&
        stx_model_set_memory_limit(r.model, o->memory_limit_mb * 1024 * 1024) != STX_OK)
        stx_cli_die(g_prog, "--memory-limit");
    r.T = r.cfg.n_ctx;
    if (r.train_end - r.train_begin < r.T)
        stx_cli_fail(g_prog,
                     "data: the train split of %s holds %" PRId64
                     " bytes, fewer than one window of n_ctx = %d (use a larger file or --ctx)",
                     o->data, r.train_end - r.train_begin, r.T);

    stx_optim_config opt;
    stx_optim_config_init(&opt);
    opt.lr = o->lr;
    opt.min_lr = o->min_lr;
    opt.warmup_steps = o->warmup;
    opt.total_steps = o->steps;
    opt.grad_clip = o->clip;
    opt.weight_decay = o->weight_decay;
    if (stx_model_set_optimizer(r.model, &opt) != STX_OK) stx_cli_die(g_prog, "optimizer");
    if (r.env.present) setup_dist(&r);

    const size_t window_bytes = (size_t)o->batch * (size_t)r.T;
    r.tokens = malloc(window_bytes);
    r.eval_buf = malloc(window_bytes);
    if (!r.tokens || !r.eval_buf)
        stx_cli_fail(g_prog, "out of memory for a batch of %d x %d bytes", o->batch, r.T);

    char app_log[4096] = "";
    if (o->resume && !stx_cli_find(&cli, "log")->seen &&
        stx_cli_app_get(app, "log_path", app_log, sizeof app_log) && app_log[0])
        o->log = app_log;
    if (o->log && !o->log[0]) o->log = NULL;
    if (r.env.rank > 0) o->log = NULL; /* rank 0 alone logs */
    if (o->log &&
        (absolute_path(o->log, r.log_path, sizeof r.log_path) != 0 || strchr(r.log_path, '\n')))
        stx_cli_fail(g_prog, "--log: the path is too long or holds a newline: %s", o->log);
    cli_jsonl jlog;
    cli_jsonl_none(&jlog);
    if (o->log && cli_jsonl_open(&jlog, o->log, o->resume != NULL) != 0)
        stx_cli_fail(g_prog, "--log: cannot open %s: %s", o->log, strerror(errno));

    /* A checkpoint that cannot be written should fail now, not after hours of training. */
    if (o->save) {
        char dir[4096];
        if (absolute_path(o->save, dir, sizeof dir) != 0)
            stx_cli_fail(g_prog, "--save: the path is too long: %s", o->save);
        char *slash = strrchr(dir, '/');
        if (slash == dir)
            slash[1] = '\0';
        else if (slash)
            *slash = '\0';
        /* access() alone is not enough: root may "write" into a regular file. */
        struct stat st;
        if (stat(dir, &st) != 0)
            stx_cli_fail(g_prog, "--save: cannot write a checkpoint in %s: %s", dir,
                         strerror(errno));
        if (!S_ISDIR(st.st_mode))
            stx_cli_fail(g_prog, "--save: cannot write a checkpoint in %s: %s", dir,
                         strerror(ENOTDIR));
        if (access(dir, W_OK) != 0)
            stx_cli_fail(g_prog, "--save: cannot write a checkpoint in %s: %s", dir,
                         strerror(errno));
        if (stat(o->save, &st) == 0 && S_ISDIR(st.st_mode))
            stx_cli_fail(g_prog, "--save: %s is a directory, not a checkpoint file", o->save);
    }

    /* -------------------------------------------------- the header */
    int64_t n_params = 0;
    stx_param_total(r.model, &n_params);
    char shape[64] = "[";
    if (r.cfg.n_pos_axes == 0) {
        snprintf(shape + 1, sizeof shape - 1, "%d]", r.cfg.n_ctx);
    } else {
        size_t used = 1;
        for (int a = 0; a < r.cfg.n_pos_axes; ++a)
            used += (size_t)snprintf(shape + used, sizeof shape - used, a ? ", %d" : "%d",
                                     r.cfg.pos_shape[a]);
        snprintf(shape + used, sizeof shape - used, "]");
    }
    printf("data: %s (%s, %" PRId64 " bytes): train [%" PRId64 ", %" PRId64 "), valid [%" PRId64
           ", %" PRId64 ")\n",
           o->data, kKindNames[o->kind], info.n_bytes, r.train_begin, r.train_end, r.valid_begin,
           r.valid_end);
    printf("model: %d layers, d %d, %d heads, pattern %s, n_ctx %d, positions %s, block %d, "
           "dropout %g, %" PRId64 " parameters, %s %s\n",
           r.cfg.n_layer, r.cfg.n_embd, r.cfg.n_head, r.cfg.pattern, r.cfg.n_ctx, shape,
           r.cfg.block_size, (double)r.cfg.dropout, n_params, backend_name(r.cfg.backend),
           kPrecisionNames[r.cfg.precision]);
    if (o->resume) printf("resumed: %s at step %" PRId64 "\n", o->resume, step0);
    if (r.dist)
        printf("data parallel: %d ranks (%s), %d sequences each of the global batch of %d; "
               "gradients all-reduced in %s, %d blocks a group; weights checked every %" PRId64
               " steps\n",
               r.env.world, r.env.source, r.local_batch, o->batch,
               o->grad_allreduce ? "bf16" : "fp32", o->bucket_layers, o->check_weights_every);
    printf("training: steps %" PRId64 " -> %" PRId64 ", batch %d x %d = %zu bytes a step, lr %g "
           "(warmup %" PRId64 ", cosine to %g), clip %g, weight decay %g\n",
           step0, o->steps, o->batch, r.T, window_bytes, o->lr, o->warmup, o->min_lr, o->clip,
           o->weight_decay);
    fflush(stdout);

    /* -------------------------------------------------- the loop */
    install_signals();
    cli_progress bar;
    cli_progress_init(&bar, o->steps, step0, "tok/s", o->plain);
    const int plain_lines = !cli_progress_is_tty(&bar) || !isatty(STDOUT_FILENO);
    r.t_start = cli_now();
    double interval_time = 0.0, last_val_bpb = (double)NAN;
    int64_t interval_steps = 0, last_val_step = -1, last_val_bytes = 0;
    int64_t step = step0;
    int interrupted = 0;
    int64_t bad_in_row = 0;  /* consecutive skipped steps */
    int weights_suspect = 0; /* the last step's loss was not finite: do not save the model */
    inject_list inject_grad, inject_weight;
    inject_parse(&inject_grad, "STX_TEST_INJECT_NAN");
    inject_parse(&inject_weight, "STX_TEST_INJECT_NAN_WEIGHT");
    const int injecting = inject_grad.n > 0 || inject_weight.n > 0;
    while (step < o->steps) {
        /* A data-parallel rank draws the whole global batch's windows (so its generator stays
         * the single-process one) and keeps its share. */
        const stx_status drawn =
            r.dist ? stx_dataset_sample_shard(r.data, r.train_begin, r.train_end, o->batch, r.T,
                                              r.env.rank, r.env.world, &r.rng, r.tokens)
                   : stx_dataset_sample(r.data, r.train_begin, r.train_end, o->batch, r.T, &r.rng,
                                        r.tokens);
        if (drawn != STX_OK) stx_cli_die(g_prog, "data sample");
        const int64_t attempt = step + r.skipped + 1; /* the test hooks' numbering */
        if (injecting && inject_at(&inject_weight, attempt)) inject_nan(&r, "ln_f.g", 0);
        const double t0 = cli_now();
        double loss = 0.0, lr = stx_optim_lr_at(&opt, step), norm = (double)NAN;
        char reason[64] = "";
        if (stx_forward(r.model, r.tokens, r.local_batch, r.T, &loss) != STX_OK)
            stx_cli_die(g_prog, "forward");
        int stop_all = g_stop != 0;
        if (r.dist) {
            /* The global loss (the ranks' shares are equal, so the mean of their means) and
             * a stop flag every rank sees at the same step: a skip or a Ctrl-C is decided
             * together, never by one rank alone. */
            double v[2] = {loss, g_stop ? 1.0 : 0.0};
            if (stx_dist_allreduce(r.dist, v, 2, STX_REDUCE_SUM) != STX_OK)
                stx_cli_die(g_prog, "loss (all-reduce)");
            loss = v[0] / (double)r.env.world;
            stop_all = v[1] > 0.0;
        }
        if (!isfinite(loss)) {
            /* Only non-finite weights (or an overflow) give this: no backward, no update. */
            snprintf(reason, sizeof reason, "loss %s", nonfinite_name(loss));
        } else {
            if (stx_zero_grad(r.model) != STX_OK || stx_backward(r.model) != STX_OK)
                stx_cli_die(g_prog, "backward");
            if (injecting && inject_at(&inject_grad, attempt)) inject_nan(&r, "w_out", 1);
            const stx_status st = stx_optimizer_step(r.model, &lr, &norm);
            if (st == STX_STEP_SKIPPED)
                snprintf(reason, sizeof reason, "gradient norm %s", nonfinite_name(norm));
            else if (st != STX_OK)
                stx_cli_die(g_prog, "optimizer");
        }
        interval_time += cli_now() - t0;
        ++interval_steps;
        if (stop_all) interrupted = 1;
        if (reason[0]) {
            /* A skipped step: the model is as it was after the last good step. */
            ++r.skipped;
            ++bad_in_row;
            weights_suspect = !isfinite(loss);
            cli_jsonl_begin(&jlog);
            cli_jsonl_int(&jlog, "step", step + 1);
            jsonl_bool(&jlog, "skipped", 1);
            cli_jsonl_str(&jlog, "reason", reason);
            cli_jsonl_num(&jlog, "loss", loss); /* null when not finite */
            cli_jsonl_num(&jlog, "bpb", loss / log(2.0));
            cli_jsonl_num(&jlog, "lr", lr);
            cli_jsonl_num(&jlog, "grad_norm", norm);
            cli_jsonl_int(&jlog, "skipped_steps", r.skipped);
            cli_jsonl_int(&jlog, "bad_in_row", bad_in_row);
            cli_jsonl_num(&jlog, "elapsed_s", elapsed(&r));
            if (cli_jsonl_end(&jlog) != 0)
                stx_cli_fail(g_prog, "--log: cannot write %s: %s", o->log, strerror(errno));
            cli_progress_clear(&bar);
            printf("step %" PRId64 "/%" PRId64 " | skipped: %s | %" PRId64 " in a row, %" PRId64
                   " in all\n",
                   step + 1, o->steps, reason, bad_in_row, r.skipped);
            fflush(stdout);
            if (bad_in_row >= o->max_bad_steps) {
                cli_progress_finish(&bar);
                cli_jsonl_close(&jlog);
                char where[4200];
                if (r.ckpt_path)
                    snprintf(where, sizeof where,
                             "the last good checkpoint is %s (step %" PRId64 ")", r.ckpt_path,
                             r.ckpt_step);
                else if (o->save)
                    snprintf(where, sizeof where, "no checkpoint was written before them");
                else
                    snprintf(where, sizeof where, "nothing was saved (no --save given)");
                fprintf(stderr,
                        PROG ": %" PRId64 " consecutive steps had non-finite loss or gradients; "
                             "stopped at step %" PRId64 "; %s\n",
                        bad_in_row, step, where);
                free(r.tokens);
                free(r.eval_buf);
                stx_model_free(r.model);
                stx_dist_free(r.dist);
                stx_dataset_free(r.data);
                return 1;
            }
            if (interrupted) {
                /* A model whose loss is not finite is not saved over a good checkpoint. */
                if (o->save && !weights_suspect) save_checkpoint(&r, o->save);
                break;
            }
            continue;
        }
        bad_in_row = 0;
        weights_suspect = 0;
        ++step;
        const double bpb = loss / log(2.0);

        /* Interrupted: no evaluation or sample, just the log record and the checkpoint. */
        const int do_eval =
            !interrupted && ((o->eval_every > 0 && step % o->eval_every == 0) || step == o->steps);
        const int do_log =
            step % o->log_every == 0 || step == step0 + 1 || step == o->steps || interrupted;
        const int do_sample =
            !interrupted && r.env.rank == 0 && o->sample_every > 0 && step % o->sample_every == 0;
        if (r.dist && o->check_weights_every > 0 && step % o->check_weights_every == 0)
            check_weights(&r, step);
        double val_bpb = (double)NAN;
        if (do_eval) {
            int64_t n_val = 0;
            val_bpb = validation_nats(&r, &n_val) / log(2.0);
            last_val_bpb = val_bpb;
            last_val_step = step;
            last_val_bytes = n_val;
        }
        char *sample = do_sample ? draw_sample(&r, step) : NULL;
        const double rate = interval_time > 0.0
                                ? (double)interval_steps * (double)window_bytes / interval_time
                                : 0.0;
        if (do_log || do_eval || sample) {
            cli_jsonl_begin(&jlog);
            cli_jsonl_int(&jlog, "step", step);
            cli_jsonl_num(&jlog, "loss", loss);
            cli_jsonl_num(&jlog, "bpb", bpb);
            cli_jsonl_num(&jlog, "val_bpb", val_bpb); /* null unless evaluated at this step */
            cli_jsonl_num(&jlog, "lr", lr);
            cli_jsonl_num(&jlog, "grad_norm", norm);
            cli_jsonl_num(&jlog, "tokens_per_s", rate);
            cli_jsonl_num(&jlog, "elapsed_s", elapsed(&r));
            if (sample) cli_jsonl_str(&jlog, "sample", sample);
            if (cli_jsonl_end(&jlog) != 0)
                stx_cli_fail(g_prog, "--log: cannot write %s: %s", o->log, strerror(errno));
            interval_time = 0.0;
            interval_steps = 0;
        }
        const int prints = (plain_lines && do_log) || do_eval || sample;
        if (prints) cli_progress_clear(&bar);
        if (plain_lines && (do_log || do_eval)) {
            char eta[32], rate_text[32];
            cli_format_duration(cli_progress_eta(&bar, step), eta, sizeof eta);
            cli_format_count(rate, rate_text, sizeof rate_text);
            printf("step %" PRId64 "/%" PRId64 " | loss %.4f | bpb %.4f | lr %.3e | norm %.3f | "
                   "%s tok/s | %.1fs | ETA %s",
                   step, o->steps, loss, bpb, lr, norm, rate_text, elapsed(&r), eta);
            if (do_eval) printf(" | val_bpb %.4f", val_bpb);
            putchar('\n');
        } else if (do_eval) {
            printf("step %" PRId64 "/%" PRId64 " | val_bpb %.4f\n", step, o->steps, val_bpb);
        }
        if (sample) printf("--- sample at step %" PRId64 " ---\n%s\n---\n", step, sample);
        fflush(stdout);
        free(sample);
        char text[128];
        if (last_val_step >= 0)
            snprintf(text, sizeof text, "loss %.4f  bpb %.3f  val %.3f", loss, bpb, last_val_bpb);
        else
            snprintf(text, sizeof text, "loss %.4f  bpb %.3f", loss, bpb);
        cli_progress_update(&bar, step, rate, text, prints || step == o->steps);

        const int periodic = o->save_every > 0 && step % o->save_every == 0;
        if (o->save && (periodic || step == o->steps || interrupted)) save_checkpoint(&r, o->save);
        if (interrupted) break;
    }
    cli_progress_finish(&bar);

    /* -------------------------------------------------- the end */
    if (interrupted) {
        if (o->save && weights_suspect)
            printf("interrupted after step %" PRId64 ": not saved, the model's loss is not "
                   "finite (%s)\n",
                   step, r.ckpt_path ? "the last good checkpoint stays as it was" : "none saved");
        else if (o->save)
            printf("interrupted after step %" PRId64 ": checkpoint saved to %s (resume with "
                   "--resume %s)\n",
                   step, o->save, o->save);
        else
            printf("interrupted after step %" PRId64 ": no --save given, nothing saved\n", step);
        printf("skipped steps: %" PRId64 " (non-finite loss or gradient norm)\n", r.skipped);
    } else {
        if (last_val_step != step) { /* resumed at or past --steps: nothing ran */
            last_val_bpb = validation_nats(&r, &last_val_bytes) / log(2.0);
        }
        printf("final validation: %.4f bits per byte (step %" PRId64 ", %" PRId64
               " bytes of the valid split)\n",
               last_val_bpb, step, last_val_bytes);
        printf("skipped steps: %" PRId64 " (non-finite loss or gradient norm)\n", r.skipped);
        if (step == step0 && o->resume)
            printf("checkpoint: %s (unchanged: it is at step %" PRId64 " of %" PRId64 ")\n",
                   o->resume, step0, o->steps);
        else if (o->save)
            printf("checkpoint: %s\n", o->save);
        else
            printf("checkpoint: none (no --save given)\n");
    }
    fflush(stdout);
    cli_jsonl_close(&jlog);
    free(r.tokens);
    free(r.eval_buf);
    stx_model_free(r.model);
    stx_dist_free(r.dist);
    stx_dataset_free(r.data);
    return 0;
}
