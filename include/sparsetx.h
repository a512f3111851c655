/*
 * sparsetx.h: the public C API of sparsetx, a library for the Sparse Transformer
 * (Child, Gray, Radford, Sutskever 2019): factorized "strided" and "fixed" attention
 * over byte sequences, with a CPU reference backend and a CUDA backend.
 *
 * This header is the whole contract. It is C99 and C++ clean and callable from any
 * language through a C FFI (Python ctypes/cffi, Rust, Julia, Go). Anything not declared
 * here is internal and may change.
 *
 * Conventions
 *  - Every fallible call returns an stx_status: 0 is success, negative values are errors.
 *    stx_last_error() then gives a detailed message for the calling thread, naming the
 *    argument or field that was wrong. Positive values are normal but notable outcomes
 *    (STX_STEP_SKIPPED), with a message too. The library never aborts, exits or prints.
 *  - Objects are opaque handles with create/free pairs; free(NULL) is a no-op. A model or
 *    layout handle that was freed, or never made by the library, is refused with
 *    STX_ERR_INVALID_ARGUMENT ("not a live model"), and freeing one twice is a no-op: the
 *    library checks handles against its registry of live ones, never by reading them.
 *  - Structs passed by pointer are versioned: the *_v functions take the caller's
 *    sizeof(struct) and STX_ABI_VERSION, and refuse a mismatch with STX_ERR_VERSION.
 *    C callers use the macros without _v; FFI callers call the _v functions.
 *  - Thread safety: a model is confined to one thread at a time (calls on one model must
 *    not overlap; nothing detects an overlap); different models may be used from different
 *    threads at once and give the same results as one after the other. stx_last_error() is
 *    thread-local. stx_log_set is process-wide: call it before creating models.
 *  - Shapes are written [B, T, C]: batch, time (bytes), channels. Arrays are row-major.
 */
#ifndef SPARSETX_H
#define SPARSETX_H

#include <stddef.h>
#include <stdint.h>

#ifndef STX_API
#if defined(_WIN32) && defined(STX_SHARED)
#ifdef STX_BUILD
#define STX_API __declspec(dllexport)
#else
#define STX_API __declspec(dllimport)
#endif
#elif defined(STX_BUILD) && defined(__GNUC__)
#define STX_API __attribute__((visibility("default")))
#else
#define STX_API
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- versions */

#define STX_VERSION_MAJOR  0
#define STX_VERSION_MINOR  1
#define STX_VERSION_PATCH  0
#define STX_VERSION_NUMBER (STX_VERSION_MAJOR * 10000 + STX_VERSION_MINOR * 100 + STX_VERSION_PATCH)
#define STX_VERSION_STRING "0.1.0"
/* Bumped on any change to a public struct layout or function signature. */
#define STX_ABI_VERSION 2

/* The library's own version; compare with STX_VERSION_NUMBER to detect a header/library
 * mismatch. */
STX_API int32_t stx_version_number(void);
STX_API const char *stx_version_string(void);

#define STX_FEATURE_CUDA   1u /* the CUDA backend was compiled in */
#define STX_FEATURE_OPENMP 2u /* the CPU backend uses OpenMP threads */
#define STX_FEATURE_NCCL   4u /* data parallel over several GPUs through NCCL (stx_dist_*) */
/* Bit set of STX_FEATURE_* describing this build. */
STX_API uint32_t stx_build_features(void);

/* ------------------------------------------------------------ status, errors */

typedef enum stx_status {
    STX_OK = 0,
    STX_ERR_INVALID_ARGUMENT = -1, /* a NULL handle, a bad size, an invalid config field */
    STX_ERR_OUT_OF_MEMORY = -2,    /* host or device allocation failed */
    STX_ERR_IO = -3,               /* a file could not be read or written */
    STX_ERR_FORMAT = -4,           /* a file or string is malformed or corrupt */
    STX_ERR_VERSION = -5,          /* header/library ABI or file version mismatch */
    STX_ERR_UNSUPPORTED = -6,      /* backend not built or feature not available here */
    STX_ERR_DEVICE = -7,           /* a CUDA error; the message has CUDA's text */
    STX_ERR_STATE = -8,            /* calls in the wrong order (backward before forward) */
    STX_ERR_INTERNAL = -9,         /* a bug in sparsetx; please report it */
    STX_ERR_COMM = -10,            /* data parallel: a peer failed or did not answer within the
                                      timeout; the communicator is aborted and unusable */
    STX_STEP_SKIPPED = 1,          /* stx_optimizer_step: the global gradient norm was not
                                      finite (NaN or Inf); nothing was changed */
    STX_STATUS_RANGE = 0x7fffffff  /* not a status: makes any int32 a valid value (FFI) */
} stx_status;

/* Fixed text for a status code ("invalid argument"). Never NULL. */
STX_API const char *stx_status_string(stx_status status);
/* The detailed message of the last failing call on this thread, e.g.
 * "n_embd (500) must be divisible by n_head (8)". "" if none. The library owns the
 * memory; the next failing call on the same thread overwrites it. */
STX_API const char *stx_last_error(void);
/* Forget the last error on this thread. */
STX_API void stx_clear_error(void);

typedef enum stx_log_level {
    STX_LOG_DEBUG = 0,
    STX_LOG_INFO = 1,
    STX_LOG_WARN = 2,
    STX_LOG_LEVEL_RANGE = 0x7fffffff
} stx_log_level;
typedef void (*stx_log_fn)(int32_t level, const char *message, void *user_data);
/* Route the library's optional diagnostics to a callback (process-wide; set it before
 * creating models). NULL, the default, means silent. */
STX_API void stx_log_set(stx_log_fn fn, void *user_data);

/* ---------------------------------------------------------------- enums */
/* Each enum ends with a *_RANGE value that is not a real choice: it gives the type the range
 * of int32, so a value from another language is always a defined value that the library can
 * refuse with a message. */

