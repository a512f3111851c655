// sample.cpp: stx_sample_config_init and stx_sample. The default sampler feeds the samples
// through a decoder (lib/backend.h; a key/value cache, one row per byte); the naive one runs a
// full forward (no dropout) over the current window of all samples for every new byte and
// draws from the last row's logits. Both draw with draw_byte (temperature, top-k, top-p,
// inverse CDF) from a uniform that depends only on (seed, sample, position).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "backend.h"
#include "config.h"
#include "error.h"
#include "model_handle.h"
#include "philox.h"

namespace {

using stx::fail;

// The settings of one draw, already validated.
struct DrawParams {
    double temperature = 1.0;
    int32_t top_k = 0; // 0 = all
    double top_p = 1.0;
};

// A uniform double in [0, 1) that depends only on (seed, sample, position): Philox4x32-10
// with key (seed low, seed high) and counter (sample, position, 0, 0), 53 bits of it.
double sample_uniform(uint64_t seed, uint32_t sample, uint32_t position) {
    const stx::Philox4 r = stx::philox4x32_10(sample, position, 0u, 0u, static_cast<uint32_t>(seed),
                                              static_cast<uint32_t>(seed >> 32));
    const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 21) ^ (r.v[1] >> 11);
    return static_cast<double>(bits & ((uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

// Draws one byte from 256 finite logits at uniform u in [0, 1): logits / temperature, keep
// the top_k largest (ties: the lower byte first), then the smallest prefix of those, in
// descending order, whose probability reaches top_p (at least one), renormalize, and take
// the first byte whose cumulative probability exceeds u.
int32_t draw_byte(const double *logits, const DrawParams &p, double u) {
    int32_t order[STX_VOCAB];
    for (int32_t v = 0; v < STX_VOCAB; ++v) order[v] = v;
    std::sort(order, order + STX_VOCAB, [logits](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    const int32_t k = p.top_k > 0 ? p.top_k : STX_VOCAB;
    // Relative to the maximum before dividing, so a tiny temperature gives exp(-inf) = 0,
    // never inf - inf.
    const double top = logits[order[0]];
    double cum[STX_VOCAB];
    double sum = 0.0;
    for (int32_t i = 0; i < k; ++i) {
        sum += std::exp((logits[order[i]] - top) / p.temperature);
        cum[i] = sum;
    }
    int32_t n = k;
    if (p.top_p < 1.0) {
        const double want = p.top_p * sum;
        for (int32_t i = 0; i < k; ++i)
            if (cum[i] >= want) {
                n = i + 1;
                break;
            }
    }
    const double target = u * cum[n - 1];
    for (int32_t i = 0; i < n; ++i)
        if (cum[i] > target) return order[i];
    return order[n - 1];
}

stx_status check_args(const stx_model *model, const uint8_t *prompts, int32_t n_prompt,
                      int32_t n_new, int32_t batch, const stx_sample_config *sc, size_t sc_size,
                      int32_t abi_version, const uint8_t *out) {
    const char *fn = "stx_sample";
    stx_status st = stx::check_model(model, fn);
    if (st != STX_OK) return st;
    if (!sc) return fail(STX_ERR_INVALID_ARGUMENT, "%s: sc is NULL", fn);
    if ((st = stx::check_abi(fn, sc_size, sizeof(stx_sample_config), abi_version)) != STX_OK)
        return st;
    if (!out) return fail(STX_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn);
    if (batch < 1)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: batch (%d) must be at least 1", fn, batch);
    if (n_prompt < 0)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: n_prompt (%d) must be >= 0", fn, n_prompt);
    if (n_new < 0) return fail(STX_ERR_INVALID_ARGUMENT, "%s: n_new (%d) must be >= 0", fn, n_new);
    if (n_prompt > 0 && !prompts)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: prompts is NULL but n_prompt is %d", fn,
                    n_prompt);
    const int64_t len = static_cast<int64_t>(n_prompt) + n_new;
    if (len < 1)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: n_prompt + n_new must be at least 1 (both are 0)", fn);
    if (len > std::numeric_limits<int32_t>::max())
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: n_prompt + n_new (%lld) does not fit in int32 lengths", fn,
                    static_cast<long long>(len));
    if (static_cast<int64_t>(batch) * model->cfg.n_ctx > (int64_t(1) << 31))
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: batch * n_ctx (%lld) is too large", fn,
                    static_cast<long long>(static_cast<int64_t>(batch) * model->cfg.n_ctx));
    if (!(sc->temperature > 0.0 && std::isfinite(sc->temperature)))
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: temperature (%g) must be positive and finite",
                    fn, sc->temperature);
    if (sc->top_k < 0 || sc->top_k > STX_VOCAB)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: top_k (%d) must be in [0, 256] (0 = all)", fn,
                    sc->top_k);
    if (!(sc->top_p > 0.0 && sc->top_p <= 1.0))
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: top_p (%g) must be in (0, 1]", fn, sc->top_p);
    if (sc->naive != 0 && sc->naive != 1)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: naive (%d) must be 0 or 1", fn, sc->naive);
    if (sc->stop_byte < -1 || sc->stop_byte > 255)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: stop_byte (%d) must be in [-1, 255] (-1 = never)", fn, sc->stop_byte);
    return STX_OK;
}

// The samples being generated: out [B][row] (prompt in front, zeros after), their lengths,
// which have stopped, and the draw of one position for all of them.
struct Samples {
    Samples(const uint8_t *prompts, int32_t n_prompt, int32_t n_new, int32_t batch,
            const stx_sample_config &sc, uint8_t *out_)
        : out(out_), B(static_cast<size_t>(batch)),
          row(static_cast<size_t>(n_prompt) + static_cast<size_t>(n_new)), seed(sc.seed),
          stop_byte(sc.stop_byte), len(B, n_prompt), done(B, 0), remaining(B), bytes(B), finite(B) {
        dp.temperature = sc.temperature;
        dp.top_k = sc.top_k;
        dp.top_p = sc.top_p;
        const size_t np = static_cast<size_t>(n_prompt);
        for (size_t b = 0; b < B; ++b) {
            if (np > 0) std::memcpy(out + b * row, prompts + b * np, np);
            std::memset(out + b * row + np, 0, row - np);
        }
    }

