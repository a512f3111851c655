// attention_tile.cuh: what the bf16 attention kernels (attention_tc.cu, mma.sync for sm_80
// and later; attention_wgmma.cu, wgmma for sm_90a) share: the CTA's work (a query or key tile
// of one pass of one head, and its block's list), the slot order of a pass, the masks of an
// entry, the quad reductions of the accumulator layout (the same per warp for mma.sync m16n8
// and wgmma m64N), cp.async and the two-stage pipeline over a list, and the host's launch
// checks. Included by those .cu files and, for cp.async, by decode_cluster.cu.
#pragma once
#include <cuda_bf16.h>

#include <cstring>
#include <memory>

#include "attention_tc.cuh"
#include "error.h"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define STX_WGMMA 1 // this device pass targets sm_90a
#else
#define STX_WGMMA 0
#endif

namespace stx {
namespace cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, zero-filled when !valid (src is then never read).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst),
                 "l"(__cvta_generic_to_global(src)), "r"(valid ? 16 : 0)
                 : "memory");
}
// 4 bytes global -> shared, zero-filled when !valid (src is then never read).
__device__ __forceinline__ void cp_async4(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst),
                 "l"(__cvta_generic_to_global(src)), "r"(valid ? 4 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}
// Orders this thread's completed generic-proxy writes of shared memory (cp.async included)
// before later reads through the async proxy (wgmma, wgmma.cuh); sm_90a passes only.
__device__ __forceinline__ void fence_proxy_async() {
#if STX_WGMMA
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); // lo in the low half: column 2t
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

// A pass's slot order in 32 bits (n_ctx <= 2^24, so slots < R * L < 2^25 fit).
struct Slots {
    int32_t transposed, stride, rows, n_slots, limit; // limit = min(T, n_ctx)
    uint32_t magic, shift; // slot / rows = (umulhi(slot, magic) + slot) >> shift
};

// The round-up multiplier of a division by d >= 1 exact for numerators < 2^31 (Granlund and
// Montgomery): the transposed order divides every gathered slot by R, and an integer division
// costs some twenty instructions where this costs three.
__device__ __forceinline__ void set_divisor(Slots &s, uint32_t d) {
    const uint32_t l = d > 1 ? 32 - __clz(d - 1) : 0;
    s.shift = l;
    s.magic = static_cast<uint32_t>((((1ull << l) - d) << 32) / d + 1);
}

// slot_position_raw, with positions >= T refused too: -1 for a slot that holds nothing.
__device__ __forceinline__ int32_t slot_pos32(const Slots &s, int32_t slot) {
    if (slot >= s.n_slots) return -1;
    int32_t pos = slot;
    if (s.transposed) {
        const uint32_t u = static_cast<uint32_t>(slot);
        const int32_t c = static_cast<int32_t>((__umulhi(u, s.magic) + u) >> s.shift);
        pos = (slot - c * s.rows) * s.stride + c;
    }
    return pos < s.limit ? pos : -1;
}

// Which CTA this is: the flat grid is (head, batch, sub-tile, rank) with the head fastest and
// the rank slowest, and rank r takes the r-th longest list of its pass (`order`), so the
// longest rows of every head start first and the short ones fill in behind them.
struct Work {
    int32_t h, b, p0, pg, blk, slot0;
    Slots s;
};

