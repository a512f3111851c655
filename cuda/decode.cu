// decode.cu: the CUDA decoder (lib/backend.h Decoder). One step feeds one byte per sequence
// through every block as B rows, attending to a key/value cache laid out and read by
// lib/decode_plan.h, and is one CUDA graph, so batch-1 decoding is not bound by launches:
//   embed + LN1 | per layer: [q;k;v] GEMM, attention, proj GEMM, residual + LN2, W1 GEMM,
//   bias + GELU, W2 GEMM, residual + next LN | logits GEMM.
// Matrices run in the model's precision: fp32 (cuBLAS pedantic, no TF32) or bf16 operands
// with fp32 accumulation, rounding exactly what the training forward rounds (GEMM inputs,
// attention's q, k, v), so a step's distribution is the forward's last row up to summation
// order. The weights are copied once per decoder into that precision, [Wq; Wk; Wv] stacked
// so the three projections are one GEMM.
//
// Attention (decode_attention_kernel): one CTA per (sequence, head, split of the candidate
// keys). The cache slots of the position's candidates come from a list built once per step and
// plan (decode_slots_kernel); in a tile of 128 candidates a group of threads reads each key row
// (whole rows per warp), the tile's values are summed by threads along the value dim, an online
// softmax runs across tiles, and the last CTA of a (sequence, head) to finish merges the
// splits' partial results (a ticket counter), so no second kernel is launched. The key of the
// current position is taken from the projection directly; split 0 writes it to the cache for
// later steps.
//
// Batch 1 in bf16 on sm_90 (the latency-bound case: every kernel of the chain is a few
// microseconds of dependent loads) takes three kernels a layer instead of five: the fused
// attention of decode_cluster.cu (LayerNorm 1, q, k, v, attention and the projection's share of
// each head, a cluster of CTAs per head), W1 with the heads' parts summed into the residual row,
// and W2.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <type_traits>
#include <vector>

#include "backend.h"
#include "decode_kernels.cuh"

namespace stx {
namespace cuda {
namespace {

const int kKeysPerSplit = 128; // candidates a CTA takes at most: short chains, more CTAs
// Attention CTAs an SM should hold: at 48 registers a thread it held 10 (ncu, H100), so 1,536
// CTAs at batch 64 were 1.16 waves; 12 makes that one wave.
const int kAttnCtasPerSm = 12;

template <typename E> __global__ void cast_kernel(E *dst, const float *src, int64_t n) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
        dst[i] = to_e<E>(src[i]);
}

struct PosArgs {
    const float *table[STX_MAX_POS_AXES];
    int32_t shape[STX_MAX_POS_AXES];
    int32_t n_axes;
};

// x[b] = the input of row *row: the start vector at row 0, else tok[bytes[b]] plus the
// position embeddings of row - 1 (the layer loop's shift right).
__global__ void embed_kernel(float *x, const int64_t *row_and_bytes, const float *tok,
                             const float *start, PosArgs pos, int32_t C) {
    const int32_t b = blockIdx.x;
    const int64_t row = row_and_bytes[0];
    const uint8_t *bytes = reinterpret_cast<const uint8_t *>(row_and_bytes + 1);
    int32_t coord[STX_MAX_POS_AXES] = {0, 0, 0, 0};
    int64_t rest = row - 1;
    for (int32_t a = pos.n_axes - 1; a >= 0 && row > 0; --a) {
        coord[a] = static_cast<int32_t>(rest % pos.shape[a]);
        rest /= pos.shape[a];
    }
    for (int32_t c = threadIdx.x; c < C; c += blockDim.x) {
        float v;
        if (row == 0) {
            v = start[c];
        } else {
            v = tok[static_cast<int64_t>(bytes[b]) * C + c];
            for (int32_t a = 0; a < pos.n_axes; ++a)
                v += pos.table[a][static_cast<int64_t>(coord[a]) * C + c];
        }
        x[static_cast<int64_t>(b) * C + c] = v;
    }
}

// x += a + a_bias (when a is given), then h = LayerNorm(x) g + b in E: a CTA per row with
// unrolled loads, so a row costs a few memory latencies rather than C / 32 of them. A thread
// reads back only the elements it wrote.
template <typename E>
__global__ void __launch_bounds__(kRowThreads)
    residual_layernorm_kernel(float *x, const float *a, const float *a_bias, const float *g,
                              const float *bb, E *h, int32_t C, float eps) {
    __shared__ float red[kRowThreads / 32];
    const int tid = threadIdx.x;
    float *xr = x + static_cast<int64_t>(blockIdx.x) * C;
    const float *ar = a ? a + static_cast<int64_t>(blockIdx.x) * C : nullptr;
    float sum = 0.0f;
#pragma unroll 4
    for (int32_t c = tid; c < C; c += kRowThreads) {
        float v = xr[c];
        if (ar) {
            v = v + (ar[c] + a_bias[c]);
            xr[c] = v;
        }
        sum += v;
    }
    const float mu = block_sum(sum, red) / static_cast<float>(C);
    float sq = 0.0f;
#pragma unroll 4
    for (int32_t c = tid; c < C; c += kRowThreads) sq += (xr[c] - mu) * (xr[c] - mu);
    const float var = block_sum(sq, red) / static_cast<float>(C);
    const float rs = 1.0f / sqrtf(var + eps);
    E *hr = h + static_cast<int64_t>(blockIdx.x) * C;
#pragma unroll 4
    for (int32_t c = tid; c < C; c += kRowThreads)
        hr[c] = to_e<E>((xr[c] - mu) * rs * g[c] + bb[c]);
}

// g = gelu(f + bias) in E (cuda/elementwise.cu's GELU).
template <typename E>
__global__ void bias_gelu_kernel(E *g, const float *f, const float *bias, int64_t n, int32_t F) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const float x = f[i] + bias[i % F];
        g[i] = to_e<E>(x * (1.0f / (1.0f + expf(-1.702f * x))));
    }
}

template <typename E> struct AttnArgs {
    const int64_t *row; // the position being computed
    const float *qkv;   // [B][2 QK + C]: x Wq^T, x Wk^T, x Wv^T without biases
    const float *bq, *bk, *bv;
    E *kcache, *vcache;      // [B][H][slots][Dq or Dv]
    const DecodeHead *heads; // [H]
    const int32_t *slots;    // the step's slot list of this layer's plan, [H][slot_stride]
    int64_t slot_stride;
    int64_t cache_slots;
    float *partial;   // [B][H][max_splits][Dv + 2]: m, l, acc
    int32_t *tickets; // [B][H], zero between launches
    E *out;           // [B][C]
    int32_t H, QK, C, max_splits;
    float scale;
};

