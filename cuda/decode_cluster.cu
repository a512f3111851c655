// decode_cluster.cu: the fused attention of a batch-1 decoding step (decode_kernels.cuh's
// cluster_attention), sm_90 thread-block clusters.
//
// At batch 1 a step is a chain of dependent kernels that each move little: its time is the
// chain's latency, about five kernels a layer of a few microseconds each. This kernel takes three
// of them into one: for each head a cluster of kClusterCtas CTAs
//   - loads, before it waits for the previous kernel (programmatic dependent launch), what no
//     kernel of the step writes: its rows of [Wq; Wk; Wv] and of the projection, the step's slot
//     list (built before the chain) and the first tiles of cached keys and values (written by
//     earlier steps) into shared memory;
//   - after the wait: LayerNorm 1 of the residual row, its R of the head's 2 Dq + Dv rows of
//     q, k, v (bias added, rounded as the forward rounds them), sent to every CTA of the cluster
//     through distributed shared memory;
//   - attention of q over its share of the candidate keys (attend_tile, the online softmax of the
//     unfused kernel), each CTA's (max, sum, values) merged by every CTA from the others'
//     shared memory, no ticket or global partials;
//   - its C / kClusterCtas rows of the projection applied to the head's output: parts[h][C]; the
//     W1 kernel adds the heads in order, the bias and the residual.
// Every value is rounded where the unfused step rounds it; only fp32 summation order differs.
#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "attention_tile.cuh" // smem_addr, cp_async16, cp_async_commit, cp_async_wait_all
#include "decode_kernels.cuh"

