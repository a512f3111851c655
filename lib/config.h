// config.h: stx_config defaults, presets and validation, and the sizes derived from a
// valid config. Validation names the offending field in its message.
#pragma once
#include <cstdint>

#include "pattern.h"
#include "sparsetx.h"

namespace stx {

// Sizes every backend needs, derived once from a validated config.
struct Dims {
    int32_t L = 0;     // layers
    int32_t C = 0;     // width
    int32_t H = 0;     // heads
    int32_t n_ctx = 0; // context
    int32_t F = 0;     // feed-forward width
    int32_t QK = 0;    // query/key width (H * Dq)
    int32_t Dq = 0;    // query/key head dim
    int32_t Dv = 0;    // value head dim (C / H)
    int32_t n_axes = 0;
    int32_t pos_shape[STX_MAX_POS_AXES] = {0, 0, 0, 0};
};

void config_defaults(stx_config *cfg);
stx_status config_preset(stx_config *cfg, const char *name);
// Checks every field; on success fills *pattern (may be NULL) and *dims (may be NULL).
stx_status config_validate(const stx_config &cfg, ModelPattern *pattern, Dims *dims);

// Checks the (size, abi) pair a caller passed with a versioned struct.
stx_status check_abi(const char *what, size_t got_size, size_t want_size, int32_t abi_version);

} // namespace stx