// The step's slot list of a plan: for head h and candidate t of the query at *row, the cache
// slot its key is read from, -1 for the query's own key (taken from the projection) and -2 for
// a candidate that is not read. Every layer with the plan reads it, so the attention kernels
// do no index arithmetic (64-bit divisions per key, and per sequence of a batch).
__global__ void decode_slots_kernel(int32_t *list, int64_t stride, const int64_t *row,
                                    const DecodeHead *heads, const uint8_t *user, int32_t user_nb,
                                    int32_t user_bs) {
    const int32_t h = blockIdx.y;
    const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (t >= stride) return;
    const DecodeHead &hd = heads[h];
    const int64_t r = *row;
    int32_t p = 0;
    int64_t tp = t;
    for (; p < hd.n_comps; ++p) {
        const int64_t n = decode_candidate_count(hd.comps[p], r);
        if (tp < n) break;
        tp -= n;
    }
    if (p == hd.n_comps) return; // past this position's candidates: never read
    int32_t slot = -2;
    const int64_t key = decode_candidate(hd.comps[p], h, r, tp);
    if (key >= 0 && key <= r && decode_reads(hd, user, user_nb, user_bs, h, p, r, key))
        slot = key == r ? -1 : static_cast<int32_t>(decode_read_slot(hd, r, key));
    list[static_cast<int64_t>(h) * stride + t] = slot;
}

// MIN_CTAS: kAttnCtasPerSm for large batches; 1 for the small-batch step, whose few CTAs gain
// nothing from occupancy and lose ~3% to the spills the register cap causes (H100, batch 1).
template <typename E, int DQ, int DV, int MIN_CTAS>
__global__ void __launch_bounds__(kAttnThreads, MIN_CTAS) decode_attention_kernel(AttnArgs<E> a) {
    using S = TileShape<E, DQ, DV>;
    constexpr int kVec = S::kVec, kQChunks = S::kQChunks, kChunks = S::kChunks, kLanes = S::kLanes;
    __shared__ float q[DQ];
    __shared__ __align__(16) E knew[DQ];
    __shared__ __align__(16) E vnew[DV];
    __shared__ float score[kAttnThreads];
    __shared__ int32_t slot_of[kAttnThreads]; // as in the slot list
    __shared__ float red[kAttnThreads / 32];
    __shared__ float acc_part[kLanes][DV];
    __shared__ DecodeHead hd;
    __shared__ int is_last;

    const int tid = threadIdx.x;
    const int32_t bh = blockIdx.x, b = bh / a.H, h = bh % a.H, split = blockIdx.y;
    if (tid == 0) hd = a.heads[h]; // the plan: no kernel writes it
    pdl_launch_dependents();
    pdl_wait();
    const int64_t r = *a.row; // after the wait: the step's input is copied in before the chain
    const float *row = a.qkv + static_cast<int64_t>(b) * (2 * a.QK + a.C);
    for (int d = tid; d < DQ; d += kAttnThreads) {
        q[d] = to_f(to_e<E>(row[h * DQ + d] + a.bq[h * DQ + d]));
        knew[d] = to_e<E>(row[a.QK + h * DQ + d] + a.bk[h * DQ + d]);
    }
    for (int d = tid; d < DV; d += kAttnThreads)
        vnew[d] = to_e<E>(row[2 * a.QK + h * DV + d] + a.bv[h * DV + d]);
    __syncthreads();

    int64_t total = 0;
    for (int p = 0; p < hd.n_comps; ++p) total += decode_candidate_count(hd.comps[p], r);
    const int64_t want = (total + kKeysPerSplit - 1) / kKeysPerSplit;
    const int32_t n_splits = static_cast<int32_t>(want < gridDim.y ? want : gridDim.y);
    if (split >= n_splits) return; // the same for the whole CTA

    E *kbase = a.kcache + static_cast<int64_t>(bh) * a.cache_slots * DQ;
    E *vbase = a.vcache + static_cast<int64_t>(bh) * a.cache_slots * DV;
    if (split == 0) { // the new key and value, for later steps (nobody reads their slots now)
        int64_t s[2];
        decode_write_slots(hd, r, &s[0], &s[1]);
        for (int e = 0; e < 2; ++e) {
            if (s[e] < 0) continue;
            for (int d = tid; d < DQ; d += kAttnThreads) kbase[s[e] * DQ + d] = knew[d];
            for (int d = tid; d < DV; d += kAttnThreads) vbase[s[e] * DV + d] = vnew[d];
        }
    }

    // Whole tiles a split (the last one takes the rest), so no split ends on a tile of a few
    // keys that costs as much as a full one.
    const int64_t tiles = (total + kAttnThreads - 1) / kAttnThreads;
    const int64_t chunk = (tiles + n_splits - 1) / n_splits * kAttnThreads;
    const int64_t begin = split * chunk, end = begin + chunk < total ? begin + chunk : total;
    const int32_t *list = a.slots + static_cast<int64_t>(h) * a.slot_stride;
    const int qchunk = tid % kQChunks;
    float qreg[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) qreg[j] = q[qchunk * kVec + j];
    const int vchunk = tid % kChunks, lane = tid / kChunks;
    float m = -INFINITY, l = 0.0f, acc[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) acc[j] = 0.0f;
    for (int64_t tile = begin; tile < end; tile += kAttnThreads) {
        slot_of[tid] = tile + tid < end ? list[tile + tid] : -2;
        __syncthreads();
        // A key not read loads row 0 (always there).
        attend_tile<E, DQ, DV>(
            qreg, slot_of, score, red, a.scale,
            [&](int, int32_t sl) {
                return sl >= 0 ? kbase + static_cast<int64_t>(sl) * DQ : (sl == -1 ? knew : kbase);
            },
            [&](int, int32_t sl) {
                return sl >= 0 ? vbase + static_cast<int64_t>(sl) * DV : (sl == -1 ? vnew : vbase);
            },
            m, l, acc);
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j) acc_part[lane][vchunk * kVec + j] = acc[j];
    __syncthreads();
    float *part = a.partial + (static_cast<int64_t>(bh) * a.max_splits + split) * (DV + 2);
    for (int d = tid; d < DV; d += kAttnThreads) {
        float sum = 0.0f;
        for (int g = 0; g < kLanes; ++g) sum += acc_part[g][d];
        part[2 + d] = sum;
    }
    if (tid == 0) {
        part[0] = m;
        part[1] = l;
    }
    __threadfence(); // the partial is visible before the ticket says so
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(&a.tickets[bh], 1) == n_splits - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    const float *first = a.partial + static_cast<int64_t>(bh) * a.max_splits * (DV + 2);
    float top = -INFINITY;
    for (int sp = 0; sp < n_splits; ++sp) top = fmaxf(top, __ldcg(first + sp * (DV + 2)));
    for (int d = tid; d < DV; d += kAttnThreads) {
        float num = 0.0f, den = 0.0f;
        for (int sp = 0; sp < n_splits; ++sp) {
            const float *ps = first + sp * (DV + 2);
            const float ms = __ldcg(ps);
            if (ms == -INFINITY) continue;
            const float w = expf(ms - top);
            num += w * __ldcg(ps + 2 + d);
            den += w * __ldcg(ps + 1);
        }
        a.out[static_cast<int64_t>(b) * a.C + h * DV + d] = to_e<E>(num / den);
    }
    if (tid == 0) a.tickets[bh] = 0;
}

