// api.cpp: every exported stx_* function of the model and op levels. Each one checks its
// arguments and the call order, turns C++ exceptions into status codes (nothing throws
// across the C boundary), and dispatches to the backend.
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <unistd.h>

#include "backend.h"
#include "config.h"
#include "error.h"
#include "handles.h"
#include "layout.h"
#include "model_handle.h"
#include "ops.h"
#include "params.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using stx::check_dtype;
using stx::check_model;
using stx::check_tokens;
using stx::fail;
using stx::guarded;
using stx::use_threads;

// Bytes of host memory physically present; 0 if unknown.
double physical_memory_bytes() {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

// Refuses requests that could never fit, before allocating (an overcommitted allocation
// would otherwise "succeed" and the process be killed when the memory is touched).
stx_status check_fits(const char *what, double bytes) {
    const double have = physical_memory_bytes();
    if (have > 0.0 && bytes > have)
        return fail(STX_ERR_OUT_OF_MEMORY,
                    "%s needs %.3g GB of host memory but this machine has %.3g GB", what,
                    bytes / 1e9, have / 1e9);
    return STX_OK;
}

double scalar_bytes(const stx_config &cfg) {
    return cfg.precision == STX_PRECISION_FP64 ? 8.0 : 4.0;
}

// Host bytes of activations for a batch (upper bound of what RefModel allocates).
double activation_bytes(const stx_model *m, int32_t B, int32_t T) {
    const stx::Dims &d = m->dims;
    const double N = static_cast<double>(B) * T;
    const double per_block = N * (7.0 * d.C + 2.0 * d.QK + 2.0 * d.F + 4.0 + d.H);
    const double blocks = m->cfg.recompute ? 1.0 : static_cast<double>(d.L);
    const double kept = m->cfg.recompute == 2 ? N * (d.C + d.H) * d.L : 0.0; // att, lse
    const double rest =
        N * ((d.L + 1.0) * d.C + 12.0 * d.C + 2.0 * d.QK + 2.0 * d.F + 2.0 * STX_VOCAB + 3.0) +
        kept;
    return (per_block * blocks + rest) * scalar_bytes(m->cfg);
}

} // namespace

namespace stx {

stx_status check_tokens(const stx_model *m, const char *fn, const uint8_t *tokens, int32_t B,
                        int32_t T) {
    if (!tokens) return fail(STX_ERR_INVALID_ARGUMENT, "%s: tokens is NULL", fn);
    if (B < 1) return fail(STX_ERR_INVALID_ARGUMENT, "%s: B (%d) must be at least 1", fn, B);
    if (T < 1) return fail(STX_ERR_INVALID_ARGUMENT, "%s: T (%d) must be at least 1", fn, T);
    if (T > m->cfg.n_ctx)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: T (%d) is longer than n_ctx (%d)", fn, T,
                    m->cfg.n_ctx);
    if (static_cast<int64_t>(B) * T > (int64_t(1) << 31))
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: B*T (%lld) is too large", fn,
                    static_cast<long long>(static_cast<int64_t>(B) * T));
    return check_fits(fn, activation_bytes(m, B, T));
}

stx_status check_dtype(const char *fn, stx_dtype dtype) {
    if (dtype != STX_DTYPE_F32 && dtype != STX_DTYPE_F64)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: dtype (%d) must be STX_DTYPE_F32 or F64", fn,
                    static_cast<int>(dtype));
    return STX_OK;
}

} // namespace stx

namespace {

stx_status find_tensor(const stx_model *m, const char *fn, const char *name, stx_dtype dtype,
                       const void *buf, size_t count, int32_t *index) {
    stx_status st = check_model(m, fn);
    if (st != STX_OK) return st;
    if (!name) return fail(STX_ERR_INVALID_ARGUMENT, "%s: name is NULL", fn);
    if (!buf) return fail(STX_ERR_INVALID_ARGUMENT, "%s: buffer is NULL", fn);
    if ((st = check_dtype(fn, dtype)) != STX_OK) return st;
    const int32_t i = m->table.find(name);
    if (i < 0) return fail(STX_ERR_INVALID_ARGUMENT, "%s: no parameter named '%s'", fn, name);
    const int64_t numel = m->table.tensors[static_cast<size_t>(i)].numel;
    if (count != static_cast<size_t>(numel))
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: count (%zu) must equal the %lld elements of '%s'", fn, count,
                    static_cast<long long>(numel), name);
    *index = i;
    return STX_OK;
}

stx_status build_layer_layouts(stx_model *m, std::vector<std::shared_ptr<const stx::Layout>> *out) {
    std::vector<std::shared_ptr<const stx::Layout>> distinct;
    for (const stx::LayerPattern &lp : m->pattern.layers) {
        auto lay = std::make_shared<stx::Layout>();
        stx_status st =
            stx::build_layout(lp, m->cfg.n_ctx, m->cfg.n_head, m->cfg.block_size, lay.get());
        if (st != STX_OK) return st;
        distinct.push_back(lay);
    }
    out->clear();
    for (int32_t l = 0; l < m->cfg.n_layer; ++l)
        out->push_back(distinct[static_cast<size_t>(l) % distinct.size()]);
    return STX_OK;
}

