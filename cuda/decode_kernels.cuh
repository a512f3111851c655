// decode_kernels.cuh: what the decoder's kernels share (decode.cu's step kernels and
// decode_cluster.cu's fused batch-1 attention): element conversions, programmatic dependent
// launch, CTA reductions, the attention of one tile of candidate keys (online softmax), and
// the cluster attention's host entry.
#pragma once
#include <cuda_bf16.h>

#include <cmath>
#include <cstring>

#include "context.cuh"
#include "decode_plan.h"

namespace stx {
namespace cuda {

const int kAttnThreads = 128; // candidate keys per tile, and the attention CTAs' threads
const int kRowThreads = 128;  // a LayerNorm row's CTA

template <typename E> __device__ __forceinline__ E to_e(float x);
template <> __device__ __forceinline__ float to_e<float>(float x) {
    return x;
}
template <> __device__ __forceinline__ __nv_bfloat16 to_e<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}
__device__ __forceinline__ float to_f(float x) {
    return x;
}
__device__ __forceinline__ float to_f(__nv_bfloat16 x) {
    return __bfloat162float(x);
}

// Programmatic dependent launch (sm_90): a kernel of the small-batch step lets the next one
// start at once, and that one loads what no kernel of the step writes (weights, the cache of
// earlier positions) before it waits for the results of this one; so launches and loads
// overlap the chain instead of lengthening it. No-ops on older architectures, where the host
// does not ask for it either.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The sum over a CTA of kRowThreads threads, in every thread.
__device__ __forceinline__ float block_sum(float v, float *red) {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = 0.0f;
#pragma unroll
    for (int w = 0; w < kRowThreads / 32; ++w) r += red[w];
    __syncthreads();
    return r;
}

// The max or sum over a CTA of kAttnThreads threads, in every thread.
__device__ __forceinline__ float block_reduce(float v, bool is_max, float *scratch) {
    v = is_max ? warp_max(v) : warp_sum(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = scratch[0];
    for (int w = 1; w < kAttnThreads / 32; ++w) r = is_max ? fmaxf(r, scratch[w]) : r + scratch[w];
    __syncthreads();
    return r;
}

// How the kAttnThreads threads of an attention CTA share a tile of kAttnThreads keys.
// Keys: kQChunks threads share a key row, a 16-byte chunk each, so a warp reads whole rows.
// Values: a thread sums 16-byte chunks of the rows of every kLanes-th key of a tile, so its
// loads are independent and all in flight; the key lanes are added at the end.
template <typename E, int DQ, int DV> struct TileShape {
    static constexpr int kVec = 16 / sizeof(E); // elements of a 16-byte load
    static constexpr int kQChunks = DQ / kVec;  // threads along a key row
    static constexpr int kKeysPerPass = kAttnThreads / kQChunks;
    static constexpr int kChunks = DV / kVec; // threads along a value row
    static constexpr int kLanes = kAttnThreads / kChunks;
};

// One tile of the online softmax: slot_of[e] (as in the step's slot list: -2 not read) for
// the tile's keys, set and synchronized by the caller; key_row(e, slot) and value_row(e, slot)
// give the rows of key e (a row that is always there when the key is not read: it scores
// -inf and weighs 0, so no branch sits around a load). qreg: this thread's chunk of q; m, l,
// acc: the running max, sum and this thread's value chunk. Ends synchronized.
template <typename E, int DQ, int DV, typename KeyRow, typename ValueRow>
__device__ __forceinline__ void attend_tile(const float (&qreg)[16 / sizeof(E)],
                                            const int32_t *slot_of, float *score, float *red,
                                            float scale, KeyRow key_row, ValueRow value_row,
                                            float &m, float &l, float (&acc)[16 / sizeof(E)]) {
    using S = TileShape<E, DQ, DV>;
    const int tid = threadIdx.x;
    const int qchunk = tid % S::kQChunks, klane = tid / S::kQChunks;
    const int vchunk = tid % S::kChunks, lane = tid / S::kChunks;
#pragma unroll
    for (int e = klane; e < kAttnThreads; e += S::kKeysPerPass) {
        const int32_t sl = slot_of[e];
        const uint4 raw = *(reinterpret_cast<const uint4 *>(key_row(e, sl)) + qchunk);
        E vals[S::kVec];
        memcpy(vals, &raw, sizeof raw);
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < S::kVec; ++j) dot += qreg[j] * to_f(vals[j]);
#pragma unroll
        for (int o = S::kQChunks / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (qchunk == 0) score[e] = sl == -2 ? -INFINITY : dot * scale;
    }
    __syncthreads();
    const int32_t slot = slot_of[tid];
    const float s = score[tid];
    const float tile_max = block_reduce(s, true, red);
    const float m_new = fmaxf(m, tile_max);
    if (m_new == -INFINITY) return; // nothing read yet (uniform across the CTA)
    const float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);
    const float pr = slot == -2 ? 0.0f : expf(s - m_new);
    score[tid] = pr;
    const float tile_sum = block_reduce(pr, false, red); // also orders score[] writes
    l = l * alpha + tile_sum;
#pragma unroll
    for (int j = 0; j < S::kVec; ++j) acc[j] *= alpha;
#pragma unroll
    for (int e = lane; e < kAttnThreads; e += S::kLanes) {
        const int32_t sl = slot_of[e];
        const uint4 raw = *(reinterpret_cast<const uint4 *>(value_row(e, sl)) + vchunk);
        E vals[S::kVec];
        memcpy(vals, &raw, sizeof raw);
        const float w = score[e];
#pragma unroll
        for (int j = 0; j < S::kVec; ++j) acc[j] += w * to_f(vals[j]);
    }
    m = m_new;
    __syncthreads(); // score[] and slot_of[] are rewritten by the next tile
}

// The fused batch-1 attention of one layer (decode_cluster.cu): for every head a cluster of
// kClusterCtas CTAs computes LayerNorm 1 of the residual row, the head's q, k, v, attention
// over the candidate keys (split between the CTAs, merged through distributed shared memory)
// and the head's share of the output projection, parts[h][C] (without its bias; the next
// kernel adds the heads in order, the bias and the residual).
const int kClusterCtas = 8;

struct ClusterAttnArgs {
    const int64_t *row;       // the position being computed
    const float *x;           // the residual row [C]
    const float *ln_g, *ln_b; // LayerNorm 1
    float eps;
    const __nv_bfloat16 *wqkv; // [2 QK + C][C]: Wq; Wk; Wv
    const float *bq, *bk, *bv;
    const __nv_bfloat16 *wproj;     // [C][C]
    __nv_bfloat16 *kcache, *vcache; // [H][slots][Dq or Dv]
    const DecodeHead *heads;        // [H]
    const int32_t *slots;           // the step's slot list of this layer's plan, [H][slot_stride]
    int64_t slot_stride;
    int64_t cache_slots;
    float *parts; // [H][C]
    int32_t H, QK, C;
    int32_t stages; // key/value tiles in flight (cluster_attention_usable's choice)
    float scale;
};

// Whether the fused path can run this shape on this device (sm_90 code in the build, head
// dims it is compiled for, shared memory); sets *stages (ClusterAttnArgs::stages) and *smem
// (its dynamic shared memory).
bool cluster_attention_usable(Context *ctx, int32_t Dq, int32_t Dv, int32_t C, int32_t *stages,
                              size_t *smem);
// Launches it (with programmatic dependent launch) on the context's stream.
void cluster_attention(Context *ctx, const ClusterAttnArgs &a, int32_t Dq, int32_t Dv, size_t smem);

} // namespace cuda
} // namespace stx