typedef enum stx_backend {
    STX_BACKEND_CPU = 0,  /* the OpenMP reference backend, always present */
    STX_BACKEND_CUDA = 1, /* the CUDA backend on device stx_config.device */
    STX_BACKEND_AUTO = 2, /* CUDA when usable for the config (a device, compiled head dims,
                             not fp64), else CPU */
    STX_BACKEND_RANGE = 0x7fffffff
} stx_backend;

typedef enum stx_precision {
    STX_PRECISION_FP32 = 0, /* exact float32 everywhere (default) */
    STX_PRECISION_FP64 = 1, /* float64 everywhere (CPU only; for gradient checks) */
    STX_PRECISION_BF16 = 2, /* bf16 matrix inputs, fp32 accumulation and master weights */
    STX_PRECISION_RANGE = 0x7fffffff
} stx_precision;

typedef enum stx_dtype {
    STX_DTYPE_F32 = 0, /* float */
    STX_DTYPE_F64 = 1, /* double */
    STX_DTYPE_RANGE = 0x7fffffff
} stx_dtype;

/* Returns 1 when models can be created on the backend on this machine now, 0 otherwise (for
 * CUDA: compiled in, driver present, at least one device). STX_BACKEND_AUTO always gives 1. */
STX_API int32_t stx_backend_available(stx_backend backend);

/* ---------------------------------------------------------------- config */

#define STX_MAX_POS_AXES 4
#define STX_PATTERN_MAX  256
#define STX_VOCAB        256

/*
 * Attention patterns, one text grammar everywhere (the API, the tools, checkpoints):
 *   component := dense | local:L | strided:L | fixed:L:C[:G]
 *   merged    := component ('+' component)*          one softmax over the union
 *   layer     := merged | '[' merged (';' merged)* ']'   a list over heads, cycled
 *   model     := layer (',' layer)*                  a list over layers, cycled
 * Key k is readable by query q (always k <= q) when:
 *   dense: always;  local:L: q-L < k;  strided:L: (q-k) mod L == 0;
 *   fixed:L:C:G: floor(k/L) == floor(q/L), or k mod L lies in head h's summary group
 *   g = h mod G: [L-(g+1)C, L-gC). G defaults to 1; G*C <= L.
 * Examples: "fixed:128:32:4" (enwik8), "strided:96,local:96,local:96,local:96" (CIFAR-10
 * interleaved over layers), "local:128+strided:128" (merged), "[local:128;strided:128]"
 * (a different pattern per head).
 */
typedef struct stx_config {
    int32_t n_layer;    /* residual blocks N (default 2) */
    int32_t n_embd;     /* model width d (default 64) */
    int32_t n_head;     /* attention heads; n_embd % n_head == 0 (default 2) */
    int32_t n_ctx;      /* context length in bytes (default 256) */
    int32_t ff_mult;    /* feed-forward width = ff_mult * n_embd (default 4) */
    int32_t block_size; /* attention block size: 16, 32, 64 or 128 (default 32) */
    int32_t n_pos_axes; /* axes of the position shape; 0 = one axis [n_ctx] (default 0) */
    int32_t pos_shape[STX_MAX_POS_AXES]; /* product must equal n_ctx: [H, W, C] for images */
    int32_t backend;                     /* stx_backend (default STX_BACKEND_CPU) */
    int32_t device;                      /* CUDA device index (default 0) */
    int32_t precision;                   /* stx_precision (default STX_PRECISION_FP32) */
    int32_t n_threads;                   /* CPU threads, 0 = OpenMP's default */
    int32_t recompute; /* 1: keep only the residual stream, recompute in backward (default);
                          2: also keep each block's attention output and log-sum-exp, so the
                          backward does not recompute attention (n_ctx * (n_embd + n_head)
                          more values a block); 0: keep every activation */
    float qk_ratio;    /* query/key width over n_embd, e.g. 1 or 0.5 (default 1) */
    float dropout;     /* residual dropout probability in [0, 1) (default 0) */
    uint64_t seed;     /* weight init and dropout masks (default 1) */
    char pattern[STX_PATTERN_MAX]; /* the attention pattern, grammar above (default "dense") */
} stx_config;

/* Fill *cfg with the defaults above. */
STX_API stx_status stx_config_init_v(stx_config *cfg, size_t cfg_size, int32_t abi_version);
#define stx_config_init(cfg) stx_config_init_v((cfg), sizeof *(cfg), STX_ABI_VERSION)

/* Fill *cfg with a named preset, every field of which may then be changed:
 *   "enwik8"     30 layers, d 512, 8 heads, fixed:128:32:4, n_ctx 12288, [96, 128], dropout 0.4
 *   "cifar10"    128 layers, d 256, 2 heads, ff_mult 2, qk_ratio 0.5,
 *                strided:96,local:96,local:96,local:96, n_ctx 3072, [32, 32, 3], dropout 0.25
 *   "imagenet64" 48 layers, d 512, 16 heads, local:128,strided:128, n_ctx 12288, [64, 64, 3]
 *   "tiny"       4 layers, d 128, 4 heads, local:32+strided:32, n_ctx 1024, [32, 32]: a CPU demo
 * STX_ERR_INVALID_ARGUMENT for an unknown name. */
STX_API stx_status stx_config_preset_v(stx_config *cfg, size_t cfg_size, int32_t abi_version,
                                       const char *name);
#define stx_config_preset(cfg, name)                                                               \
    stx_config_preset_v((cfg), sizeof *(cfg), STX_ABI_VERSION, (name))

/* Check every field; STX_OK or STX_ERR_INVALID_ARGUMENT with a message naming the field. */
STX_API stx_status stx_config_validate_v(const stx_config *cfg, size_t cfg_size,
                                         int32_t abi_version);
#define stx_config_validate(cfg) stx_config_validate_v((cfg), sizeof *(cfg), STX_ABI_VERSION)

