// attention_wgmma_pairs.cu: the Hopper (sm_90a) wgmma attention kernels for layout blocks of 32
// -- forward, dq and dk/dv with the results of tc_forward_kernel, tc_dq_kernel and
// tc_dkdv_kernel (attention_tc.cu) at that block size -- for (Dq, Dv) in {(64, 64),
// (128, 128), (64, 128)}. The fixed pattern's summary cells are 32 keys wide, so the paper's
// enwik8 model (fixed:128:32) runs at blocks of 32, where one block is half a wgmma M.
//
// A CTA (one warpgroup, 128 threads, 64 rows: one wgmma M) takes a pair of adjacent blocks of
// one pass of one head, 2 p and 2 p + 1 (the second missing when the pass has an odd number:
// its slots hold no position); warps 0-1 own the rows of the first, warps 2-3 those of the
// second. The other side streams through two cp.async stages of 64 rows: the union of the two
// blocks' lists (CSR lists for forward and dq, transposed lists for dk and dv; ascending, so a
// two-pointer walk merges them), two 32-row blocks a stage, the last alone when the union is
// odd. A block of the union may be in the list of either half or of both, with a different
// mask (mode) for each: every warp masks its 16 rows per 32-column half with the entry of its
// own half (mask_scores at N = 32), and a block missing from its half's list is masked whole
// (P = 0). The products and the online softmax are those of the 64-row kernels (wgmma.cuh:
// fwd_chunk, dq_chunk, dkdv_chunk); the launch order ranks pairs by the length of the union
// (the pass's pair_off in order, orderT).
//
// The walk: the host merged each pair's two lists into chunks (PairChunk, attention_tc.cuh:
// two blocks, the mode of each (block, half), the 16-row groups any entry computes; in order
// for the CSR lists, orderT for the transposed ones). After the barrier that opens chunk t,
// thread 0 copies chunk t + 2 (cp.async, with the stage of chunk t + 1) into the slot of three
// that no thread reads any more; the next barrier makes it visible to every thread.
//
// Zero fill, as in the 64-row kernels: rows of a block no entry computes (or of a missing
// second block) are zeros (cp.async with src-size 0), never stale shared memory, since a
// wgmma multiplies all 64 rows and 0 * NaN = NaN.
#include "attention_tile.cuh"
#include "wgmma.cuh"

