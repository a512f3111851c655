// fuzz_data.cpp: the data readers (stx_dataset_open and everything served from a dataset) on
// arbitrary bytes: the raw and gzip byte reader, IDX images, CIFAR-10 batches and PCM WAV.
//
// Input: one selector byte, then the file's payload.
//   bits 0-1  kind: 0 bytes, 1 IDX, 2 CIFAR, 3 WAV
//   bits 2-3  WAV resample rate: 0 (keep), 12000, 8000, 44100 (other kinds pass 0)
//   bit  4    gzip-compress the payload (zlib, gzip wrapper) before writing it
//   bit  5    with bit 4: cut the compressed file short by 1, 3, 8 or 20 bytes (bits 6-7)
// An opened dataset is checked for consistency: info, the four splits, reads at and past
// their bounds, and a sampled batch. A WAV file to resample is first opened at its own rate:
// resampling makes floor(frames * new_rate / rate) samples, which is checked, and is skipped
// beyond 4M samples (a file may declare 1 Hz: asked to resample it to 44100 Hz, the library
// rightly makes 44100 bytes of each sample, which is slow but no bug).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#include <zlib.h>

#include <sparsetx.h>

#include "fuzz_util.h"

namespace {

// payload as a gzip file (deflate with the gzip wrapper, as gzwrite writes it).
std::vector<uint8_t> gzip(const uint8_t *p, size_t n) {
    z_stream z;
    std::memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) std::abort();
    std::vector<uint8_t> out(deflateBound(&z, static_cast<uLong>(n)) + 64);
    z.next_in = const_cast<Bytef *>(p);
    z.avail_in = static_cast<uInt>(n);
    z.next_out = out.data();
    z.avail_out = static_cast<uInt>(out.size());
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) std::abort();
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
}

void check_read(const stx_dataset *ds, int64_t offset, int64_t n, bool ok) {
    uint8_t buf[64];
    const stx_status st = stx_dataset_read(ds, offset, buf, n);
    FUZZ_CHECK(ok ? st == STX_OK : st == STX_ERR_INVALID_ARGUMENT);
}

