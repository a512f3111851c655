// config.cpp: defaults, presets and validation of stx_config.
#include "config.h"

#include <cmath>
#include <cstring>

#include "error.h"

namespace stx {
namespace {

void set_pattern(stx_config *cfg, const char *text) {
    std::strncpy(cfg->pattern, text, STX_PATTERN_MAX - 1);
    cfg->pattern[STX_PATTERN_MAX - 1] = '\0';
}

void set_pos(stx_config *cfg, int32_t n, const int32_t *shape) {
    cfg->n_pos_axes = n;
    for (int32_t a = 0; a < STX_MAX_POS_AXES; ++a) cfg->pos_shape[a] = a < n ? shape[a] : 0;
}

} // namespace

void config_defaults(stx_config *cfg) {
    std::memset(cfg, 0, sizeof *cfg);
    cfg->n_layer = 2;
    cfg->n_embd = 64;
    cfg->n_head = 2;
    cfg->n_ctx = 256;
    cfg->ff_mult = 4;
    cfg->block_size = 32;
    cfg->n_pos_axes = 0;
    cfg->backend = STX_BACKEND_CPU;
    cfg->device = 0;
    cfg->precision = STX_PRECISION_FP32;
    cfg->n_threads = 0;
    cfg->recompute = 1;
    cfg->qk_ratio = 1.0f;
    cfg->dropout = 0.0f;
    cfg->seed = 1;
    set_pattern(cfg, "dense");
}

stx_status config_preset(stx_config *cfg, const char *name) {
    if (!name) return fail(STX_ERR_INVALID_ARGUMENT, "preset name is NULL");
    config_defaults(cfg);
    if (!std::strcmp(name, "enwik8")) {
        const int32_t shape[] = {96, 128};
        cfg->n_layer = 30, cfg->n_embd = 512, cfg->n_head = 8, cfg->n_ctx = 12288;
        cfg->dropout = 0.4f, cfg->block_size = 32; // c = 32: summary cells fill whole blocks
        set_pos(cfg, 2, shape);
        set_pattern(cfg, "fixed:128:32:4");
    } else if (!std::strcmp(name, "cifar10")) {
        const int32_t shape[] = {32, 32, 3};
        cfg->n_layer = 128, cfg->n_embd = 256, cfg->n_head = 2, cfg->n_ctx = 3072;
        cfg->ff_mult = 2, cfg->qk_ratio = 0.5f, cfg->dropout = 0.25f, cfg->block_size = 32;
        set_pos(cfg, 3, shape);
        set_pattern(cfg, "strided:96,local:96,local:96,local:96");
    } else if (!std::strcmp(name, "imagenet64")) {
        const int32_t shape[] = {64, 64, 3};
        cfg->n_layer = 48, cfg->n_embd = 512, cfg->n_head = 16, cfg->n_ctx = 12288;
        cfg->dropout = 0.01f, cfg->block_size = 64;
        set_pos(cfg, 3, shape);
        set_pattern(cfg, "local:128,strided:128");
    } else if (!std::strcmp(name, "tiny")) {
        const int32_t shape[] = {32, 32};
        cfg->n_layer = 4, cfg->n_embd = 128, cfg->n_head = 4, cfg->n_ctx = 1024;
        cfg->block_size = 32;
        set_pos(cfg, 2, shape);
        set_pattern(cfg, "local:32+strided:32");
    } else {
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "unknown preset '%s' (expected enwik8, cifar10, imagenet64 or tiny)", name);
    }
    return STX_OK;
}

stx_status check_abi(const char *what, size_t got_size, size_t want_size, int32_t abi_version) {
    if (abi_version != STX_ABI_VERSION)
        return fail(STX_ERR_VERSION,
                    "%s: caller built against ABI version %d, this library is ABI version %d "
                    "(rebuild against this sparsetx.h)",
                    what, abi_version, STX_ABI_VERSION);
    if (got_size != want_size)
        return fail(STX_ERR_VERSION,
                    "%s: struct size %zu does not match this library's %zu (header and library "
                    "differ)",
                    what, got_size, want_size);
    return STX_OK;
}

