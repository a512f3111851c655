// wgmma.cuh: the Hopper (sm_90a) warpgroup matrix multiply the attention kernels use, and the
// shared-memory layout its operands live in. Checked on an H100 by the probes of
// tests/perf/wgmma (each operand position read back through a one-hot product).
//
// Layout ("SW128"): a tile of R rows x 64 bf16 (128 bytes a row) at a 1024-byte aligned
// shared address, the 16-byte chunks of row r permuted by XOR with r % 8:
//     byte(r, c) = base + 128 r + 16 ((c / 8) ^ (r % 8)) + 2 (c % 8)
// Wider rows (head dim 128) are two such tiles side by side (columns 64..127 in the second).
// The hardware applies the XOR to bits 4-6 of the absolute address, hence the alignment.
//
// Descriptors: K-major operands (Q, K, dO as the B of dO V^T) step 32 bytes along the row per
// k-step of 16; SBO 1024 is the stride of 8-row groups. N-major operands (V as the B of P V)
// step 2048 bytes (16 rows) per k-step; LBO = SBO = 1024, the former unused at N = 64.
//
// Register fragments (warp w of the warpgroup owns rows 16 w .. 16 w + 15; lane l, g = l / 4,
// t = l % 4): accumulator element d[4 i + e] of an m64n64 product is row 16 w + g + 8 (e / 2),
// column 8 i + 2 t + e % 2 -- per warp the layout of mma.sync m16n8's accumulators, so the
// masks and softmax of attention_tile.cuh apply unchanged. The A fragment of k-step kk taken
// from such accumulators is {d[8kk] | d[8kk+1], d[8kk+2] | d[8kk+3], d[8kk+4] | d[8kk+5],
// d[8kk+6] | d[8kk+7]} (low half the lower column).
//
// Ordering: shared memory written by cp.async or st.shared (generic proxy) is read by wgmma
// through the async proxy, so the writers fence.proxy.async after their writes complete and
// before the barrier the readers wait on. wgmma_fence precedes the first wgmma after
// ordinary writes of its accumulators or A registers; wgmma_wait<0> and then fence_regs
// precede ordinary reads of the accumulators (the asm outputs are defined at issue time as
// far as the compiler knows; fence_regs redefines them after the wait).
#pragma once
#include <cstdint>

#include "attention_tile.cuh" // pack_bf16

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define STX_WGMMA 1 // this device pass targets sm_90a
#else
#define STX_WGMMA 0
#endif

namespace stx {
namespace cuda {
namespace {

constexpr uint32_t kSw128TileBytes = 64 * 128; // 64 rows of one 64-column part

// Shared address of chunk c (8 bf16) of row r in a SW128 tile of `rows` rows whose rows are
// `cols` bf16 wide (64 or 128: parts of 64 columns, each rows x 128 bytes).
__device__ __forceinline__ uint32_t sw128_chunk(uint32_t base, int rows, int r, int c) {
    return base +
           static_cast<uint32_t>((c >> 3) * rows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

__device__ __forceinline__ void fence_proxy_async() {
#if STX_WGMMA
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_fence() {
#if STX_WGMMA
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if STX_WGMMA
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
#if STX_WGMMA
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
template <int N> __device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// SW128 descriptor: start address >> 4 (bits 0-13), LBO >> 4 (16-29), SBO >> 4 (32-45),
// swizzle mode 1 = 128 bytes (62-63); base offset 0 since tiles are 1024-byte aligned.
__device__ __forceinline__ uint64_t desc_sw128(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
    return static_cast<uint64_t>((saddr & 0x3FFFF) >> 4) |
           static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16 |
           static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32 | 1ull << 62;
}
// K-major operand of `rows` rows (64): k-step kk (16 columns) of a row of up to 128 columns.
__device__ __forceinline__ uint64_t desc_kmajor(uint32_t tile, int rows, int kk) {
    return desc_sw128(tile + static_cast<uint32_t>((kk >> 2) * rows * 128 + 32 * (kk & 3)), 16,
                      1024);
}
// N-major operand, 64 columns wide (part `part` of a wider row): k-step kk = rows 16 kk ..
__device__ __forceinline__ uint64_t desc_nmajor(uint32_t tile, int rows, int part, int kk) {
    return desc_sw128(tile + static_cast<uint32_t>(part * rows * 128 + 2048 * kk), 1024, 1024);
}

#define STX_WGMMA_D32                                                                              \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),            \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define STX_WGMMA_REGS32                                                                           \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "  \
    "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"

// d (64 x 64 fp32) += A (64 x 16, K-major in shared memory) * B (16 x 64; K-major when
// TRANS_B = 0, N-major when 1). bf16 operands.
template <int TRANS_B>
__device__ __forceinline__ void wgmma_ss(float (&d)[32], uint64_t a, uint64_t b) {
#if STX_WGMMA
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " STX_WGMMA_REGS32
                 ", %32, %33, p, 1, 1, 0, %35;\n}\n"
                 : STX_WGMMA_D32
                 : "l"(a), "l"(b), "r"(1), "n"(TRANS_B)
                 : "memory");
#endif
}

// d (64 x 64 fp32) += A (64 x 16 bf16 from registers, the fragment above) * B (16 x 64 in
// shared memory; K-major when TRANS_B = 0, N-major when 1).
template <int TRANS_B>
__device__ __forceinline__ void wgmma_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
#if STX_WGMMA
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " STX_WGMMA_REGS32
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
                 : STX_WGMMA_D32
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1), "n"(TRANS_B)
                 : "memory");
#endif
}
#undef STX_WGMMA_D32
#undef STX_WGMMA_REGS32

// The A fragment of k-step kk from m64n64 accumulators (scores to probabilities, say).
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&d)[32], int kk) {
    a[0] = pack_bf16(d[8 * kk], d[8 * kk + 1]);
    a[1] = pack_bf16(d[8 * kk + 2], d[8 * kk + 3]);
    a[2] = pack_bf16(d[8 * kk + 4], d[8 * kk + 5]);
    a[3] = pack_bf16(d[8 * kk + 6], d[8 * kk + 7]);
}

} // namespace
} // namespace cuda
} // namespace stx
