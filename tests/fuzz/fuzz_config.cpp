// fuzz_config.cpp: config validation (stx_config_validate) on arbitrary struct contents, and
// the preset parser (stx_config_preset) on arbitrary names.
//
// Input: the first sizeof(stx_config) bytes overwrite the start of a default config (a short
// input changes only the first fields; the pattern field need not hold a NUL); the bytes after
// it, up to 64, are a preset name. A valid config whose model is small (n_layer <= 64, n_ctx
// <= 256, about 32k parameters at most) is built on the CPU, must report the same config back
// and evaluate a few bytes.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include <sparsetx.h>

#include "fuzz_util.h"

namespace {

bool is_preset(const std::string &name) {
    return name == "enwik8" || name == "cifar10" || name == "imagenet64" || name == "tiny";
}

void check_model(stx_config cfg) {
    if (cfg.precision == STX_PRECISION_BF16) return; // CUDA only
    if (cfg.n_layer > 64 || cfg.n_ctx > 256) return;
    // About the parameter count (the token and output tables, positions, the layers): a
    // model of more than ~32k parameters takes tens of milliseconds under the sanitizers.
    const double C = cfg.n_embd;
    const double params =
        513.0 * C + double(cfg.n_ctx) * C + double(cfg.n_layer) * C * C * (4.0 + 2.0 * cfg.ff_mult);
    if (params > 32768) return;
    cfg.backend = STX_BACKEND_CPU;
    cfg.device = 0;
    cfg.n_threads = 1;
    stx_model *m = nullptr;
    const stx_status st = stx_model_create(&cfg, &m);
    FUZZ_CHECK(st == STX_OK && m != nullptr);
    stx_config back;
    FUZZ_CHECK(stx_model_get_config(m, &back) == STX_OK);
    FUZZ_CHECK(std::memcmp(&back, &cfg, offsetof(stx_config, pattern)) == 0);
    FUZZ_CHECK(std::strcmp(back.pattern, cfg.pattern) == 0);
    const uint8_t tokens[8] = {'c', 'o', 'n', 'f', 'i', 'g', '!', '\n'};
    const int32_t T = cfg.n_ctx < 8 ? cfg.n_ctx : 8;
    double loss = 0.0;
    FUZZ_CHECK(stx_evaluate(m, tokens, 1, T, &loss) == STX_OK);
    FUZZ_CHECK(loss == loss);
    stx_model_free(m);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    stx_config cfg;
    FUZZ_CHECK(stx_config_init(&cfg) == STX_OK);
    const size_t n = size < sizeof cfg ? size : sizeof cfg;
    std::memcpy(&cfg, data, n);
    const stx_status st = stx_config_validate(&cfg);
    FUZZ_CHECK(st == STX_OK || st == STX_ERR_INVALID_ARGUMENT);
    if (st == STX_OK) {
        FUZZ_CHECK(std::memchr(cfg.pattern, '\0', sizeof cfg.pattern) != nullptr);
        check_model(cfg);
    } else {
        FUZZ_CHECK(stx_last_error()[0] != '\0');
    }
    FUZZ_CHECK(stx_config_validate_v(&cfg, sizeof cfg - 8, STX_ABI_VERSION) == STX_ERR_VERSION);
    FUZZ_CHECK(stx_config_validate_v(&cfg, sizeof cfg, STX_ABI_VERSION + 1) == STX_ERR_VERSION);

    if (size > sizeof cfg) {
        const char *rest = reinterpret_cast<const char *>(data + sizeof cfg);
        size_t len = 0;
        while (len < size - sizeof cfg && len < 64 && rest[len] != '\0') ++len;
        const std::string name(rest, len);
        stx_config preset;
        const stx_status ps = stx_config_preset(&preset, name.c_str());
        FUZZ_CHECK((ps == STX_OK) == is_preset(name));
        if (ps == STX_OK)
            FUZZ_CHECK(stx_config_validate(&preset) == STX_OK);
        else
            FUZZ_CHECK(ps == STX_ERR_INVALID_ARGUMENT);
    }
    return 0;
}