/* Parse a model pattern and print it back in canonical form ("local:128+strided:128").
 * STX_ERR_FORMAT with the position and the problem for a malformed string;
 * STX_ERR_INVALID_ARGUMENT when out_size is too small. */
STX_API stx_status stx_pattern_normalize(const char *pattern, char *out, size_t out_size);

/* ---------------------------------------------------------------- optimizer */

typedef struct stx_optim_config {
    double lr;            /* peak learning rate (default 3e-4) */
    double min_lr;        /* floor of the cosine decay (default 0) */
    double beta1;         /* Adam (default 0.9) */
    double beta2;         /* Adam (default 0.999) */
    double eps;           /* Adam (default 1e-8) */
    double weight_decay;  /* decoupled, on matrices only (default 0.01) */
    double grad_clip;     /* global-norm clip; 0 = off (default 1.0) */
    int64_t warmup_steps; /* linear warmup: lr * (t+1) / warmup for t < warmup (default 0) */
    int64_t total_steps;  /* cosine decay to min_lr at this step; 0 = none, else > warmup */
} stx_optim_config;

STX_API stx_status stx_optim_config_init_v(stx_optim_config *opt, size_t opt_size,
                                           int32_t abi_version);
#define stx_optim_config_init(opt) stx_optim_config_init_v((opt), sizeof *(opt), STX_ABI_VERSION)

/* The learning rate the schedule gives at step t (0-based); 0 for a NULL opt or t < 0. */
STX_API double stx_optim_lr_at(const stx_optim_config *opt, int64_t step);

/* ---------------------------------------------------------------- model */

typedef struct stx_model stx_model;

/* Create a model with freshly initialized weights (the released code's init: linear
 * weights N(0, 0.125/fan_in), W_p and W_2 also / sqrt(2 n_layer), token table and start
 * vector std 0.01, position tables 0.01/sqrt(axes), W_out 0), seeded by cfg->seed.
 * Errors: STX_ERR_INVALID_ARGUMENT (bad field, named), STX_ERR_UNSUPPORTED (backend not
 * available here), STX_ERR_OUT_OF_MEMORY. *out is NULL on failure. */
STX_API stx_status stx_model_create_v(const stx_config *cfg, size_t cfg_size, int32_t abi_version,
                                      stx_model **out);
#define stx_model_create(cfg, out) stx_model_create_v((cfg), sizeof *(cfg), STX_ABI_VERSION, (out))
STX_API void stx_model_free(stx_model *model);

/* Copy the model's config (the resolved backend included) into *cfg. */
STX_API stx_status stx_model_get_config_v(const stx_model *model, stx_config *cfg, size_t cfg_size,
                                          int32_t abi_version);
#define stx_model_get_config(model, cfg)                                                           \
    stx_model_get_config_v((model), (cfg), sizeof *(cfg), STX_ABI_VERSION)

/* Training mode (default 1) applies residual dropout in stx_forward; 0 turns it off. */
STX_API stx_status stx_model_set_training(stx_model *model, int32_t training);

/* Forward pass on B sequences of T bytes (tokens [B, T], T <= n_ctx). Row t of the
 * logits predicts tokens[b][t] from tokens[b][<t] (the shift right behind the learned
 * start vector is internal), so every byte is scored. *loss_nats (may be NULL) gets the
 * mean cross-entropy over all B*T bytes in nats; bits per byte = nats / ln 2. The
 * activations are kept for stx_backward. Errors: STX_ERR_INVALID_ARGUMENT (T > n_ctx,
 * B or T < 1, NULL). The weights are not checked: a NaN or Inf among them gives a NaN (or
 * Inf) loss with STX_OK; the stx_backward after it gives non-finite gradients, and
 * stx_optimizer_step then skips the step (STX_STEP_SKIPPED). */
STX_API stx_status stx_forward(stx_model *model, const uint8_t *tokens, int32_t B, int32_t T,
                               double *loss_nats);

/* Forward without dropout, for evaluation: the mean loss in nats over B*T bytes. It reuses
 * the activation memory, so a following stx_backward needs a new stx_forward
 * (STX_ERR_STATE otherwise); the dropout counter does not move. */
STX_API stx_status stx_evaluate(stx_model *model, const uint8_t *tokens, int32_t B, int32_t T,
                                double *loss_nats);

/* Copy the logits of the last stx_forward or stx_evaluate, [B, T, 256], into dst (count
 * elements of dtype; count must equal B*T*256). */
STX_API stx_status stx_logits_read(const stx_model *model, stx_dtype dtype, void *dst,
                                   size_t count);

/* Backward pass of the last stx_forward's mean loss: gradients are ADDED to the parameter
 * gradients, so micro-batches accumulate until stx_zero_grad. STX_ERR_STATE unless an
 * stx_forward ran after the last change of the weights or activations (an optimizer step, a
 * parameter write, stx_model_set_layer_layout, or an stx_evaluate). */
STX_API stx_status stx_backward(stx_model *model);

/* Set every parameter gradient to zero. */
STX_API stx_status stx_zero_grad(stx_model *model);

/* Set the optimizer configuration used by stx_optimizer_step (defaults until set). */
STX_API stx_status stx_model_set_optimizer_v(stx_model *model, const stx_optim_config *opt,
                                             size_t opt_size, int32_t abi_version);
#define stx_model_set_optimizer(model, opt)                                                        \
    stx_model_set_optimizer_v((model), (opt), sizeof *(opt), STX_ABI_VERSION)

/* The optimizer configuration in use (from stx_model_set_optimizer or a checkpoint). */
STX_API stx_status stx_model_get_optimizer_v(const stx_model *model, stx_optim_config *opt,
                                             size_t opt_size, int32_t abi_version);
#define stx_model_get_optimizer(model, opt)                                                        \
    stx_model_get_optimizer_v((model), (opt), sizeof *(opt), STX_ABI_VERSION)

