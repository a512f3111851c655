// attention_wgmma_bwd.cu: the backward of the bf16 block-sparse attention on Hopper (sm_90a)
// warpgroup MMA: the same results as tc_dq_kernel and tc_dkdv_kernel (attention_tc.cu) --
// dq, dk, dv += one pass's share, from the merged lse (natural log, per (b, h, t)) and
// delta = rowsum(dout * out), `scale` applied where those kernels apply it -- for block sizes
// 64 and 128 (a block of 128 is two CTAs, find_work<64>) and (Dq, Dv) in {(64, 64),
// (128, 128), (64, 128)}. Deterministic as they are: dq is query-centric over the pass's CSR
// lists, dk and dv key-centric over the transposed lists, each output row read-modified-written
// by one CTA. The grid, the masks (chunk_mask, mask_scores), the handling of slots that hold no
// position, of empty lists and of chunks an entry never computes are those of attention_tc.cu.
//
// A CTA is one warpgroup (128 threads) and a tile of 64 rows; the other side streams through
// two cp.async stages in chunks of 64. Every product is a wgmma m64n64k16 (wgmma.cuh); a
// 128-wide result is two of them on the two 64-column parts of the SW128 tile.
//   dq kernel (rows = queries; Q and dO stay, K and V stream):
//     S  = Q K^T           A = Q,  B = K   both K-major in shared memory
//     dP = dO V^T          A = dO, B = V   both K-major
//     P  = exp2(S scale_log2 (masked) - lse log2e),  dS = P (dP - delta[query])
//     dQ += dS K           A = dS from the accumulators (acc_to_a), B = K N-major
//   dkdv kernel (rows = keys; K and V stay, Q, dO and their lse, delta stream):
//     S^T  = K Q^T         A = K,  B = Q   K-major
//     P^T  = exp2(S^T scale_log2 (masked) - lse[query column] log2e)
//     dV  += P^T dO        A = P^T from the accumulators, B = dO N-major
//     dP^T = V dO^T        A = V,  B = dO  K-major (with dV, after the mask: see the loop)
//     dS^T = P^T (dP^T - delta[query column])
//     dK  += dS^T Q        A = dS^T from the accumulators, B = Q N-major
// The dkdv kernel computes the transposed scores directly, with the keys as accumulator rows:
// P^T and dS^T are then the A operands of the dV and dK products as they lie in registers, so
// nothing is ever transposed (no trip through shared memory), and every operand is in one of
// the four forms the H100 probes verified (A K-major in shared memory, B K-major, A from
// accumulators, B N-major with LBO = SBO = 1024).
//
// Zero fill: the loader writes zeros (cp.async with src-size 0) for slots that hold no
// position and for the 16-row groups of a chunk the entry never computes, where the mma.sync
// kernels leave the latter unwritten. A wgmma always computes all 64 rows and columns, and
// shared memory left stale (uninitialised at first: any bit pattern, NaN included) would reach
// the accumulators even where the probability multiplying it is zero, since 0 * NaN = NaN.
//
// Pipeline (kept simple; correctness first): each chunk waits for its cp.asyncs, fences them
// to the async proxy, and passes a barrier, which also orders the previous chunk's wgmmas (all
// waited for) before the refill of their stage; then the next chunk is issued and this one
// computed. Each product whose accumulators are then read is committed and waited for.
#include "attention_tile.cuh"
#include "wgmma.cuh"

