// device.cu: probes for CUDA devices. A machine without a driver or a GPU answers 0, so
// "auto" falls back to the CPU and "cuda" gets a clear error instead of a crash.
#include <cuda_runtime.h>

#include "backend.h"

namespace stx {

int32_t cuda_device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

} // namespace stx
