// model_handle.h: what stands behind the public stx_model handle, and the helpers every
// file of the C API shares (lib/api.cpp, and the checkpoint, data and sampling entry points).
#pragma once
#include <memory>
#include <new>
#include <string>

#include "backend.h"
#include "config.h"
#include "dist.h"
#include "error.h"
#include "layout.h"
#include "params.h"
#include "pattern.h"

struct stx_model {
    stx_config cfg;
    stx::Dims dims;
    stx::ModelPattern pattern;
    stx::ParamTable table;
    std::unique_ptr<stx::Backend> backend;
    stx_optim_config optim;
    int64_t step = 0;              // optimizer steps taken
    uint64_t dropout_step = 0;     // training forwards run (the dropout counter)
    int64_t dropout_sequence0 = 0; // stx_model_set_dropout_offset
    // Data parallel (lib/dist.cpp): the communicator's transport (kept alive while the model
    // uses it) and the all-reduce the backward drives; grad_sync_on: the next backward reduces;
    // grads_reduced: a reducing backward ran since stx_zero_grad; grads_local: a backward ran
    // without reducing since then.
    std::shared_ptr<stx::Transport> dist;
    std::unique_ptr<stx::GradSync> grad_sync;
    bool grad_sync_on = true, grads_reduced = false, grads_local = false;
    bool training = true;
    bool forward_ready = false; // activations of a training forward are in place
    bool logits_ready = false;  // logits of the last forward or evaluate are in place
    bool grads_pending = false; // a backward ran since the last optimizer step
    int32_t last_B = 0, last_T = 0;
    std::string app_state;     // the application text of the checkpoint it was loaded from
    bool user_layouts = false; // a layer's layout was replaced (stx_model_set_layer_layout)
    // Changed by anything that changes what a forward computes (weights, layer layouts): a
    // decoder made before refuses to go on. `alive` expires when the model is freed.
    uint64_t weights_version = 0;
    std::shared_ptr<int> alive = std::make_shared<int>(0);
};

// What stands behind the public stx_layout handle: a shared, immutable layout (a model that
// is given one keeps a reference).
struct stx_layout {
    std::shared_ptr<const stx::Layout> layout;
};

namespace stx {

// Runs f, mapping exceptions to status codes.
template <typename F> stx_status guarded(const char *fn, F &&f) {
    try {
        return f();
    } catch (const MemoryLimitError &e) {
        return fail(STX_ERR_OUT_OF_MEMORY, "%s: %s", fn, e.message);
    } catch (const std::bad_alloc &) {
        return fail(STX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    } catch (const std::exception &e) {
        return fail(STX_ERR_INTERNAL, "%s: %s", fn, e.what());
    } catch (...) {
        return fail(STX_ERR_INTERNAL, "%s: unknown exception", fn);
    }
}

// A new model from a config (validated here), with freshly initialized weights.
stx_status create_model(const stx_config &cfg, stx_model **out);

// STX_ERR_INVALID_ARGUMENT naming fn when model is NULL or not live (freed, never created).
stx_status check_model(const stx_model *model, const char *fn);
stx_status check_layout(const stx_layout *layout, const char *fn);

// STX_ERR_INVALID_ARGUMENT naming fn for tokens [B, T] a forward of this model cannot take
// (NULL, B or T < 1, T > n_ctx, more memory than the machine has).
stx_status check_tokens(const stx_model *model, const char *fn, const uint8_t *tokens, int32_t B,
                        int32_t T);
// STX_ERR_INVALID_ARGUMENT naming fn unless dtype is F32 or F64.
stx_status check_dtype(const char *fn, stx_dtype dtype);

// Sets the OpenMP thread count of the calling thread for this model's work.
void use_threads(const stx_model *model);

} // namespace stx