namespace stx {
namespace cuda {
namespace {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define STX_CLUSTERS 1
#else
#define STX_CLUSTERS 0
#endif

// 1 in device passes with clusters; what the loaded image says decides the host's choice.
__device__ int g_clusters_built = STX_CLUSTERS;

const int kMaxStages = 4; // key/value tiles in flight at most: 512 keys a CTA before the wait

// A projection row of the head in shared memory: Dv + 8 elements, so the 8 threads of a
// 16-byte load phase, on 8 consecutive rows, meet 8 different bank groups.
int32_t proj_stride(int32_t Dv) {
    return Dv + 8;
}

// The dynamic shared memory: the LayerNorm row, g and b (fp32, C each), the CTA's q/k/v weight
// rows (R x C), its projection rows of the head (C / kClusterCtas x proj_stride), `stages`
// tiles of keys and values.
size_t cluster_smem_bytes(int32_t Dq, int32_t Dv, int32_t C, int32_t stages) {
    const size_t R = static_cast<size_t>(2 * Dq + Dv) / kClusterCtas;
    const size_t PR = static_cast<size_t>(C) / kClusterCtas;
    return sizeof(float) * 3 * C +
           sizeof(__nv_bfloat16) * (R * C + PR * proj_stride(Dv) +
                                    static_cast<size_t>(stages) * kAttnThreads * (Dq + Dv));
}

template <int DQ, int DV>
__global__ void __launch_bounds__(kAttnThreads, 1) cluster_attention_kernel(ClusterAttnArgs a) {
#if STX_CLUSTERS
    namespace cg = cooperative_groups;
    using E = __nv_bfloat16;
    using S = TileShape<E, DQ, DV>;
    constexpr int R = (2 * DQ + DV) / kClusterCtas; // the head's q, k, v rows a CTA computes
    constexpr int kWarps = kAttnThreads / 32;
    constexpr int PS = DV + 8; // proj_stride
    extern __shared__ __align__(16) unsigned char dyn[];
    const int32_t C = a.C, PR = C / kClusterCtas, row_chunks = C / 8, stages = a.stages;
    float *hrow = reinterpret_cast<float *>(dyn);
    float *lng = hrow + C, *lnb = lng + C;
    E *wqkv = reinterpret_cast<E *>(lnb + C);
    E *wproj = wqkv + R * C;
    E *ktile = wproj + PR * PS; // [stages][kAttnThreads][DQ]
    E *vtile = ktile + stages * kAttnThreads * DQ;
    __shared__ float qkv[2 * DQ + DV]; // written by every CTA of the cluster
    __shared__ float bias[R];
    __shared__ __align__(16) E knew[DQ];
    __shared__ __align__(16) E vnew[DV];
    __shared__ int32_t slot_of[kMaxStages][kAttnThreads];
    __shared__ float score[kAttnThreads];
    __shared__ float red[kWarps];
    __shared__ float acc_part[S::kLanes][DV];
    __shared__ float parts[kClusterCtas][DV + 2]; // every CTA's m, l, values: sent by each
    __shared__ float att[DV];
    __shared__ DecodeHead hd;

    cg::cluster_group cluster = cg::this_cluster();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int rank = static_cast<int>(cluster.block_rank());
    const int32_t h = static_cast<int32_t>(blockIdx.x) / kClusterCtas;
    if (tid == 0) hd = a.heads[h]; // the plan: no kernel writes it
    pdl_launch_dependents();
    // Distributed shared memory may be written only once every CTA of the cluster runs: each
    // says so now and waits for the others just before its first remote store.
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");

    // Before the wait: the weights, the slot list and the first key/value tiles. The list and
    // the row number were written before the chain's first kernel started, the cache by earlier
    // steps; the current position's slot is not among its candidates.
    for (int i = tid; i < R * row_chunks; i += kAttnThreads) {
        const int r = i / row_chunks, c = i % row_chunks;
        const int hr = rank * R + r; // row of the head's q, k, v
        const int64_t g = hr < DQ       ? static_cast<int64_t>(h) * DQ + hr
                          : hr < 2 * DQ ? a.QK + static_cast<int64_t>(h) * DQ + (hr - DQ)
                                        : 2 * a.QK + static_cast<int64_t>(h) * DV + (hr - 2 * DQ);
        cp_async16(smem_addr(wqkv + r * C + c * 8), a.wqkv + g * C + c * 8, true);
    }
    for (int i = tid; i < PR * (DV / 8); i += kAttnThreads) {
        const int r = i / (DV / 8), c = i % (DV / 8);
        const int64_t o = static_cast<int64_t>(rank) * PR + r;
        cp_async16(smem_addr(wproj + r * PS + c * 8),
                   a.wproj + o * C + static_cast<int64_t>(h) * DV + c * 8, true);
    }
    cp_async_commit();
    for (int i = tid; i < C; i += kAttnThreads) {
        lng[i] = __ldg(a.ln_g + i);
        lnb[i] = __ldg(a.ln_b + i);
    }
    for (int r = tid; r < R; r += kAttnThreads) {
        const int hr = rank * R + r;
        bias[r] = hr < DQ       ? __ldg(a.bq + h * DQ + hr)
                  : hr < 2 * DQ ? __ldg(a.bk + h * DQ + hr - DQ)
                                : __ldg(a.bv + h * DV + hr - 2 * DQ);
    }
    __syncthreads(); // hd, the parameters
    const int64_t pos = __ldcg(a.row);
    int64_t total = 0;
    for (int p = 0; p < hd.n_comps; ++p) total += decode_candidate_count(hd.comps[p], pos);
    const int64_t per = (total + kClusterCtas - 1) / kClusterCtas;
    const int64_t kb = rank * per < total ? rank * per : total;
    const int64_t ke = kb + per < total ? kb + per : total;
    const int n_tiles = static_cast<int>((ke - kb + kAttnThreads - 1) / kAttnThreads);
    const int32_t *list = a.slots + static_cast<int64_t>(h) * a.slot_stride;
    E *kbase = a.kcache + static_cast<int64_t>(h) * a.cache_slots * DQ;
    E *vbase = a.vcache + static_cast<int64_t>(h) * a.cache_slots * DV;
    // Tile t into stage t % stages: thread e copies key e's rows; a key not read (or the
    // current one, taken from the projection) is zero-filled and reads nothing.
    auto issue = [&](int t) {
        const int st = t % stages;
        const int64_t key = kb + static_cast<int64_t>(t) * kAttnThreads + tid;
        const int32_t sl = key < ke ? __ldcg(list + key) : -2;
        slot_of[st][tid] = sl;
        const int64_t src = sl >= 0 ? sl : 0;
        E *kd = ktile + (st * kAttnThreads + tid) * DQ;
        E *vd = vtile + (st * kAttnThreads + tid) * DV;
#pragma unroll
        for (int c = 0; c < DQ / 8; ++c)
            cp_async16(smem_addr(kd + c * 8), kbase + src * DQ + c * 8, sl >= 0);
#pragma unroll
        for (int c = 0; c < DV / 8; ++c)
            cp_async16(smem_addr(vd + c * 8), vbase + src * DV + c * 8, sl >= 0);
    };
    for (int t = 0; t < stages; ++t) {
        if (t < n_tiles) issue(t);
        cp_async_commit();
    }

    pdl_wait();
    // LayerNorm 1 of the residual row, rounded as the GEMM's input (the GEMV's arithmetic).
    float sum = 0.0f;
    for (int i = tid; i < C; i += kAttnThreads) {
        const float v = a.x[i];
        hrow[i] = v;
        sum += v;
    }
    const float mu = block_sum(sum, red) / static_cast<float>(C);
    float sq = 0.0f;
    for (int i = tid; i < C; i += kAttnThreads) sq += (hrow[i] - mu) * (hrow[i] - mu);
    const float var = block_sum(sq, red) / static_cast<float>(C);
    const float rs = 1.0f / sqrtf(var + a.eps);
    for (int i = tid; i < C; i += kAttnThreads)
        hrow[i] = to_f(to_e<E>((hrow[i] - mu) * rs * lng[i] + lnb[i]));
    cp_async_wait_all(); // the weights (and the first key/value tiles)
    __syncthreads();

    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
    // This CTA's rows of q, k, v, bias added and rounded, into every CTA's qkv[].
    for (int r = warp; r < R; r += kWarps) {
        float acc = 0.0f;
        for (int c = lane; c < row_chunks; c += 32) {
            const uint4 raw = *reinterpret_cast<const uint4 *>(wqkv + r * C + c * 8);
            E vals[8];
            memcpy(vals, &raw, sizeof raw);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc += to_f(vals[e]) * hrow[c * 8 + e];
        }
        acc = warp_sum(acc);
        const float v = to_f(to_e<E>(acc + bias[r]));
        if (lane < kClusterCtas) cluster.map_shared_rank(qkv, lane)[rank * R + r] = v;
    }
    cluster.sync();
    for (int d = tid; d < DQ; d += kAttnThreads) knew[d] = to_e<E>(qkv[DQ + d]);
    for (int d = tid; d < DV; d += kAttnThreads) vnew[d] = to_e<E>(qkv[2 * DQ + d]);
    __syncthreads();
    if (rank == 0) { // the new key and value, for later steps
        int64_t s[2];
        decode_write_slots(hd, pos, &s[0], &s[1]);
        for (int e = 0; e < 2; ++e) {
            if (s[e] < 0) continue;
            for (int d = tid; d < DQ; d += kAttnThreads) kbase[s[e] * DQ + d] = knew[d];
            for (int d = tid; d < DV; d += kAttnThreads) vbase[s[e] * DV + d] = vnew[d];
        }
    }

    float qreg[S::kVec];
    const int qchunk = tid % S::kQChunks;
#pragma unroll
    for (int j = 0; j < S::kVec; ++j) qreg[j] = qkv[qchunk * S::kVec + j];
    float m = -INFINITY, l = 0.0f, acc[S::kVec];
#pragma unroll
    for (int j = 0; j < S::kVec; ++j) acc[j] = 0.0f;
    for (int t = 0; t < n_tiles; ++t) {
        cp_async_wait_all();
        __syncthreads();
        const int st = t % stages;
        const E *ks = ktile + st * kAttnThreads * DQ, *vs = vtile + st * kAttnThreads * DV;
        attend_tile<E, DQ, DV>(
            qreg, slot_of[st], score, red, a.scale,
            [&](int e, int32_t sl) { return sl == -1 ? knew : ks + e * DQ; },
            [&](int e, int32_t sl) { return sl == -1 ? vnew : vs + e * DV; }, m, l, acc);
        if (t + stages < n_tiles) issue(t + stages); // stage st is read by now
        cp_async_commit();
    }
    const int vchunk = tid % S::kChunks, vlane = tid / S::kChunks;
#pragma unroll
    for (int j = 0; j < S::kVec; ++j) acc_part[vlane][vchunk * S::kVec + j] = acc[j];
    __syncthreads();
    // This CTA's (m, l, values) into every CTA's parts[rank]: stores, which do not wait.
    for (int i = tid; i < kClusterCtas * (DV + 2); i += kAttnThreads) {
        const int c = i / (DV + 2), d = i % (DV + 2);
        float v = m;
        if (d == 1) v = l;
        if (d >= 2) {
            v = 0.0f;
            for (int g = 0; g < S::kLanes; ++g) v += acc_part[g][d - 2];
        }
        cluster.map_shared_rank(&parts[0][0], c)[rank * (DV + 2) + d] = v;
    }
    cluster.sync();

    // The head's output from the CTAs' parts (in rank order: the same in every CTA).
    float top = -INFINITY;
    for (int c = 0; c < kClusterCtas; ++c) top = fmaxf(top, parts[c][0]);
    for (int d = tid; d < DV; d += kAttnThreads) {
        float num = 0.0f, den = 0.0f;
        for (int c = 0; c < kClusterCtas; ++c) {
            if (parts[c][0] == -INFINITY) continue;
            const float w = expf(parts[c][0] - top);
            num += w * parts[c][2 + d];
            den += w * parts[c][1];
        }
        att[d] = to_f(to_e<E>(num / den));
    }
    __syncthreads();
    // This CTA's projection rows on the head's output, a thread a row.
    for (int r = tid; r < PR; r += kAttnThreads) {
        float s = 0.0f;
#pragma unroll
        for (int c = 0; c < DV / 8; ++c) {
            const uint4 raw = *reinterpret_cast<const uint4 *>(wproj + r * PS + c * 8);
            E vals[8];
            memcpy(vals, &raw, sizeof raw);
#pragma unroll
            for (int e = 0; e < 8; ++e) s += to_f(vals[e]) * att[c * 8 + e];
        }
        a.parts[static_cast<int64_t>(h) * C + rank * PR + r] = s;
    }
#else
    (void)a;
    __trap(); // cluster_attention_usable() keeps the host from launching this without sm_90
#endif
}

using Kernel = void (*)(ClusterAttnArgs);

Kernel kernel_for(int32_t Dq, int32_t Dv) {
#define STX_CLUSTER_ATTN(DQ, DV)                                                                   \
    if (Dq == DQ && Dv == DV) return cluster_attention_kernel<DQ, DV>;
    STX_CLUSTER_ATTN(32, 32)
    STX_CLUSTER_ATTN(64, 64)
    STX_CLUSTER_ATTN(128, 128)
    STX_CLUSTER_ATTN(32, 64)
    STX_CLUSTER_ATTN(64, 128)
#undef STX_CLUSTER_ATTN
    return nullptr;
}

cudaLaunchConfig_t launch_config(Context *ctx, int32_t H, size_t smem, cudaLaunchAttribute *attr) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(static_cast<unsigned>(H * kClusterCtas));
    cfg.blockDim = dim3(kAttnThreads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = ctx->stream;
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = kClusterCtas;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[1].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 2;
    return cfg;
}

} // namespace

bool cluster_attention_usable(Context *ctx, int32_t Dq, int32_t Dv, int32_t C, int32_t *stages,
                              size_t *smem) {
    const Kernel kernel = kernel_for(Dq, Dv);
    if (!kernel || C % 8 != 0 || C % kClusterCtas != 0) return false;
    int major = 0, optin = 0, built = 0, clusters = 0;
    bool ok =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ctx->device) ==
            cudaSuccess &&
        major >= 9 && cudaMemcpyFromSymbol(&built, g_clusters_built, sizeof built) == cudaSuccess &&
        built == 1 &&
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx->device) ==
            cudaSuccess;
    cudaFuncAttributes attr{};
    ok = ok && cudaFuncGetAttributes(&attr, kernel) == cudaSuccess;
    // As many tiles in flight as fit, down to 1.
    for (*stages = kMaxStages; ok && *stages > 1; --*stages)
        if (cluster_smem_bytes(Dq, Dv, C, *stages) + attr.sharedSizeBytes <=
            static_cast<size_t>(optin))
            break;
    *smem = cluster_smem_bytes(Dq, Dv, C, *stages);
    ok = ok && *smem + attr.sharedSizeBytes <= static_cast<size_t>(optin) &&
         cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(*smem)) == cudaSuccess;
    if (ok) {
        cudaLaunchAttribute la[2];
        cudaLaunchConfig_t cfg = launch_config(ctx, 1, *smem, la);
        cfg.numAttrs = 1; // the cluster shape is what the question is about
        ok =
            cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) == cudaSuccess && clusters >= 1;
    }
    (void)cudaGetLastError(); // a failed query means "no", not a recorded error
    return ok;
}

void cluster_attention(Context *ctx, const ClusterAttnArgs &a, int32_t Dq, int32_t Dv,
                       size_t smem) {
    if (!ctx->ok()) return;
    cudaLaunchAttribute attr[2];
    const cudaLaunchConfig_t cfg = launch_config(ctx, a.H, smem, attr);
    STX_CUDA_CHECK(ctx, cudaLaunchKernelEx(&cfg, kernel_for(Dq, Dv), a));
}

} // namespace cuda
} // namespace stx