template <typename S> struct Typed {
    static const S *in(const void *p) { return static_cast<const S *>(p); }
    static S *out(void *p) { return static_cast<S *>(p); }
};

} // namespace

namespace stx {

// OpenMP's thread count is a per-thread setting that outlives the call: set it on every
// entry, back to the process default for n_threads == 0, so models do not leak it.
void use_threads(const stx_model *m) {
#ifdef _OPENMP
    static const int default_threads = omp_get_max_threads();
    omp_set_num_threads(m->cfg.n_threads > 0 ? m->cfg.n_threads : default_threads);
#else
    (void)m;
#endif
}

stx_status check_model(const stx_model *m, const char *fn) {
    if (!m) return fail(STX_ERR_INVALID_ARGUMENT, "%s: model is NULL", fn);
    if (!handle_live(m))
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: model %p is not a live model (freed, or not made by stx_model_create or "
                    "stx_model_load)",
                    fn, static_cast<const void *>(m));
    return STX_OK;
}

stx_status check_layout(const stx_layout *layout, const char *fn) {
    if (!layout) return fail(STX_ERR_INVALID_ARGUMENT, "%s: layout is NULL", fn);
    if (!handle_live(layout))
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: layout %p is not a live layout (freed, or not made by "
                    "stx_layout_create or stx_layout_create_from_blocks)",
                    fn, static_cast<const void *>(layout));
    return STX_OK;
}

stx_status create_model(const stx_config &cfg, stx_model **out) {
    std::unique_ptr<stx_model> m(new stx_model());
    m->cfg = cfg;
    stx_status s = stx::config_validate(m->cfg, &m->pattern, &m->dims);
    if (s != STX_OK) return s;
    if (m->cfg.backend == STX_BACKEND_AUTO) {
        // fp64 exists only on the CPU; config_validate already checked the explicit cases.
        const bool cuda = m->cfg.precision != STX_PRECISION_FP64 &&
                          stx::cuda_head_dims_supported(m->dims.Dq, m->dims.Dv) &&
                          stx_backend_available(STX_BACKEND_CUDA);
        m->cfg.backend = cuda ? STX_BACKEND_CUDA : STX_BACKEND_CPU;
        if (!cuda && m->cfg.precision == STX_PRECISION_BF16)
            return fail(STX_ERR_INVALID_ARGUMENT,
                        "stx_model_create: precision bf16 needs the CUDA backend, and backend "
                        "auto found none usable here (use fp32)");
    }
    if (m->cfg.backend == STX_BACKEND_CUDA) {
        if (!(stx_build_features() & STX_FEATURE_CUDA))
            return fail(STX_ERR_UNSUPPORTED, "stx_model_create: backend cuda: this build has "
                                             "no CUDA backend (rebuild with nvcc present)");
        if (stx::cuda_device_count() == 0)
            return fail(STX_ERR_UNSUPPORTED,
                        "stx_model_create: backend cuda: no CUDA device or driver on this "
                        "machine (use backend cpu or auto)");
    }
    m->table = stx::build_param_table(m->dims);
    if ((s = check_fits("stx_model_create: parameters, gradients and Adam moments",
                        4.0 * static_cast<double>(m->table.total) * scalar_bytes(m->cfg))) !=
        STX_OK)
        return s;
    stx::ModelSpec spec;
    spec.cfg = m->cfg;
    spec.dims = m->dims;
    spec.table = m->table;
    if ((s = build_layer_layouts(m.get(), &spec.layer_layouts)) != STX_OK) return s;
    use_threads(m.get());
    if (m->cfg.backend == STX_BACKEND_CUDA)
        s = stx::create_cuda_backend(spec, &m->backend);
    else
        s = stx::create_ref_backend(spec, &m->backend);
    if (s != STX_OK) return stx::fail_context(s, "stx_model_create");
    stx_optim_config_init(&m->optim);
    *out = m.release();
    handle_register(*out);
    return STX_OK;
}

} // namespace stx