// PAIRS (TILE 64 over blocks of 32, attention_wgmma_pairs.cu): rank r takes the r-th longest
// pair of blocks (2 blk, 2 blk + 1), ranked at the pass's pair_off, its slots from 64 blk.
template <int TILE, bool PAIRS = false>
__device__ __forceinline__ bool find_work(const LayoutView &L, int32_t local_pass, int32_t B,
                                          int32_t T, const int32_t *order, Work *w) {
    int64_t idx = blockIdx.x;
    const int32_t H = L.n_head, n_sub = PAIRS ? 1 : L.bs / TILE;
    w->h = static_cast<int32_t>(idx % H);
    idx /= H;
    w->b = static_cast<int32_t>(idx % B);
    idx /= B;
    const int32_t sub = static_cast<int32_t>(idx % n_sub);
    const int64_t rank = idx / n_sub;
    w->p0 = L.head_pass_begin[w->h];
    w->pg = w->p0 + local_pass;
    if (w->pg >= L.head_pass_begin[w->h + 1]) return false;
    const DevPass &P = L.passes[w->pg];
    if (PAIRS) {
        if (rank >= (P.n_qblocks + 1) / 2) return false;
        w->blk = order[P.pair_off + rank];
        w->slot0 = w->blk * TILE;
    } else {
        if (rank >= P.n_qblocks) return false;
        w->blk = order[P.order_off + rank];
        w->slot0 = w->blk * L.bs + sub * TILE;
    }
    w->s.transposed = P.transposed;
    w->s.stride = P.stride;
    w->s.rows = static_cast<int32_t>(P.rows);
    w->s.n_slots = static_cast<int32_t>(P.n_slots);
    w->s.limit = T < L.n_ctx ? T : L.n_ctx;
    set_divisor(w->s, static_cast<uint32_t>(w->s.rows > 0 ? w->s.rows : 1));
    return true;
}

// Whether any of the TILE rows of the CTA holds a position (uniform over the CTA).
template <int TILE> __device__ __forceinline__ bool tile_has_rows(const Work &w) {
    int valid = 0;
    if (threadIdx.x < TILE)
        valid = slot_pos32(w.s, w.slot0 + static_cast<int32_t>(threadIdx.x)) >= 0;
    return __syncthreads_or(valid) != 0;
}

// The CTA's tile (find_work over the pass's block order; false: no work, or no row of the
// tile holds a position) and its block's list, entries *e0 .. *e1 - 1 of the CSR list
// (forward, dq) or, TRANSPOSED, of the transposed list (dk, dv).
template <int TILE, bool TRANSPOSED>
__device__ __forceinline__ bool find_list(const LayoutView &L, int32_t local_pass, int32_t B,
                                          int32_t T, Work *w, int64_t *e0, int64_t *e1) {
    if (!find_work<TILE>(L, local_pass, B, T, TRANSPOSED ? L.orderT : L.order, w)) return false;
    if (!tile_has_rows<TILE>(*w)) return false;
    const DevPass &P = L.passes[w->pg];
    const int64_t *ptr = TRANSPOSED ? L.colT_ptr : L.row_ptr;
    const int64_t off = TRANSPOSED ? P.colT_ptr_off : P.row_ptr_off;
    *e0 = ptr[off + w->blk];
    *e1 = ptr[off + w->blk + 1];
    return true;
}

// The positions of the two rows a thread holds (g and g + 8, g = lane / 4) of the 16 rows
// from slot `first` (-1: none).
__device__ __forceinline__ void row_pair_pos(const Slots &s, int32_t first, int lane,
                                             int32_t (&pos)[2]) {
    const int32_t row = first + (lane >> 2);
    pos[0] = slot_pos32(s, row);
    pos[1] = slot_pos32(s, row + 8);
}

// The two-stage pipeline over n_chunks chunks, issue(t) filling stage t & 1 with cp.async.
// first_stage: chunk 0 on its way (after what the CTA loaded for good, in one group).
template <typename F> __device__ __forceinline__ void first_stage(int32_t n_chunks, F &&issue) {
    if (n_chunks > 0) issue(0);
    cp_async_commit();
}
// next_stage: chunk t landed for all threads, chunk t + 1 on its way into the other stage
// (read at t - 1, free now); returns chunk t's stage. ASYNC_PROXY (wgmma readers): each
// thread's copies fenced to the async proxy before the barrier.
template <bool ASYNC_PROXY = false, typename F>
__device__ __forceinline__ int next_stage(int32_t t, int32_t n_chunks, F &&issue) {
    cp_async_wait_all();
    if (ASYNC_PROXY) fence_proxy_async();
    __syncthreads();
    if (t + 1 < n_chunks) issue(t + 1);
    cp_async_commit();
    return t & 1;
}