namespace stx {
namespace cuda {
namespace {

template <int DQ, int DV> struct WgBwd {
    static constexpr uint32_t kQ = 64 * DQ * 2; // bytes of a 64-row SW128 tile of Q or K
    static constexpr uint32_t kV = 64 * DV * 2; // and of V or dO (multiples of 1024)
    // 1024 bytes of slack: the dynamic window is aligned up to the SW128 atom
    static size_t dq_smem() { return 1024 + 3 * (kQ + kV) + 2 * 64 * sizeof(int32_t); }
    static size_t dkdv_smem() {
        return 1024 + 3 * (kQ + kV) + 2 * 64 * (sizeof(int32_t) + 2 * sizeof(float));
    }
};

// The device code below exists in sm_90a device passes only (STX_WGMMA); elsewhere the kernels
// are stubs that are never launched (wg_attention_backward asks wgmma_usable first).
#if STX_WGMMA
__device__ __forceinline__ unsigned char *align_1024(unsigned char *raw) {
    const uint32_t a = smem_addr(raw);
    return raw + (((a + 1023u) & ~1023u) - a);
}

// A value the compiler must treat as new at each use: it would otherwise hoist what is derived
// from it out of the chunk loop (the descriptors of the tiles that stay, two registers each, up
// to 16 of them; the loaders' per-thread offsets) and hold it across the loop, which the dk, dv
// accumulators cannot afford.
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
    asm volatile("" : "+r"(x));
    return x;
}

// Rows slot0 .. slot0 + 63 of head h of a [B, T, H * D] bf16 tensor (batch offset row0 =
// b * T) into the SW128 tile at shared address `tile`, all 128 threads. Zeros for slots that
// hold nothing and for rows of 16-row groups g without bit g of `groups` (see the top).
template <int D>
__device__ __forceinline__ void bwd_load_rows(uint32_t tile, const bf16 *src, const Slots &s,
                                              int32_t slot0, int64_t row0, int32_t H, int32_t h,
                                              uint32_t groups = ~0u) {
    constexpr int CH = D / 8; // 16-byte chunks a row
    static_assert(64 * CH % 128 == 0, "whole chunks a thread");
    // Recomputed per call: hoisted out of the chunk loop, the per-thread offsets of every
    // loader call would be held (and spilled) across it.
    const int tid = static_cast<int>(opaque(threadIdx.x));
#pragma unroll
    for (int it = 0; it < 64 * CH / 128; ++it) {
        const int i = it * 128 + tid;
        const int r = i / CH, c = i % CH;
        const int32_t pos = (groups >> (r >> 4)) & 1u ? slot_pos32(s, slot0 + r) : -1;
        const bf16 *g = src + ((row0 + (pos < 0 ? 0 : pos)) * H + h) * D + c * 8;
        cp_async16(sw128_chunk(tile, 64, r, c), g, pos >= 0);
    }
}

// The accumulators of an m64n64 product seen as the per-warp m16n8 tiles of mask_scores (the
// element order is the same: d[4 i + e] is tile i, element e).
__device__ __forceinline__ float (&as_tiles(float (&d)[32]))[8][4] {
    return *reinterpret_cast<float(*)[8][4]>(&d);
}

// Zeroed accumulators, their definitions pinned before the wgmma_fence that follows (else the
// compiler sinks the moves past it and ptxas serialises the wgmmas to repair the order).
__device__ __forceinline__ void zero32(float (&d)[32]) {
#pragma unroll
    for (int i = 0; i < 32; ++i) d[i] = 0.0f;
    fence_regs(d);
}

// The four A fragments of a 64 x 64 product from its accumulators, pinned likewise.
__device__ __forceinline__ void frags_from(uint32_t (&a)[4][4], const float (&d)[32]) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        acc_to_a(a[kk], d, kk);
#pragma unroll
        for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(a[kk][i])::"memory");
    }
}

#endif // STX_WGMMA