namespace stx {
namespace cuda {
namespace {

struct PairShared {
    PairChunk chunk[3];          // chunk t in slot t % 3 (rows 0-31: blk[0], 32-63: blk[1])
    const PairChunk *next, *end; // thread 0: the chunks of the union not copied yet
};

template <int DQ, int DV> struct PairShapes {
    static constexpr uint32_t kQ = 64 * DQ * 2; // bytes of a 64-row SW128 tile of Q or K
    static constexpr uint32_t kV = 64 * DV * 2; // and of V or dO (multiples of 1024)
    // 1024 bytes of slack: the dynamic window is aligned up to the SW128 atom. The tiles, the
    // stages' positions (dk, dv: and lse, delta), the walk.
    static constexpr size_t kFwd = 1024 + kQ + 2 * (kQ + kV) + 2 * 64 * 4 + sizeof(PairShared);
    static constexpr size_t kDq = 1024 + 3 * (kQ + kV) + 2 * 64 * 4 + sizeof(PairShared);
    static constexpr size_t kDkdv = 1024 + 3 * (kQ + kV) + 2 * 64 * 12 + sizeof(PairShared);
    // CTAs an SM should hold at head dims 64 (each CTA's wgmmas wait on one another, so the
    // tensor cores are kept busy by other CTAs): dk/dv took 175 registers, 2 CTAs an SM, and
    // the forward 134, 3; capped at 168 and 128 registers they hold 3 and 4.
    static constexpr int kDkdvCtas = DQ == 64 && DV == 64 ? 3 : 1;
    static constexpr int kForwardCtas = DQ == 64 && DV == 64 ? 4 : 1;
};

// The device code below exists in sm_90a device passes only (STX_WGMMA); elsewhere the kernels
// are stubs that are never launched (wgmma_usable).
#if STX_WGMMA
// Thread 0: the next chunk of the walk into slot `slot` (cp.async), or one with blk[0] = -1
// where the union is done.
__device__ __forceinline__ void pair_fetch(PairShared &ps, int slot) {
    if (ps.next < ps.end) {
        cp_async16(smem_addr(&ps.chunk[slot]), ps.next, true);
        ++ps.next;
    } else {
        ps.chunk[slot].blk[0] = -1;
    }
}

// Half HALF (columns 32 HALF .. + 31) of a chunk's scores for the thread's query rows qp:
// masked by entry m (kpos: the chunk's 64 key positions), or all -inf where m < 0.
template <int HALF>
__device__ __forceinline__ void mask_half(float (&s4)[8][4], int32_t m, const int32_t (&qp)[2],
                                          const int32_t *kpos, float scale_log2,
                                          const LayoutView &L, const Work &w, int lane) {
    float(&sh)[4][4] = *reinterpret_cast<float(*)[4][4]>(&s4[4 * HALF]);
    if (m < 0) {
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) sh[n][i] = -INFINITY;
        return;
    }
    mask_scores<32, true>(sh, qp, kpos + 32 * HALF, chunk_mask<32>(L, static_cast<uint8_t>(m), 0),
                          0u, scale_log2, L, w, lane);
}

// P^T of half HALF of a dk, dv chunk (keys_to_p; lse: the natural-log lse of the stage's
// queries), zeros where m < 0.
template <int HALF>
__device__ __forceinline__ void p_half(float (&s)[32], int32_t m, int ko, const int32_t (&kp)[2],
                                       const int32_t *qpt, const float *lse, float scale_log2,
                                       const LayoutView &L, const Work &w, int lane) {
    if (m < 0) {
#pragma unroll
        for (int i = 16 * HALF; i < 16 * HALF + 16; ++i) s[i] = 0.0f;
        return;
    }
    keys_to_p<32, 32 * HALF, true>(s, L.masks[m], ko, kp, qpt, lse, scale_log2, L, w, lane);
}

// Rows of chunk c's two blocks into the 64-row tile at `tile` (block blk[h] from row 32 h):
// the 16-row groups some entry computes (c.groups), or whole blocks where WHOLE (queries).
template <int D, bool WHOLE = false>
__device__ __forceinline__ void load_pair(uint32_t tile, const bf16 *src, const PairChunk &c,
                                          const Work &w, int64_t row0, int32_t H) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
        load_rows_sw128<D, 32>(tile, opaque_tid(), src, w.s, c.blk[h] * 32, row0, H, w.h,
                               WHOLE ? (c.groups(h) ? ~0u : 0u) : c.groups(h), 32 * h);
}

// The position of row i (< 64) of chunk c's stage, -1 for none.
__device__ __forceinline__ int32_t pair_pos(const PairChunk &c, const Work &w, int i) {
    const int32_t blk = c.blk[i >> 5];
    return blk >= 0 ? slot_pos32(w.s, blk * 32 + (i & 31)) : -1;
}

// Forward and dq: stage st of the keys (K at ks, V at vs, positions kpos) from chunk c.
template <int DQ, int DV>
__device__ __forceinline__ void load_keys(const PairChunk &c, int st, uint32_t ks, uint32_t vs,
                                          int32_t *kpos, const bf16 *k, const bf16 *v,
                                          const Work &w, int64_t row0, int32_t H) {
    load_pair<DQ>(ks + st * 64 * DQ * 2, k, c, w, row0, H);
    load_pair<DV>(vs + st * 64 * DV * 2, v, c, w, row0, H);
    if (threadIdx.x < 64)
        kpos[st * 64 + threadIdx.x] = pair_pos(c, w, static_cast<int>(threadIdx.x));
}

// Forward and dq: the thread's query rows' scores of chunk c, each 32-column half masked by the
// entry of the warp's half (rows: warps 0-1 the first block, 2-3 the second).
__device__ __forceinline__ void mask_pair(float (&s4)[8][4], const PairChunk &c,
                                          const int32_t (&qp)[2], const int32_t *kpos,
                                          float scale_log2, const LayoutView &L, const Work &w) {
    const int half = threadIdx.x >> 6, lane = threadIdx.x & 31;
    mask_half<0>(s4, c.mode(0, half), qp, kpos, scale_log2, L, w, lane);
    mask_half<1>(s4, c.mode(1, half), qp, kpos, scale_log2, L, w, lane);
}

// The chunk loop of the three kernels over the chunks of pair w.blk (offs: the pass's
// offsets of the pairs' chunks, chunks: its first chunk; order or orderT). Thread 0 copies
// chunks 0 and 1; every chunk t, after the barrier that opens it, all threads issue the loads
// of chunk t + 1 into stage (t + 1) & 1 (issue(c, st)) and thread 0 copies chunk t + 2 into
// its slot (last read at t - 1), then compute(c, st) multiplies chunk t's stage if some entry
// computes any of it. Ends, all copies waited for, when the union is done.
template <typename Issue, typename Compute>
__device__ __forceinline__ void pair_loop(PairShared &ps, const int32_t *offs,
                                          const PairChunk *chunks, const Work &w, Issue &&issue,
                                          Compute &&compute) {
    if (threadIdx.x == 0) {
        ps.next = chunks + offs[w.blk];
        ps.end = chunks + offs[w.blk + 1];
        pair_fetch(ps, 0);
        pair_fetch(ps, 1);
    }
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads(); // chunks 0 and 1
    if (ps.chunk[0].blk[0] >= 0) issue(ps.chunk[0], 0);
    cp_async_commit();
    for (int32_t t = 0;; ++t) {
        cp_async_wait_all();
        fence_proxy_async(); // this thread's copies, before wgmma reads them
        __syncthreads();     // stage t and chunk t + 1 landed for all; stage t + 1 (read at
                             // t - 1) and the slot of chunk t + 2 (at t - 1) are free
        const PairChunk &c = ps.chunk[t % 3], &next = ps.chunk[(t + 1) % 3];
        if (c.blk[0] < 0) break; // the union is done (uniform: shared memory)
        if (next.blk[0] >= 0) issue(next, (t + 1) & 1);
        if (threadIdx.x == 0) pair_fetch(ps, (t + 2) % 3);
        cp_async_commit();
        if (c.live()) compute(c, t & 1);
    }
    cp_async_wait_all(); // nothing in flight at exit
}

// pair_loop's offs and chunks in `order` (order or orderT; chunk_off: P's chunk_off or
// chunkT_off).
__device__ __forceinline__ const int32_t *pair_offs(const int32_t *order, const DevPass &P) {
    return order + P.pair_off + (P.n_qblocks + 1) / 2;
}
__device__ __forceinline__ const PairChunk *pair_chunks(const int32_t *order, int64_t chunk_off) {
    return reinterpret_cast<const PairChunk *>(order + chunk_off);
}

#endif // STX_WGMMA

template <int DQ, int DV>
__global__ void __launch_bounds__(128, PairShapes<DQ, DV>::kForwardCtas)
    wg_pairs_forward_kernel(LayoutView L, int32_t local_pass, const bf16 *__restrict__ q,
                            const bf16 *__restrict__ k, const bf16 *__restrict__ v,
                            float *__restrict__ out, float *__restrict__ lse, int32_t B, int32_t T,
                            float scale_log2) {
#if STX_WGMMA
    using S = PairShapes<DQ, DV>;
    constexpr uint32_t kQ = S::kQ, kV = S::kV;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned char *smem = align_1024(smem_raw);
    const uint32_t qs = smem_addr(smem), ks = qs + kQ, vs = ks + 2 * kQ; // two stages each
    int32_t *kpos = reinterpret_cast<int32_t *>(smem + 3 * kQ + 2 * kV);
    PairShared &ps = *reinterpret_cast<PairShared *>(kpos + 2 * 64);

    Work w;
    if (!find_work<64, true>(L, local_pass, B, T, L.order, &w)) return;
    if (!tile_has_rows<64>(w)) return;
    const DevPass &P = L.passes[w.pg];
    const int32_t H = L.n_head;
    const int64_t row0 = static_cast<int64_t>(w.b) * T;
    load_rows_sw128<DQ>(qs, threadIdx.x, q, w.s, w.slot0, row0, H, w.h);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int32_t qp[2];
    row_pair_pos(w.s, w.slot0 + warp * 16, lane, qp);
    float o[DV / 64][32], mrow[2], lrow[2];
    fwd_start<DV>(o, mrow, lrow);

    pair_loop(
        ps, pair_offs(L.order, P), pair_chunks(L.order, P.chunk_off), w,
        [&](const PairChunk &c, int st) {
            load_keys<DQ, DV>(c, st, ks, vs, kpos, k, v, w, row0, H);
        },
        [&](const PairChunk &c, int st) {
            fwd_chunk<DQ, DV>(o, mrow, lrow, qs, ks + st * kQ, vs + st * kV, [&](float(&s4)[8][4]) {
                mask_pair(s4, c, qp, kpos + st * 64, scale_log2, L, w);
            });
        });
    fwd_store<DV>(o, mrow, lrow, qp, out, lse, w.b, T, H, w.h, lane);
#else
    (void)L, (void)local_pass, (void)q, (void)k, (void)v, (void)out, (void)lse, (void)B, (void)T,
        (void)scale_log2;
    __trap(); // wgmma_usable() keeps the host from launching this without sm_90a code
#endif
}

template <int DQ, int DV>
__global__ void __launch_bounds__(128, 1)
    wg_pairs_dq_kernel(LayoutView L, int32_t local_pass, const bf16 *__restrict__ q,
                       const bf16 *__restrict__ k, const bf16 *__restrict__ v,
                       const bf16 *__restrict__ dout, const float *__restrict__ lse,
                       const float *__restrict__ delta, float *__restrict__ dq, int32_t B,
                       int32_t T, float scale_log2, float scale) {
#if STX_WGMMA
    using S = PairShapes<DQ, DV>;
    constexpr uint32_t kQ = S::kQ, kV = S::kV;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned char *smem = align_1024(smem_raw);
    const uint32_t qs = smem_addr(smem), dos = qs + kQ;
    const uint32_t ks = dos + kV, vs = ks + 2 * kQ; // two stages each
    int32_t *kpos = reinterpret_cast<int32_t *>(smem + 3 * (kQ + kV));
    PairShared &ps = *reinterpret_cast<PairShared *>(kpos + 2 * 64);

    Work w;
    if (!find_work<64, true>(L, local_pass, B, T, L.order, &w)) return;
    if (!tile_has_rows<64>(w)) return;
    const DevPass &P = L.passes[w.pg];
    const int32_t H = L.n_head;
    const int64_t row0 = static_cast<int64_t>(w.b) * T;
    load_rows_sw128<DQ>(qs, opaque_tid(), q, w.s, w.slot0, row0, H, w.h);
    load_rows_sw128<DV>(dos, opaque_tid(), dout, w.s, w.slot0, row0, H, w.h);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int32_t qp[2];
    row_pair_pos(w.s, w.slot0 + warp * 16, lane, qp);
    float lse2[2], dl[2];
    row_stats(lse2, dl, qp, lse, delta, (static_cast<int64_t>(w.b) * H + w.h) * T);
    float acc[DQ / 64][32];
    zero32(acc);

    pair_loop(
        ps, pair_offs(L.order, P), pair_chunks(L.order, P.chunk_off), w,
        [&](const PairChunk &c, int st) {
            load_keys<DQ, DV>(c, st, ks, vs, kpos, k, v, w, row0, H);
        },
        [&](const PairChunk &c, int st) {
            dq_chunk<DQ, DV>(
                acc, opaque(qs), opaque(dos), ks + st * kQ, vs + st * kV, lse2, dl,
                [&](float(&s4)[8][4]) { mask_pair(s4, c, qp, kpos + st * 64, scale_log2, L, w); });
        });

#pragma unroll
    for (int r = 0; r < 2; ++r)
        if (qp[r] >= 0)
            add_row<DQ / 64>(dq + ((row0 + qp[r]) * H + w.h) * DQ + (lane & 3) * 2, acc, r, scale);
#else
    (void)L, (void)local_pass, (void)q, (void)k, (void)v, (void)dout, (void)lse, (void)delta,
        (void)dq, (void)B, (void)T, (void)scale_log2, (void)scale;
    __trap();
#endif
}

template <int DQ, int DV>
__global__ void __launch_bounds__(128, PairShapes<DQ, DV>::kDkdvCtas)
    wg_pairs_dkdv_kernel(LayoutView L, int32_t local_pass, const bf16 *__restrict__ q,
                         const bf16 *__restrict__ k, const bf16 *__restrict__ v,
                         const bf16 *__restrict__ dout, const float *__restrict__ lse,
                         const float *__restrict__ delta, float *__restrict__ dk,
                         float *__restrict__ dv, int32_t B, int32_t T, float scale_log2,
                         float scale) {
#if STX_WGMMA
    using S = PairShapes<DQ, DV>;
    constexpr uint32_t kQ = S::kQ, kV = S::kV;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned char *smem = align_1024(smem_raw);
    const uint32_t ks = smem_addr(smem), vs = ks + kQ;
    const uint32_t qs = vs + kV, dos = qs + 2 * kQ; // two stages each
    int32_t *qpos = reinterpret_cast<int32_t *>(smem + 3 * (kQ + kV));
    float *lses = reinterpret_cast<float *>(qpos + 2 * 64); // natural log: keys_to_p scales
    float *dls = lses + 2 * 64;
    PairShared &ps = *reinterpret_cast<PairShared *>(dls + 2 * 64);

    Work w;
    if (!find_work<64, true>(L, local_pass, B, T, L.orderT, &w)) return;
    if (!tile_has_rows<64>(w)) return;
    const DevPass &P = L.passes[w.pg];
    const int32_t H = L.n_head;
    const int64_t row0 = static_cast<int64_t>(w.b) * T,
                  stat0 = (static_cast<int64_t>(w.b) * H + w.h) * T;
    load_rows_sw128<DQ>(ks, opaque_tid(), k, w.s, w.slot0, row0, H, w.h);
    load_rows_sw128<DV>(vs, opaque_tid(), v, w.s, w.slot0, row0, H, w.h);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, half = warp >> 1;
    int32_t kp[2];
    row_pair_pos(w.s, w.slot0 + warp * 16, lane, kp);
    const int ko = (warp & 1) * 16 + (lane >> 2); // the key offset of the thread's row g
    float dka[DQ / 64][32], dva[DV / 64][32];
    zero32(dka);
    zero32(dva);

    pair_loop(
        ps, pair_offs(L.orderT, P), pair_chunks(L.orderT, P.chunkT_off), w,
        [&](const PairChunk &c, int st) {
            // a query block no warp computes with stays zeros
            load_pair<DQ, true>(qs + st * kQ, q, c, w, row0, H);
            load_pair<DV, true>(dos + st * kV, dout, c, w, row0, H);
            if (threadIdx.x < 64) {
                const int i = st * 64 + static_cast<int>(threadIdx.x);
                query_stats_async(qpos, lses, dls, i, pair_pos(c, w, i & 63), lse, delta, stat0);
            }
        },
        [&](const PairChunk &c, int st) {
            const int32_t *qpt = qpos + st * 64;
            const float *ln = lses + st * 64;
            const int32_t m0 = c.mode(0, half), m1 = c.mode(1, half);
            dkdv_chunk<DQ, DV>(dka, dva, opaque(ks), opaque(vs), qs + st * kQ, dos + st * kV,
                               dls + st * 64, lane, [&](float(&s)[32]) {
                                   p_half<0>(s, m0, ko, kp, qpt, ln, scale_log2, L, w, lane);
                                   p_half<1>(s, m1, ko, kp, qpt, ln, scale_log2, L, w, lane);
                               });
        });

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (kp[r] < 0) continue;
        add_row<DQ / 64>(dk + ((row0 + kp[r]) * H + w.h) * DQ + (lane & 3) * 2, dka, r, scale);
        add_row<DV / 64>(dv + ((row0 + kp[r]) * H + w.h) * DV + (lane & 3) * 2, dva, r, 1.0f);
    }
#else
    (void)L, (void)local_pass, (void)q, (void)k, (void)v, (void)dout, (void)lse, (void)delta,
        (void)dk, (void)dv, (void)B, (void)T, (void)scale_log2, (void)scale;
    __trap();
#endif
}