extern "C" {

STX_API int32_t stx_version_number(void) {
    return STX_VERSION_NUMBER;
}
STX_API const char *stx_version_string(void) {
    return STX_VERSION_STRING;
}

STX_API uint32_t stx_build_features(void) {
    uint32_t f = 0;
#ifdef STX_HAVE_CUDA
    f |= STX_FEATURE_CUDA;
#endif
#ifdef STX_HAVE_NCCL
    f |= STX_FEATURE_NCCL;
#endif
#ifdef _OPENMP
    f |= STX_FEATURE_OPENMP;
#endif
    return f;
}

#ifdef STX_HAVE_CUDA
static const bool kCudaModelImplemented = true;
#else
static const bool kCudaModelImplemented = false;
#endif

STX_API int32_t stx_backend_available(stx_backend backend) {
    switch (backend) {
    case STX_BACKEND_CPU:
    case STX_BACKEND_AUTO:
        return 1;
    case STX_BACKEND_CUDA:
        return kCudaModelImplemented && stx::cuda_device_count() > 0 ? 1 : 0;
    case STX_BACKEND_RANGE:
        break;
    }
    return 0;
}

STX_API stx_status stx_config_init_v(stx_config *cfg, size_t cfg_size, int32_t abi_version) {
    if (!cfg) return fail(STX_ERR_INVALID_ARGUMENT, "stx_config_init: cfg is NULL");
    stx_status st = stx::check_abi("stx_config_init", cfg_size, sizeof(stx_config), abi_version);
    if (st != STX_OK) return st;
    stx::config_defaults(cfg);
    return STX_OK;
}

STX_API stx_status stx_config_preset_v(stx_config *cfg, size_t cfg_size, int32_t abi_version,
                                       const char *name) {
    if (!cfg) return fail(STX_ERR_INVALID_ARGUMENT, "stx_config_preset: cfg is NULL");
    stx_status st = stx::check_abi("stx_config_preset", cfg_size, sizeof(stx_config), abi_version);
    if (st != STX_OK) return st;
    return stx::config_preset(cfg, name);
}

STX_API stx_status stx_config_validate_v(const stx_config *cfg, size_t cfg_size,
                                         int32_t abi_version) {
    if (!cfg) return fail(STX_ERR_INVALID_ARGUMENT, "stx_config_validate: cfg is NULL");
    stx_status st =
        stx::check_abi("stx_config_validate", cfg_size, sizeof(stx_config), abi_version);
    if (st != STX_OK) return st;
    return guarded("stx_config_validate",
                   [&] { return stx::config_validate(*cfg, nullptr, nullptr); });
}

STX_API stx_status stx_pattern_normalize(const char *pattern, char *out, size_t out_size) {
    return guarded("stx_pattern_normalize", [&] {
        if (!out) return fail(STX_ERR_INVALID_ARGUMENT, "stx_pattern_normalize: out is NULL");
        stx::ModelPattern p;
        stx_status st = stx::parse_model_pattern(pattern, &p);
        if (st != STX_OK) return st;
        std::string s = stx::format_model(p);
        if (s.size() + 1 > out_size)
            return fail(STX_ERR_INVALID_ARGUMENT,
                        "stx_pattern_normalize: out_size (%zu) is too small for \"%s\" (%zu "
                        "bytes)",
                        out_size, s.c_str(), s.size() + 1);
        std::memcpy(out, s.c_str(), s.size() + 1);
        return STX_OK;
    });
}

STX_API stx_status stx_optim_config_init_v(stx_optim_config *opt, size_t opt_size,
                                           int32_t abi_version) {
    if (!opt) return fail(STX_ERR_INVALID_ARGUMENT, "stx_optim_config_init: opt is NULL");
    stx_status st =
        stx::check_abi("stx_optim_config_init", opt_size, sizeof(stx_optim_config), abi_version);
    if (st != STX_OK) return st;
    opt->lr = 3e-4;
    opt->min_lr = 0.0;
    opt->beta1 = 0.9;
    opt->beta2 = 0.999;
    opt->eps = 1e-8;
    opt->weight_decay = 0.01;
    opt->grad_clip = 1.0;
    opt->warmup_steps = 0;
    opt->total_steps = 0;
    return STX_OK;
}

STX_API double stx_optim_lr_at(const stx_optim_config *opt, int64_t step) {
    if (!opt || step < 0) return 0.0;
    if (step < opt->warmup_steps)
        return opt->lr * static_cast<double>(step + 1) / static_cast<double>(opt->warmup_steps);
    if (opt->total_steps <= opt->warmup_steps) return opt->lr;
    if (step >= opt->total_steps) return opt->min_lr;
    const double progress = static_cast<double>(step - opt->warmup_steps) /
                            static_cast<double>(opt->total_steps - opt->warmup_steps);
    return opt->min_lr +
           (opt->lr - opt->min_lr) * 0.5 * (1.0 + std::cos(3.14159265358979323846 * progress));
}

STX_API stx_status stx_model_create_v(const stx_config *cfg, size_t cfg_size, int32_t abi_version,
                                      stx_model **out) {
    if (!out) return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_create: out is NULL");
    *out = nullptr;
    if (!cfg) return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_create: cfg is NULL");
    stx_status st = stx::check_abi("stx_model_create", cfg_size, sizeof(stx_config), abi_version);
    if (st != STX_OK) return st;
    return guarded("stx_model_create", [&] { return stx::create_model(*cfg, out); });
}

STX_API void stx_model_free(stx_model *model) {
    if (model && stx::handle_unregister(model)) delete model; // a second free is a no-op
}

STX_API stx_status stx_model_get_config_v(const stx_model *model, stx_config *cfg, size_t cfg_size,
                                          int32_t abi_version) {
    stx_status st = check_model(model, "stx_model_get_config");
    if (st != STX_OK) return st;
    if (!cfg) return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_get_config: cfg is NULL");
    if ((st = stx::check_abi("stx_model_get_config", cfg_size, sizeof(stx_config), abi_version)) !=
        STX_OK)
        return st;
    *cfg = model->cfg;
    return STX_OK;
}

STX_API stx_status stx_model_set_training(stx_model *model, int32_t training) {
    stx_status st = check_model(model, "stx_model_set_training");
    if (st != STX_OK) return st;
    if (training != 0 && training != 1)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "stx_model_set_training: training (%d) must be 0 or 1", training);
    model->training = training == 1;
    return STX_OK;
}

