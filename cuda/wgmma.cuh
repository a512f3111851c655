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

#include "attention_tile.cuh" // pack_bf16, STX_WGMMA, fence_proxy_async

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

// --- Pieces of the attention kernels (attention_wgmma.cu, attention_wgmma_bwd.cu,
// attention_wgmma_pairs.cu): one warpgroup of 128 threads, 64-row tiles. ---

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

// threadIdx.x for the loaders below where the chunk loop must not hold their per-thread
// offsets across it (hoisted, those of every loader call would be held, and spilled).
__device__ __forceinline__ int opaque_tid() {
    return static_cast<int>(opaque(threadIdx.x));
}

// Rows slot0 .. slot0 + ROWS - 1 of head h of a [B, T, H * D] bf16 tensor (batch offset row0 =
// b * T) into rows row_off .. row_off + ROWS - 1 of the 64-row SW128 tile at shared address
// `tile`, all 128 threads (tid: threadIdx.x or opaque_tid()).
// Zeros for slots that hold nothing and for rows of 16-row groups g without bit g of `groups`:
// a wgmma multiplies every row, and stale shared memory (NaN bits, say) times a probability of
// 0 would still be NaN.
template <int D, int ROWS = 64>
__device__ __forceinline__ void
load_rows_sw128(uint32_t tile, int tid, const bf16 *src, const Slots &s, int32_t slot0,
                int64_t row0, int32_t H, int32_t h, uint32_t groups = ~0u, int row_off = 0) {
    constexpr int CH = D / 8; // 16-byte pieces a row
    static_assert(ROWS * CH % 128 == 0, "whole pieces a thread");
#pragma unroll
    for (int it = 0; it < ROWS * CH / 128; ++it) {
        const int i = it * 128 + tid;
        const int r = i / CH, c = i % CH;
        const int32_t pos = (groups >> (r >> 4)) & 1u ? slot_pos32(s, slot0 + r) : -1;
        const bf16 *g = src + ((row0 + (pos < 0 ? 0 : pos)) * H + h) * D + c * 8;
        cp_async16(sw128_chunk(tile, 64, row_off + r, c), g, pos >= 0);
    }
}

// The accumulators of an m64n64 product seen as the per-warp m16n8 tiles of mask_scores (the
// element order is the same: d[4 i + e] is tile i, element e); columns 32 .. 63 from tile 4.
template <int FROM = 0, int N = 8>
__device__ __forceinline__ float (&as_tiles(float (&d)[32]))[N][4] {
    return *reinterpret_cast<float(*)[N][4]>(&d[4 * FROM]);
}

// Zeroed accumulators, their definitions pinned before the wgmma_fence that follows (else the
// compiler sinks the moves past it and ptxas serialises the wgmmas to repair the order).
__device__ __forceinline__ void zero32(float (&d)[32]) {
#pragma unroll
    for (int i = 0; i < 32; ++i) d[i] = 0.0f;
    fence_regs(d);
}
// zero32 on each 64-column part of a wider accumulator.
template <int NP> __device__ __forceinline__ void zero32(float (&d)[NP][32]) {
#pragma unroll
    for (int p = 0; p < NP; ++p) zero32(d[p]);
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

// Forward's start: O zero, the running max -inf and the running sum 0 (log2 units).
template <int DV>
__device__ __forceinline__ void fwd_start(float (&o)[DV / 64][32], float (&mrow)[2],
                                          float (&lrow)[2]) {
#pragma unroll
    for (int j = 0; j < DV / 64; ++j)
#pragma unroll
        for (int i = 0; i < 32; ++i) o[j][i] = 0.0f;
    mrow[0] = mrow[1] = -INFINITY;
    lrow[0] = lrow[1] = 0.0f;
}

// Forward, one chunk of 64 keys (K at kt, V at vt) for the 64 query rows at qs: S = Q K^T,
// mask(as_tiles(S)) (scaled to log2 units, -inf where not computed), the online softmax of
// attention_tc.cu (o, mrow, lrow rescaled), O += P V.
template <int DQ, int DV, typename Mask>
__device__ __forceinline__ void fwd_chunk(float (&o)[DV / 64][32], float (&mrow)[2],
                                          float (&lrow)[2], uint32_t qs, uint32_t kt, uint32_t vt,
                                          Mask &&mask) {
    constexpr int NV = DV / 64;
    float s[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) s[i] = 0.0f;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < DQ / 16; ++kk)
        wgmma_ss<0>(s, desc_kmajor(qs, 64, kk), desc_kmajor(kt, 64, kk));
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(s);

    float(&s4)[8][4] = as_tiles(s);
    mask(s4);
    float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) mx[i >> 1] = fmaxf(mx[i >> 1], s4[n][i]);
    float base_r[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        mx[r] = quad_max(mx[r]);
        // a row that has seen no key yet keeps m = -inf; subtracting 0 keeps exp2 finite
        base_r[r] = mx[r] == -INFINITY ? 0.0f : mx[r];
        const float corr = exp2f(mrow[r] - base_r[r]);
        mrow[r] = mx[r];
        lrow[r] *= corr;
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int n = 0; n < 8; ++n) {
                o[j][4 * n + 2 * r] *= corr;
                o[j][4 * n + 2 * r + 1] *= corr;
            }
    }
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            s4[n][i] = exp2f(s4[n][i] - base_r[i >> 1]);
            lrow[i >> 1] += s4[n][i];
        }

    wgmma_fence(); // o rescaled and P written by ordinary instructions
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        uint32_t a[4];
        acc_to_a(a, s, kk);
