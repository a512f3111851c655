// attention_wgmma.cu: the bf16 attention forward on Hopper's warpgroup MMA (wgmma, sm_90a),
// for layout blocks of 64 and 128 and head dims (64, 64), (128, 128), (64, 128) (blocks of 32:
// attention_wgmma_pairs.cu); elsewhere, and on other GPUs, attention_tc.cu's mma.sync kernel
// runs instead.
//
// The work and the result are those of tc_forward_kernel (attention_tc.cu): a CTA takes 64
// query rows of one layout block of one pass of one head and streams the keys of its CSR
// list through two cp.async stages, 64 keys at a time; out (fp32, normalised) and the lse of
// the pass are written in the same format. What changes is who multiplies: one warpgroup
// (four warps, 16 rows each) issues S = Q K^T and O += P V as m64n64k16 wgmmas reading Q, K
// and V from shared memory in the SW128 layout (wgmma.cuh), where the mma.sync kernel feeds
// every product through ldmatrix and registers, which bounded it near 110 TFLOP/s on an H100.
// Each warp's accumulators have the mma.sync layout, so the masks and the online softmax are
// attention_tile.cuh's.
//
// Keys in the 16-key groups an entry never computes are zero-filled rather than skipped: a
// wgmma computes all 64 columns, and stale shared memory (NaN bits, say) times a probability
// of 0 would still be NaN. Their scores are masked; their P V k-steps are not skipped, since a
// branch between wgmmas makes ptxas serialise them (C7520) for a saving of at most 3/4 of a
// fixed summary chunk's P V.
#include "attention_tile.cuh"
#include "wgmma.cuh"

