// attention_tc.cu: block-sparse attention for the bf16 mode on tensor cores (mma.sync
// m16n8k16 bf16 with fp32 accumulation, so sm_80 and later), FlashAttention-2 style.
//
// A CTA takes a tile of TILE = min(block, 64) rows of one layout block (a block of 128 is two
// CTAs) and TILE / 16 warps, 16 rows a warp. The rows' operands stay in shared memory; the
// blocks of the CSR list (forward, dq) or of the transposed list (dk, dv) stream through two
// shared-memory stages filled by cp.async while the previous stage is consumed. Rows are
// gathered by slot, so the strided transposed order costs nothing more than the natural one;
// padded slots and positions >= T are zero-filled and masked. Shared rows are padded by 16
// bytes, which puts the eight rows an ldmatrix reads in eight different bank groups.
//
// Masks: each CSR entry carries a MaskDesc from the host (attention.cu). Full entries skip
// the mask; the others compare positions with a band and test a key-column bit set (causal,
// local window edges, fixed summary cells, strided passes after a local or fixed part), and
// only generic ones evaluate the pass predicate per element (pass_ok, the reference's
// definition). Keys in 16-key groups that an entry never computes (most of a fixed summary
// block) are neither loaded nor multiplied, and entries that compute nothing are skipped.
//
// Operands: q, k, v and dout are bf16 copies (tc_to_bf16); the probabilities P and dS are
// rounded to bf16 as the A operand of their products; scores, softmax statistics and every
// accumulator are fp32. Backward is deterministic: dq is query-centric, dk and dv key-centric
// over the transposed lists, each output row read-modified-written by exactly one CTA.
#include "attention_tile.cuh"

