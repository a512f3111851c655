// fuzz_pattern.cpp: the attention-pattern grammar (stx_pattern_normalize, the pattern field of
// stx_config) and the layouts built from it (stx_layout_create and a tiny model's forward and
// backward over them).
//
// Input: the pattern text up to the first NUL (at most 300 bytes); the bytes after the NUL,
// when present, choose the sizes: n_ctx = 1 + b0 % 200, n_head = 1 + (b1 & 3), block size
// 16 << ((b1 >> 2) & 3). Without them: n_ctx 100, 2 heads, blocks of 16.
// Checked: normalizing is idempotent and agrees with stx_config_validate and with
// stx_layout_create; a layout's pair count (stx_layout_stats) equals a brute-force count of
// stx_layout_allows, every query reads itself and nothing after itself.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <sparsetx.h>

#include "fuzz_util.h"

namespace {

void check_layout(const stx_layout *lay, int32_t n_ctx, int32_t n_head, int32_t block,
                  int64_t work) {
    for (int32_t h = 0; h < n_head; ++h) {
        for (int64_t q = 0; q < n_ctx; q += 1 + q / 4) {
            FUZZ_CHECK(stx_layout_allows(lay, h, q, q) == 1);
            FUZZ_CHECK(stx_layout_allows(lay, h, q, q + 1) == 0);
            FUZZ_CHECK(stx_layout_allows(lay, h, q, -1) == 0);
        }
    }
    FUZZ_CHECK(stx_layout_allows(lay, n_head, 0, 0) == 0);
    FUZZ_CHECK(stx_layout_allows(lay, 0, n_ctx, 0) == 0);
    int64_t n_blocks = -1, n_pairs = -1;
    FUZZ_CHECK(stx_layout_stats(lay, n_head, &n_blocks, &n_pairs) == STX_ERR_INVALID_ARGUMENT);
    if (work > 4000000) return; // many parts over a long context: keep each input fast
    const int64_t nb = (n_ctx + block - 1) / block;
    for (int32_t h = 0; h < n_head; ++h) {
        FUZZ_CHECK(stx_layout_stats(lay, h, &n_blocks, &n_pairs) == STX_OK);
        FUZZ_CHECK(n_blocks >= nb);
        int64_t brute = 0;
        for (int64_t q = 0; q < n_ctx; ++q)
            for (int64_t k = 0; k <= q; ++k) brute += stx_layout_allows(lay, h, q, k);
        FUZZ_CHECK(brute >= n_ctx && brute <= int64_t(n_ctx) * (n_ctx + 1) / 2);
        FUZZ_CHECK(n_pairs == brute);
    }
}

// A one-layer model of width 4 per head over the pattern: forward and backward must run.
void check_model(const char *pattern, int32_t n_ctx, int32_t n_head, int32_t block) {
    stx_config cfg;
    FUZZ_CHECK(stx_config_init(&cfg) == STX_OK);
    cfg.n_layer = 1;
    cfg.n_head = n_head;
    cfg.n_embd = 4 * n_head;
    cfg.ff_mult = 1;
    cfg.n_ctx = n_ctx;
    cfg.block_size = block;
    cfg.n_threads = 1;
    std::strcpy(cfg.pattern, pattern);
    stx_model *m = nullptr;
    FUZZ_CHECK(stx_model_create(&cfg, &m) == STX_OK && m);
    std::vector<uint8_t> tokens(static_cast<size_t>(n_ctx));
    for (int32_t t = 0; t < n_ctx; ++t) tokens[static_cast<size_t>(t)] = uint8_t(t * 7 + 1);
    double loss = 0.0;
    FUZZ_CHECK(stx_forward(m, tokens.data(), 1, n_ctx, &loss) == STX_OK);
    FUZZ_CHECK(loss == loss && loss > 0.0);
    FUZZ_CHECK(stx_backward(m) == STX_OK);
    stx_model_free(m);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t len = 0;
    while (len < size && len < 300 && data[len] != 0) ++len;
    const std::string text(reinterpret_cast<const char *>(data), len);
    const char *pattern = text.c_str();
    int32_t n_ctx = 100, n_head = 2, block = 16;
    if (len < size && data[len] == 0 && size - len > 2) {
        n_ctx = 1 + data[len + 1] % 200;
        n_head = 1 + (data[len + 2] & 3);
        block = 16 << ((data[len + 2] >> 2) & 3);
    }

    // The model grammar: normalizing is idempotent and needs exactly strlen + 1 bytes.
    char out[2048];
    const stx_status norm = stx_pattern_normalize(pattern, out, sizeof out);
    FUZZ_CHECK(norm == STX_OK || norm == STX_ERR_FORMAT);
    if (norm == STX_OK) {
        const size_t need = std::strlen(out) + 1;
        FUZZ_CHECK(need > 1 && need <= 2 * len + 2);
        char again[2048];
        FUZZ_CHECK(stx_pattern_normalize(out, again, need) == STX_OK);
        FUZZ_CHECK(std::strcmp(out, again) == 0);
        FUZZ_CHECK(stx_pattern_normalize(out, again, need - 1) == STX_ERR_INVALID_ARGUMENT);
    } else {
        FUZZ_CHECK(stx_last_error()[0] != '\0');
    }

    // The config's pattern field accepts what the grammar accepts.
    if (len < STX_PATTERN_MAX) {
        stx_config cfg;
        FUZZ_CHECK(stx_config_init(&cfg) == STX_OK);
        std::memcpy(cfg.pattern, pattern, len + 1);
        const stx_status valid = stx_config_validate(&cfg);
        FUZZ_CHECK((valid == STX_OK) == (norm == STX_OK));
        FUZZ_CHECK(valid == STX_OK || valid == STX_ERR_INVALID_ARGUMENT);
    }

    // One layer's pattern as a layout.
    stx_layout *lay = nullptr;
    const stx_status made = stx_layout_create(pattern, n_ctx, n_head, block, &lay);
    if (made != STX_OK) {
        FUZZ_CHECK(made == STX_ERR_FORMAT && lay == nullptr);
        return 0;
    }
    FUZZ_CHECK(norm == STX_OK && lay != nullptr);
    int64_t parts = 1;
    for (size_t i = 0; i < len; ++i) parts += pattern[i] == '+' || pattern[i] == ';';
    const int64_t work = int64_t(n_ctx) * n_ctx * parts * parts;
    check_layout(lay, n_ctx, n_head, block, work);
    stx_layout_free(lay);
    if (work <= 4000000 && len < STX_PATTERN_MAX) check_model(pattern, n_ctx, n_head, block);
    return 0;
}