/* One AdamW step at the model's step count t: learning rate from the schedule, gradients
 * scaled by min(1, clip / (global_norm + 1e-6)) (the stored gradients are not changed and
 * not cleared), decoupled weight decay on matrices (p -= lr * wd * p), then Adam. t then
 * advances by one. *lr_used and *grad_norm (may be NULL) get the rate and the unclipped
 * global gradient norm. STX_ERR_STATE when no backward ran since the last step.
 * When the global gradient norm is not finite (a NaN or Inf in any gradient) the step is
 * skipped: it returns STX_STEP_SKIPPED (positive, not an error) with a message, the weights,
 * the Adam moments and t are left exactly as they were, *grad_norm gets the NaN or Inf and
 * *lr_used the rate the step would have used. As after a step, the gradients are left in
 * place and the next step needs a new stx_forward and stx_backward (after stx_zero_grad);
 * a trainer counts the skip and goes on with the next batch. */
STX_API stx_status stx_optimizer_step(stx_model *model, double *lr_used, double *grad_norm);

/* The dropout counter: the masks of the next training stx_forward are drawn at this value
 * (Philox counter word, DESIGN.md), and each training forward advances it by one. Setting
 * it replays the same masks, for gradient checks and for an exact resume. */
STX_API stx_status stx_model_get_dropout_counter(const stx_model *model, uint64_t *counter);
STX_API stx_status stx_model_set_dropout_counter(stx_model *model, uint64_t counter);

/* The dropout offset (default 0): the masks of a training stx_forward on B sequences are those
 * sequences first_sequence .. first_sequence + B - 1 of a larger batch with the same T get
 * (the mask of an element is keyed by its flat index in that batch, DESIGN.md). A
 * data-parallel rank sets it to the first sequence of its shard (stx_shard_batch), so the
 * ranks together draw the masks of a single process on the global batch. Kept until changed;
 * not saved in checkpoints. STX_ERR_INVALID_ARGUMENT when negative. */
STX_API stx_status stx_model_set_dropout_offset(stx_model *model, int64_t first_sequence);
STX_API stx_status stx_model_get_dropout_offset(const stx_model *model, int64_t *first_sequence);

/* Bound the backend memory the model may hold (as counted by stx_model_memory) to `bytes`;
 * 0 removes the bound. A call that would need more (a forward on a larger batch, the first
 * optimizer step's Adam moments) fails with STX_ERR_OUT_OF_MEMORY naming the bytes asked for,
 * held and allowed; on the CPU the model stays usable with smaller batches, on CUDA a failed
 * allocation is recorded like a device error: free the model after one. */
STX_API stx_status stx_model_set_memory_limit(stx_model *model, int64_t bytes);

/* CPU threads for this model's work from now on (0 = OpenMP's default); a loaded model keeps
 * the count it was saved with until this is called. */
STX_API stx_status stx_model_set_threads(stx_model *model, int32_t n_threads);

/* Bytes of backend memory the model holds now and the most it has held (device memory on
 * the CUDA backend: weights, gradients, optimizer state, activations and scratch; host
 * memory of the same on the CPU). Either pointer may be NULL. */
STX_API stx_status stx_model_memory(const stx_model *model, int64_t *bytes_in_use,
                                    int64_t *bytes_peak);

/* Optimizer steps taken so far. */
STX_API stx_status stx_model_get_step(const stx_model *model, int64_t *step);

/* ------------------------------------------------- parameters and gradients */

#define STX_MAX_DIMS 4

/* Number of parameter tensors. Names: "tok_emb" [256, C], "start" [C], "pos_emb.A"
 * [pos_shape[A], C], "h.L.ln1.g", "h.L.ln1.b" [C], "h.L.attn.q.w" [QK, C], "h.L.attn.q.b",
 * "h.L.attn.k.w", "h.L.attn.k.b", "h.L.attn.v.w" [C, C], "h.L.attn.v.b",
 * "h.L.attn.proj.w" [C, C], "h.L.attn.proj.b", "h.L.ln2.g", "h.L.ln2.b", "h.L.ff.w1" [F, C],
 * "h.L.ff.b1" [F], "h.L.ff.w2" [C, F], "h.L.ff.b2" [C], "ln_f.g", "ln_f.b", "w_out" [256, C].
 * Linear weights are [out, in] (y = x W^T + b), as torch.nn.Linear. */
STX_API stx_status stx_param_count(const stx_model *model, int32_t *count);
/* Name, rank and shape of parameter tensor `index` (0 <= index < count). The name stays
 * valid as long as the model. */
STX_API stx_status stx_param_info(const stx_model *model, int32_t index, const char **name,
                                  int32_t *ndim, int64_t shape[STX_MAX_DIMS]);
/* Total number of scalar parameters. */
STX_API stx_status stx_param_total(const stx_model *model, int64_t *n_params);

/* Read or write a whole parameter tensor or its gradient by name, converting to or from
 * the caller's dtype. count must equal the tensor's number of elements. A write
 * invalidates the activations of the last forward (STX_ERR_STATE for stx_backward). */
STX_API stx_status stx_param_read(const stx_model *model, const char *name, stx_dtype dtype,
                                  void *dst, size_t count);
STX_API stx_status stx_param_write(stx_model *model, const char *name, stx_dtype dtype,
                                   const void *src, size_t count);
STX_API stx_status stx_grad_read(const stx_model *model, const char *name, stx_dtype dtype,
                                 void *dst, size_t count);
STX_API stx_status stx_grad_write(stx_model *model, const char *name, stx_dtype dtype,
                                  const void *src, size_t count);

/* ------------------------------------------------ attention at the op level */

/* A block layout: for each head, which key blocks each query block reads, derived from a
 * pattern's element-wise definition (or given by the user), with the causal element mask.
 * Usable on its own, like openai/sparse_attention's primitives. */
typedef struct stx_layout stx_layout;