// The small-batch path (B <= kGemvRows): one kernel per matrix, its input prologue (a
// LayerNorm of the residual rows, or E rows as they are) and epilogue (raw, bias + GELU to E,
// or bias added into the residual stream) fused, a warp per output, so a batch-1 step is a
// few short kernels per layer rather than cuBLAS calls and elementwise kernels between them.
const int kGemvRows = 4;  // the largest batch the fused path takes
const int kGemvWarps = 4; // outputs per CTA (a warp each)
enum GemvIn { kInLayerNorm, kInRows, kInProjSum };
enum GemvOut { kOutRaw, kOutGelu, kOutResidual };

template <typename E> struct GemvArgs {
    const float *x;           // kInLayerNorm, kInProjSum: fp32 rows [B][IC]
    const float *ln_g, *ln_b; // and its LayerNorm
    float eps;
    // kInProjSum (batch 1): the LayerNorm's input is x + (the heads' projection parts
    // [n_parts][IC] summed in order + part_bias), which CTA 0 also stores in x_out as the new
    // residual row.
    const float *parts, *part_bias;
    int32_t n_parts;
    float *x_out;
    const E *rows;     // kInRows: [B][IC]
    const E *w;        // [OC][IC]
    const float *bias; // [OC] or null
    float *out;        // kOutRaw: [B][OC]; kOutResidual: the residual stream, += (acc + bias)
    E *out_e;          // kOutGelu: [B][OC]
    int32_t B, IC, OC;

    // Host set-up after the input (CudaDecoder's layer_norm_input, rows_input): the weights
    // [OC][IC] with their bias (or none), then the output.
    GemvArgs &times(const E *weights, int32_t n_out, const float *b = nullptr) {
        w = weights;
        OC = n_out;
        bias = b;
        return *this;
    }
    GemvArgs &into(float *o) {
        out = o;
        return *this;
    }
    GemvArgs &gelu_into(E *o) {
        out_e = o;
        return *this;
    }
};

template <typename E, int IN, int OUT>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_kernel(GemvArgs<E> a) {
    constexpr int kVec = 16 / sizeof(E);
    constexpr int kEarly = 8; // weight chunks a lane loads before waiting
    // [B][IC]: the input rows as the GEMM sees them; then, with a LayerNorm, its g, b and
    // (kInProjSum) the projection bias, [IC] each.
    extern __shared__ float xin[];
    __shared__ float red[kGemvWarps];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int o = blockIdx.x * kGemvWarps + warp;
    const int chunks = a.IC / kVec;
    const uint4 *wrow = reinterpret_cast<const uint4 *>(a.w + static_cast<int64_t>(o) * a.IC);
    uint4 early[kEarly];
#pragma unroll
    for (int j = 0; j < kEarly; ++j)
        if (o < a.OC && lane + 32 * j < chunks) early[j] = __ldg(wrow + lane + 32 * j);
    // Parameters too are loaded before the wait: after it, one round trip to memory (the
    // input rows) comes before the products. A thread reads back only the elements it wrote.
    float *ln_g = xin + static_cast<int64_t>(a.B) * a.IC, *ln_b = ln_g + a.IC,
          *part_bias = ln_b + a.IC;
    if (IN != kInRows) {
        for (int i = tid; i < a.IC; i += blockDim.x) {
            ln_g[i] = __ldg(a.ln_g + i);
            ln_b[i] = __ldg(a.ln_b + i);
            if (IN == kInProjSum) part_bias[i] = __ldg(a.part_bias + i);
        }
    }
    const float bias = a.bias && o < a.OC ? __ldg(a.bias + o) : 0.0f;
    pdl_launch_dependents();
    pdl_wait();
    float resid[kGemvRows]; // kOutResidual: the residual rows' elements, loaded now
#pragma unroll
    for (int b = 0; b < kGemvRows; ++b)
        resid[b] = OUT == kOutResidual && lane == 0 && o < a.OC && b < a.B
                       ? a.out[static_cast<int64_t>(b) * a.OC + o]
                       : 0.0f;
    for (int b = 0; b < a.B; ++b) {
        float *dst = xin + static_cast<int64_t>(b) * a.IC;
        if (IN == kInRows) { // 16-byte loads: few of them for each thread to wait for
            const uint4 *src =
                reinterpret_cast<const uint4 *>(a.rows + static_cast<int64_t>(b) * a.IC);
            for (int c = tid; c < chunks; c += blockDim.x) {
                const uint4 raw = src[c];
                E vals[kVec];
                memcpy(vals, &raw, sizeof raw);
#pragma unroll
                for (int e = 0; e < kVec; ++e) dst[c * kVec + e] = to_f(vals[e]);
            }
            continue;
        }
        // The fp32 row into dst (each thread its own elements), then LayerNorm in place.
        const float *xr = a.x + static_cast<int64_t>(b) * a.IC;
        float sum = 0.0f;
        for (int i = tid; i < a.IC; i += blockDim.x) {
            float v = xr[i];
            if (IN == kInProjSum) {
                float p = 0.0f;
                const float *pr = a.parts + i;
                for (int32_t k = 0; k < a.n_parts; ++k) p += pr[static_cast<int64_t>(k) * a.IC];
                v = v + (p + part_bias[i]);
                if (blockIdx.x == 0) a.x_out[i] = v;
            }
            dst[i] = v;
            sum += v;
        }
        sum = warp_sum(sum);
        if (lane == 0) red[warp] = sum;
        __syncthreads();
        float mu = 0.0f;
        for (int w = 0; w < kGemvWarps; ++w) mu += red[w];
        mu /= static_cast<float>(a.IC);
        __syncthreads();
        float sq = 0.0f;
        for (int i = tid; i < a.IC; i += blockDim.x) sq += (dst[i] - mu) * (dst[i] - mu);
        sq = warp_sum(sq);
        if (lane == 0) red[warp] = sq;
        __syncthreads();
        float var = 0.0f;
        for (int w = 0; w < kGemvWarps; ++w) var += red[w];
        var /= static_cast<float>(a.IC);
        const float rs = 1.0f / sqrtf(var + a.eps);
        for (int i = tid; i < a.IC; i += blockDim.x)
            dst[i] = to_f(to_e<E>((dst[i] - mu) * rs * ln_g[i] + ln_b[i]));
        __syncthreads();
    }
    __syncthreads();
    if (o >= a.OC) return;
    float acc[kGemvRows];
#pragma unroll
    for (int b = 0; b < kGemvRows; ++b) acc[b] = 0.0f;
    auto madd = [&](const uint4 &raw, int c) {
        E vals[kVec];
        memcpy(vals, &raw, sizeof raw);
#pragma unroll
        for (int b = 0; b < kGemvRows; ++b) {
            if (b >= a.B) break;
            const float *xv = xin + static_cast<int64_t>(b) * a.IC + c * kVec;
#pragma unroll
            for (int e = 0; e < kVec; ++e) acc[b] += to_f(vals[e]) * xv[e];
        }
    };
#pragma unroll
    for (int j = 0; j < kEarly; ++j)
        if (lane + 32 * j < chunks) madd(early[j], lane + 32 * j);
#pragma unroll 4
    for (int c = lane + 32 * kEarly; c < chunks; c += 32) madd(__ldg(wrow + c), c);
#pragma unroll
    for (int b = 0; b < kGemvRows; ++b) acc[b] = warp_sum(acc[b]);
    if (lane != 0) return;
    for (int b = 0; b < a.B; ++b) {
        const int64_t at = static_cast<int64_t>(b) * a.OC + o;
        if (OUT == kOutRaw) a.out[at] = acc[b] + bias;
        if (OUT == kOutResidual) a.out[at] = resid[b] + (acc[b] + bias);
        if (OUT == kOutGelu) {
            const float v = acc[b] + bias;
            a.out_e[at] = to_e<E>(v * (1.0f / (1.0f + expf(-1.702f * v))));
        }
    }
}

