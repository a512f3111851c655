// mulaw.h: the 8-bit mu-law companding (mu = 255) shared by the WAV reader (lib/data.cpp) and
// the WAV writer (lib/wav.cpp), so that writing and reading are exact inverses.
//
// The continuous G.711-style curve, quantized to 256 levels:
//   encode: x in [-1, 1] (clamped; NaN counts as 0),
//           y = sign(x) * ln(1 + 255 |x|) / ln(256)          (y in [-1, 1])
//           byte = round((y + 1) / 2 * 255)                  (half away from zero)
//   decode: y = byte / 255 * 2 - 1,
//           x = sign(y) * (256^|y| - 1) / 255                (the exact inverse of the curve)
// so encode(decode(b)) == b for every byte b. Silence (x = 0) encodes to 128.
// This is the continuous curve, not G.711's segmented 8-segment approximation and not its
// bit-inverted byte layout.
#pragma once
#include <cmath>
#include <cstdint>

namespace stx {

inline uint8_t mulaw_encode(double x) {
    if (!(x == x)) x = 0.0; // NaN
    if (x > 1.0) x = 1.0;
    if (x < -1.0) x = -1.0;
    const double y = std::copysign(std::log1p(255.0 * std::fabs(x)) / std::log(256.0), x);
    const long v = std::lround((y + 1.0) / 2.0 * 255.0);
    return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

inline double mulaw_decode(uint8_t byte) {
    const double y = static_cast<double>(byte) / 255.0 * 2.0 - 1.0;
    return std::copysign((std::pow(256.0, std::fabs(y)) - 1.0) / 255.0, y);
}

// A decoded sample as 16-bit PCM: round(x * 32768), clamped to [-32768, 32767]. The reader
// maps 16-bit PCM back with x = s / 32768.
inline int16_t mulaw_decode_pcm16(uint8_t byte) {
    const long s = std::lround(mulaw_decode(byte) * 32768.0);
    return static_cast<int16_t>(s < -32768 ? -32768 : s > 32767 ? 32767 : s);
}

} // namespace stx
