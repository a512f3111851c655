// hd.h: STX_HD marks small pure functions that both backends compile, for the host and,
// under nvcc, for the device, so the CUDA kernels share the reference's definitions.
#pragma once

#if defined(__CUDACC__)
#define STX_HD __host__ __device__ __forceinline__
#else
#define STX_HD inline
#endif