template <int DQ, int DV>
__global__ void __launch_bounds__(128, 1)
    wg_dq_kernel(LayoutView L, int32_t local_pass, const bf16 *__restrict__ q,
                 const bf16 *__restrict__ k, const bf16 *__restrict__ v,
                 const bf16 *__restrict__ dout, const float *__restrict__ lse,
                 const float *__restrict__ delta, float *__restrict__ dq, int32_t B, int32_t T,
                 float scale_log2, float scale) {
#if STX_WGMMA
    using S = WgBwd<DQ, DV>;
    constexpr uint32_t kQ = S::kQ, kV = S::kV;
    constexpr int NQ = DQ / 64; // 64-column parts of a dq row
    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned char *smem = align_1024(smem_raw);
    const uint32_t qs = smem_addr(smem), dos = qs + kQ;
    const uint32_t ks = dos + kV, vs = ks + 2 * kQ; // two stages each
    int32_t *kpos = reinterpret_cast<int32_t *>(smem + 3 * (kQ + kV));

    Work w;
    if (!find_work<64>(L, local_pass, B, T, L.order, &w)) return;
    if (!tile_has_rows<64>(w)) return;
    const DevPass &P = L.passes[w.pg];
    const int64_t e0 = L.row_ptr[P.row_ptr_off + w.blk], e1 = L.row_ptr[P.row_ptr_off + w.blk + 1];
    const int32_t per = L.bs / 64, H = L.n_head;
    const int32_t n_chunks = static_cast<int32_t>(e1 - e0) * per;
    const int64_t row0 = static_cast<int64_t>(w.b) * T;

    // Chunk t: keys (t % per) 64 .. + 63 of the (t / per)-th block of the list.
    auto issue = [&](int32_t t) {
        const int32_t slot = L.col_idx[e0 + t / per] * L.bs + (t % per) * 64, st = t & 1;
        const uint32_t groups = chunk_mask<64>(L, L.mode[e0 + t / per], (t % per) * 64).groups;
        if (groups == 0) return; // the chunk is skipped, its stage never read
        bwd_load_rows<DQ>(ks + st * kQ, k, w.s, slot, row0, H, w.h, groups);
        bwd_load_rows<DV>(vs + st * kV, v, w.s, slot, row0, H, w.h, groups);
        if (threadIdx.x < 64)
            kpos[st * 64 + threadIdx.x] = slot_pos32(w.s, slot + static_cast<int32_t>(threadIdx.x));
    };
    bwd_load_rows<DQ>(qs, q, w.s, w.slot0, row0, H, w.h);
    bwd_load_rows<DV>(dos, dout, w.s, w.slot0, row0, H, w.h);
    if (n_chunks > 0) issue(0);
    cp_async_commit();

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int32_t row = w.slot0 + warp * 16 + (lane >> 2);
    const int32_t qp[2] = {slot_pos32(w.s, row), slot_pos32(w.s, row + 8)};
    float lse2[2], dl[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int64_t at = (static_cast<int64_t>(w.b) * H + w.h) * T + (qp[r] < 0 ? 0 : qp[r]);
        lse2[r] = qp[r] >= 0 ? lse[at] * kLog2e : INFINITY; // P = 0 on rows without a position
        dl[r] = qp[r] >= 0 ? delta[at] : 0.0f;
    }
    float acc[NQ][32];
#pragma unroll
    for (int p = 0; p < NQ; ++p) zero32(acc[p]);

    for (int32_t t = 0; t < n_chunks; ++t) {
        cp_async_wait_all();
        fence_proxy_async(); // my writes of stage t, to the wgmmas of every thread
        __syncthreads();     // stage t landed for all; stage t + 1 (read at t - 1) is free
        if (t + 1 < n_chunks) issue(t + 1);
        cp_async_commit();
        const int st = t & 1;
        const uint32_t kt = ks + st * kQ, vt = vs + st * kV;
        const ChunkMask cm = chunk_mask<64>(L, L.mode[e0 + t / per], (t % per) * 64);
        if (cm.groups == 0) continue; // the entry computes none of these keys
        const uint32_t qo = opaque(qs), doo = opaque(dos);
        float s[32], dp[32];
        zero32(s);
        zero32(dp);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < DQ / 16; ++kk)
            wgmma_ss<0>(s, desc_kmajor(qo, 64, kk), desc_kmajor(kt, 64, kk));
#pragma unroll
        for (int kk = 0; kk < DV / 16; ++kk)
            wgmma_ss<0>(dp, desc_kmajor(doo, 64, kk), desc_kmajor(vt, 64, kk));
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(s);
        fence_regs(dp);
        mask_scores<64, true>(as_tiles(s), qp, kpos + st * 64, cm, 0u, scale_log2, L, w, lane);
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            const int r = (j >> 1) & 1;                      // element j is row g + 8 r
            dp[j] = exp2f(s[j] - lse2[r]) * (dp[j] - dl[r]); // dS
        }
        // No k-step is skipped where cm.groups is clear (dS is 0 there, and K zero-filled): a
        // wgmma under a branch ptxas cannot prove uniform is serialised with the others.
        uint32_t a[4][4];
        frags_from(a, dp);
        wgmma_fence(); // a was written by ordinary code