namespace stx {
namespace cuda {
namespace {

// Four 8x8 b16 matrices; lane i gives the address of row i % 8 of matrix i / 8, and register j
// gets matrix j (lane l holding row l / 4, columns 2 (l % 4) and + 1; transposed with .trans).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c += a (16x16, row) * b (16x8, col). Fragments (g = lane / 4, t = lane % 4): a[0] row g,
// cols 2t, 2t+1; a[1] row g+8; a[2] row g, cols + 8; a[3] row g+8, cols + 8. b0 rows (k) 2t,
// 2t+1 of col (n) g; b1 rows + 8. c[0], c[1] row g, cols 2t, 2t+1; c[2], c[3] row g+8.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// acc (16 x N, accumulator layout) += A * B^T for a warp: A is 16 x K at `a` (row stride SA),
// B is N x K at `b` (row stride SB), both bf16 row-major in shared memory.
// Column groups np (16 columns) without bit np of `groups` are skipped (left as they are).
template <int K, int N, int SA, int SB>
__device__ __forceinline__ void mma_abt(float (&acc)[N / 8][4], const bf16 *a, const bf16 *b,
                                        int lane, uint32_t groups = ~0u) {
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
        uint32_t af[4];
        // matrices: rows 0-7 / 8-15 (lane bit 3) by cols 0-7 / 8-15 (lane bit 4)
        ldsm_x4(af, smem_addr(a + (lane & 15) * SA + kk * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int np = 0; np < N / 16; ++np) {
            if (!((groups >> np) & 1u)) continue;
            uint32_t bf[4];
            // matrices: cols (k) 0-7 / 8-15 (lane bit 3) by rows (n) 0-7 / 8-15 (lane bit 4)
            ldsm_x4(bf, smem_addr(b + (np * 16 + (lane & 7) + (lane >> 4) * 8) * SB + kk * 16 +
                                  ((lane >> 3) & 1) * 8));
            mma_bf16(acc[2 * np], af, bf[0], bf[1]);
            mma_bf16(acc[2 * np + 1], af, bf[2], bf[3]);
        }
    }
}

// acc (16 x N) += P * B for a warp: P is 16 x K in registers in the accumulator layout of an
// earlier product (rounded to bf16 here), B is K x N bf16 row-major at `b` (row stride SB).
// Row groups kk of B (16 rows, where P is zero) without bit kk of `groups` are skipped.
template <int K, int N, int SB>
__device__ __forceinline__ void mma_pb(float (&acc)[N / 8][4], const float (&p)[K / 8][4],
                                       const bf16 *b, int lane, uint32_t groups = ~0u) {
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
        if (!((groups >> kk) & 1u)) continue;
        const uint32_t af[4] = {pack_bf16(p[2 * kk][0], p[2 * kk][1]),
                                pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                                pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                                pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
        for (int np = 0; np < N / 16; ++np) {
            uint32_t bf[4];
            // transposed matrices: rows (k) 0-7 / 8-15 (lane bit 3) by cols (n) 0-7 / 8-15
            ldsm_x4_t(bf, smem_addr(b + (kk * 16 + (lane & 15)) * SB + np * 16 + (lane >> 4) * 8));
            mma_bf16(acc[2 * np], af, bf[0], bf[1]);
            mma_bf16(acc[2 * np + 1], af, bf[2], bf[3]);
        }
    }
}

// mma_abt and mma_pb for MT m-tiles of a warp (MT x 16 rows): each B fragment loaded from
// shared memory feeds MT products, which halves the shared-memory traffic per product at
// MT = 2 (ldmatrix, not the tensor cores, bounds the one-tile loop).
template <int MT, int K, int N, int SA, int SB>
__device__ __forceinline__ void mma_abt_m(float (&acc)[MT][N / 8][4], const bf16 *a, const bf16 *b,
                                          int lane, uint32_t groups) {
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
        uint32_t af[MT][4];
#pragma unroll
        for (int mi = 0; mi < MT; ++mi)
            ldsm_x4(af[mi],
                    smem_addr(a + (mi * 16 + (lane & 15)) * SA + kk * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int np = 0; np < N / 16; ++np) {
            if (!((groups >> np) & 1u)) continue;
            uint32_t bf[4];
            ldsm_x4(bf, smem_addr(b + (np * 16 + (lane & 7) + (lane >> 4) * 8) * SB + kk * 16 +
                                  ((lane >> 3) & 1) * 8));
#pragma unroll
            for (int mi = 0; mi < MT; ++mi) {
                mma_bf16(acc[mi][2 * np], af[mi], bf[0], bf[1]);
                mma_bf16(acc[mi][2 * np + 1], af[mi], bf[2], bf[3]);
            }
        }
    }
}

template <int MT, int K, int N, int SB>
__device__ __forceinline__ void mma_pb_m(float (&acc)[MT][N / 8][4], const float (&p)[MT][K / 8][4],
                                         const bf16 *b, int lane, uint32_t groups) {
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
        if (!((groups >> kk) & 1u)) continue;
        uint32_t af[MT][4];
#pragma unroll
        for (int mi = 0; mi < MT; ++mi) {
            af[mi][0] = pack_bf16(p[mi][2 * kk][0], p[mi][2 * kk][1]);
            af[mi][1] = pack_bf16(p[mi][2 * kk][2], p[mi][2 * kk][3]);
            af[mi][2] = pack_bf16(p[mi][2 * kk + 1][0], p[mi][2 * kk + 1][1]);
            af[mi][3] = pack_bf16(p[mi][2 * kk + 1][2], p[mi][2 * kk + 1][3]);
        }
#pragma unroll
        for (int np = 0; np < N / 16; ++np) {
            uint32_t bf[4];
            ldsm_x4_t(bf, smem_addr(b + (kk * 16 + (lane & 15)) * SB + np * 16 + (lane >> 4) * 8));
#pragma unroll
            for (int mi = 0; mi < MT; ++mi) {
                mma_bf16(acc[mi][2 * np], af[mi], bf[0], bf[1]);
                mma_bf16(acc[mi][2 * np + 1], af[mi], bf[2], bf[3]);
            }
        }
    }
}

// Rows slot0 .. slot0 + ROWS - 1 of head h of a [B, T, H * D] bf16 tensor (batch offset row0 =
// b * T) into a shared tile of row stride D + 8, zeros for slots that hold nothing.
// Rows of 16-row groups g without bit g of `groups` are left as they are (never read).
template <int ROWS, int D, int NT>
__device__ __forceinline__ void load_rows(bf16 *tile, const bf16 *src, const Slots &s,
                                          int32_t slot0, int64_t row0, int32_t H, int32_t h,
                                          uint32_t groups = ~0u) {
    constexpr int CH = D / 8; // 16-byte pieces a row
#pragma unroll
    for (int it = 0; it < (ROWS * CH + NT - 1) / NT; ++it) {
        const int i = it * NT + static_cast<int>(threadIdx.x);
        if (ROWS * CH % NT != 0 && i >= ROWS * CH) break;
        const int r = i / CH, c = i % CH;
        if (!((groups >> (r / 16)) & 1u)) continue;
        const int32_t pos = slot_pos32(s, slot0 + r);
        const bf16 *g = src + ((row0 + (pos < 0 ? 0 : pos)) * H + h) * D + c * 8;
        cp_async16(smem_addr(tile + r * (D + 8) + c * 8), g, pos >= 0);
    }
}

// Chunk t of a CSR list (entries from e0, per chunks an entry) into stage t & 1 by NT threads:
// keys (t % per) BN .. + BN - 1 of the (t / per)-th block of the list, their k rows into ks,
// v rows into vs (16-key groups the entry never computes left out) and positions into kpos.
template <int BN, int DQ, int DV, int NT>
__device__ __forceinline__ void
load_key_chunk(bf16 *ks, bf16 *vs, int32_t *kpos, const bf16 *k, const bf16 *v, const LayoutView &L,
               const Work &w, int64_t e0, int32_t per, int64_t row0, int32_t H, int32_t t) {
    constexpr int SQ = DQ + 8, SV = DV + 8;
    const int32_t slot = L.col_idx[e0 + t / per] * L.bs + (t % per) * BN, st = t & 1;
    const uint32_t groups = chunk_mask<BN>(L, L.mode[e0 + t / per], (t % per) * BN).groups;
    load_rows<BN, DQ, NT>(ks + st * BN * SQ, k, w.s, slot, row0, H, w.h, groups);
    load_rows<BN, DV, NT>(vs + st * BN * SV, v, w.s, slot, row0, H, w.h, groups);
    for (int i = threadIdx.x; i < BN; i += NT) kpos[st * BN + i] = slot_pos32(w.s, slot + i);
}

// Zeros an accumulator of N fragments.
template <int N> __device__ __forceinline__ void zero_acc(float (&acc)[N][4]) {
#pragma unroll
    for (int n = 0; n < N; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

// Adds scale x row r (0: g, 1: g + 8) of a 16 x 8N accumulator to the thread's columns of an
// fp32 row (dst: its column (lane % 4) 2), a read-modify-write.
template <int N>
__device__ __forceinline__ void add_row(float *dst, const float (&acc)[N][4], int r, float scale) {
#pragma unroll
    for (int n = 0; n < N; ++n) {
        float2 x = *reinterpret_cast<float2 *>(dst + n * 8);
        x.x += scale * acc[n][2 * r];
        x.y += scale * acc[n][2 * r + 1];
        *reinterpret_cast<float2 *>(dst + n * 8) = x;
    }
}

template <int DQ, int DV, int TILE> struct Shapes {
    static constexpr int NT = TILE * 2; // TILE / 16 warps
    // forward: MT m-tiles (16 rows each) a warp, FNT threads; the o accumulators of two tiles
    // fit in registers up to Dv = 64
    static constexpr int MT = (DV <= 64 && TILE >= 32) ? 2 : 1;
    static constexpr int FNT = TILE * 2 / MT;
    static constexpr int SQ = DQ + 8; // shared row strides (elements)
    static constexpr int SV = DV + 8;
    static constexpr int BN = TILE; // keys a stage (forward, dq)
    // queries a stage (dk, dv): 32 at head dims 128 keeps dk and dv accumulators in registers
    static constexpr int BQ = (DQ + DV >= 256 && TILE > 32) ? 32 : TILE;
    static constexpr size_t kElem = sizeof(bf16);
    static size_t forward_smem() {
        return (TILE * SQ + 2 * BN * (SQ + SV)) * kElem + 2 * BN * sizeof(int32_t);
    }
    static size_t dq_smem() {
        return (TILE * (SQ + SV) + 2 * BN * (SQ + SV)) * kElem + 2 * BN * sizeof(int32_t);
    }
    static size_t dkdv_smem() {
        return (TILE * (SQ + SV) + 2 * BQ * (SQ + SV)) * kElem +
               2 * BQ * (sizeof(int32_t) + 2 * sizeof(float));
    }
};

template <int DQ, int DV, int TILE>
__global__ void __launch_bounds__(Shapes<DQ, DV, TILE>::FNT, 1)
    tc_forward_kernel(LayoutView L, int32_t local_pass, const bf16 *__restrict__ q,
                      const bf16 *__restrict__ k, const bf16 *__restrict__ v,
                      float *__restrict__ out, float *__restrict__ lse, int32_t B, int32_t T,
                      float scale_log2) {
    using S = Shapes<DQ, DV, TILE>;
    constexpr int NT = S::FNT, MT = S::MT, SQ = S::SQ, SV = S::SV, BN = S::BN;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *qs = reinterpret_cast<bf16 *>(smem);
    bf16 *ks = qs + TILE * SQ; // two stages
    bf16 *vs = ks + 2 * BN * SQ;
    int32_t *kpos = reinterpret_cast<int32_t *>(vs + 2 * BN * SV);

    Work w;
    int64_t e0, e1;
    if (!find_list<TILE, false>(L, local_pass, B, T, &w, &e0, &e1)) return;
    const int32_t per = L.bs / BN, H = L.n_head;
    const int32_t n_chunks = static_cast<int32_t>(e1 - e0) * per;
    const int64_t row0 = static_cast<int64_t>(w.b) * T;
    auto issue = [&](int32_t t) {
        load_key_chunk<BN, DQ, DV, NT>(ks, vs, kpos, k, v, L, w, e0, per, row0, H, t);
    };
    load_rows<TILE, DQ, NT>(qs, q, w.s, w.slot0, row0, H, w.h);
    first_stage(n_chunks, issue);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    // m-tile mi of the warp: rows warp MT 16 + mi 16 + (g, g + 8)
    int32_t qp[MT][2];
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
        row_pair_pos(w.s, w.slot0 + (warp * MT + mi) * 16, lane, qp[mi]);
    float o[MT][DV / 8][4];
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) zero_acc(o[mi]);
    float mrow[MT][2], lrow[MT][2]; // log2 units
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
        mrow[mi][0] = mrow[mi][1] = -INFINITY;
        lrow[mi][0] = lrow[mi][1] = 0.0f;
    }

    for (int32_t t = 0; t < n_chunks; ++t) {
        const int st = next_stage(t, n_chunks, issue);
        const bf16 *kt = ks + st * BN * SQ, *vt = vs + st * BN * SV;
        const ChunkMask cm = chunk_mask<BN>(L, L.mode[e0 + t / per], (t % per) * BN);
        if (cm.groups == 0) continue; // the entry computes none of these keys
        float s[MT][BN / 8][4];
#pragma unroll
        for (int mi = 0; mi < MT; ++mi) zero_acc(s[mi]);
        mma_abt_m<MT, DQ, BN, SQ, SQ>(s, qs + warp * MT * 16 * SQ, kt, lane, cm.groups);
#pragma unroll
        for (int mi = 0; mi < MT; ++mi) {
            mask_scores<BN, true>(s[mi], qp[mi], kpos + st * BN, cm, 0u, scale_log2, L, w, lane);
            float mx[2] = {mrow[mi][0], mrow[mi][1]};
#pragma unroll
            for (int n = 0; n < BN / 8; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i) mx[i >> 1] = fmaxf(mx[i >> 1], s[mi][n][i]);
            float base[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                mx[r] = quad_max(mx[r]);
                // a row that has seen no key yet keeps m = -inf; subtracting 0 keeps exp2 finite
                base[r] = mx[r] == -INFINITY ? 0.0f : mx[r];
                const float corr = exp2f(mrow[mi][r] - base[r]);
                mrow[mi][r] = mx[r];
                lrow[mi][r] *= corr;
#pragma unroll
                for (int n = 0; n < DV / 8; ++n) {
                    o[mi][n][2 * r] *= corr;
                    o[mi][n][2 * r + 1] *= corr;
                }
            }
#pragma unroll
            for (int n = 0; n < BN / 8; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    s[mi][n][i] = exp2f(s[mi][n][i] - base[i >> 1]);
                    lrow[mi][i >> 1] += s[mi][n][i];
                }
        }
        mma_pb_m<MT, BN, DV, SV>(o, s, vt, lane, cm.groups);
    }
    cp_async_wait_all(); // nothing in flight at exit when the list was empty

#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float l = quad_sum(lrow[mi][r]);
            if (qp[mi][r] < 0) continue;
            const float inv = l > 0.0f ? 1.0f / l : 0.0f;
            float *dst = out + ((row0 + qp[mi][r]) * H + w.h) * DV + (lane & 3) * 2;
#pragma unroll
            for (int n = 0; n < DV / 8; ++n)
                *reinterpret_cast<float2 *>(dst + n * 8) =
                    make_float2(o[mi][n][2 * r] * inv, o[mi][n][2 * r + 1] * inv);
            if ((lane & 3) == 0)
                lse[(static_cast<int64_t>(w.b) * H + w.h) * T + qp[mi][r]] =
                    l > 0.0f ? (mrow[mi][r] + log2f(l)) * kLn2 : -INFINITY;
        }
}

template <int DQ, int DV, int TILE>
__global__ void __launch_bounds__(TILE * 2, 1)
    tc_dq_kernel(LayoutView L, int32_t local_pass, const bf16 *__restrict__ q,
                 const bf16 *__restrict__ k, const bf16 *__restrict__ v,
                 const bf16 *__restrict__ dout, const float *__restrict__ lse,
                 const float *__restrict__ delta, float *__restrict__ dq, int32_t B, int32_t T,
                 float scale_log2, float scale) {
    using S = Shapes<DQ, DV, TILE>;
    constexpr int NT = S::NT, SQ = S::SQ, SV = S::SV, BN = S::BN;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *qs = reinterpret_cast<bf16 *>(smem);
    bf16 *dos = qs + TILE * SQ;
    bf16 *ks = dos + TILE * SV; // two stages
    bf16 *vs = ks + 2 * BN * SQ;
    int32_t *kpos = reinterpret_cast<int32_t *>(vs + 2 * BN * SV);

    Work w;
    int64_t e0, e1;
    if (!find_list<TILE, false>(L, local_pass, B, T, &w, &e0, &e1)) return;
    const int32_t per = L.bs / BN, H = L.n_head;
    const int32_t n_chunks = static_cast<int32_t>(e1 - e0) * per;
    const int64_t row0 = static_cast<int64_t>(w.b) * T;
    auto issue = [&](int32_t t) {
        load_key_chunk<BN, DQ, DV, NT>(ks, vs, kpos, k, v, L, w, e0, per, row0, H, t);
    };
    load_rows<TILE, DQ, NT>(qs, q, w.s, w.slot0, row0, H, w.h);
    load_rows<TILE, DV, NT>(dos, dout, w.s, w.slot0, row0, H, w.h);
    first_stage(n_chunks, issue);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int32_t qp[2];
    row_pair_pos(w.s, w.slot0 + warp * 16, lane, qp);
    float lse2[2], dl[2];
    row_stats(lse2, dl, qp, lse, delta, (static_cast<int64_t>(w.b) * H + w.h) * T);
    float acc[DQ / 8][4];
    zero_acc(acc);

    for (int32_t t = 0; t < n_chunks; ++t) {
        const int st = next_stage(t, n_chunks, issue);
        const bf16 *kt = ks + st * BN * SQ, *vt = vs + st * BN * SV;
        const ChunkMask cm = chunk_mask<BN>(L, L.mode[e0 + t / per], (t % per) * BN);
        if (cm.groups == 0) continue; // the entry computes none of these keys
        float s[BN / 8][4], dp[BN / 8][4];
        zero_acc(s);
        zero_acc(dp);
        mma_abt<DQ, BN, SQ, SQ>(s, qs + warp * 16 * SQ, kt, lane, cm.groups);
        mask_scores<BN, true>(s, qp, kpos + st * BN, cm, 0u, scale_log2, L, w, lane);
        mma_abt<DV, BN, SV, SV>(dp, dos + warp * 16 * SV, vt, lane, cm.groups);
#pragma unroll
        for (int n = 0; n < BN / 8; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float p = exp2f(s[n][i] - lse2[i >> 1]);
                dp[n][i] = p * (dp[n][i] - dl[i >> 1]); // dS
            }
        mma_pb<BN, DQ, SQ>(acc, dp, kt, lane, cm.groups);
    }
    cp_async_wait_all(); // nothing in flight at exit when the list was empty

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (qp[r] >= 0)
            add_row(dq + ((row0 + qp[r]) * H + w.h) * DQ + (lane & 3) * 2, acc, r, scale);
    }
}