    // Draws byte `pos` of every sample still going from its row of logits [B][256]. The draws
    // run in parallel (each depends only on its row and on (seed, sample, position)); the
    // first sample whose logits are not finite fails the call, on the calling thread.
    stx_status draw(const double *logits, int64_t pos) {
        const int64_t n = static_cast<int64_t>(B);
#pragma omp parallel for schedule(static)
        for (int64_t b = 0; b < n; ++b) {
            const size_t i = static_cast<size_t>(b);
            if (done[i]) continue;
            const double *r = logits + i * STX_VOCAB;
            finite[i] = 1;
            for (int32_t v = 0; v < STX_VOCAB; ++v) finite[i] &= std::isfinite(r[v]) ? 1 : 0;
            if (finite[i])
                bytes[i] = draw_byte(
                    r, dp,
                    sample_uniform(seed, static_cast<uint32_t>(b), static_cast<uint32_t>(pos)));
        }
        for (size_t b = 0; b < B; ++b) {
            if (done[b]) continue;
            if (!finite[b])
                return fail(STX_ERR_INVALID_ARGUMENT,
                            "stx_sample: model: the logits of sample %zu at position %lld are not "
                            "finite (the weights hold NaN or infinity)",
                            b, static_cast<long long>(pos));
            out[b * row + static_cast<size_t>(pos)] = static_cast<uint8_t>(bytes[b]);
            len[b] = static_cast<int32_t>(pos + 1);
            if (bytes[b] == stop_byte) {
                done[b] = 1;
                --remaining;
            }
        }
        return STX_OK;
    }

    void report(int32_t *lengths) const {
        if (lengths)
            for (size_t b = 0; b < B; ++b) lengths[b] = len[b];
    }