void exercise(const stx_dataset *ds, stx_data_kind kind, int32_t rate) {
    stx_data_info info;
    FUZZ_CHECK(stx_dataset_info(ds, &info) == STX_OK);
    const int64_t n = info.n_bytes;
    FUZZ_CHECK(n > 0);
    if (kind == STX_DATA_IDX || kind == STX_DATA_CIFAR) {
        FUZZ_CHECK(info.record_size > 0 && info.n_records > 0);
        FUZZ_CHECK(info.n_records <= n / info.record_size);
        FUZZ_CHECK(info.record_size * info.n_records == n);
        FUZZ_CHECK(info.n_axes == 3);
        FUZZ_CHECK(int64_t(info.shape[0]) * info.shape[1] * info.shape[2] == info.record_size);
    } else {
        FUZZ_CHECK(info.record_size == 0 && info.n_records == 0 && info.n_axes == 0);
    }
    if (kind == STX_DATA_WAV)
        FUZZ_CHECK(info.sample_rate > 0 && (!rate || info.sample_rate == rate));
    const int64_t unit = info.record_size > 0 ? info.record_size : 1;

    int64_t b[4], e[4];
    for (int s = 0; s < 4; ++s) {
        FUZZ_CHECK(stx_dataset_split(ds, static_cast<stx_split>(s), &b[s], &e[s]) == STX_OK);
        FUZZ_CHECK(0 <= b[s] && b[s] <= e[s] && e[s] <= n);
        FUZZ_CHECK(b[s] % unit == 0 && e[s] % unit == 0);
    }
    FUZZ_CHECK(b[0] == 0 && e[0] == b[1] && e[1] == b[2] && e[2] == n);
    FUZZ_CHECK(b[3] == 0 && e[3] == n);
    FUZZ_CHECK(e[0] > 0); // the train split is never empty

    for (int s = 0; s < 4; ++s) {
        if (e[s] > b[s]) {
            check_read(ds, b[s], 1, true);
            check_read(ds, e[s] - 1, 1, true);
            check_read(ds, b[s], std::min<int64_t>(64, e[s] - b[s]), true);
        }
        check_read(ds, e[s], 0, true);
    }
    check_read(ds, n, 1, false);
    check_read(ds, n - 1, 2, false);
    check_read(ds, -1, 1, false);
    check_read(ds, 0, -1, false);

    // A batch from the train split: windows of one record (at most 64 bytes) or 16 bytes.
    const int64_t len = e[0] - b[0];
    const int32_t T = static_cast<int32_t>(std::min<int64_t>(
        info.record_size > 0 ? std::min<int64_t>(info.record_size, 64) : 16, len));
    uint8_t batch[2 * 64];
    uint64_t rng = 1;
    FUZZ_CHECK(stx_dataset_sample(ds, b[0], e[0], 2, T, &rng, batch) == STX_OK);
    uint8_t one[64];
    FUZZ_CHECK(stx_dataset_read(ds, 0, one, T) == STX_OK);
    if (len < 64)
        FUZZ_CHECK(stx_dataset_sample(ds, b[0], e[0], 1, static_cast<int32_t>(len) + 1, &rng,
                                      batch) == STX_ERR_INVALID_ARGUMENT);
    FUZZ_CHECK(stx_dataset_sample(ds, 0, n + 1, 1, 1, &rng, batch) == STX_ERR_INVALID_ARGUMENT);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const std::string path = fuzz::scratch_path("input.data");
    static const int32_t kRates[4] = {0, 12000, 8000, 44100};
    static const size_t kCuts[4] = {1, 3, 8, 20};
    const uint8_t sel = data[0];
    const stx_data_kind kind = static_cast<stx_data_kind>(sel & 3);
    const int32_t rate = kind == STX_DATA_WAV ? kRates[(sel >> 2) & 3] : 0;
    const uint8_t *payload = data + 1;
    const size_t n = size - 1;
    if (sel & 0x10) {
        std::vector<uint8_t> gz = gzip(payload, n);
        if (sel & 0x20) gz.resize(gz.size() - std::min(gz.size(), kCuts[sel >> 6]));
        fuzz::write_file(path, gz.data(), gz.size());
    } else {
        fuzz::write_file(path, payload, n);
    }
    stx_dataset *ds = nullptr;
    const stx_status st = stx_dataset_open(path.c_str(), kind, 0, &ds);
    if (st != STX_OK) {
        FUZZ_CHECK(ds == nullptr);
        FUZZ_CHECK(st == STX_ERR_FORMAT || st == STX_ERR_OUT_OF_MEMORY);
        FUZZ_CHECK(stx_last_error()[0] != '\0');
        return 0;
    }
    FUZZ_CHECK(ds != nullptr);
    exercise(ds, kind, 0);
    stx_data_info info;
    FUZZ_CHECK(stx_dataset_info(ds, &info) == STX_OK);
    stx_dataset_free(ds);
    if (rate == 0 || rate == info.sample_rate) return 0;

    const uint64_t frames = static_cast<uint64_t>(info.n_bytes);
    const uint64_t n_out = frames * static_cast<uint64_t>(rate) / uint64_t(info.sample_rate);
    if (n_out > (uint64_t(1) << 22)) return 0;
    const stx_status rs = stx_dataset_open(path.c_str(), kind, rate, &ds);
    if (n_out == 0) {
        FUZZ_CHECK(rs == STX_ERR_FORMAT && ds == nullptr);
        return 0;
    }
    FUZZ_CHECK(rs == STX_OK && ds != nullptr);
    FUZZ_CHECK(stx_dataset_info(ds, &info) == STX_OK);
    FUZZ_CHECK(info.n_bytes == static_cast<int64_t>(n_out) && info.sample_rate == rate);
    exercise(ds, kind, rate);
    stx_dataset_free(ds);
    return 0;
}