static stx_status run_forward(stx_model *model, const char *fn, const uint8_t *tokens, int32_t B,
                              int32_t T, bool training, double *loss_nats) {
    stx_status st = check_model(model, fn);
    if (st != STX_OK) return st;
    if ((st = check_tokens(model, fn, tokens, B, T)) != STX_OK) return st;
    return guarded(fn, [&] {
        use_threads(model);
        stx::ForwardArgs args;
        args.tokens = tokens;
        args.B = B;
        args.T = T;
        args.training = training;
        args.dropout_step = model->dropout_step;
        args.dropout_sequence0 = model->dropout_sequence0;
        model->forward_ready = false;
        model->logits_ready = false;
        double loss = 0.0;
        stx_status s = model->backend->forward(args, &loss);
        if (s != STX_OK) return s;
        model->logits_ready = true;
        model->last_B = B;
        model->last_T = T;
        if (loss_nats) *loss_nats = loss;
        return STX_OK;
    });
}

STX_API stx_status stx_forward(stx_model *model, const uint8_t *tokens, int32_t B, int32_t T,
                               double *loss_nats) {
    stx_status st = check_model(model, "stx_forward");
    if (st != STX_OK) return st;
    st = run_forward(model, "stx_forward", tokens, B, T,
                     model->training && model->cfg.dropout > 0.0f, loss_nats);
    if (st != STX_OK) return st;
    model->forward_ready = true;
    if (model->training) ++model->dropout_step;
    return STX_OK;
}

STX_API stx_status stx_evaluate(stx_model *model, const uint8_t *tokens, int32_t B, int32_t T,
                                double *loss_nats) {
    return run_forward(model, "stx_evaluate", tokens, B, T, false, loss_nats);
}

STX_API stx_status stx_logits_read(const stx_model *model, stx_dtype dtype, void *dst,
                                   size_t count) {
    stx_status st = check_model(model, "stx_logits_read");
    if (st != STX_OK) return st;
    if ((st = check_dtype("stx_logits_read", dtype)) != STX_OK) return st;
    if (!dst) return fail(STX_ERR_INVALID_ARGUMENT, "stx_logits_read: dst is NULL");
    if (!model->logits_ready)
        return fail(STX_ERR_STATE, "stx_logits_read: no forward or evaluate has run");
    const size_t want = static_cast<size_t>(model->last_B) * model->last_T * STX_VOCAB;
    if (count != want)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "stx_logits_read: count (%zu) must equal B*T*256 = %zu of the last forward",
                    count, want);
    return guarded("stx_logits_read", [&] { return model->backend->logits_read(dtype, dst); });
}

STX_API stx_status stx_backward(stx_model *model) {
    stx_status st = check_model(model, "stx_backward");
    if (st != STX_OK) return st;
    if (!model->forward_ready)
        return fail(STX_ERR_STATE,
                    "stx_backward: no stx_forward since the weights last changed (an optimizer "
                    "step, a parameter write or an stx_evaluate needs a new forward)");
    const bool reduce = model->dist && model->grad_sync_on;
    if (model->dist && model->dist->broken())
        return fail(STX_ERR_COMM, "stx_backward: the model's communicator was aborted after an "
                                  "earlier failure (a peer failed or timed out)");
    if (reduce && model->grads_reduced)
        return fail(STX_ERR_STATE,
                    "stx_backward: the gradients were already all-reduced by a backward since "
                    "stx_zero_grad; accumulate micro-batches with stx_model_set_grad_sync(model, "
                    "0) and reduce only on the last");
    return guarded("stx_backward", [&] {
        use_threads(model);
        model->backend->set_grad_sync(reduce ? model->grad_sync.get() : nullptr);
        stx_status s = model->backend->backward();
        model->backend->set_grad_sync(nullptr);
        if (s == STX_OK) {
            model->grads_pending = true;
            if (reduce) {
                model->grads_reduced = true;
                model->grads_local = false;
            } else if (model->dist) {
                model->grads_local = true;
            }
        }
        return s;
    });
}

STX_API stx_status stx_zero_grad(stx_model *model) {
    stx_status st = check_model(model, "stx_zero_grad");
    if (st != STX_OK) return st;
    return guarded("stx_zero_grad", [&] {
        stx_status s = model->backend->zero_grad();
        if (s == STX_OK) model->grads_reduced = model->grads_local = false;
        return s;
    });
}