// The dq kernels' statistics of the thread's query rows (positions qp, -1: none; stat0: the
// (batch, head)'s first): lse in log2 units (+inf on a row without a position: P = 0) and delta.
__device__ __forceinline__ void row_stats(float (&lse2)[2], float (&dl)[2], const int32_t (&qp)[2],
                                          const float *lse, const float *delta, int64_t stat0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int64_t at = stat0 + (qp[r] < 0 ? 0 : qp[r]);
        lse2[r] = qp[r] >= 0 ? lse[at] * kLog2e : INFINITY;
        dl[r] = qp[r] >= 0 ? delta[at] : 0.0f;
    }
}

// The dk, dv kernels' statistics of query slot i of a stage (position pos): position, lse in
// log2 units (+inf for a slot without a position, whose Q and dO rows are zeros: P = 0), delta.
__device__ __forceinline__ void query_stats(int32_t *qpos, float *lse2s, float *dls, int i,
                                            int32_t pos, const float *lse, const float *delta,
                                            int64_t stat0) {
    qpos[i] = pos;
    lse2s[i] = pos >= 0 ? lse[stat0 + pos] * kLog2e : INFINITY;
    dls[i] = pos >= 0 ? delta[stat0 + pos] : 0.0f;
}

// query_stats without waiting for the loads: lse (natural log, for keys_to_p<.., true>) and
// delta copied by cp.async where pos >= 0, there after the caller's cp_async_wait_all.
__device__ __forceinline__ void query_stats_async(int32_t *qpos, float *lses, float *dls, int i,
                                                  int32_t pos, const float *lse, const float *delta,
                                                  int64_t stat0) {
    qpos[i] = pos;
    if (pos >= 0) {
        cp_async4(smem_addr(lses + i), lse + stat0 + pos, true);
        cp_async4(smem_addr(dls + i), delta + stat0 + pos, true);
    } else {
        lses[i] = INFINITY;
        dls[i] = 0.0f;
    }
}

// An entry's mask over a chunk of N <= 64 keys at offset koff of their block: the key-column
// bits of the chunk and its 16-key groups in the low bits.
struct ChunkMask {
    uint64_t cols;
    int32_t lo, hi;
    uint32_t groups, flags;
};

template <int N>
__device__ __forceinline__ ChunkMask chunk_mask(const LayoutView &L, uint8_t index, int koff) {
    static_assert(N % 16 == 0 && N <= 64, "chunks of 16 to 64 keys");
    const MaskDesc &d = L.masks[index];
    ChunkMask m;
    const int word = koff >> 5;
    uint64_t c = d.cols[word];
    if (N > 32) c |= static_cast<uint64_t>(d.cols[word + 1]) << 32;
    m.cols = c >> (koff & 31);
    m.lo = d.lo;
    m.hi = d.hi;
    m.groups = (d.groups >> (koff >> 4)) & ((1u << (N / 16)) - 1);
    m.flags = d.flags;
    return m;
}

