// decode.cpp: the stx_decoder_* functions: argument and state checks around a backend's
// Decoder (lib/backend.h). The decoder refuses to run on a model that was freed or whose
// weights or layouts changed since it was made (its cache would mix two models).
#include <memory>
#include <new>
#include <vector>

#include "backend.h"
#include "error.h"
#include "handles.h"
#include "model_handle.h"

struct stx_decoder {
    stx_model *model = nullptr;
    std::weak_ptr<int> model_alive;
    uint64_t weights_version = 0;
    int32_t batch = 0;
    std::unique_ptr<stx::Decoder> impl;
};

namespace {

using stx::fail;

// A live decoder whose model is alive (what stx_decoder_reset needs).
stx_status check_live(const stx_decoder *d, const char *fn) {
    if (!d) return fail(STX_ERR_INVALID_ARGUMENT, "%s: decoder is NULL", fn);
    if (!stx::handle_live(d))
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: decoder %p is not a live decoder (freed, or not made by "
                    "stx_decoder_create)",
                    fn, static_cast<const void *>(d));
    if (d->model_alive.expired())
        return fail(STX_ERR_STATE, "%s: the decoder's model was freed", fn);
    return STX_OK;
}

// ... and one that can run: it has a state made from the model's current weights.
stx_status check_decoder(const stx_decoder *d, const char *fn) {
    const stx_status st = check_live(d, fn);
    if (st != STX_OK) return st;
    if (!d->impl)
        return fail(STX_ERR_STATE,
                    "%s: the decoder has no state (its last reset failed; reset it again)", fn);
    if (d->weights_version != d->model->weights_version)
        return fail(STX_ERR_STATE,
                    "%s: the model's weights or layer layouts changed since the decoder was "
                    "made or reset; stx_decoder_reset starts it again with the new ones",
                    fn);
    return STX_OK;
}

// A decoder implementation at position 0 for the model's current weights.
stx_status make_impl(stx_decoder *d, const char *fn) {
    d->impl.reset();
    stx_model *m = d->model;
    stx::use_threads(m);
    return stx::guarded(fn, [&] {
        std::unique_ptr<stx::Decoder> impl;
        stx_status st = m->backend->create_decoder(d->batch, &impl);
        // Its reset and the prefill's forward reuse the model's activation memory.
        m->forward_ready = false;
        m->logits_ready = false;
        if (st != STX_OK) return st;
        d->impl = std::move(impl);
        d->weights_version = m->weights_version;
        return STX_OK;
    });
}

stx_status check_room(const stx_decoder *d, const char *fn, int64_t n) {
    const int64_t n_ctx = d->model->cfg.n_ctx, pos = d->impl->position();
    if (pos + n >= n_ctx)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: the decoder is at position %lld and %lld more bytes would pass the last "
                    "position it can compute (n_ctx - 1 = %lld); reset it or slide the context",
                    fn, static_cast<long long>(pos), static_cast<long long>(n),
                    static_cast<long long>(n_ctx - 1));
    return STX_OK;
}

// Runs f on the decoder's model; the model's activations are not kept across it.
template <typename F> stx_status run(stx_decoder *d, const char *fn, F &&f) {
    stx::use_threads(d->model);
    const stx_status st = stx::guarded(fn, f);
    d->model->forward_ready = false;
    d->model->logits_ready = false;
    return st;
}

} // namespace