template <int DQ, int DV, int TILE>
__global__ void __launch_bounds__(TILE * 2, 1)
    tc_dkdv_kernel(LayoutView L, int32_t local_pass, const bf16 *__restrict__ q,
                   const bf16 *__restrict__ k, const bf16 *__restrict__ v,
                   const bf16 *__restrict__ dout, const float *__restrict__ lse,
                   const float *__restrict__ delta, float *__restrict__ dk, float *__restrict__ dv,
                   int32_t B, int32_t T, float scale_log2, float scale) {
    using S = Shapes<DQ, DV, TILE>;
    constexpr int NT = S::NT, SQ = S::SQ, SV = S::SV, BQ = S::BQ;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *ks = reinterpret_cast<bf16 *>(smem);
    bf16 *vs = ks + TILE * SQ;
    bf16 *qs = vs + TILE * SV; // two stages
    bf16 *dos = qs + 2 * BQ * SQ;
    int32_t *qpos = reinterpret_cast<int32_t *>(dos + 2 * BQ * SV);
    float *lse2s = reinterpret_cast<float *>(qpos + 2 * BQ);
    float *dls = lse2s + 2 * BQ;

    Work w;
    int64_t e0, e1;
    if (!find_list<TILE, true>(L, local_pass, B, T, &w, &e0, &e1)) return;
    const int32_t per = L.bs / BQ, H = L.n_head;
    const int32_t n_chunks = static_cast<int32_t>(e1 - e0) * per;
    const int64_t row0 = static_cast<int64_t>(w.b) * T,
                  stat0 = (static_cast<int64_t>(w.b) * H + w.h) * T;

    // The keys of this CTA lie at offsets koff .. koff + TILE - 1 of their block, so an entry's
    // 16-key groups koff / 16 + warp are the warps' rows.
    const int koff = w.slot0 - w.blk * L.bs;
    auto cta_groups = [&](uint8_t index) {
        return (L.masks[index].groups >> (koff >> 4)) & ((1u << (TILE / 16)) - 1);
    };
    auto issue = [&](int32_t t) {
        const int32_t slot = L.colT_idx[e0 + t / per] * L.bs + (t % per) * BQ, st = t & 1;
        if (cta_groups(L.modeT[e0 + t / per]) == 0) return; // never read: no warp computes
        load_rows<BQ, DQ, NT>(qs + st * BQ * SQ, q, w.s, slot, row0, H, w.h);
        load_rows<BQ, DV, NT>(dos + st * BQ * SV, dout, w.s, slot, row0, H, w.h);
        for (int i = threadIdx.x; i < BQ; i += NT) {
            query_stats(qpos, lse2s, dls, st * BQ + i, slot_pos32(w.s, slot + i), lse, delta,
                        stat0);
        }
    };
    load_rows<TILE, DQ, NT>(ks, k, w.s, w.slot0, row0, H, w.h);
    load_rows<TILE, DV, NT>(vs, v, w.s, w.slot0, row0, H, w.h);
    first_stage(n_chunks, issue);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int32_t kp[2];
    row_pair_pos(w.s, w.slot0 + warp * 16, lane, kp);
    float dka[DQ / 8][4], dva[DV / 8][4];
    zero_acc(dka);
    zero_acc(dva);

    for (int32_t t = 0; t < n_chunks; ++t) {
        const int st = next_stage(t, n_chunks, issue);
        const bf16 *qt = qs + st * BQ * SQ, *dot = dos + st * BQ * SV;
        const float *l2 = lse2s + st * BQ, *dlt = dls + st * BQ;
        const MaskDesc &md = L.masks[L.modeT[e0 + t / per]];
        const int ko = koff + warp * 16 + (lane >> 2);  // the key offset of the thread's row g
        if (!((md.groups >> (ko >> 4)) & 1u)) continue; // the entry computes none of my keys
        const ChunkMask cm = {0, md.lo, md.hi, 1u, md.flags};
        const uint32_t rbits = ((md.cols[ko >> 5] >> (ko & 31)) & 1u) |
                               (((md.cols[(ko + 8) >> 5] >> ((ko + 8) & 31)) & 1u) << 1);
        // transposed scores: rows are this warp's 16 keys, columns the BQ queries
        float s[BQ / 8][4], dp[BQ / 8][4];
        zero_acc(s);
        zero_acc(dp);
        mma_abt<DQ, BQ, SQ, SQ>(s, ks + warp * 16 * SQ, qt, lane);
        mask_scores<BQ, false>(s, kp, qpos + st * BQ, cm, rbits, scale_log2, L, w, lane);
#pragma unroll
        for (int n = 0; n < BQ / 8; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i)
                s[n][i] = exp2f(s[n][i] - l2[n * 8 + (lane & 3) * 2 + (i & 1)]);
        mma_abt<DV, BQ, SV, SV>(dp, vs + warp * 16 * SV, dot, lane);
        mma_pb<BQ, DV, SV>(dva, s, dot, lane);
#pragma unroll
        for (int n = 0; n < BQ / 8; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i)
                dp[n][i] = s[n][i] * (dp[n][i] - dlt[n * 8 + (lane & 3) * 2 + (i & 1)]);
        mma_pb<BQ, DQ, SQ>(dka, dp, qt, lane);
    }
    cp_async_wait_all(); // nothing in flight at exit when the list was empty

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (kp[r] < 0) continue;
        add_row(dk + ((row0 + kp[r]) * H + w.h) * DQ + (lane & 3) * 2, dka, r, scale);
        add_row(dv + ((row0 + kp[r]) * H + w.h) * DV + (lane & 3) * 2, dva, r, 1.0f);
    }
}

