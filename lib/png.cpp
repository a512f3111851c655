// png.cpp: stx_png_write, a minimal PNG writer for samples of image models: the signature,
// IHDR (8-bit, color type 0 gray or 2 RGB, no interlace), the image as zlib data (every row
// behind filter byte 0, compressed with compress2) in one IDAT chunk (split into several
// only past the 2^31 - 1 byte chunk limit), and IEND; each chunk's CRC32 from zlib. The
// file is written directly (not atomically); on a write error a partial regular file is removed.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "error.h"
#include "model_handle.h"
#include "out_file.h"

namespace {

using stx::fail;
using stx::guarded;

void put32(std::vector<uint8_t> &v, uint32_t x) {
    v.push_back(static_cast<uint8_t>(x >> 24));
    v.push_back(static_cast<uint8_t>(x >> 16));
    v.push_back(static_cast<uint8_t>(x >> 8));
    v.push_back(static_cast<uint8_t>(x));
}

// Appends a chunk: length, type, data, CRC32 of type + data.
void put_chunk(std::vector<uint8_t> &v, const char type[4], const uint8_t *data, size_t n) {
    put32(v, static_cast<uint32_t>(n));
    const size_t at = v.size();
    v.insert(v.end(), type, type + 4);
    if (n) v.insert(v.end(), data, data + n);
    const uLong crc = crc32(0L, v.data() + at, static_cast<uInt>(n + 4));
    put32(v, static_cast<uint32_t>(crc));
}

// Writes n bytes to path (created or truncated): STX_ERR_IO naming fn, the path and the OS
// error on failure.
stx_status write_whole_file(const char *fn, const char *path, const uint8_t *data, size_t n) {
    errno = 0;
    stx::OutFile out(path);
    if (!out.get())
        return fail(STX_ERR_IO, "%s: cannot open %s for writing: %s", fn, path,
                    std::strerror(errno));
    if (n && std::fwrite(data, 1, n, out.get()) != n) {
        const int err = errno ? errno : EIO;
        return fail(STX_ERR_IO, "%s: cannot write %s: %s", fn, path, std::strerror(err));
    }
    if (const int err = out.close())
        return fail(STX_ERR_IO, "%s: cannot write %s: %s", fn, path, std::strerror(err));
    return STX_OK;
}

} // namespace

extern "C" {

STX_API stx_status stx_png_write(const char *path, const uint8_t *pixels, int32_t width,
                                 int32_t height, int32_t channels) {
    return guarded("stx_png_write", [&]() -> stx_status {
        const char *fn = "stx_png_write";
        if (!path) return fail(STX_ERR_INVALID_ARGUMENT, "%s: path is NULL", fn);
        if (!*path) return fail(STX_ERR_INVALID_ARGUMENT, "%s: path is empty", fn);
        if (!pixels) return fail(STX_ERR_INVALID_ARGUMENT, "%s: %s: pixels is NULL", fn, path);
        if (width < 1)
            return fail(STX_ERR_INVALID_ARGUMENT, "%s: %s: width (%d) must be at least 1", fn, path,
                        width);
        if (height < 1)
            return fail(STX_ERR_INVALID_ARGUMENT, "%s: %s: height (%d) must be at least 1", fn,
                        path, height);
        if (channels != 1 && channels != 3)
            return fail(STX_ERR_INVALID_ARGUMENT,
                        "%s: %s: channels (%d) must be 1 (gray) or 3 (RGB)", fn, path, channels);
        const size_t row = static_cast<size_t>(width) * static_cast<size_t>(channels);
        const size_t raw_size = (row + 1) * static_cast<size_t>(height);
        std::vector<uint8_t> raw(raw_size);
        for (size_t y = 0; y < static_cast<size_t>(height); ++y) {
            raw[y * (row + 1)] = 0; // filter type 0: None
            std::memcpy(&raw[y * (row + 1) + 1], pixels + y * row, row);
        }
        uLongf zlen = compressBound(static_cast<uLong>(raw_size));
        std::vector<uint8_t> z(zlen);
        const int zs = compress2(z.data(), &zlen, raw.data(), static_cast<uLong>(raw_size),
                                 Z_BEST_COMPRESSION);
        if (zs == Z_MEM_ERROR)
            return fail(STX_ERR_OUT_OF_MEMORY, "%s: %s: out of memory compressing the image", fn,
                        path);
        if (zs != Z_OK)
            return fail(STX_ERR_INTERNAL, "%s: %s: compress2 failed (%d)", fn, path, zs);
        raw.clear();
        raw.shrink_to_fit();

        std::vector<uint8_t> file;
        file.reserve(static_cast<size_t>(zlen) + 64);
        static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
        file.insert(file.end(), signature, signature + 8);
        std::vector<uint8_t> ihdr;
        put32(ihdr, static_cast<uint32_t>(width));
        put32(ihdr, static_cast<uint32_t>(height));
        ihdr.push_back(8);                                           // bit depth
        ihdr.push_back(static_cast<uint8_t>(channels == 3 ? 2 : 0)); // color type
        ihdr.push_back(0);                                           // compression: deflate
        ihdr.push_back(0);                                           // filter method 0
        ihdr.push_back(0);                                           // no interlace
        put_chunk(file, "IHDR", ihdr.data(), ihdr.size());
        const size_t max_chunk = 0x7fffffffu;
        for (size_t at = 0; at < zlen; at += max_chunk) {
            const size_t n = std::min(max_chunk, static_cast<size_t>(zlen) - at);
            put_chunk(file, "IDAT", z.data() + at, n);
        }
        put_chunk(file, "IEND", nullptr, 0);
        return write_whole_file(fn, path, file.data(), file.size());
    });
}

} // extern "C"
