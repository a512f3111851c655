// backend.h: the interface every backend implements (ref/ on the CPU, cuda/ on the GPU).
// lib/api.cpp validates all user input and keeps the call-order state; a backend only
// computes, on arguments that are already known to be valid.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "config.h"
#include "layout.h"
#include "params.h"

namespace stx {

// The model's LayerNorm epsilons (blocks, final), for every implementation of it.
const double kBlockLayerNormEps = 1e-5, kFinalLayerNormEps = 1e-6;

// Everything a backend needs to build a model.
struct ModelSpec {
    stx_config cfg;
    Dims dims;
    ParamTable table;
    std::vector<std::shared_ptr<const Layout>> layer_layouts; // one per layer (shared)
};

// Told what a forward computes as it goes (a decoder's prefill keeps the keys and values).
// Pointers are backend memory (host for ref/, device for cuda/) of the backend's Scalar.
class ForwardObserver {
public:
    virtual ~ForwardObserver() = default;
    // Block `layer`'s keys [B, T, QK] and values [B, T, C], as its attention reads them.
    virtual void keys_values(int32_t layer, const void *k, const void *v) = 0;
    // The logits [B, T, 256], at the end.
    virtual void logits(const void *logits) = 0;
};

// What a forward pass is asked to do.
struct ForwardArgs {
    const uint8_t *tokens = nullptr; // [B, T]
    int32_t B = 0, T = 0;
    bool training = false;     // apply residual dropout
    uint64_t dropout_step = 0; // the counter of the dropout mask
    // The dropout masks of sequence b are those of sequence dropout_sequence0 + b of a larger
    // batch with the same T (a data-parallel rank's shard of the global batch); 0: a whole batch.
    int64_t dropout_sequence0 = 0;
    ForwardObserver *observer = nullptr;
};

// Incremental decoding of `batch` sequences in lockstep (lib/decode_plan.h says what it keeps).
// Position p = bytes fed so far; the logits are the distribution of byte p, computed from the
// row at position p, whose input is byte p - 1 (the start vector at p = 0). Arguments are
// validated by lib/decode.cpp; a decoder reads its model's weights, which must not change
// while it is used (the API checks).
class Decoder {
public:
    virtual ~Decoder() = default;
    // Back to position 0 with the row of position 0 computed.
    virtual stx_status reset() = 0;
    // At position 0: feeds tokens [B][n] (1 <= n < n_ctx) through one ordinary forward.
    virtual stx_status prefill(const uint8_t *tokens, int32_t n) = 0;
    // Feeds bytes[B] at the current position (position + 1 < n_ctx).
    virtual stx_status step(const uint8_t *bytes) = 0;
    // The current distribution's logits, [B][256].
    virtual stx_status logits_read(stx_dtype dtype, void *dst) const = 0;
    virtual int64_t position() const = 0;
};

// What a backend hands its decoder: the spec (for the layer layouts) and weights it keeps,
// and itself, for the prefill's forward. All outlive the decoder (lib/decode.cpp checks).
template <typename S> struct DecoderSource {
    const ModelSpec *spec = nullptr;
    class Backend *model = nullptr;
    const S *params = nullptr;
};

// Gradient all-reduce across data-parallel ranks (lib/dist.cpp on the CPU, cuda/dist.cu with
// NCCL), driven by the backward: ready() is called as soon as a contiguous range of the
// gradient buffer is final (the output layer, then groups of blocks from the last to the first,
// then the embeddings), so the reduction of a group overlaps the backward of the earlier blocks;
// finish() returns once every range holds the average over the ranks (or with the failure).
// Pointers are the backend's gradient buffer (host for ref/, device for cuda/); `stream` is
// the backend's compute stream (a cudaStream_t on CUDA, nullptr on the CPU).
class GradSync {
public:
    virtual ~GradSync() = default;
    virtual void ready(void *grads, int64_t offset, int64_t count, void *stream) = 0;
    virtual stx_status finish(void *stream) = 0;
    // Blocks per all-reduce group (>= 1).
    virtual int32_t bucket_layers() const = 0;
};

// Adam moments (AdamM, AdamV) read as zeros before the first optimizer step.
enum class TensorKind { Param, Grad, AdamM, AdamV };

class Backend {
public:
    virtual ~Backend() = default;
    // Forward; keeps what backward needs; *loss_nats = mean cross-entropy.
    virtual stx_status forward(const ForwardArgs &args, double *loss_nats) = 0;
    // Logits of the last forward, [B, T, 256].
    virtual stx_status logits_read(stx_dtype dtype, void *dst) const = 0;
    // Backward of the last forward's mean loss, added into the gradients; with a GradSync set
    // (set_grad_sync), the gradients are then all-reduced across the ranks.
    virtual stx_status backward() = 0;
    // The all-reduce of the next backward calls (nullptr: none). The caller owns it.
    virtual void set_grad_sync(GradSync *sync) = 0;
    virtual stx_status zero_grad() = 0;
    // Global L2 norm of all gradients.
    virtual stx_status grad_norm(double *norm) = 0;
    // One AdamW update of every tensor at step t (1-based), gradients scaled by grad_scale.
    virtual stx_status adamw_step(const stx_optim_config &opt, double lr, double grad_scale,
                                  int64_t t) = 0;
    // Whole-tensor copies by table index, converting to or from dtype.
    virtual stx_status tensor_read(TensorKind kind, int32_t index, stx_dtype dtype,
                                   void *dst) const = 0;
    virtual stx_status tensor_write(TensorKind kind, int32_t index, stx_dtype dtype,
                                    const void *src) = 0;
    virtual void set_layer_layout(int32_t layer, std::shared_ptr<const Layout> layout) = 0;
    // Bytes of backend memory held now and at most so far (host for ref/, device for cuda/).
    virtual void memory(int64_t *in_use, int64_t *peak) const = 0;
    // Refuse any allocation that would take the backend past `bytes` (0: no limit).
    virtual void set_memory_limit(int64_t bytes) = 0;
    // A decoder of `batch` sequences over this model's weights, at position 0.
    virtual stx_status create_decoder(int32_t batch, std::unique_ptr<Decoder> *out) = 0;
    // Bytes of the key/value cache such a decoder holds.
    virtual int64_t decoder_state_bytes(int32_t batch) const = 0;
};

// The CPU reference backend (ref/model.cpp), float or double per spec.cfg.precision.
stx_status create_ref_backend(const ModelSpec &spec, std::unique_ptr<Backend> *out);

// The CUDA backend (cuda/model.cu); STX_ERR_UNSUPPORTED in a build without CUDA.
stx_status create_cuda_backend(const ModelSpec &spec, std::unique_ptr<Backend> *out);

// Median milliseconds of attention forward and forward + backward on the GPU (cuda/bench.cu;
// STX_ERR_UNSUPPORTED without CUDA).
stx_status cuda_attention_benchmark(const Layout &layout, int32_t device, bool bf16, int32_t B,
                                    int32_t T, int32_t Dq, int32_t Dv, int32_t runs,
                                    double *forward_ms, double *forward_backward_ms);

// CUDA devices visible (0 when CUDA is not compiled in or no driver); cuda/device.cu.
int32_t cuda_device_count();

// Head dims the CUDA attention kernels are compiled for: Dq 32, 64 or 128 and Dv = Dq or 2 Dq
// (at most 128). "auto" picks the CPU for other shapes.
inline bool cuda_head_dims_supported(int32_t Dq, int32_t Dv) {
    return (Dq == 32 || Dq == 64 || Dq == 128) && (Dv == Dq || (Dv == 2 * Dq && Dv <= 128));
}

} // namespace stx