// s (16 x N scores of a warp) becomes s * scale_log2 where the pass computes the pair and -inf
// elsewhere. rpos: positions of the thread's two rows (g, g+8); cpos: of the N columns. Rows are
// queries (forward, dq) or keys (dk, dv); -1 marks a slot that holds nothing. The key-column
// bits: of the columns in m (rows are queries), else rbits (bit r: the key of row r).
template <int N, bool ROWS_ARE_QUERIES>
__device__ __forceinline__ void
mask_scores(float (&s)[N / 8][4], const int32_t (&rpos)[2], const int32_t *cpos, const ChunkMask &m,
            uint32_t rbits, float scale_log2, const LayoutView &L, const Work &w, int lane) {
    static_assert(N / 2 <= 32, "one bit per element of the thread");
    // A full block needs no mask when every key holds a position. Rows are the keys in dk, dv:
    // a row without one is never written; columns without one there are queries whose lse is
    // +inf, so their P is 0. Forward and dq look at the last key column: positions grow with
    // the slot inside a full block (one chunk of the transposed order), so it is the last valid.
    if ((m.flags & kMaskFull) && (!ROWS_ARE_QUERIES || cpos[N - 1] >= 0)) {
#pragma unroll
        for (int nt = 0; nt < N / 8; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) s[nt][i] *= scale_log2;
        return;
    }
    // Element e = 4 nt + i of the thread: row rpos[i / 2], column 8 nt + 2 (lane % 4) + i % 2.
    uint32_t bits = 0;
    if (m.flags & kMaskGeneric) {
        // The predicate is long: one rolled copy of it, not N / 2 unrolled ones.
#pragma unroll 1
        for (int e = 0; e < N / 2; ++e) {
            const int32_t r = (e & 2) ? rpos[1] : rpos[0];
            const int32_t c = cpos[(e >> 2) * 8 + (lane & 3) * 2 + (e & 1)];
            const int32_t qp = ROWS_ARE_QUERIES ? r : c, kp = ROWS_ARE_QUERIES ? c : r;
            if (qp >= 0 && kp >= 0 && kp <= qp && pass_ok(L, w.h, w.p0, w.pg, qp, kp))
                bits |= 1u << e;
        }
    } else {
        // rows are queries: column 8 nt + 2 (lane % 4) + j of the chunk at bit 8 nt + j
        const uint64_t tcols = m.cols >> ((lane & 3) * 2);
#pragma unroll
        for (int e = 0; e < N / 2; ++e) {
            const int32_t r = rpos[(e >> 1) & 1];
            const int32_t c = cpos[(e >> 2) * 8 + (lane & 3) * 2 + (e & 1)];
            const int32_t qp = ROWS_ARE_QUERIES ? r : c, kp = ROWS_ARE_QUERIES ? c : r;
            const uint32_t col = ROWS_ARE_QUERIES
                                     ? static_cast<uint32_t>(tcols >> ((e >> 2) * 8 + (e & 1)))
                                     : rbits >> ((e >> 1) & 1);
            const int32_t d = qp - kp;
            if (qp >= 0 && kp >= 0 && d >= 0 && ((col & 1u) || (d >= m.lo && d < m.hi)))
                bits |= 1u << e;
        }
    }
#pragma unroll
    for (int nt = 0; nt < N / 8; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i)
            s[nt][i] = (bits >> (nt * 4 + i)) & 1u ? s[nt][i] * scale_log2 : -INFINITY;
}

__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <typename K> bool allow_smem(const std::shared_ptr<Context> &ctx, K kernel, size_t bytes) {
    if (bytes <= 48 * 1024) return true;
    return STX_CUDA_CHECK(ctx,
                          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(bytes)));
}

// The flat grid of find_work (a tile wider than the block: pairs); false (with the error
// recorded) if it exceeds a launch.
bool grid_for(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t tile, int32_t B,
              unsigned *blocks) {
    const int64_t tiles = dl.view.bs >= tile
                              ? static_cast<int64_t>(dl.max_qblocks) * (dl.view.bs / tile)
                              : (static_cast<int64_t>(dl.max_qblocks) + 1) / 2;
    const int64_t n = tiles * dl.view.n_head * B;
    if (n > 0x7fffffff) {
        ctx->err =
            fail(STX_ERR_UNSUPPORTED,
                 "CUDA attention: %lld thread blocks (blocks x heads x batch) exceed a launch",
                 static_cast<long long>(n));
        return false;
    }
    *blocks = static_cast<unsigned>(n < 1 ? 1 : n);
    return true;
}

} // namespace
} // namespace cuda
} // namespace stx
