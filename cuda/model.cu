// model.cu: the CUDA backend: the one layer loop (lib/model_loop.h) over the CUDA ops.
#include "backend.h"
#include "cuda_ops.h"
#include "error.h"
#include "model_loop.h"

namespace stx {

stx_status create_cuda_backend(const ModelSpec &spec, std::unique_ptr<Backend> *out) {
    if (!cuda::attention_dims_supported(spec.dims.Dq, spec.dims.Dv))
        return fail(STX_ERR_UNSUPPORTED,
                    "backend cuda: head dims Dq %d (n_embd * qk_ratio / n_head) and Dv %d "
                    "(n_embd / n_head) are not compiled: Dq must be 32, 64 or 128 and Dv = Dq or "
                    "2 Dq (at most 128)",
                    spec.dims.Dq, spec.dims.Dv);
    cuda::CudaOps ops;
    stx_status st =
        cuda::CudaOps::create(spec.cfg.device, spec.cfg.precision == STX_PRECISION_BF16, &ops);
    if (st != STX_OK) return st;
    std::unique_ptr<Backend> model(new LoopModel<cuda::CudaOps>(spec, ops));
    // Creating the model allocated and uploaded the weights: report a failure now.
    if ((st = ops.status()) != STX_OK) return st;
    ops.synchronize();
    if ((st = ops.status()) != STX_OK) return st;
    *out = std::move(model);
    return STX_OK;
}

} // namespace stx