    uint8_t *out;
    size_t B, row;
    uint64_t seed;
    int32_t stop_byte;
    DrawParams dp;
    std::vector<int32_t> len;
    std::vector<char> done;
    size_t remaining;
    std::vector<int32_t> bytes;
    std::vector<char> finite;
};

// The naive sampling loop; arguments are valid.
stx_status sample_naive(stx_model *model, const uint8_t *prompts, int32_t n_prompt, int32_t n_new,
                        int32_t batch, const stx_sample_config &sc, uint8_t *out,
                        int32_t *lengths) {
    Samples s(prompts, n_prompt, n_new, batch, sc, out);
    const size_t B = s.B, row = s.row;
    const int32_t n_ctx = model->cfg.n_ctx;
    const bool fp64 = model->cfg.precision == STX_PRECISION_FP64;
    std::vector<uint8_t> window;
    std::vector<float> logits_f;
    std::vector<double> logits_d, last(B * STX_VOCAB);

    for (int32_t i = 0; i < n_new && s.remaining > 0; ++i) {
        // The byte at `pos` is drawn from the logits of the window's last row, which sees
        // the T - 1 bytes before it (row t predicts token t from tokens < t); the window's
        // last token is a placeholder that the causal model never reads for that row.
        const int64_t pos = static_cast<int64_t>(n_prompt) + i;
        const int32_t T = static_cast<int32_t>(std::min<int64_t>(pos + 1, n_ctx));
        const int64_t start = pos + 1 - T;
        window.assign(B * static_cast<size_t>(T), 0);
        for (size_t b = 0; b < B; ++b)
            std::memcpy(window.data() + b * size_t(T), out + b * row + start, size_t(T - 1));

        stx::ForwardArgs args;
        args.tokens = window.data();
        args.B = batch;
        args.T = T;
        args.training = false;
        args.dropout_step = model->dropout_step;
        model->forward_ready = false;
        model->logits_ready = false;
        double loss = 0.0;
        stx_status st = model->backend->forward(args, &loss);
        if (st != STX_OK) return st;
        const size_t n_logits = B * size_t(T) * STX_VOCAB;
        if (fp64) {
            logits_d.resize(n_logits);
            st = model->backend->logits_read(STX_DTYPE_F64, logits_d.data());
        } else {
            logits_f.resize(n_logits);
            st = model->backend->logits_read(STX_DTYPE_F32, logits_f.data());
        }
        if (st != STX_OK) return st;
        for (size_t b = 0; b < B; ++b) {
            const size_t at = (b * size_t(T) + size_t(T - 1)) * STX_VOCAB;
            for (size_t v = 0; v < STX_VOCAB; ++v)
                last[b * STX_VOCAB + v] =
                    fp64 ? logits_d[at + v] : static_cast<double>(logits_f[at + v]);
        }
        if ((st = s.draw(last.data(), pos)) != STX_OK) return st;
    }
    s.report(lengths);
    return STX_OK;
}

// The sampling loop over a decoder (the default). The decoder holds bytes [w, pos) of every
// sample; past n_ctx - 1 of them it starts again from the last n_ctx / 2.
stx_status sample_cached(stx_model *model, const uint8_t *prompts, int32_t n_prompt, int32_t n_new,
                         int32_t batch, const stx_sample_config &sc, uint8_t *out,
                         int32_t *lengths) {
    Samples s(prompts, n_prompt, n_new, batch, sc, out);
    const size_t B = s.B, row = s.row;
    const int64_t n_ctx = model->cfg.n_ctx, keep = n_ctx / 2;
    std::unique_ptr<stx::Decoder> dec;
    stx_status st = model->backend->create_decoder(batch, &dec);
    if (st != STX_OK) return st;
    std::vector<uint8_t> column(B), window;
    std::vector<double> logits(B * STX_VOCAB);
    int64_t w = n_prompt <= n_ctx - 1 ? 0 : n_prompt - keep; // the decoder's position 0
    // Feeds bytes [w, pos) into a decoder at position 0.
    auto refill = [&](int64_t pos) -> stx_status {
        const size_t n = static_cast<size_t>(pos - w);
        if (n == 0) return STX_OK;
        window.resize(B * n);
        for (size_t b = 0; b < B; ++b) std::memcpy(&window[b * n], out + b * row + size_t(w), n);
        return dec->prefill(window.data(), static_cast<int32_t>(n));
    };
    if ((st = refill(n_prompt)) != STX_OK) return st;
    for (int32_t i = 0; i < n_new && s.remaining > 0; ++i) {
        const int64_t pos = static_cast<int64_t>(n_prompt) + i;
        if (pos - w > n_ctx - 1) { // slide the context
            w = pos - keep;
            if ((st = dec->reset()) != STX_OK || (st = refill(pos)) != STX_OK) return st;
        }
        if ((st = dec->logits_read(STX_DTYPE_F64, logits.data())) != STX_OK) return st;
        if ((st = s.draw(logits.data(), pos)) != STX_OK) return st;
        if (i + 1 < n_new && s.remaining > 0 && pos + 1 - w <= n_ctx - 1) {
            for (size_t b = 0; b < B; ++b) column[b] = out[b * row + size_t(pos)];
            if ((st = dec->step(column.data())) != STX_OK) return st;
        }
    }
    s.report(lengths);
    return STX_OK;
}

} // namespace

extern "C" {

STX_API stx_status stx_sample_config_init_v(stx_sample_config *sc, size_t sc_size,
                                            int32_t abi_version) {
    if (!sc) return fail(STX_ERR_INVALID_ARGUMENT, "stx_sample_config_init: sc is NULL");
    stx_status st =
        stx::check_abi("stx_sample_config_init", sc_size, sizeof(stx_sample_config), abi_version);
    if (st != STX_OK) return st;
    sc->temperature = 1.0;
    sc->top_k = 0;
    sc->stop_byte = -1;
    sc->top_p = 1.0;
    sc->seed = 1;
    sc->naive = 0;
    return STX_OK;
}

STX_API stx_status stx_sample_v(stx_model *model, const uint8_t *prompts, int32_t n_prompt,
                                int32_t n_new, int32_t batch, const stx_sample_config *sc,
                                size_t sc_size, int32_t abi_version, uint8_t *out,
                                int32_t *lengths) {
    stx_status st =
        check_args(model, prompts, n_prompt, n_new, batch, sc, sc_size, abi_version, out);
    if (st != STX_OK) return st;
    return stx::guarded("stx_sample", [&] {
        stx::use_threads(model);
        const stx_sample_config config = *sc;
        const stx_status s =
            config.naive
                ? sample_naive(model, prompts, n_prompt, n_new, batch, config, out, lengths)
                : sample_cached(model, prompts, n_prompt, n_new, batch, config, out, lengths);
        // The forwards reused the activation and logits memory: a following stx_backward
        // needs a new stx_forward, and stx_logits_read has nothing of the caller's to read.
        model->forward_ready = false;
        model->logits_ready = false;
        return s;
    });
}

} // extern "C"