#pragma unroll
        for (int j = 0; j < NV; ++j) wgmma_rs<1>(o[j], a, desc_nmajor(vt, 64, j, kk));
    }
    wgmma_commit();
    wgmma_wait<0>();
#pragma unroll
    for (int j = 0; j < NV; ++j) fence_regs(o[j]);
}

// Forward's end: the thread's rows (positions qp, -1: none) of out (normalised) and the lse
// of the pass (natural log; -inf for a row without keys), batch b, head h.
template <int DV>
__device__ __forceinline__ void fwd_store(const float (&o)[DV / 64][32], const float (&mrow)[2],
                                          const float (&lrow)[2], const int32_t (&qp)[2],
                                          float *out, float *lse, int32_t b, int32_t T, int32_t H,
                                          int32_t h, int lane) {
    const int64_t row0 = static_cast<int64_t>(b) * T;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float l = quad_sum(lrow[r]);
        if (qp[r] < 0) continue;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float *dst = out + ((row0 + qp[r]) * H + h) * DV + (lane & 3) * 2;
#pragma unroll
        for (int j = 0; j < DV / 64; ++j)
#pragma unroll
            for (int n = 0; n < 8; ++n)
                *reinterpret_cast<float2 *>(dst + j * 64 + n * 8) =
                    make_float2(o[j][4 * n + 2 * r] * inv, o[j][4 * n + 2 * r + 1] * inv);
        if ((lane & 3) == 0)
            lse[(static_cast<int64_t>(b) * H + h) * T + qp[r]] =
                l > 0.0f ? (mrow[r] + log2f(l)) * kLn2 : -INFINITY;
    }
}

// dq, one chunk of 64 keys (K at kt, V at vt) for the 64 query rows (Q at qs, dO at dos):
// S = Q K^T and dP = dO V^T, mask(as_tiles(S)), P = exp2(S - lse2), dS = P (dP - dl) per row,
// dQ += dS K. lse2: the thread's rows' lse in log2 units (+inf: P = 0), dl: their delta.
template <int DQ, int DV, typename Mask>
__device__ __forceinline__ void dq_chunk(float (&acc)[DQ / 64][32], uint32_t qs, uint32_t dos,
                                         uint32_t kt, uint32_t vt, const float (&lse2)[2],
                                         const float (&dl)[2], Mask &&mask) {
    float s[32], dp[32];
    zero32(s);
    zero32(dp);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < DQ / 16; ++kk)
        wgmma_ss<0>(s, desc_kmajor(qs, 64, kk), desc_kmajor(kt, 64, kk));
#pragma unroll
    for (int kk = 0; kk < DV / 16; ++kk)
        wgmma_ss<0>(dp, desc_kmajor(dos, 64, kk), desc_kmajor(vt, 64, kk));
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(s);
    fence_regs(dp);
    mask(as_tiles(s));
#pragma unroll
    for (int j = 0; j < 32; ++j) {
        const int r = (j >> 1) & 1;                      // element j is row g + 8 r
        dp[j] = exp2f(s[j] - lse2[r]) * (dp[j] - dl[r]); // dS
    }
    // No k-step is skipped where an entry computes no key (dS is 0 there, and K zero-filled):
    // a wgmma under a branch ptxas cannot prove uniform is serialised with the others.
    uint32_t a[4][4];
    frags_from(a, dp);
    wgmma_fence(); // a was written by ordinary code
#pragma unroll
    for (int p = 0; p < DQ / 64; ++p)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wgmma_rs<1>(acc[p], a[kk], desc_nmajor(kt, 64, p, kk));
    wgmma_commit();
    wgmma_wait<0>(); // before the stage is refilled and a is rewritten
#pragma unroll
    for (int p = 0; p < DQ / 64; ++p) fence_regs(acc[p]);
}