template <int DQ, int DV> struct Pairs {
    using S = PairShapes<DQ, DV>;
    static void forward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                        const bf16 *q, const bf16 *k, const bf16 *v, float *out, float *lse,
                        int32_t B, int32_t T, float scale) {
        auto kernel = wg_pairs_forward_kernel<DQ, DV>;
        unsigned blocks = 0;
        if (!allow_smem(ctx, kernel, S::kFwd) || !grid_for(ctx, dl, 64, B, &blocks)) return;
        kernel<<<blocks, 128, S::kFwd, ctx->stream>>>(dl.view, pass, q, k, v, out, lse, B, T,
                                                      scale * kLog2e);
        STX_LAUNCH_CHECK(ctx, "wg_pairs_forward_kernel");
    }
    static void backward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                         const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                         const float *lse, const float *delta, float *dq, float *dk, float *dv,
                         int32_t B, int32_t T, float scale) {
        auto kq = wg_pairs_dq_kernel<DQ, DV>;
        auto kkv = wg_pairs_dkdv_kernel<DQ, DV>;
        unsigned blocks = 0;
        if (!allow_smem(ctx, kq, S::kDq) || !allow_smem(ctx, kkv, S::kDkdv) ||
            !grid_for(ctx, dl, 64, B, &blocks))
            return;
        kq<<<blocks, 128, S::kDq, ctx->stream>>>(dl.view, pass, q, k, v, dout, lse, delta, dq, B, T,
                                                 scale * kLog2e, scale);
        if (!STX_LAUNCH_CHECK(ctx, "wg_pairs_dq_kernel")) return;
        kkv<<<blocks, 128, S::kDkdv, ctx->stream>>>(dl.view, pass, q, k, v, dout, lse, delta, dk,
                                                    dv, B, T, scale * kLog2e, scale);
        STX_LAUNCH_CHECK(ctx, "wg_pairs_dkdv_kernel");
    }
};

// f(Pairs<DQ, DV>()) for the head dims the caller checked.
template <typename F> void pairs_dispatch(int32_t Dq, int32_t Dv, F &&f) {
    if (Dq == 64 && Dv == 64)
        f(Pairs<64, 64>());
    else if (Dq == 128 && Dv == 128)
        f(Pairs<128, 128>());
    else if (Dq == 64 && Dv == 128)
        f(Pairs<64, 128>());
}

} // namespace

void wg_pairs_forward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                      const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                      float *out, float *lse, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                      float scale) {
    if (!ctx->ok()) return;
    pairs_dispatch(Dq, Dv,
                   [&](auto p) { p.forward(ctx, dl, pass, q, k, v, out, lse, B, T, scale); });
}

void wg_pairs_backward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                       const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                       const __nv_bfloat16 *dout, const float *lse, const float *delta, float *dq,
                       float *dk, float *dv, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                       float scale) {
    if (!ctx->ok()) return;
    pairs_dispatch(Dq, Dv, [&](auto p) {
        p.backward(ctx, dl, pass, q, k, v, dout, lse, delta, dq, dk, dv, B, T, scale);
    });
}

} // namespace cuda
} // namespace stx
