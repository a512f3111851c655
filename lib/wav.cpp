// wav.cpp: stx_wav_write_mulaw: mu-law bytes (lib/mulaw.h) decoded to 16-bit PCM,
// round(x * 32768) clamped to [-32768, 32767], written as a mono 16-bit PCM WAV file: the
// 44-byte canonical header (RIFF, "fmt " of 16 bytes with format 1, "data") and the samples,
// little-endian. Reading the file back with stx_dataset_open(STX_DATA_WAV) gives the same
// mu-law bytes. The file is written directly (not atomically); on a write error a partial
// regular file is removed.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "model_handle.h"
#include "mulaw.h"
#include "out_file.h"

namespace {

using stx::fail;
using stx::guarded;

void put_le(uint8_t *p, uint32_t x, int bytes) {
    for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(x >> (8 * i));
}

} // namespace

extern "C" {

STX_API stx_status stx_wav_write_mulaw(const char *path, const uint8_t *mulaw, int64_t n,
                                       int32_t sample_rate) {
    return guarded("stx_wav_write_mulaw", [&]() -> stx_status {
        const char *fn = "stx_wav_write_mulaw";
        if (!path) return fail(STX_ERR_INVALID_ARGUMENT, "%s: path is NULL", fn);
        if (!*path) return fail(STX_ERR_INVALID_ARGUMENT, "%s: path is empty", fn);
        if (n < 0)
            return fail(STX_ERR_INVALID_ARGUMENT, "%s: %s: n (%lld) is negative", fn, path,
                        static_cast<long long>(n));
        if (n > 0 && !mulaw)
            return fail(STX_ERR_INVALID_ARGUMENT, "%s: %s: mulaw is NULL", fn, path);
        // RIFF sizes are 32-bit: 36 + 2n must fit.
        const int64_t max_n = (int64_t(0xffffffff) - 36) / 2;
        if (n > max_n)
            return fail(STX_ERR_INVALID_ARGUMENT,
                        "%s: %s: n (%lld) is more samples than a WAV file holds (%lld)", fn, path,
                        static_cast<long long>(n), static_cast<long long>(max_n));
        if (sample_rate < 1)
            return fail(STX_ERR_INVALID_ARGUMENT, "%s: %s: sample_rate (%d) must be at least 1", fn,
                        path, sample_rate);
        const uint32_t data_bytes = static_cast<uint32_t>(2 * n);
        uint8_t h[44];
        std::memcpy(h, "RIFF", 4);
        put_le(h + 4, 36 + data_bytes, 4);
        std::memcpy(h + 8, "WAVEfmt ", 8);
        put_le(h + 16, 16, 4);                                     // fmt chunk size
        put_le(h + 20, 1, 2);                                      // PCM
        put_le(h + 22, 1, 2);                                      // mono
        put_le(h + 24, static_cast<uint32_t>(sample_rate), 4);     // sample rate
        put_le(h + 28, static_cast<uint32_t>(sample_rate) * 2, 4); // byte rate
        put_le(h + 32, 2, 2);                                      // block align
        put_le(h + 34, 16, 2);                                     // bits per sample
        std::memcpy(h + 36, "data", 4);
        put_le(h + 40, data_bytes, 4);

        errno = 0;
        stx::OutFile out(path);
        if (!out.get())
            return fail(STX_ERR_IO, "%s: cannot open %s for writing: %s", fn, path,
                        std::strerror(errno));
        auto write_failed = [&]() {
            const int err = errno ? errno : EIO;
            return fail(STX_ERR_IO, "%s: cannot write %s: %s", fn, path, std::strerror(err));
        };
        if (std::fwrite(h, 1, sizeof h, out.get()) != sizeof h) return write_failed();
        std::vector<uint8_t> block(size_t(1) << 16);
        for (int64_t at = 0; at < n;) {
            const int64_t m = std::min<int64_t>(n - at, static_cast<int64_t>(block.size() / 2));
            for (int64_t i = 0; i < m; ++i) {
                const int16_t s = stx::mulaw_decode_pcm16(mulaw[at + i]);
                put_le(block.data() + 2 * i, static_cast<uint16_t>(s), 2);
            }
            const size_t bytes = static_cast<size_t>(2 * m);
            if (std::fwrite(block.data(), 1, bytes, out.get()) != bytes) return write_failed();
            at += m;
        }
        if (const int err = out.close())
            return fail(STX_ERR_IO, "%s: cannot write %s: %s", fn, path, std::strerror(err));
        return STX_OK;
    });
}

} // extern "C"
