// fuzz_checkpoint.cpp: the checkpoint loader (stx_model_load) on arbitrary bytes.
//
// Each input is loaded twice: as it is, and with every complete section's CRC-32 (and the
// header's section count) recomputed, so that mutations reach the parsers behind the
// checksums instead of stopping at the first mismatch. A model that loads must be usable: a
// small one evaluates 4 bytes, is saved again and must load again.
//
// Inputs whose CONF section asks for n_ctx > 16384 are skipped: position axes let a small file
// describe a long context, whose block layouts (built at load, about n_ctx^2 / block entries
// per head and layer pattern for a dense one) legitimately take gigabytes. The library refuses
// layouts that cannot fit in the machine's memory (tests/test_fuzz_regressions.c checks that);
// below that, memory use is what the config asks for, not a bug, but would trip
// -rss_limit_mb.
#include <cstdint>
#include <cstring>
#include <vector>
#include <zlib.h>

#include <sparsetx.h>

#include "fuzz_util.h"

namespace {

uint64_t le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
    return v;
}

void put_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// The input with valid checksums: walks the sections (header 16 bytes; each section a 4-byte
// tag, u64 length, payload, u32 CRC) while they fit, rewriting each CRC, and the section
// count when an END section was reached.
std::vector<uint8_t> with_valid_crcs(const uint8_t *data, size_t size) {
    std::vector<uint8_t> b(data, data + size);
    if (b.size() < 16) return b;
    uint64_t pos = 16;
    uint32_t count = 0;
    while (b.size() - pos >= 16) {
        const uint64_t len = le64(&b[pos + 4]);
        if (len > b.size() - pos - 16) break;
        const bool end = std::memcmp(&b[pos], "END\0", 4) == 0;
        const uLong crc = crc32(0, len ? &b[pos + 12] : nullptr, static_cast<uInt>(len));
        put_le32(&b[pos + 12 + len], static_cast<uint32_t>(crc));
        pos += 16 + len;
        ++count;
        if (end) {
            put_le32(&b[12], count);
            break;
        }
    }
    return b;
}

void exercise(stx_model *m) {
    FUZZ_CHECK(stx_model_set_threads(m, 1) == STX_OK);
    stx_config cfg;
    FUZZ_CHECK(stx_model_get_config(m, &cfg) == STX_OK);
    FUZZ_CHECK(stx_config_validate(&cfg) == STX_OK);
    FUZZ_CHECK(cfg.backend == STX_BACKEND_CPU);
    int64_t total = 0, step = -1;
    FUZZ_CHECK(stx_param_total(m, &total) == STX_OK && total > 0);
    FUZZ_CHECK(stx_model_get_step(m, &step) == STX_OK && step >= 0);
    int32_t count = 0;
    FUZZ_CHECK(stx_param_count(m, &count) == STX_OK && count > 0);
    int64_t sum = 0;
    for (int32_t i = 0; i < count; ++i) {
        const char *name = nullptr;
        int32_t ndim = 0;
        int64_t shape[STX_MAX_DIMS];
        FUZZ_CHECK(stx_param_info(m, i, &name, &ndim, shape) == STX_OK && name);
        int64_t numel = 1;
        for (int32_t d = 0; d < ndim; ++d) numel *= shape[d];
        sum += numel;
    }
    FUZZ_CHECK(sum == total);
    const char *app = stx_model_app_state(m);
    FUZZ_CHECK(app != nullptr);
    if (total > 1000000) return; // a large model: loading it was the test
    if (cfg.n_ctx >= 4) {
        const uint8_t tokens[4] = {'f', 'u', 'z', 'z'};
        double loss = 0.0;
        FUZZ_CHECK(stx_evaluate(m, tokens, 1, 4, &loss) == STX_OK);
    }
    if (total > 100000) return;
    // What was loaded saves and loads again, to the same model.
    const std::string again = fuzz::scratch_path("again.ckpt");
    FUZZ_CHECK(stx_model_save(m, again.c_str(), app) == STX_OK);
    stx_model *m2 = nullptr;
    FUZZ_CHECK(stx_model_load(again.c_str(), STX_BACKEND_CPU, 0, &m2) == STX_OK && m2);
    int64_t total2 = 0, step2 = -1;
    FUZZ_CHECK(stx_param_total(m2, &total2) == STX_OK && total2 == total);
    FUZZ_CHECK(stx_model_get_step(m2, &step2) == STX_OK && step2 == step);
    FUZZ_CHECK(std::strcmp(stx_model_app_state(m2), app) == 0);
    stx_model_free(m2);
}

void load(const std::string &path, const uint8_t *data, size_t size) {
    fuzz::write_file(path, data, size);
    stx_model *m = nullptr;
    const stx_status st = stx_model_load(path.c_str(), STX_BACKEND_CPU, 0, &m);
    if (st != STX_OK) {
        FUZZ_CHECK(m == nullptr);
        // INVALID_ARGUMENT: a valid file the CPU cannot hold (a bf16 model saved from CUDA).
        FUZZ_CHECK(st == STX_ERR_FORMAT || st == STX_ERR_VERSION || st == STX_ERR_OUT_OF_MEMORY ||
                   st == STX_ERR_INVALID_ARGUMENT);
        FUZZ_CHECK(stx_last_error()[0] != '\0');
        return;
    }
    FUZZ_CHECK(m != nullptr);
    exercise(m);
    stx_model_free(m);
}

// The n_ctx field of a CONF section that comes first, or 0.
int32_t conf_n_ctx(const uint8_t *data, size_t size) {
    const size_t at = 16 + 12 + 12; // file header, section header, 3 int32 fields
    if (size < at + 4 || std::memcmp(data + 16, "CONF", 4) != 0) return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(data[at + i]) << (8 * i);
    return static_cast<int32_t>(v);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const std::string path = fuzz::scratch_path("input.ckpt");
    if (conf_n_ctx(data, size) > 16384) return 0;
    load(path, data, size);
    const std::vector<uint8_t> fixed = with_valid_crcs(data, size);
    if (fixed.size() >= 16 && std::memcmp(fixed.data(), data, size) != 0)
        load(path, fixed.data(), fixed.size());
    return 0;
}
