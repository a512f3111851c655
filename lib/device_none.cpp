// device_none.cpp: the CUDA entry points of a build without nvcc (cuda/device.cu and
// cuda/model.cu replace them when the CUDA backend is compiled): no device, and a clear
// refusal.
#include "backend.h"
#include "error.h"

#ifndef STX_HAVE_CUDA
namespace stx {

int32_t cuda_device_count() {
    return 0;
}

stx_status create_cuda_backend(const ModelSpec &, std::unique_ptr<Backend> *) {
    return fail(STX_ERR_UNSUPPORTED,
                "backend cuda: this build has no CUDA backend (rebuild with nvcc present)");
}

stx_status cuda_attention_benchmark(const Layout &, int32_t, bool, int32_t, int32_t, int32_t,
                                    int32_t, int32_t, double *, double *) {
    return fail(STX_ERR_UNSUPPORTED,
                "backend cuda: this build has no CUDA backend (rebuild with nvcc present)");
}

} // namespace stx
#endif