namespace stx {
namespace cuda {
namespace {

constexpr int kWgRows = 64;     // query rows a CTA: one wgmma M
constexpr int kWgKeys = 64;     // keys a stage: one wgmma N
constexpr int kWgThreads = 128; // one warpgroup

template <int DQ, int DV> struct WgShapes {
    static constexpr uint32_t kQ = kWgRows * DQ * 2, kK = kWgKeys * DQ * 2, kV = kWgKeys * DV * 2;
    // 1024 bytes of slack: the SW128 tiles start on a 1024-byte boundary
    static size_t forward_smem() {
        return 1024 + kQ + 2 * (kK + kV) + 2 * kWgKeys * sizeof(int32_t);
    }
};

template <int DQ, int DV>
__global__ void __launch_bounds__(kWgThreads, 1)
    wg_forward_kernel(LayoutView L, int32_t local_pass, const bf16 *__restrict__ q,
                      const bf16 *__restrict__ k, const bf16 *__restrict__ v,
                      float *__restrict__ out, float *__restrict__ lse, int32_t B, int32_t T,
                      float scale_log2) {
#if STX_WGMMA
    using S = WgShapes<DQ, DV>;
    constexpr int BN = kWgKeys, NV = DV / 64; // NV: 64-column parts of O
    extern __shared__ __align__(16) unsigned char smem[];
    const uint32_t base = (smem_addr(smem) + 1023u) & ~1023u;
    const uint32_t qs = base, ks = qs + S::kQ, vs = ks + 2 * S::kK;
    int32_t *kpos = reinterpret_cast<int32_t *>(smem + (vs + 2 * S::kV - smem_addr(smem)));

    Work w;
    int64_t e0, e1;
    if (!find_list<kWgRows, false>(L, local_pass, B, T, &w, &e0, &e1)) return;
    const int32_t per = L.bs / BN, H = L.n_head;
    const int32_t n_chunks = static_cast<int32_t>(e1 - e0) * per;
    const int64_t row0 = static_cast<int64_t>(w.b) * T;

    // Chunk t: keys (t % per) BN .. + BN - 1 of the (t / per)-th block of the list.
    auto issue = [&](int32_t t) {
        const int32_t slot = L.col_idx[e0 + t / per] * L.bs + (t % per) * BN, st = t & 1;
        const uint32_t groups = chunk_mask<BN>(L, L.mode[e0 + t / per], (t % per) * BN).groups;
        load_rows_sw128<DQ>(ks + st * S::kK, threadIdx.x, k, w.s, slot, row0, H, w.h, groups);
        load_rows_sw128<DV>(vs + st * S::kV, threadIdx.x, v, w.s, slot, row0, H, w.h, groups);
        for (int i = threadIdx.x; i < BN; i += kWgThreads)
            kpos[st * BN + i] = slot_pos32(w.s, slot + i);
    };
    load_rows_sw128<DQ>(qs, threadIdx.x, q, w.s, w.slot0, row0, H, w.h);
    first_stage(n_chunks, issue);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int32_t qp[2];
    row_pair_pos(w.s, w.slot0 + warp * 16, lane, qp);
    float o[NV][32], mrow[2], lrow[2];
    fwd_start<DV>(o, mrow, lrow);

    for (int32_t t = 0; t < n_chunks; ++t) {
        const int st = next_stage<true>(t, n_chunks, issue);
        const ChunkMask cm = chunk_mask<BN>(L, L.mode[e0 + t / per], (t % per) * BN);
        if (cm.groups == 0) continue; // the entry computes none of these keys
        fwd_chunk<DQ, DV>(
            o, mrow, lrow, qs, ks + st * S::kK, vs + st * S::kV, [&](float(&s4)[BN / 8][4]) {
                mask_scores<BN, true>(s4, qp, kpos + st * BN, cm, 0u, scale_log2, L, w, lane);
            });
    }
    cp_async_wait_all(); // nothing in flight at exit when the list was empty
    fwd_store<DV>(o, mrow, lrow, qp, out, lse, w.b, T, H, w.h, lane);
#else
    (void)L, (void)local_pass, (void)q, (void)k, (void)v, (void)out, (void)lse, (void)B, (void)T,
        (void)scale_log2;
    __trap(); // wgmma_usable() keeps the host from launching this without sm_90a code
#endif
}

// 1 in the sm_90a pass; what the device's loaded image says decides wgmma_usable.
__device__ int g_wgmma_built = STX_WGMMA;

template <int DQ, int DV>
void wg_forward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                const bf16 *q, const bf16 *k, const bf16 *v, float *out, float *lse, int32_t B,
                int32_t T, float scale) {
    auto kernel = wg_forward_kernel<DQ, DV>;
    const size_t smem = WgShapes<DQ, DV>::forward_smem();
    unsigned blocks = 0;
    if (!allow_smem(ctx, kernel, smem) || !grid_for(ctx, dl, kWgRows, B, &blocks)) return;
    kernel<<<blocks, kWgThreads, smem, ctx->stream>>>(dl.view, pass, q, k, v, out, lse, B, T,
                                                      scale * kLog2e);
    STX_LAUNCH_CHECK(ctx, "wg_forward_kernel");
}

} // namespace

bool wgmma_usable(Context *ctx) {
    if (ctx->wgmma_off) return false;
    if (ctx->wgmma_built < 0) {
        int major = 0, built = 0;
        ctx->wgmma_built =
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ctx->device) ==
                cudaSuccess &&
            major == 9 &&
            cudaMemcpyFromSymbol(&built, g_wgmma_built, sizeof built) == cudaSuccess && built == 1;
        (void)cudaGetLastError(); // a failed query means "no", not a recorded error
    }
    return ctx->wgmma_built == 1;
}

bool CudaOps::hopper_kernels() const {
    return ctx_->bf16 && wgmma_usable(ctx_.get());
}

bool wg_attention_forward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                          const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                          float *out, float *lse, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                          float scale) {
    const int32_t bs = dl.view.bs;
    const bool dims = (Dq == 64 || Dq == 128) && (Dv == Dq || Dv == 128);
    if (!dims || (bs != 32 && bs != 64 && bs != 128) || !wgmma_usable(ctx.get())) return false;
    if (bs == 32)
        wg_pairs_forward(ctx, dl, pass, q, k, v, out, lse, B, T, Dq, Dv, scale);
    else if (Dq == 64 && Dv == 64)
        wg_forward<64, 64>(ctx, dl, pass, q, k, v, out, lse, B, T, scale);
    else if (Dq == 128 && Dv == 128)
        wg_forward<128, 128>(ctx, dl, pass, q, k, v, out, lse, B, T, scale);
    else
        wg_forward<64, 128>(ctx, dl, pass, q, k, v, out, lse, B, T, scale);
    return true;
}

} // namespace cuda
} // namespace stx