STX_API stx_status stx_model_set_optimizer_v(stx_model *model, const stx_optim_config *opt,
                                             size_t opt_size, int32_t abi_version) {
    stx_status st = check_model(model, "stx_model_set_optimizer");
    if (st != STX_OK) return st;
    if (!opt) return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_set_optimizer: opt is NULL");
    if ((st = stx::check_abi("stx_model_set_optimizer", opt_size, sizeof(stx_optim_config),
                             abi_version)) != STX_OK)
        return st;
    auto bad = [](const char *field, double v, const char *rule) {
        return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_set_optimizer: %s (%g) %s", field, v,
                    rule);
    };
    if (!(opt->lr >= 0.0 && std::isfinite(opt->lr))) return bad("lr", opt->lr, "must be >= 0");
    if (!(opt->min_lr >= 0.0 && opt->min_lr <= opt->lr))
        return bad("min_lr", opt->min_lr, "must be in [0, lr]");
    if (!(opt->beta1 >= 0.0 && opt->beta1 < 1.0))
        return bad("beta1", opt->beta1, "must be in [0, 1)");
    if (!(opt->beta2 >= 0.0 && opt->beta2 < 1.0))
        return bad("beta2", opt->beta2, "must be in [0, 1)");
    if (!(opt->eps > 0.0 && std::isfinite(opt->eps))) return bad("eps", opt->eps, "must be > 0");
    if (!(opt->weight_decay >= 0.0 && std::isfinite(opt->weight_decay)))
        return bad("weight_decay", opt->weight_decay, "must be >= 0");
    if (!(opt->grad_clip >= 0.0 && std::isfinite(opt->grad_clip)))
        return bad("grad_clip", opt->grad_clip, "must be >= 0 (0 turns clipping off)");
    if (opt->warmup_steps < 0)
        return bad("warmup_steps", static_cast<double>(opt->warmup_steps), "must be >= 0");
    if (opt->total_steps < 0 || (opt->total_steps > 0 && opt->total_steps <= opt->warmup_steps))
        return bad("total_steps", static_cast<double>(opt->total_steps),
                   "must be 0 (no decay) or greater than warmup_steps");
    model->optim = *opt;
    return STX_OK;
}

STX_API stx_status stx_optimizer_step(stx_model *model, double *lr_used, double *grad_norm) {
    stx_status st = check_model(model, "stx_optimizer_step");
    if (st != STX_OK) return st;
    if (!model->grads_pending)
        return fail(STX_ERR_STATE, "stx_optimizer_step: no stx_backward since the last step");
    if (model->dist && (!model->grads_reduced || model->grads_local))
        return fail(STX_ERR_STATE,
                    "stx_optimizer_step: the model trains data-parallel but its gradients hold "
                    "this rank's alone (the last stx_backward ran with stx_model_set_grad_sync "
                    "off): the ranks' weights would drift apart");
    return guarded("stx_optimizer_step", [&] {
        use_threads(model);
        double norm = 0.0;
        stx_status s = model->backend->grad_norm(&norm);
        if (s != STX_OK) return s;
        const stx_optim_config &o = model->optim;
        const double lr = stx_optim_lr_at(&o, model->step);
        if (!std::isfinite(norm)) {
            // A NaN or Inf anywhere in the gradients: no update at all (weights, Adam moments
            // and the step count stay as they are). The gradients are consumed as by a step,
            // so the next step needs a new forward and backward.
            model->grads_pending = false;
            model->forward_ready = false;
            if (lr_used) *lr_used = lr;
            if (grad_norm) *grad_norm = norm;
            return fail(STX_STEP_SKIPPED,
                        "stx_optimizer_step: the gradient norm is %g (not finite): step "
                        "skipped, weights and optimizer state unchanged (the model stays at "
                        "step %lld)",
                        norm, static_cast<long long>(model->step));
        }
        const double scale = o.grad_clip > 0.0 ? std::fmin(1.0, o.grad_clip / (norm + 1e-6)) : 1.0;
        ++model->weights_version; // before the call: a failure half-way changed them too
        if ((s = model->backend->adamw_step(o, lr, scale, model->step + 1)) != STX_OK) return s;
        ++model->step;
        model->grads_pending = false;
        model->forward_ready = false;
        if (lr_used) *lr_used = lr;
        if (grad_norm) *grad_norm = norm;
        return STX_OK;
    });
}

STX_API stx_status stx_model_get_dropout_counter(const stx_model *model, uint64_t *counter) {
    stx_status st = check_model(model, "stx_model_get_dropout_counter");
    if (st != STX_OK) return st;
    if (!counter)
        return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_get_dropout_counter: counter is NULL");
    *counter = model->dropout_step;
    return STX_OK;
}

STX_API stx_status stx_model_set_dropout_counter(stx_model *model, uint64_t counter) {
    stx_status st = check_model(model, "stx_model_set_dropout_counter");
    if (st != STX_OK) return st;
    model->dropout_step = counter;
    return STX_OK;
}

