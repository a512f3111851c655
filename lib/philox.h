// philox.h: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3")
// and the residual-dropout mask built on it. A pure function shared by both backends
// (__host__ __device__ under nvcc), so recomputation replays the same mask and the CUDA
// backend matches the reference bit for bit.
#pragma once
#include <cstdint>

#include "hd.h"

namespace stx {

struct Philox4 {
    uint32_t v[4];
};

STX_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                             uint32_t k1) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        uint64_t p0 = static_cast<uint64_t>(M0) * c0;
        uint64_t p1 = static_cast<uint64_t>(M1) * c2;
        uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
        uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0;
        c1 = n1;
        c2 = n2;
        c3 = n3;
        k0 += W0;
        k1 += W1;
    }
    Philox4 r = {{c0, c1, c2, c3}};
    return r;
}

// Dropout stream of a residual branch: 2 * layer + branch (0 attention, 1 feed-forward).
STX_HD uint32_t dropout_stream(int32_t layer, int32_t branch) {
    return static_cast<uint32_t>(2 * layer + branch);
}

// Keep threshold: an element is kept when its 32-bit draw is below round((1-p) * 2^32).
// p = 0 gives 2^32, so everything is kept.
inline uint64_t dropout_threshold(double p) {
    double t = (1.0 - p) * 4294967296.0;
    return static_cast<uint64_t>(t + 0.5);
}

// The draw for element `index` (flat over [B, T, C]) of dropout stream `stream` at
// forward counter `step`: key (seed folded to 32 bits, stream), counter (index, step).
STX_HD uint32_t dropout_draw(uint64_t seed, uint32_t stream, uint64_t step, uint64_t index) {
    uint32_t k0 = static_cast<uint32_t>(seed) ^ static_cast<uint32_t>(seed >> 32);
    Philox4 r =
        philox4x32_10(static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                      static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32), k0, stream);
    return r.v[0];
}

STX_HD bool dropout_keep(uint64_t seed, uint32_t stream, uint64_t step, uint64_t index,
                         uint64_t threshold) {
    return static_cast<uint64_t>(dropout_draw(seed, stream, step, index)) < threshold;
}

} // namespace stx