stx_status config_validate(const stx_config &c, ModelPattern *pattern_out, Dims *dims_out) {
    auto range = [](const char *field, int64_t v, int64_t lo, int64_t hi) {
        if (v < lo || v > hi)
            return fail(STX_ERR_INVALID_ARGUMENT, "%s (%lld) must be in [%lld, %lld]", field,
                        static_cast<long long>(v), static_cast<long long>(lo),
                        static_cast<long long>(hi));
        return STX_OK;
    };
    stx_status st;
    if ((st = range("n_layer", c.n_layer, 1, 4096)) != STX_OK) return st;
    if ((st = range("n_embd", c.n_embd, 1, 65536)) != STX_OK) return st;
    if ((st = range("n_head", c.n_head, 1, 4096)) != STX_OK) return st;
    if (c.n_embd % c.n_head != 0)
        return fail(STX_ERR_INVALID_ARGUMENT, "n_embd (%d) must be divisible by n_head (%d)",
                    c.n_embd, c.n_head);
    if ((st = range("n_ctx", c.n_ctx, 1, 1 << 24)) != STX_OK) return st;
    if ((st = range("ff_mult", c.ff_mult, 1, 64)) != STX_OK) return st;
    if (c.block_size != 16 && c.block_size != 32 && c.block_size != 64 && c.block_size != 128)
        return fail(STX_ERR_INVALID_ARGUMENT, "block_size (%d) must be 16, 32, 64 or 128",
                    c.block_size);
    if ((st = range("n_pos_axes", c.n_pos_axes, 0, STX_MAX_POS_AXES)) != STX_OK) return st;
    if (c.n_pos_axes > 0) {
        int64_t prod = 1;
        for (int32_t a = 0; a < c.n_pos_axes; ++a) {
            if (c.pos_shape[a] < 1 || c.pos_shape[a] > (1 << 24))
                return fail(STX_ERR_INVALID_ARGUMENT, "pos_shape[%d] (%d) must be in [1, 16777216]",
                            a, c.pos_shape[a]);
            prod *= c.pos_shape[a];
            if (prod > (int64_t(1) << 24)) break;
        }
        if (prod != c.n_ctx) {
            char shape[96] = "";
            size_t used = 0;
            for (int32_t a = 0; a < c.n_pos_axes && used < sizeof shape; ++a)
                used += static_cast<size_t>(std::snprintf(shape + used, sizeof shape - used,
                                                          a ? ", %d" : "%d", c.pos_shape[a]));
            return fail(STX_ERR_INVALID_ARGUMENT,
                        "pos_shape [%s] holds %lld positions but n_ctx is %d (the product must "
                        "equal n_ctx)",
                        shape, static_cast<long long>(prod), c.n_ctx);
        }
    }
    if ((st = range("backend", c.backend, 0, 2)) != STX_OK) return st;
    if ((st = range("device", c.device, 0, 1023)) != STX_OK) return st;
    if ((st = range("precision", c.precision, 0, 2)) != STX_OK) return st;
    if (c.precision == STX_PRECISION_FP64 && c.backend == STX_BACKEND_CUDA)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "precision fp64 is available on the CPU backend only (backend is cuda)");
    if (c.precision == STX_PRECISION_BF16 && c.backend == STX_BACKEND_CPU)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "precision bf16 needs the CUDA backend (backend is cpu; use fp32 or fp64)");
    if ((st = range("n_threads", c.n_threads, 0, 4096)) != STX_OK) return st;
    if ((st = range("recompute", c.recompute, 0, 2)) != STX_OK) return st;
    if (!(c.qk_ratio > 0.0f && c.qk_ratio <= 1.0f))
        return fail(STX_ERR_INVALID_ARGUMENT, "qk_ratio (%g) must be in (0, 1]",
                    static_cast<double>(c.qk_ratio));
    const double qk = static_cast<double>(c.qk_ratio) * c.n_embd;
    const int64_t qk_int = std::llround(qk);
    if (std::fabs(qk - static_cast<double>(qk_int)) > 1e-3 || qk_int < 1 || qk_int % c.n_head)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "qk_ratio (%g) * n_embd (%d) = %g must be a whole multiple of n_head (%d)",
                    static_cast<double>(c.qk_ratio), c.n_embd, qk, c.n_head);
    if (!(c.dropout >= 0.0f && c.dropout < 1.0f))
        return fail(STX_ERR_INVALID_ARGUMENT, "dropout (%g) must be in [0, 1)",
                    static_cast<double>(c.dropout));
    if (!std::memchr(c.pattern, '\0', STX_PATTERN_MAX))
        return fail(STX_ERR_INVALID_ARGUMENT, "pattern is not NUL-terminated within %d bytes",
                    STX_PATTERN_MAX);
    ModelPattern pattern;
    if ((st = parse_model_pattern(c.pattern, &pattern)) != STX_OK)
        return STX_ERR_INVALID_ARGUMENT; // the parser's message names the pattern
    if (pattern_out) *pattern_out = pattern;
    if (dims_out) {
        Dims d;
        d.L = c.n_layer;
        d.C = c.n_embd;
        d.H = c.n_head;
        d.n_ctx = c.n_ctx;
        d.F = c.ff_mult * c.n_embd;
        d.QK = static_cast<int32_t>(qk_int);
        d.Dq = d.QK / d.H;
        d.Dv = d.C / d.H;
        if (c.n_pos_axes == 0) {
            d.n_axes = 1;
            d.pos_shape[0] = c.n_ctx;
        } else {
            d.n_axes = c.n_pos_axes;
            for (int32_t a = 0; a < c.n_pos_axes; ++a) d.pos_shape[a] = c.pos_shape[a];
        }
        *dims_out = d;
    }
    return STX_OK;
}

} // namespace stx