STX_API stx_status stx_model_set_dropout_offset(stx_model *model, int64_t first_sequence) {
    stx_status st = check_model(model, "stx_model_set_dropout_offset");
    if (st != STX_OK) return st;
    if (first_sequence < 0)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "stx_model_set_dropout_offset: first_sequence (%lld) must be >= 0",
                    static_cast<long long>(first_sequence));
    model->dropout_sequence0 = first_sequence;
    return STX_OK;
}

STX_API stx_status stx_model_get_dropout_offset(const stx_model *model, int64_t *first_sequence) {
    stx_status st = check_model(model, "stx_model_get_dropout_offset");
    if (st != STX_OK) return st;
    if (!first_sequence)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "stx_model_get_dropout_offset: first_sequence is NULL");
    *first_sequence = model->dropout_sequence0;
    return STX_OK;
}

STX_API stx_status stx_model_set_threads(stx_model *model, int32_t n_threads) {
    stx_status st = check_model(model, "stx_model_set_threads");
    if (st != STX_OK) return st;
    if (n_threads < 0 || n_threads > 4096)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "stx_model_set_threads: n_threads (%d) must be in [0, 4096]", n_threads);
    model->cfg.n_threads = n_threads;
    return STX_OK;
}

STX_API stx_status stx_model_get_optimizer_v(const stx_model *model, stx_optim_config *opt,
                                             size_t opt_size, int32_t abi_version) {
    stx_status st = check_model(model, "stx_model_get_optimizer");
    if (st != STX_OK) return st;
    if (!opt) return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_get_optimizer: opt is NULL");
    if ((st = stx::check_abi("stx_model_get_optimizer", opt_size, sizeof(stx_optim_config),
                             abi_version)) != STX_OK)
        return st;
    *opt = model->optim;
    return STX_OK;
}

STX_API stx_status stx_model_set_memory_limit(stx_model *model, int64_t bytes) {
    stx_status st = check_model(model, "stx_model_set_memory_limit");
    if (st != STX_OK) return st;
    if (bytes < 0)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "stx_model_set_memory_limit: bytes (%lld) must be >= 0 (0: no limit)",
                    static_cast<long long>(bytes));
    model->backend->set_memory_limit(bytes);
    return STX_OK;
}

STX_API stx_status stx_model_memory(const stx_model *model, int64_t *bytes_in_use,
                                    int64_t *bytes_peak) {
    stx_status st = check_model(model, "stx_model_memory");
    if (st != STX_OK) return st;
    int64_t in_use = 0, peak = 0;
    model->backend->memory(&in_use, &peak);
    if (bytes_in_use) *bytes_in_use = in_use;
    if (bytes_peak) *bytes_peak = peak;
    return STX_OK;
}

STX_API stx_status stx_model_get_step(const stx_model *model, int64_t *step) {
    stx_status st = check_model(model, "stx_model_get_step");
    if (st != STX_OK) return st;
    if (!step) return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_get_step: step is NULL");
    *step = model->step;
    return STX_OK;
}

STX_API stx_status stx_param_count(const stx_model *model, int32_t *count) {
    stx_status st = check_model(model, "stx_param_count");
    if (st != STX_OK) return st;
    if (!count) return fail(STX_ERR_INVALID_ARGUMENT, "stx_param_count: count is NULL");
    *count = static_cast<int32_t>(model->table.tensors.size());
    return STX_OK;
}

STX_API stx_status stx_param_info(const stx_model *model, int32_t index, const char **name,
                                  int32_t *ndim, int64_t shape[STX_MAX_DIMS]) {
    stx_status st = check_model(model, "stx_param_info");
    if (st != STX_OK) return st;
    const int32_t n = static_cast<int32_t>(model->table.tensors.size());
    if (index < 0 || index >= n)
        return fail(STX_ERR_INVALID_ARGUMENT, "stx_param_info: index (%d) must be in [0, %d)",
                    index, n);
    const stx::TensorSpec &t = model->table.tensors[static_cast<size_t>(index)];
    if (name) *name = t.name.c_str();
    if (ndim) *ndim = t.ndim;
    if (shape)
        for (int32_t i = 0; i < STX_MAX_DIMS; ++i) shape[i] = i < t.ndim ? t.shape[i] : 0;
    return STX_OK;
}

STX_API stx_status stx_param_total(const stx_model *model, int64_t *n_params) {
    stx_status st = check_model(model, "stx_param_total");
    if (st != STX_OK) return st;
    if (!n_params) return fail(STX_ERR_INVALID_ARGUMENT, "stx_param_total: n_params is NULL");
    *n_params = model->table.total;
    return STX_OK;
}

static stx_status tensor_io(stx_model *model, const char *fn, stx::TensorKind kind,
                            const char *name, stx_dtype dtype, const void *src, void *dst,
                            size_t count) {
    int32_t index = -1;
    stx_status st = find_tensor(model, fn, name, dtype, src ? src : dst, count, &index);
    if (st != STX_OK) return st;
    return guarded(fn, [&] {
        if (src) {
            if (kind == stx::TensorKind::Param) ++model->weights_version;
            stx_status s = model->backend->tensor_write(kind, index, dtype, src);
            if (s == STX_OK && kind == stx::TensorKind::Param) model->forward_ready = false;
            return s;
        }
        return model->backend->tensor_read(kind, index, dtype, dst);
    });
}