#pragma unroll
        for (int p = 0; p < NQ; ++p)
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) wgmma_rs<1>(acc[p], a[kk], desc_nmajor(kt, 64, p, kk));
        wgmma_commit();
        wgmma_wait<0>(); // before the stage is refilled and a is rewritten
#pragma unroll
        for (int p = 0; p < NQ; ++p) fence_regs(acc[p]);
    }
    cp_async_wait_all(); // nothing in flight at exit when the list was empty

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (qp[r] < 0) continue;
        float *dst = dq + ((row0 + qp[r]) * H + w.h) * DQ + (lane & 3) * 2;
#pragma unroll
        for (int p = 0; p < NQ; ++p)
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                float2 x = *reinterpret_cast<float2 *>(dst + p * 64 + i * 8);
                x.x += scale * acc[p][4 * i + 2 * r];
                x.y += scale * acc[p][4 * i + 2 * r + 1];
                *reinterpret_cast<float2 *>(dst + p * 64 + i * 8) = x;
            }
    }
#else
    __trap();
#endif
}

template <int DQ, int DV>
__global__ void __launch_bounds__(128, 1)
    wg_dkdv_kernel(LayoutView L, int32_t local_pass, const bf16 *__restrict__ q,
                   const bf16 *__restrict__ k, const bf16 *__restrict__ v,
                   const bf16 *__restrict__ dout, const float *__restrict__ lse,
                   const float *__restrict__ delta, float *__restrict__ dk, float *__restrict__ dv,
                   int32_t B, int32_t T, float scale_log2, float scale) {
#if STX_WGMMA
    using S = WgBwd<DQ, DV>;
    constexpr uint32_t kQ = S::kQ, kV = S::kV;
    constexpr int NQ = DQ / 64, NV = DV / 64; // 64-column parts of dk and dv rows
    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned char *smem = align_1024(smem_raw);
    const uint32_t ks = smem_addr(smem), vs = ks + kQ;
    const uint32_t qs = vs + kV, dos = qs + 2 * kQ; // two stages each
    int32_t *qpos = reinterpret_cast<int32_t *>(smem + 3 * (kQ + kV));
    float *lse2s = reinterpret_cast<float *>(qpos + 2 * 64);
    float *dls = lse2s + 2 * 64;

    Work w;
    if (!find_work<64>(L, local_pass, B, T, L.orderT, &w)) return;
    if (!tile_has_rows<64>(w)) return;
    const DevPass &P = L.passes[w.pg];
    const int64_t e0 = L.colT_ptr[P.colT_ptr_off + w.blk],
                  e1 = L.colT_ptr[P.colT_ptr_off + w.blk + 1];
    const int32_t per = L.bs / 64, H = L.n_head;
    const int32_t n_chunks = static_cast<int32_t>(e1 - e0) * per;
    const int64_t row0 = static_cast<int64_t>(w.b) * T,
                  stat0 = (static_cast<int64_t>(w.b) * H + w.h) * T;

    // The keys of this CTA lie at offsets koff .. koff + 63 of their block, so an entry's
    // 16-key groups koff / 16 + warp are the warps' rows.
    const int koff = w.slot0 - w.blk * L.bs;
    auto cta_groups = [&](uint8_t index) { return (L.masks[index].groups >> (koff >> 4)) & 0xfu; };
    auto issue = [&](int32_t t) {
        const int32_t slot = L.colT_idx[e0 + t / per] * L.bs + (t % per) * 64, st = t & 1;
        if (cta_groups(L.modeT[e0 + t / per]) == 0) return; // skipped: the stage is never read
        bwd_load_rows<DQ>(qs + st * kQ, q, w.s, slot, row0, H, w.h);
        bwd_load_rows<DV>(dos + st * kV, dout, w.s, slot, row0, H, w.h);
        if (threadIdx.x < 64) {
            const int i = static_cast<int>(threadIdx.x);
            const int32_t pos = slot_pos32(w.s, slot + i);
            qpos[st * 64 + i] = pos;
            // +inf: P = 0 for a query slot without a position (its Q and dO rows are zeros)
            lse2s[st * 64 + i] = pos >= 0 ? lse[stat0 + pos] * kLog2e : INFINITY;
            dls[st * 64 + i] = pos >= 0 ? delta[stat0 + pos] : 0.0f;
        }
    };
    bwd_load_rows<DQ>(ks, k, w.s, w.slot0, row0, H, w.h);
    bwd_load_rows<DV>(vs, v, w.s, w.slot0, row0, H, w.h);
    if (n_chunks > 0) issue(0);
    cp_async_commit();

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int32_t row = w.slot0 + warp * 16 + (lane >> 2);
    const int32_t kp[2] = {slot_pos32(w.s, row), slot_pos32(w.s, row + 8)};
    const int ko = koff + warp * 16 + (lane >> 2); // the key offset of the thread's row g
    float dka[NQ][32], dva[NV][32];
#pragma unroll
    for (int p = 0; p < NQ; ++p) zero32(dka[p]);
#pragma unroll
    for (int p = 0; p < NV; ++p) zero32(dva[p]);

    for (int32_t t = 0; t < n_chunks; ++t) {
        cp_async_wait_all();
        fence_proxy_async(); // my writes of stage t, to the wgmmas of every thread
        __syncthreads();     // stage t landed for all; stage t + 1 (read at t - 1) is free
        if (t + 1 < n_chunks) issue(t + 1);
        cp_async_commit();
        const int st = t & 1;
        const uint32_t qt = qs + st * kQ, dot = dos + st * kV;
        const int32_t *qpt = qpos + st * 64;
        const float *l2 = lse2s + st * 64, *dlt = dls + st * 64;
        const uint8_t mode = L.modeT[e0 + t / per];
        if (cta_groups(mode) == 0) continue; // the entry computes none of the CTA's keys
        const MaskDesc &md = L.masks[mode];
        const uint32_t kso = opaque(ks), vo = opaque(vs);
        float s[32];
        zero32(s);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < DQ / 16; ++kk)
            wgmma_ss<0>(s, desc_kmajor(kso, 64, kk), desc_kmajor(qt, 64, kk));
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(s);
        // A warp whose 16 keys the entry never computes takes P^T = 0 (the mma kernel skips
        // it; here the warpgroup multiplies together). Uniform over the warp.
        if ((md.groups >> (ko >> 4)) & 1u) {
            const ChunkMask cm = {0, md.lo, md.hi, 1u, md.flags};
            const uint32_t rbits = ((md.cols[ko >> 5] >> (ko & 31)) & 1u) |
                                   (((md.cols[(ko + 8) >> 5] >> ((ko + 8) & 31)) & 1u) << 1);
            mask_scores<64, false>(as_tiles(s), kp, qpt, cm, rbits, scale_log2, L, w, lane);
#pragma unroll
            for (int j = 0; j < 32; ++j) // element j is query column 8 (j / 4) + 2 t + j % 2
                s[j] = exp2f(s[j] - l2[(j >> 2) * 8 + (lane & 3) * 2 + (j & 1)]);
        } else {
            zero32(s);
        }
        // dV += P^T dO and dP^T = V dO^T in one batch. dP^T is computed only now, not with
        // S^T: its 32 accumulators live across the mask would make the dk, dv ones spill.
        uint32_t a[4][4];
        frags_from(a, s);
        float dp[32];
        zero32(dp);
        wgmma_fence(); // a and dp were written by ordinary code
#pragma unroll
        for (int p = 0; p < NV; ++p)
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) wgmma_rs<1>(dva[p], a[kk], desc_nmajor(dot, 64, p, kk));
#pragma unroll
        for (int kk = 0; kk < DV / 16; ++kk)
            wgmma_ss<0>(dp, desc_kmajor(vo, 64, kk), desc_kmajor(dot, 64, kk));
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(dp);
#pragma unroll
        for (int p = 0; p < NV; ++p) fence_regs(dva[p]);