template <int DQ, int DV, int TILE> struct Tc {
    using S = Shapes<DQ, DV, TILE>;
    static void forward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                        const bf16 *q, const bf16 *k, const bf16 *v, float *out, float *lse,
                        int32_t B, int32_t T, float scale) {
        auto kernel = tc_forward_kernel<DQ, DV, TILE>;
        const size_t smem = S::forward_smem();
        unsigned blocks = 0;
        if (!allow_smem(ctx, kernel, smem) || !grid_for(ctx, dl, TILE, B, &blocks)) return;
        kernel<<<blocks, S::FNT, smem, ctx->stream>>>(dl.view, pass, q, k, v, out, lse, B, T,
                                                      scale * kLog2e);
        STX_LAUNCH_CHECK(ctx, "tc_forward_kernel");
    }
    static void backward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                         const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                         const float *lse, const float *delta, float *dq, float *dk, float *dv,
                         int32_t B, int32_t T, float scale) {
        auto kq = tc_dq_kernel<DQ, DV, TILE>;
        auto kkv = tc_dkdv_kernel<DQ, DV, TILE>;
        unsigned blocks = 0;
        if (!allow_smem(ctx, kq, S::dq_smem()) || !allow_smem(ctx, kkv, S::dkdv_smem()) ||
            !grid_for(ctx, dl, TILE, B, &blocks))
            return;
        kq<<<blocks, S::NT, S::dq_smem(), ctx->stream>>>(dl.view, pass, q, k, v, dout, lse, delta,
                                                         dq, B, T, scale * kLog2e, scale);
        if (!STX_LAUNCH_CHECK(ctx, "tc_dq_kernel")) return;
        kkv<<<blocks, S::NT, S::dkdv_smem(), ctx->stream>>>(
            dl.view, pass, q, k, v, dout, lse, delta, dk, dv, B, T, scale * kLog2e, scale);
        STX_LAUNCH_CHECK(ctx, "tc_dkdv_kernel");
    }
};

