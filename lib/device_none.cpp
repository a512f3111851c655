// device_none.cpp: the CUDA device probe of a build without nvcc (cuda/device.cu replaces
// it when the CUDA backend is compiled).
#include "backend.h"

#ifndef STX_HAVE_CUDA
namespace stx {
int32_t cuda_device_count() {
    return 0;
}
} // namespace stx
#endif