#pragma unroll
        for (int j = 0; j < 32; ++j) // dS^T
            dp[j] = s[j] * (dp[j] - dlt[(j >> 2) * 8 + (lane & 3) * 2 + (j & 1)]);
        frags_from(a, dp);
        wgmma_fence();
#pragma unroll
        for (int p = 0; p < NQ; ++p)
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) wgmma_rs<1>(dka[p], a[kk], desc_nmajor(qt, 64, p, kk));
        wgmma_commit();
        wgmma_wait<0>(); // before the stage is refilled and a is rewritten
#pragma unroll
        for (int p = 0; p < NQ; ++p) fence_regs(dka[p]);
    }
    cp_async_wait_all(); // nothing in flight at exit when the list was empty

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (kp[r] < 0) continue;
        float *dkd = dk + ((row0 + kp[r]) * H + w.h) * DQ + (lane & 3) * 2;
#pragma unroll
        for (int p = 0; p < NQ; ++p)
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                float2 x = *reinterpret_cast<float2 *>(dkd + p * 64 + i * 8);
                x.x += scale * dka[p][4 * i + 2 * r];
                x.y += scale * dka[p][4 * i + 2 * r + 1];
                *reinterpret_cast<float2 *>(dkd + p * 64 + i * 8) = x;
            }
        float *dvd = dv + ((row0 + kp[r]) * H + w.h) * DV + (lane & 3) * 2;