STX_API stx_status stx_param_read(const stx_model *model, const char *name, stx_dtype dtype,
                                  void *dst, size_t count) {
    return tensor_io(const_cast<stx_model *>(model), "stx_param_read", stx::TensorKind::Param, name,
                     dtype, nullptr, dst, count);
}
STX_API stx_status stx_param_write(stx_model *model, const char *name, stx_dtype dtype,
                                   const void *src, size_t count) {
    return tensor_io(model, "stx_param_write", stx::TensorKind::Param, name, dtype, src, nullptr,
                     count);
}
STX_API stx_status stx_grad_read(const stx_model *model, const char *name, stx_dtype dtype,
                                 void *dst, size_t count) {
    return tensor_io(const_cast<stx_model *>(model), "stx_grad_read", stx::TensorKind::Grad, name,
                     dtype, nullptr, dst, count);
}
STX_API stx_status stx_grad_write(stx_model *model, const char *name, stx_dtype dtype,
                                  const void *src, size_t count) {
    return tensor_io(model, "stx_grad_write", stx::TensorKind::Grad, name, dtype, src, nullptr,
                     count);
}

/* ------------------------------------------------------------- op level */

STX_API stx_status stx_layout_create(const char *pattern, int32_t n_ctx, int32_t n_head,
                                     int32_t block_size, stx_layout **out) {
    if (!out) return fail(STX_ERR_INVALID_ARGUMENT, "stx_layout_create: out is NULL");
    *out = nullptr;
    return guarded("stx_layout_create", [&] {
        stx::LayerPattern lp;
        stx_status st = stx::parse_layer_pattern(pattern, &lp);
        if (st != STX_OK) return st;
        auto lay = std::make_shared<stx::Layout>();
        if ((st = stx::build_layout(lp, n_ctx, n_head, block_size, lay.get())) != STX_OK)
            return stx::fail_context(st, "stx_layout_create");
        *out = new stx_layout{lay};
        stx::handle_register(*out);
        return STX_OK;
    });
}

STX_API stx_status stx_layout_create_from_blocks(int32_t n_ctx, int32_t n_head, int32_t block_size,
                                                 const uint8_t *blocks, stx_layout **out) {
    if (!out) return fail(STX_ERR_INVALID_ARGUMENT, "stx_layout_create_from_blocks: out is NULL");
    *out = nullptr;
    return guarded("stx_layout_create_from_blocks", [&] {
        auto lay = std::make_shared<stx::Layout>();
        stx_status st = stx::build_layout_from_blocks(n_ctx, n_head, block_size, blocks, lay.get());
        if (st != STX_OK) return stx::fail_context(st, "stx_layout_create_from_blocks");
        *out = new stx_layout{lay};
        stx::handle_register(*out);
        return STX_OK;
    });
}

STX_API void stx_layout_free(stx_layout *layout) {
    if (layout && stx::handle_unregister(layout)) delete layout; // a second free is a no-op
}

STX_API int32_t stx_layout_allows(const stx_layout *layout, int32_t head, int64_t q, int64_t k) {
    if (!layout || !stx::handle_live(layout) || head < 0 || head >= layout->layout->n_head ||
        q < 0 || q >= layout->layout->n_ctx || k < 0 || k > q)
        return 0;
    return layout->layout->allows(head, q, k) ? 1 : 0;
}

STX_API stx_status stx_layout_stats(const stx_layout *layout, int32_t head, int64_t *n_blocks,
                                    int64_t *n_pairs) {
    stx_status st = stx::check_layout(layout, "stx_layout_stats");
    if (st != STX_OK) return st;
    if (head < 0 || head >= layout->layout->n_head)
        return fail(STX_ERR_INVALID_ARGUMENT, "stx_layout_stats: head (%d) must be in [0, %d)",
                    head, layout->layout->n_head);
    return guarded("stx_layout_stats", [&] {
        int64_t b = 0, p = 0;
        stx::layout_stats(*layout->layout, head, &b, &p);
        if (n_blocks) *n_blocks = b;
        if (n_pairs) *n_pairs = p;
        return STX_OK;
    });
}

static stx_status check_attention(const char *fn, const stx_layout *layout, stx_dtype dtype,
                                  int32_t B, int32_t T, int32_t Dqk, int32_t Dv, double scale) {
    if (stx::check_layout(layout, fn) != STX_OK) return STX_ERR_INVALID_ARGUMENT;
    stx_status st = check_dtype(fn, dtype);
    if (st != STX_OK) return st;
    if (B < 1) return fail(STX_ERR_INVALID_ARGUMENT, "%s: B (%d) must be at least 1", fn, B);
    if (T < 1 || T > layout->layout->n_ctx)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: T (%d) must be in [1, n_ctx of the layout = %d]",
                    fn, T, layout->layout->n_ctx);
    if (Dqk < 1 || Dqk > 4096)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: Dqk (%d) must be in [1, 4096]", fn, Dqk);
    if (Dv < 1 || Dv > 4096)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: Dv (%d) must be in [1, 4096]", fn, Dv);
    if (!(scale > 0.0 && std::isfinite(scale)))
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: scale (%g) must be positive and finite", fn,
                    scale);
    return STX_OK;
}