/* Layout of one layer's pattern (a `layer` of the grammar: merged or [per-head list]) for
 * sequences of up to n_ctx, n_head heads, blocks of block_size (16, 32, 64, 128). n_ctx
 * need not be a multiple of the block size or of any stride: ragged ends are masked.
 * Errors: STX_ERR_FORMAT for a malformed pattern (or a list over layers), with the offset;
 * STX_ERR_INVALID_ARGUMENT for a size out of range or a NULL argument. */
STX_API stx_status stx_layout_create(const char *pattern, int32_t n_ctx, int32_t n_head,
                                     int32_t block_size, stx_layout **out);
/* A user-supplied layout: blocks[h][i][j] != 0 when query block i of head h reads key block
 * j, in natural order, nb = ceil(n_ctx / block_size); the causal mask k <= q applies inside.
 * Every diagonal block must be set (a query reads at least itself) and none above it
 * (STX_ERR_INVALID_ARGUMENT otherwise, naming the head and block). */
STX_API stx_status stx_layout_create_from_blocks(int32_t n_ctx, int32_t n_head, int32_t block_size,
                                                 const uint8_t *blocks, stx_layout **out);
STX_API void stx_layout_free(stx_layout *layout);
/* Whether query q of head h may read key k under the layout's element-wise definition. */
STX_API int32_t stx_layout_allows(const stx_layout *layout, int32_t head, int64_t q, int64_t k);
/* Work counts for head h over a full n_ctx: computed blocks and allowed (q, k) pairs. */
STX_API stx_status stx_layout_stats(const stx_layout *layout, int32_t head, int64_t *n_blocks,
                                    int64_t *n_pairs);

/* Block-sparse attention on the CPU, on caller buffers in natural order (T <= the layout's
 * n_ctx; STX_ERR_INVALID_ARGUMENT for bad sizes, dtype, scale or NULL buffers):
 * q, k [B, T, H*Dqk], v and out [B, T, H*Dv], lse [B, H, T] (the log-sum-exp of each row,
 * for backward), scale usually 1/sqrt(Dqk). The n x n matrix is never formed. */
STX_API stx_status stx_attention_forward(const stx_layout *layout, stx_dtype dtype, int32_t B,
                                         int32_t T, int32_t Dqk, int32_t Dv, double scale,
                                         const void *q, const void *k, const void *v, void *out,
                                         void *lse);
/* Its backward: dq, dk [B, T, H*Dqk] and dv [B, T, H*Dv] are overwritten. */
STX_API stx_status stx_attention_backward(const stx_layout *layout, stx_dtype dtype, int32_t B,
                                          int32_t T, int32_t Dqk, int32_t Dv, double scale,
                                          const void *q, const void *k, const void *v,
                                          const void *out, const void *lse, const void *dout,
                                          void *dq, void *dk, void *dv);

/* Time the attention kernels of a backend (STX_BACKEND_CPU, or STX_BACKEND_CUDA on
 * `device`) for a layout, on fresh random q, k, v of [B, T, H*Dqk] / [B, T, H*Dv] in the
 * backend's memory, precision fp32 or bf16 (CUDA): after a warm-up, the median of `runs`
 * forward passes and of `runs` forward + backward passes, in milliseconds (device events on
 * CUDA). Errors as stx_attention_forward, STX_ERR_UNSUPPORTED for a backend or head dims not
 * available here. */
STX_API stx_status stx_attention_benchmark(const stx_layout *layout, int32_t backend,
                                           int32_t device, int32_t precision, int32_t B, int32_t T,
                                           int32_t Dqk, int32_t Dv, int32_t runs,
                                           double *forward_ms, double *forward_backward_ms);

/* Replace the pattern of one layer of a model with a layout (same n_ctx, n_head and block
 * size as the model); the model keeps its own copy. */
STX_API stx_status stx_model_set_layer_layout(stx_model *model, int32_t layer,
                                              const stx_layout *layout);

/* ---------------------------------------------------------------- checkpoints */

/* Save the model to path: the full config, every parameter, the optimizer configuration and
 * state (Adam moments, step), the dropout counter, and app_state (may be NULL), a text the
 * application owns (e.g. the trainer's "key=value" lines: data position, RNG state). The
 * file is self-describing and versioned, each section carries a CRC32, and it is written to
 * "path.tmp", fsynced and renamed over path, so a crash never leaves a half checkpoint in
 * place of a good one. Errors: STX_ERR_IO naming the path and the OS error (the old file at
 * path is left untouched); STX_ERR_UNSUPPORTED for a model given a user layout with
 * stx_model_set_layer_layout (not recorded in checkpoints yet). */
STX_API stx_status stx_model_save(const stx_model *model, const char *path, const char *app_state);

/* Load a checkpoint written by stx_model_save onto a backend (stx_backend; device for CUDA;
 * STX_BACKEND_AUTO picks as at create). Training resumes exactly where it was saved. Every
 * size is checked against the file before anything is allocated. Errors: STX_ERR_IO (cannot
 * read), STX_ERR_FORMAT (not a checkpoint, truncated, a checksum mismatch, sizes that do not
 * match the config), STX_ERR_VERSION (written by a newer format), each naming the file. */
STX_API stx_status stx_model_load(const char *path, int32_t backend, int32_t device,
                                  stx_model **out);

/* The app_state text of the checkpoint the model was loaded from ("" otherwise). Valid
 * until the model is freed. */
STX_API const char *stx_model_app_state(const stx_model *model);

/* ---------------------------------------------------------------- data */

typedef struct stx_dataset stx_dataset;

typedef enum stx_data_kind {
    STX_DATA_BYTES = 0, /* any file, raw or gzip: one byte stream */
    STX_DATA_IDX = 1,   /* IDX image file (MNIST, Fashion-MNIST), raw or gzip: records [H, W, 1] */
    STX_DATA_CIFAR = 2, /* CIFAR-10 binary batch: records of 3072 bytes served as HWC [32, 32, 3] */
    STX_DATA_WAV = 3,   /* PCM WAV, 8 or 16 bit, channels mixed down: one stream of mu-law bytes */
    STX_DATA_KIND_RANGE = 0x7fffffff
} stx_data_kind;