#pragma unroll
        for (int p = 0; p < NV; ++p)
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                float2 x = *reinterpret_cast<float2 *>(dvd + p * 64 + i * 8);
                x.x += dva[p][4 * i + 2 * r];
                x.y += dva[p][4 * i + 2 * r + 1];
                *reinterpret_cast<float2 *>(dvd + p * 64 + i * 8) = x;
            }
    }
#else
    __trap();
#endif
}

template <int DQ, int DV>
void wg_backward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                 const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout, const float *lse,
                 const float *delta, float *dq, float *dk, float *dv, int32_t B, int32_t T,
                 float scale) {
    using S = WgBwd<DQ, DV>;
    auto kq = wg_dq_kernel<DQ, DV>;
    auto kkv = wg_dkdv_kernel<DQ, DV>;
    unsigned blocks = 0;
    if (!allow_smem(ctx, kq, S::dq_smem()) || !allow_smem(ctx, kkv, S::dkdv_smem()) ||
        !grid_for(ctx, dl, 64, B, &blocks))
        return;
    kq<<<blocks, 128, S::dq_smem(), ctx->stream>>>(dl.view, pass, q, k, v, dout, lse, delta, dq, B,
                                                   T, scale * kLog2e, scale);
    if (!STX_LAUNCH_CHECK(ctx, "wg_dq_kernel")) return;
    kkv<<<blocks, 128, S::dkdv_smem(), ctx->stream>>>(dl.view, pass, q, k, v, dout, lse, delta, dk,
                                                      dv, B, T, scale * kLog2e, scale);
    STX_LAUNCH_CHECK(ctx, "wg_dkdv_kernel");
}

} // namespace

bool wg_attention_backward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl,
                           int32_t pass, const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                           const __nv_bfloat16 *v, const __nv_bfloat16 *dout, const float *lse,
                           const float *delta, float *dq, float *dk, float *dv, int32_t B,
                           int32_t T, int32_t Dq, int32_t Dv, float scale) {
    const int32_t bs = dl.view.bs;
    if (bs != 64 && bs != 128) return false;
    void (*f)(const std::shared_ptr<Context> &, const DeviceLayout &, int32_t, const bf16 *,
              const bf16 *, const bf16 *, const bf16 *, const float *, const float *, float *,
              float *, float *, int32_t, int32_t, float) = nullptr;
    if (Dq == 64 && Dv == 64)
        f = wg_backward<64, 64>;
    else if (Dq == 128 && Dv == 128)
        f = wg_backward<128, 128>;
    else if (Dq == 64 && Dv == 128)
        f = wg_backward<64, 128>;
    if (!f || !wgmma_usable(ctx.get())) return false;
    if (ctx->ok()) f(ctx, dl, pass, q, k, v, dout, lse, delta, dq, dk, dv, B, T, scale);
    return true;
}

} // namespace cuda
} // namespace stx
