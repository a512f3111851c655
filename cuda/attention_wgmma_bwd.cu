// attention_wgmma_bwd.cu: the backward of the bf16 block-sparse attention on Hopper (sm_90a)
// warpgroup MMA: the same results as tc_dq_kernel and tc_dkdv_kernel (attention_tc.cu) --
// dq, dk, dv += one pass's share, from the merged lse (natural log, per (b, h, t)) and
// delta = rowsum(dout * out), `scale` applied where those kernels apply it -- for block sizes
// 64 and 128 (a block of 128 is two CTAs, find_work<64>; blocks of 32 take two a CTA in
// attention_wgmma_pairs.cu) and (Dq, Dv) in {(64, 64), (128, 128), (64, 128)}. Deterministic as
// they are: dq is query-centric over the pass's CSR lists, dk and dv key-centric over the
// transposed lists, each output row read-modified-written by one CTA. The grid, the masks
// (chunk_mask, mask_scores), the handling of slots that hold no position, of empty lists and of
// chunks an entry never computes are those of attention_tc.cu.
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
    int64_t e0, e1;
    if (!find_list<64, false>(L, local_pass, B, T, &w, &e0, &e1)) return;
    const int32_t per = L.bs / 64, H = L.n_head;
    const int32_t n_chunks = static_cast<int32_t>(e1 - e0) * per;
    const int64_t row0 = static_cast<int64_t>(w.b) * T;

    // Chunk t: keys (t % per) 64 .. + 63 of the (t / per)-th block of the list.
    auto issue = [&](int32_t t) {
        const int32_t slot = L.col_idx[e0 + t / per] * L.bs + (t % per) * 64, st = t & 1;
        const uint32_t groups = chunk_mask<64>(L, L.mode[e0 + t / per], (t % per) * 64).groups;
        if (groups == 0) return; // the chunk is skipped, its stage never read
        load_rows_sw128<DQ>(ks + st * kQ, opaque_tid(), k, w.s, slot, row0, H, w.h, groups);
        load_rows_sw128<DV>(vs + st * kV, opaque_tid(), v, w.s, slot, row0, H, w.h, groups);
        if (threadIdx.x < 64)
            kpos[st * 64 + threadIdx.x] = slot_pos32(w.s, slot + static_cast<int32_t>(threadIdx.x));
    };
    load_rows_sw128<DQ>(qs, opaque_tid(), q, w.s, w.slot0, row0, H, w.h);
    load_rows_sw128<DV>(dos, opaque_tid(), dout, w.s, w.slot0, row0, H, w.h);
    first_stage(n_chunks, issue);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int32_t qp[2];
    row_pair_pos(w.s, w.slot0 + warp * 16, lane, qp);
    float lse2[2], dl[2];
    row_stats(lse2, dl, qp, lse, delta, (static_cast<int64_t>(w.b) * H + w.h) * T);
    float acc[NQ][32];
    zero32(acc);

    for (int32_t t = 0; t < n_chunks; ++t) {
        const int st = next_stage<true>(t, n_chunks, issue);
        const uint32_t kt = ks + st * kQ, vt = vs + st * kV;
        const ChunkMask cm = chunk_mask<64>(L, L.mode[e0 + t / per], (t % per) * 64);
        if (cm.groups == 0) continue; // the entry computes none of these keys
        dq_chunk<DQ, DV>(acc, opaque(qs), opaque(dos), kt, vt, lse2, dl, [&](float(&s4)[8][4]) {
            mask_scores<64, true>(s4, qp, kpos + st * 64, cm, 0u, scale_log2, L, w, lane);
        });
    }
    cp_async_wait_all(); // nothing in flight at exit when the list was empty

#pragma unroll
    for (int r = 0; r < 2; ++r)
        if (qp[r] >= 0)
            add_row<NQ>(dq + ((row0 + qp[r]) * H + w.h) * DQ + (lane & 3) * 2, acc, r, scale);
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
    int64_t e0, e1;
    if (!find_list<64, true>(L, local_pass, B, T, &w, &e0, &e1)) return;
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
        load_rows_sw128<DQ>(qs + st * kQ, opaque_tid(), q, w.s, slot, row0, H, w.h);
        load_rows_sw128<DV>(dos + st * kV, opaque_tid(), dout, w.s, slot, row0, H, w.h);
        if (threadIdx.x < 64) {
            const int i = static_cast<int>(threadIdx.x);
            query_stats(qpos, lse2s, dls, st * 64 + i, slot_pos32(w.s, slot + i), lse, delta,
                        stat0);
        }
    };
    load_rows_sw128<DQ>(ks, opaque_tid(), k, w.s, w.slot0, row0, H, w.h);
    load_rows_sw128<DV>(vs, opaque_tid(), v, w.s, w.slot0, row0, H, w.h);
    first_stage(n_chunks, issue);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int32_t kp[2];
    row_pair_pos(w.s, w.slot0 + warp * 16, lane, kp);
    const int ko = koff + warp * 16 + (lane >> 2); // the key offset of the thread's row g
    float dka[NQ][32], dva[NV][32];
    zero32(dka);
    zero32(dva);

    for (int32_t t = 0; t < n_chunks; ++t) {
        const int st = next_stage<true>(t, n_chunks, issue);
        const uint32_t qt = qs + st * kQ, dot = dos + st * kV;
        const int32_t *qpt = qpos + st * 64;
        const float *l2 = lse2s + st * 64, *dlt = dls + st * 64;
        const uint8_t mode = L.modeT[e0 + t / per];
        if (cta_groups(mode) == 0) continue; // the entry computes none of the CTA's keys
        // A warp whose 16 keys the entry never computes takes P^T = 0 (the mma kernel skips
        // it; here the warpgroup multiplies together).
        const MaskDesc &md = L.masks[mode];
        const uint32_t kso = opaque(ks), vo = opaque(vs);
        dkdv_chunk<DQ, DV>(dka, dva, kso, vo, qt, dot, dlt, lane, [&](float(&s)[32]) {
            keys_to_p(s, md, ko, kp, qpt, l2, scale_log2, L, w, lane);
        });
    }
    cp_async_wait_all(); // nothing in flight at exit when the list was empty

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (kp[r] < 0) continue;
        add_row<NQ>(dk + ((row0 + kp[r]) * H + w.h) * DQ + (lane & 3) * 2, dka, r, scale);
        add_row<NV>(dv + ((row0 + kp[r]) * H + w.h) * DV + (lane & 3) * 2, dva, r, 1.0f);
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
    if (bs != 32 && bs != 64 && bs != 128) return false;
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
    if (!ctx->ok()) return true;
    if (bs == 32)
        wg_pairs_backward(ctx, dl, pass, q, k, v, dout, lse, delta, dq, dk, dv, B, T, Dq, Dv,
                          scale);
    else
        f(ctx, dl, pass, q, k, v, dout, lse, delta, dq, dk, dv, B, T, scale);
    return true;
}

} // namespace cuda
} // namespace stx