// The prefill's keys and values (fp32 [B][T][QK] and [B][T][C], biases in) into the cache:
// the positions a later step can read (every summary cell, the last ring positions).
template <typename E>
__global__ void cache_fill_kernel(E *kcache, E *vcache, const float *k, const float *v,
                                  const DecodeHead *heads, int64_t slots, int32_t T, int32_t H,
                                  int32_t Dq, int32_t Dv) {
    const int64_t t = blockIdx.x;
    const int32_t bh = blockIdx.y, b = bh / H, h = bh % H;
    const DecodeHead &hd = heads[h];
    int64_t s[2];
    decode_write_slots(hd, t, &s[0], &s[1]);
    if (!hd.keep_all && t < T - hd.ring) s[0] = -1; // overwritten in the ring later anyway
    const float *kr = k + (static_cast<int64_t>(b) * T + t) * H * Dq + h * Dq;
    const float *vr = v + (static_cast<int64_t>(b) * T + t) * H * Dv + h * Dv;
    for (int e = 0; e < 2; ++e) {
        if (s[e] < 0) continue;
        E *kd = kcache + (static_cast<int64_t>(bh) * slots + s[e]) * Dq;
        E *vd = vcache + (static_cast<int64_t>(bh) * slots + s[e]) * Dv;
        for (int d = threadIdx.x; d < Dq; d += blockDim.x) kd[d] = to_e<E>(kr[d]);
        for (int d = threadIdx.x; d < Dv; d += blockDim.x) vd[d] = to_e<E>(vr[d]);
    }
}

template <typename E> cudaDataType_t data_type() {
    return std::is_same<E, float>::value ? CUDA_R_32F : CUDA_R_16BF;
}

template <typename E> class CudaDecoder final : public Decoder, private ForwardObserver {
public:
    CudaDecoder(std::shared_ptr<Context> ctx, const DecoderSource<float> &src, int32_t batch)
        : ctx_(std::move(ctx)), spec_(src.spec), model_(src.model), params_(src.params), B_(batch),
          d_(src.spec->dims) {}

    ~CudaDecoder() override {
        if (exec_) cudaGraphExecDestroy(exec_);
        if (host_in_) cudaFreeHost(host_in_);
        if (blas_) cublasDestroy(blas_);
    }

    stx_status init() {
        stx_status st = build_decode_plans(*spec_, &plans_);
        if (st != STX_OK) return st;
        layouts_ = spec_->layer_layouts;
        Context *c = ctx_.get();
        if (!STX_CUDA_CHECK(c, cudaSetDevice(c->device))) return c->err;
        int major = 0;
        if (!STX_CUDA_CHECK(
                c, cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, c->device)))
            return c->err;
        pdl_ = major >= 9;
        if (!STX_BLAS_CHECK(c, cublasCreate(&blas_)) ||
            !STX_BLAS_CHECK(c, cublasSetStream(blas_, c->stream)) ||
            // fp32 stays exact (no TF32); bf16 operands gain nothing from pedantic math,
            // which keeps cuBLAS off its fastest small-batch kernels.
            !STX_BLAS_CHECK(c, cublasSetMathMode(blas_, std::is_same<E, float>::value
                                                            ? CUBLAS_PEDANTIC_MATH
                                                            : CUBLAS_DEFAULT_MATH)))
            return c->err;
        // A workspace of its own, so the captured GEMMs never allocate.
        workspace_.allocate(ctx_, size_t(32) << 20);
        if (!c->ok() ||
            !STX_BLAS_CHECK(c, cublasSetWorkspace(blas_, workspace_.data(), workspace_.size())))
            return c->err;
        if (!STX_CUDA_CHECK(c, cudaMallocHost(&host_in_, in_words() * sizeof(int64_t))))
            return c->err;
        std::memset(host_in_, 0, in_words() * sizeof(int64_t));
        snapshot_weights();
        upload_plans();
        if ((st = choose_cluster_step()) != STX_OK) return st;
        allocate_state();
        if (!c->ok()) return c->err;
        return reset();
    }

    stx_status reset() override {
        pos_ = 0;
        return launch(0, nullptr);
    }

    stx_status prefill(const uint8_t *tokens, int32_t n) override {
        const stx_status st = run_prefill(*model_, this, tokens, B_, n, &prefill_);
        if (st != STX_OK) return st;
        pos_ = n;
        return ctx_->err;
    }

    stx_status step(const uint8_t *bytes) override {
        const stx_status st = launch(pos_ + 1, bytes);
        if (st == STX_OK) ++pos_;
        return st;
    }

    stx_status logits_read(stx_dtype dtype, void *dst) const override {
        Context *c = ctx_.get();
        std::vector<float> host(static_cast<size_t>(B_) * STX_VOCAB);
        if (!c->ok() ||
            !STX_CUDA_CHECK(c, cudaMemcpyAsync(host.data(), logits_.data(),
                                               host.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                               c->stream)) ||
            !STX_CUDA_CHECK(c, cudaStreamSynchronize(c->stream)))
            return c->err;
        for (size_t i = 0; i < host.size(); ++i) {
            if (dtype == STX_DTYPE_F64)
                static_cast<double *>(dst)[i] = static_cast<double>(host[i]);
            else
                static_cast<float *>(dst)[i] = host[i];
        }
        return STX_OK;
    }

    int64_t position() const override { return pos_; }