STX_API stx_status stx_attention_forward(const stx_layout *layout, stx_dtype dtype, int32_t B,
                                         int32_t T, int32_t Dqk, int32_t Dv, double scale,
                                         const void *q, const void *k, const void *v, void *out,
                                         void *lse) {
    const char *fn = "stx_attention_forward";
    stx_status st = check_attention(fn, layout, dtype, B, T, Dqk, Dv, scale);
    if (st != STX_OK) return st;
    if (!q || !k || !v || !out || !lse)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: q, k, v, out and lse must not be NULL", fn);
    return guarded(fn, [&] {
        const stx::Layout &L = *layout->layout;
        if (dtype == STX_DTYPE_F64)
            stx::ref::attention_forward(Typed<double>::out(out), Typed<double>::out(lse),
                                        Typed<double>::in(q), Typed<double>::in(k),
                                        Typed<double>::in(v), L, B, T, Dqk, Dv, scale);
        else
            stx::ref::attention_forward(Typed<float>::out(out), Typed<float>::out(lse),
                                        Typed<float>::in(q), Typed<float>::in(k),
                                        Typed<float>::in(v), L, B, T, Dqk, Dv, scale);
        return STX_OK;
    });
}

STX_API stx_status stx_attention_backward(const stx_layout *layout, stx_dtype dtype, int32_t B,
                                          int32_t T, int32_t Dqk, int32_t Dv, double scale,
                                          const void *q, const void *k, const void *v,
                                          const void *out, const void *lse, const void *dout,
                                          void *dq, void *dk, void *dv) {
    const char *fn = "stx_attention_backward";
    stx_status st = check_attention(fn, layout, dtype, B, T, Dqk, Dv, scale);
    if (st != STX_OK) return st;
    if (!q || !k || !v || !out || !lse || !dout || !dq || !dk || !dv)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: no buffer may be NULL", fn);
    return guarded(fn, [&] {
        const stx::Layout &L = *layout->layout;
        const size_t H = static_cast<size_t>(L.n_head), N = static_cast<size_t>(B) * T;
        const size_t nq = N * H * static_cast<size_t>(Dqk), nv = N * H * static_cast<size_t>(Dv);
        const size_t size = dtype == STX_DTYPE_F64 ? sizeof(double) : sizeof(float);
        std::memset(dq, 0, nq * size); // the op contract adds; the public API overwrites
        std::memset(dk, 0, nq * size);
        std::memset(dv, 0, nv * size);
        if (dtype == STX_DTYPE_F64)
            stx::ref::attention_backward(Typed<double>::out(dq), Typed<double>::out(dk),
                                         Typed<double>::out(dv), Typed<double>::in(dout),
                                         Typed<double>::in(q), Typed<double>::in(k),
                                         Typed<double>::in(v), Typed<double>::in(out),
                                         Typed<double>::in(lse), L, B, T, Dqk, Dv, scale);
        else
            stx::ref::attention_backward(Typed<float>::out(dq), Typed<float>::out(dk),
                                         Typed<float>::out(dv), Typed<float>::in(dout),
                                         Typed<float>::in(q), Typed<float>::in(k),
                                         Typed<float>::in(v), Typed<float>::in(out),
                                         Typed<float>::in(lse), L, B, T, Dqk, Dv, scale);
        return STX_OK;
    });
}

STX_API stx_status stx_model_set_layer_layout(stx_model *model, int32_t layer,
                                              const stx_layout *layout) {
    const char *fn = "stx_model_set_layer_layout";
    stx_status st = check_model(model, fn);
    if (st != STX_OK) return st;
    if (stx::check_layout(layout, fn) != STX_OK) return STX_ERR_INVALID_ARGUMENT;
    if (layer < 0 || layer >= model->cfg.n_layer)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: layer (%d) must be in [0, %d)", fn, layer,
                    model->cfg.n_layer);
    const stx::Layout &L = *layout->layout;
    if (L.n_ctx != model->cfg.n_ctx || L.n_head != model->cfg.n_head ||
        L.block_size != model->cfg.block_size)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: layout (n_ctx %d, n_head %d, block %d) does not match the model (n_ctx "
                    "%d, n_head %d, block %d)",
                    fn, L.n_ctx, L.n_head, L.block_size, model->cfg.n_ctx, model->cfg.n_head,
                    model->cfg.block_size);
    return guarded(fn, [&] {
        model->user_layouts = true;
        ++model->weights_version; // decoders planned their caches for the old layout
        model->backend->set_layer_layout(layer, layout->layout);
        model->forward_ready = false;
        return STX_OK;
    });
}

} // extern "C"