// dk, dv, one chunk of 64 queries (Q at qt, dO at dot, their delta at dlt) for the 64 key rows
// (K at ks, V at vs): S^T = K Q^T, to_p(S^T) makes it P^T in place (masked, exp2 against the
// queries' lse; 0 where a warp computes nothing), dV += P^T dO and dP^T = V dO^T, dS^T =
// P^T (dP^T - delta), dK += dS^T Q.
template <int DQ, int DV, typename ToP>
__device__ __forceinline__ void dkdv_chunk(float (&dka)[DQ / 64][32], float (&dva)[DV / 64][32],
                                           uint32_t ks, uint32_t vs, uint32_t qt, uint32_t dot,
                                           const float *dlt, int lane, ToP &&to_p) {
    float s[32];
    zero32(s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < DQ / 16; ++kk)
        wgmma_ss<0>(s, desc_kmajor(ks, 64, kk), desc_kmajor(qt, 64, kk));
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(s);
    to_p(s);
    // dV += P^T dO and dP^T = V dO^T in one batch. dP^T is computed only now, not with S^T:
    // its 32 accumulators live across the mask would make the dk, dv ones spill.
    uint32_t a[4][4];
    frags_from(a, s);
    float dp[32];
    zero32(dp);
    wgmma_fence(); // a and dp were written by ordinary code
#pragma unroll
    for (int p = 0; p < DV / 64; ++p)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wgmma_rs<1>(dva[p], a[kk], desc_nmajor(dot, 64, p, kk));
#pragma unroll
    for (int kk = 0; kk < DV / 16; ++kk)
        wgmma_ss<0>(dp, desc_kmajor(vs, 64, kk), desc_kmajor(dot, 64, kk));
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(dp);
#pragma unroll
    for (int p = 0; p < DV / 64; ++p) fence_regs(dva[p]);
#pragma unroll
    for (int j = 0; j < 32; ++j) // dS^T
        dp[j] = s[j] * (dp[j] - dlt[(j >> 2) * 8 + (lane & 3) * 2 + (j & 1)]);
    frags_from(a, dp);
    wgmma_fence();
#pragma unroll
    for (int p = 0; p < DQ / 64; ++p)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wgmma_rs<1>(dka[p], a[kk], desc_nmajor(qt, 64, p, kk));
    wgmma_commit();
    wgmma_wait<0>(); // before the stage is refilled and a is rewritten
#pragma unroll
    for (int p = 0; p < DQ / 64; ++p) fence_regs(dka[p]);
}

// P^T of a dkdv chunk from S^T for the thread's key rows (positions kp; offset ko of the
// first in its block) against the N query columns at `from` of the chunk (positions qpt, lse
// in log2 units l2; natural-log lse where LN, scaled here as query_stats would), under mask
// md; zeros where md computes none of the warp's keys.
template <int N = 64, int FROM = 0, bool LN = false>
__device__ __forceinline__ void
keys_to_p(float (&s)[32], const MaskDesc &md, int ko, const int32_t (&kp)[2], const int32_t *qpt,
          const float *l2, float scale_log2, const LayoutView &L, const Work &w, int lane) {
    float(&st)[N / 8][4] = as_tiles<FROM / 8, N / 8>(s);
    // uniform over the warp: its 16 keys lie in one 16-key group
    if ((md.groups >> (ko >> 4)) & 1u) {
        const ChunkMask cm = {0, md.lo, md.hi, 1u, md.flags};
        const uint32_t rbits = ((md.cols[ko >> 5] >> (ko & 31)) & 1u) |
                               (((md.cols[(ko + 8) >> 5] >> ((ko + 8) & 31)) & 1u) << 1);
        mask_scores<N, false>(st, kp, qpt + FROM, cm, rbits, scale_log2, L, w, lane);
#pragma unroll
        for (int n = 0; n < N / 8; ++n) // element i of tile n is query column 8 n + 2 t + i % 2
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float l = l2[FROM + n * 8 + (lane & 3) * 2 + (i & 1)];
                st[n][i] = exp2f(st[n][i] - (LN ? __fmul_rn(l, kLog2e) : l));
            }
    } else {
#pragma unroll
        for (int n = 0; n < N / 8; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) st[n][i] = 0.0f;
        fence_regs(s);
    }
}

// dst[0 .. 64 NP) of the thread's row r (+ 2 (lane % 4) already in dst) += scale acc.
template <int NP>
__device__ __forceinline__ void add_row(float *dst, const float (&acc)[NP][32], int r,
                                        float scale) {
#pragma unroll
    for (int p = 0; p < NP; ++p)
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float2 x = *reinterpret_cast<float2 *>(dst + p * 64 + i * 8);
            x.x += scale * acc[p][4 * i + 2 * r];
            x.y += scale * acc[p][4 * i + 2 * r + 1];
            *reinterpret_cast<float2 *>(dst + p * 64 + i * 8) = x;
        }
}

} // namespace
} // namespace cuda
} // namespace stx