private:
    struct LayerWeights {
        DeviceBuffer<E> qkv, proj, w1, w2;
    };

    size_t in_words() const { return 1 + (static_cast<size_t>(B_) + 7) / 8; }
    const float *param(int32_t t) const {
        return params_ + spec_->table.tensors[static_cast<size_t>(t)].offset;
    }
    int64_t numel(int32_t t) const { return spec_->table.tensors[static_cast<size_t>(t)].numel; }

    void cast(E *dst, int32_t tensor) {
        const int64_t n = numel(tensor);
        cast_kernel<E><<<blocks_for(n, 256), 256, 0, ctx_->stream>>>(dst, param(tensor), n);
        STX_LAUNCH_CHECK(ctx_, "cast_kernel");
    }

    void snapshot_weights() {
        const int64_t C = d_.C, QK = d_.QK, F = d_.F;
        for (const LayerParams &lp : spec_->table.layers) {
            LayerWeights w;
            w.qkv.allocate(ctx_, static_cast<size_t>((2 * QK + C) * C));
            w.proj.allocate(ctx_, static_cast<size_t>(C * C));
            w.w1.allocate(ctx_, static_cast<size_t>(F * C));
            w.w2.allocate(ctx_, static_cast<size_t>(C * F));
            if (!ctx_->ok()) return;
            cast(w.qkv.data(), lp.q_w);
            cast(w.qkv.data() + QK * C, lp.k_w);
            cast(w.qkv.data() + 2 * QK * C, lp.v_w);
            cast(w.proj.data(), lp.proj_w);
            cast(w.w1.data(), lp.w1);
            cast(w.w2.data(), lp.w2);
            weights_.push_back(std::move(w));
        }
        w_out_.allocate(ctx_, static_cast<size_t>(STX_VOCAB * C));
        if (ctx_->ok()) cast(w_out_.data(), spec_->table.w_out);
    }

    void upload_plans() {
        std::vector<DecodeHead> heads;
        for (const DecodePlan &p : plans_)
            heads.insert(heads.end(), p.heads.begin(), p.heads.end());
        heads_.allocate(ctx_, heads.size());
        if (!ctx_->ok()) return;
        STX_CUDA_CHECK(ctx_, cudaMemcpyAsync(heads_.data(), heads.data(),
                                             heads.size() * sizeof(DecodeHead),
                                             cudaMemcpyHostToDevice, ctx_->stream));
        user_.resize(plans_.size());
        std::map<const uint8_t *, size_t> seen; // layers sharing a layout share its copy
        for (size_t l = 0; l < plans_.size(); ++l) {
            const DecodePlan &p = plans_[l];
            if (!p.user) continue;
            if (seen.count(p.user)) continue;
            const size_t n = static_cast<size_t>(p.n_head) * p.user_nb * p.user_nb;
            user_[l].allocate(ctx_, n);
            if (!ctx_->ok()) return;
            STX_CUDA_CHECK(ctx_, cudaMemcpyAsync(user_[l].data(), p.user, n, cudaMemcpyHostToDevice,
                                                 ctx_->stream));
            seen[p.user] = l;
        }
        user_ptr_.assign(plans_.size(), nullptr);
        for (size_t l = 0; l < plans_.size(); ++l)
            if (plans_[l].user) user_ptr_[l] = user_[seen[plans_[l].user]].data();
        STX_CUDA_CHECK(ctx_, cudaStreamSynchronize(ctx_->stream)); // the host vectors go
    }

    static bool same_plan(const DecodePlan &a, const DecodePlan &b) {
        return a.heads.size() == b.heads.size() && a.user == b.user && a.user_nb == b.user_nb &&
               a.user_bs == b.user_bs &&
               std::memcmp(a.heads.data(), b.heads.data(), a.heads.size() * sizeof(DecodeHead)) ==
                   0;
    }

    void allocate_state() {
        const size_t B = static_cast<size_t>(B_), C = static_cast<size_t>(d_.C);
        const size_t QK = static_cast<size_t>(d_.QK), F = static_cast<size_t>(d_.F);
        const size_t H = static_cast<size_t>(d_.H);
        max_splits_ = 1;
        for (size_t l = 0; l < plans_.size(); ++l) {
            const DecodePlan &p = plans_[l];
            int64_t plan_most = 1;
            for (const DecodeHead &hd : p.heads) {
                int64_t most = 0; // candidates at the last position, a bound for every one
                for (int32_t e = 0; e < hd.n_comps; ++e) {
                    const DecodeComp &c = hd.comps[e];
                    int64_t n = p.n_ctx;
                    if (c.kind == static_cast<int32_t>(CompKind::Local)) n = c.l;
                    if (c.kind == static_cast<int32_t>(CompKind::Strided))
                        n = (p.n_ctx - 1) / c.l + 1;
                    if (c.kind == static_cast<int32_t>(CompKind::Fixed))
                        n = c.l + static_cast<int64_t>((p.n_ctx - 1) / c.l) * c.c;
                    most += n;
                }
                plan_most = std::max(plan_most, most);
                const int64_t splits = (most + kKeysPerSplit - 1) / kKeysPerSplit;
                max_splits_ = std::max<int32_t>(max_splits_, static_cast<int32_t>(splits));
            }
            // Layers with the same heads and user mask share one slot list a step.
            size_t same = 0;
            while (same < l && !same_plan(plans_[same], p)) ++same;
            if (same == l) {
                slot_lists_.push_back(SlotList{static_cast<int32_t>(l), plan_most, {}});
                slot_lists_.back().list.allocate(ctx_, H * static_cast<size_t>(plan_most));
                list_of_layer_.push_back(static_cast<int32_t>(slot_lists_.size() - 1));
            } else {
                list_of_layer_.push_back(list_of_layer_[same]);
            }
            kcache_.emplace_back();
            vcache_.emplace_back();
            kcache_.back().allocate(ctx_, B * H * static_cast<size_t>(p.slots) * d_.Dq);
            vcache_.back().allocate(ctx_, B * H * static_cast<size_t>(p.slots) * d_.Dv);
        }
        // Splits of a (sequence, head): as many as fill one wave of the attention kernel (the
        // CTAs the GPU holds at once), so a large batch neither merges many partial results
        // nor leaves a short second wave (1,536 CTAs at batch 64 were 1.16 waves).
        int sms = 0, per_sm = 0;
        STX_CUDA_CHECK(ctx_,
                       cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ctx_->device));
        if (void (*kernel)(AttnArgs<E>) = attention_kernel())
            STX_CUDA_CHECK(ctx_, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel,
                                                                               kAttnThreads, 0));
        const int64_t pairs = static_cast<int64_t>(B_) * d_.H;
        const int64_t wave = static_cast<int64_t>(std::max(per_sm, 1)) * sms;
        grid_splits_ = static_cast<int32_t>(
            std::min<int64_t>(max_splits_, std::max<int64_t>(1, wave / pairs)));
        in_.allocate(ctx_, in_words());
        x_.allocate(ctx_, B * C);
        if (cluster_) {
            x2_.allocate(ctx_, B * C);
            parts_.allocate(ctx_, B * H * C);
        }
        h_.allocate(ctx_, B * C);
        qkv_.allocate(ctx_, B * (2 * QK + C));
        att_.allocate(ctx_, B * C);
        branch_.allocate(ctx_, B * C);
        f1_.allocate(ctx_, B * F);
        g_.allocate(ctx_, B * F);
        logits_.allocate(ctx_, B * STX_VOCAB);
        partial_.allocate(ctx_, B * H * static_cast<size_t>(max_splits_) * (d_.Dv + 2));
        tickets_.allocate(ctx_, B * H);
    }

    // out^T (OC x B) = W (OC x IC) in^T: the layer loop's row-major product.
    void gemm(const E *w, const E *in, float *out, int32_t OC, int32_t IC) {
        const float one = 1.0f, zero = 0.0f;
        STX_BLAS_CHECK(ctx_, cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, OC, B_, IC, &one, w,
                                          data_type<E>(), IC, in, data_type<E>(), IC, &zero, out,
                                          CUDA_R_32F, OC, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }

    void residual_layernorm(const float *a, const float *a_bias, int32_t g, int32_t b, double eps) {
        residual_layernorm_kernel<E><<<static_cast<unsigned>(B_), kRowThreads, 0, ctx_->stream>>>(
            x_.data(), a, a_bias, param(g), param(b), h_.data(), d_.C, static_cast<float>(eps));
        STX_LAUNCH_CHECK(ctx_, "residual_layernorm_kernel");
    }

    void attention(int32_t l, bool pdl) {
        const DecodePlan &p = plans_[static_cast<size_t>(l)];
        const LayerParams &lp = spec_->table.layers[static_cast<size_t>(l)];
        AttnArgs<E> a{};
        a.row = in_.data();
        a.qkv = qkv_.data();
        a.bq = param(lp.q_b);
        a.bk = param(lp.k_b);
        a.bv = param(lp.v_b);
        a.kcache = kcache_[static_cast<size_t>(l)].data();
        a.vcache = vcache_[static_cast<size_t>(l)].data();
        a.heads = heads_.data() + static_cast<size_t>(l) * d_.H;
        const SlotList &list =
            slot_lists_[static_cast<size_t>(list_of_layer_[static_cast<size_t>(l)])];
        a.slots = list.list.data();
        a.slot_stride = list.stride;
        a.cache_slots = p.slots;
        a.partial = partial_.data();
        a.tickets = tickets_.data();
        a.out = att_.data();
        a.H = d_.H;
        a.QK = d_.QK;
        a.C = d_.C;
        a.max_splits = max_splits_;
        a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d_.Dq)));
        const dim3 grid(static_cast<unsigned>(B_ * d_.H), static_cast<unsigned>(grid_splits_));
        launch_kernel(attention_kernel(), grid, dim3(kAttnThreads), 0, pdl, a);
        STX_LAUNCH_CHECK(ctx_, "decode_attention_kernel");
    }

    // The whole step: the input upload, then every kernel and GEMM.
    void record_step() {
        Context *c = ctx_.get();
        const ParamTable &pt = spec_->table;
        const int32_t C = d_.C, QK = d_.QK, F = d_.F;
        STX_CUDA_CHECK(c, cudaMemcpyAsync(in_.data(), host_in_, in_words() * sizeof(int64_t),
                                          cudaMemcpyHostToDevice, c->stream));
        PosArgs pos{};
        for (int32_t a = 0; a < d_.n_axes; ++a) {
            pos.table[a] = param(pt.pos_emb[static_cast<size_t>(a)]);
            pos.shape[a] = d_.pos_shape[a];
        }
        pos.n_axes = d_.n_axes;
        embed_kernel<<<B_, 128, 0, c->stream>>>(x_.data(), in_.data(), param(pt.tok_emb),
                                                param(pt.start), pos, C);
        STX_LAUNCH_CHECK(c, "embed_kernel");
        for (SlotList &sl : slot_lists_) {
            const DecodePlan &p = plans_[static_cast<size_t>(sl.layer)];
            const dim3 grid(blocks_for(sl.stride, 256), static_cast<unsigned>(d_.H));
            decode_slots_kernel<<<grid, 256, 0, c->stream>>>(
                sl.list.data(), sl.stride, in_.data(),
                heads_.data() + static_cast<size_t>(sl.layer) * d_.H,
                user_ptr_[static_cast<size_t>(sl.layer)], p.user_nb, p.user_bs);
        }
        STX_LAUNCH_CHECK(c, "decode_slots_kernel");
        if (small_batch()) {
            if (cluster_)
                record_cluster_step();
            else
                record_small_step();
            return;
        }
        residual_layernorm(nullptr, nullptr, pt.layers[0].ln1_g, pt.layers[0].ln1_b,
                           kBlockLayerNormEps);
        for (int32_t l = 0; l < d_.L; ++l) {
            const LayerParams &lp = pt.layers[static_cast<size_t>(l)];
            const LayerWeights &w = weights_[static_cast<size_t>(l)];
            gemm(w.qkv.data(), h_.data(), qkv_.data(), 2 * QK + C, C);
            attention(l, false);
            gemm(w.proj.data(), att_.data(), branch_.data(), C, C);
            residual_layernorm(branch_.data(), param(lp.proj_b), lp.ln2_g, lp.ln2_b,
                               kBlockLayerNormEps);
            gemm(w.w1.data(), h_.data(), f1_.data(), F, C);
            const int64_t n = static_cast<int64_t>(B_) * F;
            bias_gelu_kernel<E><<<blocks_for(n, 256), 256, 0, c->stream>>>(g_.data(), f1_.data(),
                                                                           param(lp.b1), n, F);
            STX_LAUNCH_CHECK(c, "bias_gelu_kernel");
            gemm(w.w2.data(), g_.data(), branch_.data(), C, F);
            const bool last = l + 1 == d_.L;
            const LayerParams &next = pt.layers[static_cast<size_t>(last ? l : l + 1)];
            residual_layernorm(branch_.data(), param(lp.b2), last ? pt.lnf_g : next.ln1_g,
                               last ? pt.lnf_b : next.ln1_b,
                               last ? kFinalLayerNormEps : kBlockLayerNormEps);
        }
        gemm(w_out_.data(), h_.data(), logits_.data(), STX_VOCAB, C);
    }

    // The attention kernel for the model's head dims (the dims the config allows) and batch.
    void (*attention_kernel() const)(AttnArgs<E>) {
        const int32_t Dq = d_.Dq, Dv = d_.Dv;
        const bool small = small_batch();
#define STX_DECODE_ATTN(DQ, DV)                                                                    \
    if (Dq == DQ && Dv == DV)                                                                      \
        return small ? decode_attention_kernel<E, DQ, DV, 1>                                       \
                     : decode_attention_kernel<E, DQ, DV, kAttnCtasPerSm>;
        STX_DECODE_ATTN(32, 32)
        STX_DECODE_ATTN(64, 64)
        STX_DECODE_ATTN(128, 128)
        STX_DECODE_ATTN(32, 64)
        STX_DECODE_ATTN(64, 128)
#undef STX_DECODE_ATTN
        return nullptr;
    }

    // Launches kernel on the context's stream; in the small-batch step on sm_90 with
    // programmatic stream serialization (the kernel waits for its predecessor itself).
    template <typename... P, typename... A>
    void launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, bool pdl,
                       A... args) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid;
        cfg.blockDim = block;
        cfg.dynamicSmemBytes = smem;
        cfg.stream = ctx_->stream;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = pdl && pdl_ ? 1 : 0;
        STX_CUDA_CHECK(ctx_, cudaLaunchKernelEx(&cfg, kernel, args...));
    }

    template <int IN, int OUT> void gemv(const GemvArgs<E> &a) {
        const unsigned grid = static_cast<unsigned>((a.OC + kGemvWarps - 1) / kGemvWarps);
        const size_t smem = sizeof(float) * (static_cast<size_t>(a.B) + (IN == kInRows ? 0 : 3)) *
                            static_cast<size_t>(a.IC);
        launch_kernel(gemv_kernel<E, IN, OUT>, dim3(grid), dim3(kGemvWarps * 32), smem, true, a);
    }

    // Whether the step takes the fused small-batch path: few rows, inputs (and a LayerNorm's
    // parameters) that fit in shared memory and whole 16-byte chunks per weight row.
    bool small_batch() const {
        const int32_t widest = std::max(d_.C, d_.F);
        const int32_t vec = 16 / static_cast<int32_t>(sizeof(E));
        const int64_t most = std::max<int64_t>(int64_t(B_) * widest, int64_t(B_ + 3) * d_.C);
        return B_ <= kGemvRows && sizeof(float) * most <= 48 * 1024 && d_.C % vec == 0 &&
               d_.F % vec == 0;
    }

    // The input of a fused GEMV: the LayerNorm (weights g, b) of the residual rows x_ ...
    GemvArgs<E> layer_norm_input(int32_t g, int32_t b, double eps, const float *x = nullptr) const {
        GemvArgs<E> a{};
        a.B = B_;
        a.x = x ? x : x_.data();
        a.eps = static_cast<float>(eps);
        a.ln_g = param(g);
        a.ln_b = param(b);
        a.IC = d_.C;
        return a;
    }
    // ... or E rows [B][IC] as they are.
    GemvArgs<E> rows_input(const E *rows, int32_t IC) const {
        GemvArgs<E> a{};
        a.B = B_;
        a.rows = rows;
        a.IC = IC;
        return a;
    }

    // The step of the small-batch path: five kernels a layer.
    void record_small_step() {
        const ParamTable &pt = spec_->table;
        const int32_t C = d_.C, QK = d_.QK, F = d_.F;
        for (int32_t l = 0; l < d_.L; ++l) {
            const LayerParams &lp = pt.layers[static_cast<size_t>(l)];
            const LayerWeights &w = weights_[static_cast<size_t>(l)];
            // the attention kernel adds the qkv biases
            gemv<kInLayerNorm, kOutRaw>(layer_norm_input(lp.ln1_g, lp.ln1_b, kBlockLayerNormEps)
                                            .times(w.qkv.data(), 2 * QK + C)
                                            .into(qkv_.data()));
            attention(l, true);
            gemv<kInRows, kOutResidual>(rows_input(att_.data(), C)
                                            .times(w.proj.data(), C, param(lp.proj_b))
                                            .into(x_.data()));
            gemv<kInLayerNorm, kOutGelu>(layer_norm_input(lp.ln2_g, lp.ln2_b, kBlockLayerNormEps)
                                             .times(w.w1.data(), F, param(lp.b1))
                                             .gelu_into(g_.data()));
            gemv<kInRows, kOutResidual>(
                rows_input(g_.data(), F).times(w.w2.data(), C, param(lp.b2)).into(x_.data()));
        }
        gemv<kInLayerNorm, kOutRaw>(layer_norm_input(pt.lnf_g, pt.lnf_b, kFinalLayerNormEps)
                                        .times(w_out_.data(), STX_VOCAB)
                                        .into(logits_.data()));
    }

    // ... or the LayerNorm of the residual row x plus the heads' projection parts and the
    // projection bias (the fused attention's output), the sum stored in x_out.
    GemvArgs<E> proj_sum_input(const float *x, float *x_out, int32_t proj_b, int32_t g, int32_t b,
                               double eps) const {
        GemvArgs<E> a = layer_norm_input(g, b, eps, x);
        a.parts = parts_.data();
        a.n_parts = d_.H;
        a.part_bias = param(proj_b);
        a.x_out = x_out;
        return a;
    }

    // Whether batch-1 bf16 steps take the fused attention (decode_cluster.cu): three kernels
    // a layer instead of five. STX_CUDA_DECODE_CLUSTER=0 (or the portable kernels) keeps the
    // five, for comparisons on one machine; =1 makes a batch-1 bf16 decoder that cannot take
    // it an error (tests and benchmarks that must measure it).
    stx_status choose_cluster_step() {
        if (!std::is_same<E, __nv_bfloat16>::value || B_ != 1) return STX_OK;
        const char *env = getenv("STX_CUDA_DECODE_CLUSTER");
        if ((env && std::strcmp(env, "0") == 0) || ctx_->wgmma_off) return STX_OK;
        cluster_ = pdl_ && small_batch() &&
                   cluster_attention_usable(ctx_.get(), d_.Dq, d_.Dv, d_.C, &cluster_stages_,
                                            &cluster_smem_);
        if (!cluster_ && env && std::strcmp(env, "1") == 0)
            return fail(STX_ERR_UNSUPPORTED,
                        "STX_CUDA_DECODE_CLUSTER=1: the fused batch-1 step needs an sm_90 device "
                        "and build, head dims (32|64|128, 32|64|128), a width that is a multiple "
                        "of 8 and fits shared memory (here Dq %d, Dv %d, width %d)",
                        d_.Dq, d_.Dv, d_.C);
        return STX_OK;
    }

    // The batch-1 step on sm_90: per layer the fused attention (LayerNorm 1, q, k, v, attention
    // and the projection's parts per head), then W1 (parts summed into the residual row,
    // LayerNorm 2, bias, GELU) and W2 (bias and residual). The residual row alternates
    // between x_ and x2_: W1's CTAs all read the row that CTA 0 rewrites.
    void record_cluster_step() {
        if constexpr (std::is_same<E, __nv_bfloat16>::value) {
            const ParamTable &pt = spec_->table;
            const int32_t C = d_.C, F = d_.F;
            float *rows[2] = {x_.data(), x2_.data()};
            for (int32_t l = 0; l < d_.L; ++l) {
                const LayerParams &lp = pt.layers[static_cast<size_t>(l)];
                const LayerWeights &w = weights_[static_cast<size_t>(l)];
                float *x = rows[l % 2], *x_next = rows[(l + 1) % 2];
                ClusterAttnArgs a{};
                a.row = in_.data();
                a.x = x;
                a.ln_g = param(lp.ln1_g);
                a.ln_b = param(lp.ln1_b);
                a.eps = static_cast<float>(kBlockLayerNormEps);
                a.wqkv = w.qkv.data();
                a.bq = param(lp.q_b);
                a.bk = param(lp.k_b);
                a.bv = param(lp.v_b);
                a.wproj = w.proj.data();
                a.kcache = kcache_[static_cast<size_t>(l)].data();
                a.vcache = vcache_[static_cast<size_t>(l)].data();
                a.heads = heads_.data() + static_cast<size_t>(l) * d_.H;
                const SlotList &list =
                    slot_lists_[static_cast<size_t>(list_of_layer_[static_cast<size_t>(l)])];
                a.slots = list.list.data();
                a.slot_stride = list.stride;
                a.cache_slots = plans_[static_cast<size_t>(l)].slots;
                a.parts = parts_.data();
                a.H = d_.H;
                a.QK = d_.QK;
                a.C = C;
                a.stages = cluster_stages_;
                a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d_.Dq)));
                cluster_attention(ctx_.get(), a, d_.Dq, d_.Dv, cluster_smem_);
                gemv<kInProjSum, kOutGelu>(
                    proj_sum_input(x, x_next, lp.proj_b, lp.ln2_g, lp.ln2_b, kBlockLayerNormEps)
                        .times(w.w1.data(), F, param(lp.b1))
                        .gelu_into(g_.data()));
                gemv<kInRows, kOutResidual>(
                    rows_input(g_.data(), F).times(w.w2.data(), C, param(lp.b2)).into(x_next));
            }
            gemv<kInLayerNorm, kOutRaw>(
                layer_norm_input(pt.lnf_g, pt.lnf_b, kFinalLayerNormEps, rows[d_.L % 2])
                    .times(w_out_.data(), STX_VOCAB)
                    .into(logits_.data()));
        }
    }

    // Runs the step for position `row` (bytes: the byte fed at row - 1, one per sequence).
    stx_status launch(int64_t row, const uint8_t *bytes) {
        Context *c = ctx_.get();
        if (!c->ok()) return c->err;
        // The previous step has read host_in_ before it is rewritten.
        if (!STX_CUDA_CHECK(c, cudaStreamSynchronize(c->stream))) return c->err;
        host_in_[0] = row;
        if (bytes) std::memcpy(host_in_ + 1, bytes, static_cast<size_t>(B_));
        if (!exec_) {
            cudaGraph_t graph = nullptr;
            if (!STX_CUDA_CHECK(
                    c, cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal)))
                return c->err;
            record_step();
            const cudaError_t end = cudaStreamEndCapture(c->stream, &graph);
            if (!c->ok()) {
                if (graph) cudaGraphDestroy(graph);
                return c->err;
            }
            if (!STX_CUDA_CHECK(c, end)) return c->err;
            const cudaError_t inst = cudaGraphInstantiate(&exec_, graph, 0);
            cudaGraphDestroy(graph);
            if (!STX_CUDA_CHECK(c, inst)) return c->err;
        }
        STX_CUDA_CHECK(c, cudaGraphLaunch(exec_, c->stream));
        return c->err;
    }

    void keys_values(int32_t layer, const void *k, const void *v) override {
        if (!ctx_->ok()) return;
        const DecodePlan &p = plans_[static_cast<size_t>(layer)];
        const dim3 grid(static_cast<unsigned>(prefill_.T),
                        static_cast<unsigned>(prefill_.nb * d_.H));
        const size_t first = static_cast<size_t>(prefill_.b0) * d_.H * p.slots; // rows before
        cache_fill_kernel<E><<<grid, 64, 0, ctx_->stream>>>(
            kcache_[static_cast<size_t>(layer)].data() + first * d_.Dq,
            vcache_[static_cast<size_t>(layer)].data() + first * d_.Dv,
            static_cast<const float *>(k), static_cast<const float *>(v),
            heads_.data() + static_cast<size_t>(layer) * d_.H, p.slots, prefill_.T, d_.H, d_.Dq,
            d_.Dv);
        STX_LAUNCH_CHECK(ctx_, "cache_fill_kernel");
    }

    void logits(const void *logits) override {
        if (!ctx_->ok()) return;
        const size_t row = STX_VOCAB * sizeof(float);
        const float *last =
            static_cast<const float *>(logits) + static_cast<size_t>(prefill_.T - 1) * STX_VOCAB;
        STX_CUDA_CHECK(
            ctx_, cudaMemcpy2DAsync(logits_.data() + static_cast<size_t>(prefill_.b0) * STX_VOCAB,
                                    row, last, row * static_cast<size_t>(prefill_.T), row,
                                    static_cast<size_t>(prefill_.nb), cudaMemcpyDeviceToDevice,
                                    ctx_->stream));
    }

    std::shared_ptr<Context> ctx_;
    const ModelSpec *spec_;
    Backend *model_;
    const float *params_;
    int32_t B_;
    Dims d_;
    std::vector<DecodePlan> plans_;
    std::vector<std::shared_ptr<const Layout>> layouts_; // keep the user block masks alive
    cublasHandle_t blas_ = nullptr;
    DeviceBuffer<uint8_t> workspace_;
    int64_t *host_in_ = nullptr; // pinned: the row, then the bytes
    cudaGraphExec_t exec_ = nullptr;
    std::vector<LayerWeights> weights_;
    DeviceBuffer<E> w_out_;
    DeviceBuffer<DecodeHead> heads_;
    std::vector<DeviceBuffer<uint8_t>> user_;
    std::vector<const uint8_t *> user_ptr_;
    std::vector<DeviceBuffer<E>> kcache_, vcache_;
    DeviceBuffer<int64_t> in_;
    DeviceBuffer<float> x_, qkv_, branch_, f1_, logits_, partial_;
    DeviceBuffer<float> x2_, parts_; // the fused batch-1 step's second residual row, its parts
    bool cluster_ = false;           // batch-1 steps take the fused attention
    size_t cluster_smem_ = 0;
    int32_t cluster_stages_ = 1;
    DeviceBuffer<E> h_, att_, g_;
    DeviceBuffer<int32_t> tickets_;
    struct SlotList {
        int32_t layer;  // the first layer with the plan
        int64_t stride; // candidates of a head at most
        DeviceBuffer<int32_t> list;
    };
    std::vector<SlotList> slot_lists_;
    std::vector<int32_t> list_of_layer_;
    int32_t max_splits_ = 1;  // splits of a (sequence, head) at most: the partial buffer's size
    int32_t grid_splits_ = 1; // splits launched (the kernel uses as many as it has tiles)
    bool pdl_ = false;        // programmatic dependent launch (compute capability 9 and above)
    int64_t pos_ = 0;
    PrefillGroup prefill_; // the forward running now
};

} // namespace

stx_status CudaOps::create_decoder(const DecoderSource<float> &src, int32_t batch,
                                   std::unique_ptr<Decoder> *out) const {
    if (!ctx_->ok()) return ctx_->err;
    ctx_->settle_all(); // the decoder reads the model's buffers outside the ops
    stx_status st;
    if (ctx_->bf16) {
        std::unique_ptr<CudaDecoder<__nv_bfloat16>> dec(
            new CudaDecoder<__nv_bfloat16>(ctx_, src, batch));
        if ((st = dec->init()) != STX_OK) return st;
        *out = std::move(dec);
    } else {
        std::unique_ptr<CudaDecoder<float>> dec(new CudaDecoder<float>(ctx_, src, batch));
        if ((st = dec->init()) != STX_OK) return st;
        *out = std::move(dec);
    }
    return STX_OK;
}

int64_t CudaOps::decoder_state_bytes(const ModelSpec &spec, int32_t batch) const {
    return decode_state_bytes(spec, batch, ctx_->bf16 ? 2 : 4);
}

} // namespace cuda
} // namespace stx