typedef enum stx_split {
    STX_SPLIT_TRAIN = 0,
    STX_SPLIT_VALID = 1,
    STX_SPLIT_TEST = 2,
    STX_SPLIT_ALL = 3,
    STX_SPLIT_RANGE = 0x7fffffff
} stx_split;

typedef struct stx_data_info {
    int64_t n_bytes;     /* bytes served (after decompression and decoding) */
    int64_t record_size; /* bytes per record (images); 0 for streams */
    int64_t n_records;   /* records (images); 0 for streams */
    int32_t n_axes;      /* axes of one record's position shape (images: 3); 0 for streams */
    int32_t shape[STX_MAX_POS_AXES]; /* [H, W, C] of one record */
    int32_t sample_rate;             /* WAV: rate of the served mu-law bytes; 0 otherwise */
} stx_data_info;

/* Open a data file, read once: memory-mapped when raw, decompressed once when gzip (zlib's
 * gzread reads both). resample_hz (WAV only): 0 keeps the file's rate, else the audio is
 * resampled to it (12000 is the paper's). Errors: STX_ERR_IO (cannot open or read),
 * STX_ERR_FORMAT (empty file, truncated gzip, wrong IDX magic or sizes that do not match the
 * file, a CIFAR batch of the wrong length, an unsupported WAV), each naming file and problem. */
STX_API stx_status stx_dataset_open(const char *path, stx_data_kind kind, int32_t resample_hz,
                                    stx_dataset **out);
STX_API void stx_dataset_free(stx_dataset *dataset);
STX_API stx_status stx_dataset_info(const stx_dataset *dataset, stx_data_info *info);

/* Byte range [begin, end) of a split. Streams: a file of exactly 100,000,000 bytes (enwik8)
 * splits 90M / 5M / 5M, any other 90% / 5% / 5%; record datasets split whole records the same
 * way (90/5/5). Callers wanting explicit ranges use stx_dataset_read directly. */
STX_API stx_status stx_dataset_split(const stx_dataset *dataset, stx_split split, int64_t *begin,
                                     int64_t *end);

/* Copy n bytes at offset into dst. STX_ERR_INVALID_ARGUMENT outside the data. */
STX_API stx_status stx_dataset_read(const stx_dataset *dataset, int64_t offset, void *dst,
                                    int64_t n);

/* A training batch: B windows of T bytes, dst [B, T], each starting at a uniformly drawn
 * offset in [begin, end - T] (record datasets: at a record boundary). The generator state
 * *rng is the caller's (a checkpoint saves it, so a resumed run draws the same batches); it
 * is advanced. STX_ERR_INVALID_ARGUMENT when the range is shorter than T. */
STX_API stx_status stx_dataset_sample(const stx_dataset *dataset, int64_t begin, int64_t end,
                                      int32_t B, int32_t T, uint64_t *rng, uint8_t *dst);

/* The window starts (byte offsets) of the batch the next stx_dataset_sample with the same
 * arguments would draw, offsets[B]; *rng advances exactly as that call's. */
STX_API stx_status stx_dataset_sample_offsets(const stx_dataset *dataset, int64_t begin,
                                              int64_t end, int32_t B, int32_t T, uint64_t *rng,
                                              int64_t *offsets);

/* A data-parallel rank's share of a training batch: of the global_batch windows stx_dataset_sample
 * would draw (same state *rng), the contiguous share stx_shard_batch gives `rank`, dst
 * [global_batch / world, T]. *rng advances as stx_dataset_sample's, so every rank keeps the
 * generator state of a single process and the ranks together train on exactly its windows; world
 * 1 gives stx_dataset_sample's bytes. Errors as stx_dataset_sample and stx_shard_batch. */
STX_API stx_status stx_dataset_sample_shard(const stx_dataset *dataset, int64_t begin, int64_t end,
                                            int32_t global_batch, int32_t T, int32_t rank,
                                            int32_t world, uint64_t *rng, uint8_t *dst);

/* Write 8-bit pixels (rows of width * channels bytes; channels 1 or 3) as a PNG file. */
STX_API stx_status stx_png_write(const char *path, const uint8_t *pixels, int32_t width,
                                 int32_t height, int32_t channels);

/* Decode n mu-law bytes to 16-bit PCM and write a mono WAV file at sample_rate. */
STX_API stx_status stx_wav_write_mulaw(const char *path, const uint8_t *mulaw, int64_t n,
                                       int32_t sample_rate);

/* ---------------------------------------------------------------- sampling */

typedef struct stx_sample_config {
    double temperature; /* logits are divided by it (default 1.0); > 0 */
    int32_t top_k;      /* keep the k most likely bytes; 0 = all (default 0) */
    int32_t stop_byte;  /* stop a sample after it emits this byte; -1 = never (default -1) */
    double top_p;       /* keep the smallest set with probability >= top_p (default 1.0) */
    uint64_t seed;      /* same seed, backend and precision: same bytes (default 1) */
    int32_t naive;      /* 1: recompute the whole window for every byte, the slow sampler kept
                           for comparison; 0: a key/value cache (stx_decoder, default) */
} stx_sample_config;

STX_API stx_status stx_sample_config_init_v(stx_sample_config *sc, size_t sc_size,
                                            int32_t abi_version);
#define stx_sample_config_init(sc) stx_sample_config_init_v((sc), sizeof *(sc), STX_ABI_VERSION)