extern "C" {

STX_API stx_status stx_decoder_create(stx_model *model, int32_t batch, stx_decoder **out) {
    const char *fn = "stx_decoder_create";
    if (!out) return fail(STX_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn);
    *out = nullptr;
    stx_status st = stx::check_model(model, fn);
    if (st != STX_OK) return st;
    if (batch < 1) return fail(STX_ERR_INVALID_ARGUMENT, "%s: batch (%d) must be >= 1", fn, batch);
    std::unique_ptr<stx_decoder> d(new (std::nothrow) stx_decoder);
    if (!d) return fail(STX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    d->model = model;
    d->model_alive = model->alive;
    d->batch = batch;
    if ((st = make_impl(d.get(), fn)) != STX_OK) return st;
    stx::handle_register(d.get());
    *out = d.release();
    return STX_OK;
}

STX_API void stx_decoder_free(stx_decoder *decoder) {
    if (decoder && stx::handle_unregister(decoder)) delete decoder; // a second free: no-op
}

STX_API stx_status stx_decoder_state_bytes(const stx_model *model, int32_t batch, int64_t *bytes) {
    const char *fn = "stx_decoder_state_bytes";
    stx_status st = stx::check_model(model, fn);
    if (st != STX_OK) return st;
    if (!bytes) return fail(STX_ERR_INVALID_ARGUMENT, "%s: bytes is NULL", fn);
    if (batch < 1) return fail(STX_ERR_INVALID_ARGUMENT, "%s: batch (%d) must be >= 1", fn, batch);
    return stx::guarded(fn, [&] {
        *bytes = model->backend->decoder_state_bytes(batch);
        return STX_OK;
    });
}

STX_API stx_status stx_decoder_prefill(stx_decoder *decoder, const uint8_t *tokens, int32_t n) {
    const char *fn = "stx_decoder_prefill";
    stx_status st = check_decoder(decoder, fn);
    if (st != STX_OK) return st;
    if (n < 0) return fail(STX_ERR_INVALID_ARGUMENT, "%s: n (%d) must be >= 0", fn, n);
    if (n == 0) return STX_OK;
    if (!tokens) return fail(STX_ERR_INVALID_ARGUMENT, "%s: tokens is NULL", fn);
    if ((st = check_room(decoder, fn, n)) != STX_OK) return st;
    if (decoder->impl->position() == 0 &&
        (st = stx::check_tokens(decoder->model, fn, tokens, decoder->batch, n + 1)) != STX_OK)
        return st;
    return run(decoder, fn, [&] {
        stx::Decoder &impl = *decoder->impl;
        if (impl.position() == 0) return impl.prefill(tokens, n);
        // Later prompts are fed a byte at a time: a forward cannot start mid-sequence.
        std::vector<uint8_t> column(static_cast<size_t>(decoder->batch));
        for (int32_t t = 0; t < n; ++t) {
            for (int32_t b = 0; b < decoder->batch; ++b)
                column[static_cast<size_t>(b)] = tokens[static_cast<size_t>(b) * n + t];
            const stx_status s = impl.step(column.data());
            if (s != STX_OK) return s;
        }
        return STX_OK;
    });
}

STX_API stx_status stx_decoder_step(stx_decoder *decoder, const uint8_t *bytes) {
    const char *fn = "stx_decoder_step";
    stx_status st = check_decoder(decoder, fn);
    if (st != STX_OK) return st;
    if (!bytes) return fail(STX_ERR_INVALID_ARGUMENT, "%s: bytes is NULL", fn);
    if ((st = check_room(decoder, fn, 1)) != STX_OK) return st;
    return run(decoder, fn, [&] { return decoder->impl->step(bytes); });
}

STX_API stx_status stx_decoder_logits(const stx_decoder *decoder, stx_dtype dtype, void *dst,
                                      size_t count) {
    const char *fn = "stx_decoder_logits";
    stx_status st = check_decoder(decoder, fn);
    if (st != STX_OK) return st;
    if ((st = stx::check_dtype(fn, dtype)) != STX_OK) return st;
    if (!dst) return fail(STX_ERR_INVALID_ARGUMENT, "%s: dst is NULL", fn);
    const size_t want = static_cast<size_t>(decoder->batch) * STX_VOCAB;
    if (count != want)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: count (%zu) must equal batch*256 = %zu", fn,
                    count, want);
    return stx::guarded(fn, [&] { return decoder->impl->logits_read(dtype, dst); });
}

STX_API stx_status stx_decoder_position(const stx_decoder *decoder, int32_t *position) {
    const char *fn = "stx_decoder_position";
    stx_status st = check_decoder(decoder, fn);
    if (st != STX_OK) return st;
    if (!position) return fail(STX_ERR_INVALID_ARGUMENT, "%s: position is NULL", fn);
    *position = static_cast<int32_t>(decoder->impl->position());
    return STX_OK;
}

STX_API stx_status stx_decoder_reset(stx_decoder *decoder) {
    const char *fn = "stx_decoder_reset";
    const stx_status st = check_live(decoder, fn);
    if (st != STX_OK) return st;
    return make_impl(decoder, fn);
}

} // extern "C"
