// dist.h: data-parallel training behind the public stx_dist handle: the transport that moves
// data between ranks (one process per rank) and the gradient all-reduce a model's backward
// drives (backend.h's GradSync). The CPU transport is a world of one rank (the identity, on the
// same code path as every other world); the NCCL transport (cuda/dist.cu) is compiled only when
// NCCL was found (STX_HAVE_NCCL), and the calls below otherwise refuse with "built without NCCL".
#pragma once
#include <cstdint>
#include <memory>

#include "backend.h"
#include "sparsetx.h"

namespace stx {

// How a model's gradients are all-reduced (stx_dist_options, checked).
struct DistGradOptions {
    bool bf16 = false;         // reduce bf16 copies (the average is rounded to bf16)
    int32_t bucket_layers = 2; // blocks per all-reduce group
};

class Transport {
public:
    virtual ~Transport() = default;
    virtual int32_t rank() const = 0;
    virtual int32_t world() const = 0;
    virtual int32_t device() const = 0; // STX_DIST_CPU or a CUDA device
    // values[0..n) reduced (sum, min or max) over the ranks, in place on the host. Blocking;
    // STX_ERR_COMM when a peer failed or the timeout passed (the transport is then broken).
    virtual stx_status allreduce_host(double *values, int32_t n, stx_reduce_op op,
                                      const char *fn) = 0;
    // A GradSync for a model's gradient buffer of `total` elements in `precision`.
    virtual stx_status make_grad_sync(int32_t precision, int64_t total, const DistGradOptions &o,
                                      std::shared_ptr<Transport> self,
                                      std::unique_ptr<GradSync> *out) = 0;
    // True after a failure: every later call is refused.
    virtual bool broken() const = 0;
};

// A world of one rank on the CPU.
stx_status create_cpu_transport(std::unique_ptr<Transport> *out);

// NCCL (cuda/dist.cu; STX_ERR_UNSUPPORTED "built without NCCL" otherwise).
bool nccl_built();
stx_status nccl_unique_id(uint8_t bytes[STX_DIST_ID_BYTES]);
stx_status create_nccl_transport(int32_t rank, int32_t world, const uint8_t id[STX_DIST_ID_BYTES],
                                 int32_t device, double timeout_s, std::unique_ptr<Transport> *out);

// bf16 rounding (round to nearest even; NaN stays NaN), as the CUDA conversion does.
inline float round_to_bf16(float x) {
    uint32_t u;
    __builtin_memcpy(&u, &x, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return x; // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    float y;
    __builtin_memcpy(&y, &u, sizeof y);
    return y;
}

} // namespace stx