/* Generate `batch` independent samples, without dropout. Sample b starts with its own prompt
 * prompts[b][0 .. n_prompt) (n_prompt may be 0: unconditional) and gets up to n_new bytes;
 * out is [batch][n_prompt + n_new] (prompt copied in front, zeros after a stop), lengths[b]
 * (may be NULL) = n_prompt + the bytes generated, the stop byte included. Each draw depends
 * only on (seed, sample index, position) and the distribution, so a sample does not depend on
 * the rest of the batch.
 * The default sampler is a decoder (below): the prompt goes through one forward, then each
 * byte costs one row. The byte at position p < n_ctx sees every earlier byte, exactly as the
 * naive sampler's; when a sample reaches n_ctx bytes the context slides: the decoder starts
 * again from the last n_ctx / 2 bytes (as position 0), so a byte sees between n_ctx / 2 and
 * n_ctx - 1 earlier bytes. The naive sampler (sc->naive = 1) runs a full forward over a
 * window of the last n_ctx positions for every byte, so a byte past n_ctx sees n_ctx - 1. */
STX_API stx_status stx_sample_v(stx_model *model, const uint8_t *prompts, int32_t n_prompt,
                                int32_t n_new, int32_t batch, const stx_sample_config *sc,
                                size_t sc_size, int32_t abi_version, uint8_t *out,
                                int32_t *lengths);
#define stx_sample(model, prompts, n_prompt, n_new, batch, sc, out, lengths)                       \
    stx_sample_v((model), (prompts), (n_prompt), (n_new), (batch), (sc), sizeof *(sc),             \
                 STX_ABI_VERSION, (out), (lengths))

/* ---------------------------------------------------------------- decoding */

/* A decoder generates `batch` sequences in lockstep, one byte per sequence per step, with a
 * key/value cache that keeps only what the model's attention pattern can still read: local:L
 * the last L positions, fixed:L:C the current block and the summary cells of earlier blocks,
 * strided and dense every position (strided:L reads only about p/L of them at position p). A
 * step's attention costs in proportion to the keys it reads, not to the position.
 *
 * Position p = bytes fed so far (0 after create). stx_decoder_logits gives the distribution of
 * byte p of each sequence (what row p of a forward over the same bytes gives): draw a byte,
 * feed it with stx_decoder_step, and so on. At most n_ctx - 1 bytes can be fed: the last
 * distribution is that of byte n_ctx - 1. No dropout. The decoder reads its model's weights:
 * after the weights or a layer layout change (an optimizer step, stx_param_write,
 * stx_model_set_layer_layout) its calls fail with STX_ERR_STATE until stx_decoder_reset; after
 * stx_model_free they fail with STX_ERR_STATE. A decoder is confined to one thread with its
 * model (not concurrently with the model's own calls); a stx_forward's activations are not
 * kept across decoder calls (call stx_forward again before stx_backward). */
typedef struct stx_decoder stx_decoder;

/* A decoder of `batch` (>= 1) sequences at position 0. The cache is allocated whole here (on
 * the model's device): stx_decoder_state_bytes tells its size beforehand. */
STX_API stx_status stx_decoder_create(stx_model *model, int32_t batch, stx_decoder **out);
STX_API void stx_decoder_free(stx_decoder *decoder);
/* Bytes of the key/value cache a decoder of `batch` sequences holds for this model: per layer
 * batch x heads x slots x (key + value head dims) elements (4 bytes in fp32, 2 in bf16 on CUDA,
 * 8 in fp64); slots = n_ctx for dense/strided heads, L + ceil(n_ctx / L) C for fixed:L:C, L for
 * local:L (merged local and fixed parts: the larger L plus the summaries). A decoder also holds
 * O(batch x width) working rows and, on CUDA, a copy of the weights in the compute precision. */
STX_API stx_status stx_decoder_state_bytes(const stx_model *model, int32_t batch, int64_t *bytes);
/* Feeds tokens [batch][n] (n >= 0, position + n < n_ctx). At position 0 they go through one
 * ordinary forward (fast); later, one step per byte. */
STX_API stx_status stx_decoder_prefill(stx_decoder *decoder, const uint8_t *tokens, int32_t n);
/* Feeds bytes[batch], one per sequence (position + 1 < n_ctx). */
STX_API stx_status stx_decoder_step(stx_decoder *decoder, const uint8_t *bytes);
/* The logits of the next byte's distribution, [batch][256], in f32 or f64. */
STX_API stx_status stx_decoder_logits(const stx_decoder *decoder, stx_dtype dtype, void *dst,
                                      size_t count);
STX_API stx_status stx_decoder_position(const stx_decoder *decoder, int32_t *position);
/* Back to position 0, with the model's current weights and layouts. */
STX_API stx_status stx_decoder_reset(stx_decoder *decoder);

/* ---------------------------------------------------------------- data parallel */

/* Data-parallel training runs one process per GPU (a rank). Each rank trains a copy of the
 * model on its share of every global batch; the backward all-reduces the gradients (sum x 1/world,
 * in groups of blocks as the backward finishes them, on a stream of its own, so communication
 * overlaps the rest of the backward), and the optimizer step and its gradient-norm clipping then
 * see the gradient of the whole global batch on every rank, so the weights stay identical. On the
 * CUDA backend the transport is NCCL (several hosts work through NCCL's own sockets or
 * InfiniBand, set up by its NCCL_* environment variables); on the CPU backend only a world of one
 * rank exists (the same code path, with the identity for a transport), for tests and for tools
 * that always go through it. A build without NCCL refuses CUDA communicators with
 * STX_ERR_UNSUPPORTED ("built without NCCL"); stx_build_features() has STX_FEATURE_NCCL when it
 * has it. A peer that fails or stops answering makes every blocking call below (and stx_backward
 * of a model with a communicator) return STX_ERR_COMM on the other ranks within the timeout, never
 * hang: the communicator is then aborted and every later call refused. */

/* Shard arithmetic: rank `rank` of `world` trains on sequences [*first, *first + *count) of every
 * global batch of global_batch sequences: count = global_batch / world, first = rank * count.
 * STX_ERR_INVALID_ARGUMENT unless world >= 1, 0 <= rank < world and world divides global_batch
 * (the message names the numbers). */