// Calls f(Tc<DQ, DV, TILE>()) for the compiled head dims, TILE = min(block size, 64).
template <typename F> bool tc_dispatch(int32_t Dq, int32_t Dv, int32_t bs, F &&f) {
#define STX_TC_CASE(DQ, DV)                                                                        \
    if (Dq == DQ && Dv == DV) {                                                                    \
        if (bs == 16)                                                                              \
            f(Tc<DQ, DV, 16>());                                                                   \
        else if (bs == 32)                                                                         \
            f(Tc<DQ, DV, 32>());                                                                   \
        else                                                                                       \
            f(Tc<DQ, DV, 64>());                                                                   \
        return true;                                                                               \
    }
    STX_TC_CASE(32, 32)
    STX_TC_CASE(64, 64)
    STX_TC_CASE(128, 128)
    STX_TC_CASE(32, 64)
    STX_TC_CASE(64, 128)
#undef STX_TC_CASE
    return false;
}

} // namespace

bool tc_attention_supported(int32_t Dq, int32_t Dv, int32_t block_size) {
    const bool dims =
        (Dq == 32 || Dq == 64 || Dq == 128) && (Dv == Dq || (Dv == 2 * Dq && Dv <= 128));
    const bool block =
        block_size == 16 || block_size == 32 || block_size == 64 || block_size == 128;
    return dims && block;
}

void tc_to_bf16(Context *ctx, __nv_bfloat16 *dst, const float *src, int64_t n) {
    if (!ctx->ok() || n <= 0) return;
    launch_to_bf16(ctx->stream, dst, src, n);
    STX_LAUNCH_CHECK(ctx, "to_bf16_kernel");
}

void tc_attention_forward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                          const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                          float *out, float *lse, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                          float scale) {
    if (!ctx->ok()) return;
    tc_dispatch(Dq, Dv, dl.view.bs,
                [&](auto tc) { tc.forward(ctx, dl, pass, q, k, v, out, lse, B, T, scale); });
}

void tc_attention_backward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl,
                           int32_t pass, const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                           const __nv_bfloat16 *v, const __nv_bfloat16 *dout, const float *lse,
                           const float *delta, float *dq, float *dk, float *dv, int32_t B,
                           int32_t T, int32_t Dq, int32_t Dv, float scale) {
    if (!ctx->ok()) return;
    tc_dispatch(Dq, Dv, dl.view.bs, [&](auto tc) {
        tc.backward(ctx, dl, pass, q, k, v, dout, lse, delta, dq, dk, dv, B, T, scale);
    });
}

} // namespace cuda
} // namespace stx