STX_API stx_status stx_shard_batch(int32_t global_batch, int32_t world, int32_t rank,
                                   int32_t *first, int32_t *count);

#define STX_DIST_ID_BYTES 128
#define STX_DIST_CPU      (-1) /* stx_dist_create's device for a CPU communicator */

/* The meeting point of the ranks: rank 0 makes it (stx_dist_unique_id) and hands the same bytes
 * to every other rank (a shared file, the launcher's environment, MPI): NCCL's unique id. */
typedef struct stx_dist_id {
    uint8_t bytes[STX_DIST_ID_BYTES];
} stx_dist_id;

typedef struct stx_dist stx_dist;

/* A new id (rank 0 only; with NCCL this starts its bootstrap listener in this process).
 * STX_ERR_UNSUPPORTED in a build without NCCL. */
STX_API stx_status stx_dist_unique_id(stx_dist_id *id);

/* Join a communicator of `world` ranks as `rank`, on CUDA device `device` (NCCL) or STX_DIST_CPU
 * (world 1 only). Every rank passes the same id (NULL is allowed for world 1: no peers to meet).
 * The join does not block without end: it gives up after timeout_s seconds (0: 300), which also
 * bounds every later wait for the peers. Errors: STX_ERR_INVALID_ARGUMENT (rank outside
 * [0, world), world < 1, a NULL id for world > 1, a negative or non-finite timeout, a device that
 * is not there), STX_ERR_UNSUPPORTED (world > 1 on the CPU; CUDA without NCCL or without CUDA),
 * STX_ERR_COMM (the peers did not all arrive in time, or NCCL failed: its message). */
STX_API stx_status stx_dist_create(int32_t rank, int32_t world, const stx_dist_id *id,
                                   int32_t device, double timeout_s, stx_dist **out);
/* Frees the handle; the communicator itself goes when no model uses it any more. */
STX_API void stx_dist_free(stx_dist *dist);
/* Rank, world size and device (any pointer may be NULL). */
STX_API stx_status stx_dist_info(const stx_dist *dist, int32_t *rank, int32_t *world,
                                 int32_t *device);

typedef enum stx_reduce_op {
    STX_REDUCE_SUM = 0,
    STX_REDUCE_MIN = 1,
    STX_REDUCE_MAX = 2,
    STX_REDUCE_RANGE = 0x7fffffff
} stx_reduce_op;

/* values[0 .. count) reduced over all ranks, in place, on the host (a global loss, token count,
 * a stop flag). Every rank must call it with the same count and op. Blocking. */
STX_API stx_status stx_dist_allreduce(stx_dist *dist, double *values, int32_t count,
                                      stx_reduce_op op);

typedef enum stx_dist_grads {
    STX_DIST_GRADS_FP32 = 0, /* the gradients' own precision (fp32; fp64 for an fp64 CPU model) */
    STX_DIST_GRADS_BF16 = 1, /* bf16 copies: half the bytes; the average is rounded to bf16 */
    STX_DIST_GRADS_RANGE = 0x7fffffff
} stx_dist_grads;

typedef struct stx_dist_options {
    int32_t grads;         /* stx_dist_grads (default STX_DIST_GRADS_FP32) */
    int32_t bucket_layers; /* blocks per all-reduce group, >= 1 (default 2); the output layer goes
                              with the last blocks, the embeddings with the first */
} stx_dist_options;

STX_API stx_status stx_dist_options_init_v(stx_dist_options *opt, size_t opt_size,
                                           int32_t abi_version);
#define stx_dist_options_init(opt) stx_dist_options_init_v((opt), sizeof *(opt), STX_ABI_VERSION)

/* Train `model` data-parallel on `dist` (NULL: alone again; opt NULL: defaults): from now on each
 * stx_backward all-reduces the gradients (the model keeps the communicator alive). The model's
 * backend must be the communicator's: a CPU model with an STX_DIST_CPU communicator, a CUDA model
 * on the communicator's device (STX_ERR_INVALID_ARGUMENT otherwise). Every rank must make the same
 * calls in the same order (forward, backward, optimizer step) on models of the same config and
 * weights (stx_dist_check_weights verifies), with batches of the same shape. Set the dropout offset
 * (stx_model_set_dropout_offset) to the first sequence of the rank's shard. Micro-batches: the
 * backward all-reduces everything accumulated since stx_zero_grad, so turn the reduction off for
 * all micro-batches but the last (stx_model_set_grad_sync); a second reducing backward without an
 * stx_zero_grad between is refused (STX_ERR_STATE), and so is an optimizer step on gradients that
 * were not reduced. */
STX_API stx_status stx_model_set_dist_v(stx_model *model, stx_dist *dist,
                                        const stx_dist_options *opt, size_t opt_size,
                                        int32_t abi_version);
#define stx_model_set_dist(model, dist, opt)                                                       \
    stx_model_set_dist_v((model), (dist), (opt), sizeof(stx_dist_options), STX_ABI_VERSION)

/* Whether the next stx_backward calls all-reduce (1, the default) or only accumulate (0). */
STX_API stx_status stx_model_set_grad_sync(stx_model *model, int32_t on);

/* A 64-bit checksum (FNV-1a) of every parameter's value bits in table order, as fp32 (fp64 for an
 * fp64 model): equal weights give equal checksums on any backend. */
STX_API stx_status stx_model_weights_checksum(const stx_model *model, uint64_t *checksum);

/* Whether the model's weights are identical on every rank: *checksum gets this rank's, *all_equal
 * 1 when every rank has the same checksum, else 0. Collective: every rank calls it. */
STX_API stx_status stx_dist_check_weights(stx_dist *dist, const stx_model *model,
                                          uint64_t *checksum, int32_t *all_equal);

#ifdef __cplusplus
}
#endif
#endif /* SPARSETX_H */
