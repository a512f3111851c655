// attention_tc.cuh: what attention.cu (the layout on the device, the fp32 kernels, the pass
// loop) and attention_tc.cu (the bf16 tensor-core kernels) share: the device copy of a
// Layout, the element predicate of a pass, and the tensor-core entry points.
#pragma once
#include <cuda_bf16.h>

#include <memory>

#include "context.cuh"
#include "layout.h"
#include "pattern.h"

namespace stx {
namespace cuda {

struct DevPass {
    int32_t transposed, stride, n_qblocks, comp_begin, comp_end;
    int64_t rows, n_slots;
    int64_t row_ptr_off;  // this pass's n_qblocks + 1 entries of row_ptr
    int64_t colT_ptr_off; // and of colT_ptr (query blocks reading each key block)
    int64_t order_off;    // and its n_qblocks entries of order and orderT
    // and its (n_qblocks + 1) / 2 entries of order and orderT that rank the pairs of blocks
    // (2 p, 2 p + 1) by the length of the union of their lists (attention_wgmma_pairs.cu)
    int64_t pair_off;
    // Block size 32 only (0 elsewhere): after the ranks, at pair_off + (n_qblocks + 1) / 2,
    // (n_qblocks + 1) / 2 + 1 offsets (int32, in PairChunks from chunk_off) of each pair's
    // chunks, and at chunk_off (a multiple of 4) the PairChunks of the pairs' unions: of the
    // CSR lists in order, of the transposed lists at chunkT_off in orderT.
    int64_t chunk_off, chunkT_off;
};

// A stage of the walk of attention_wgmma_pairs.cu over the union of the ascending lists of
// blocks 2 p and 2 p + 1 (row halves r = 0, 1), built on the host (attention.cu) and copied
// as is into shared memory: union entries 2 t and 2 t + 1, the second -1 at an odd end.
struct PairChunk {
    int32_t blk[2]; // the other side's blocks (-1: none)
    uint32_t modes; // byte 2 c + r: the mask index of the entry (r, blk[c]) where listed
    // bits 2 c, 2 c + 1: the 16-row groups of blk[c] some entry computes; bit 4 + 2 c + r:
    // (r, blk[c]) is listed
    uint32_t bits;

    // The mask index of (r, blk[c]), -1 where that entry is not listed.
    __host__ __device__ int32_t mode(int c, int r) const {
        return (bits >> (4 + 2 * c + r)) & 1u
                   ? static_cast<int32_t>((modes >> (16 * c + 8 * r)) & 0xffu)
                   : -1;
    }
    __host__ __device__ uint32_t groups(int c) const { return (bits >> (2 * c)) & 3u; }
    // some warp computes something
    __host__ __device__ bool live() const { return (bits & 15u) != 0; }
};
static_assert(sizeof(PairChunk) == 16, "one cp.async of 16 bytes");

struct DevComp {
    int32_t kind, l, c, g;
};

// What the tensor-core kernels compute inside one (query block, key block) entry of a pass,
// decided on the host from the pattern's definition (attention.cu, entry_mask) and shared by
// entries through a small table. Slots that hold no position (padded, or >= T) are masked at
// run time whatever the mask says. Unless kMaskGeneric, the entry computes (q, k) exactly when
//     k <= q  and  (cols has the key's offset in its block  or  lo <= q - k < hi)
// (positions), which covers full and causal blocks (cols all ones), a local window at its edge
// (a band), fixed summary cells (a set of key columns, the same for every query) and strided
// passes after a local or fixed part (a band or a column set); kMaskGeneric entries evaluate
// the pass predicate per element (pass_ok).
enum MaskFlags : uint32_t {
    kMaskGeneric = 1, // evaluate pass_ok per element
    kMaskFull = 2,    // every pair is computed (the keys lie wholly before the queries)
};

struct MaskDesc {
    uint32_t cols[4]; // bit o: the key at offset o of its block (o < block size <= 128)
    int32_t lo, hi;   // the band of q - k (lo >= 0; empty when lo >= hi)
    uint32_t groups;  // bit g: some key at offsets [16 g, 16 g + 16) may be computed
    uint32_t flags;   // MaskFlags
};

// Everything a kernel needs to walk a layout; passed by value.
struct LayoutView {
    const DevPass *passes;
    const DevComp *comps;
    const int64_t *row_ptr;
    const int32_t *col_idx;
    const int64_t *colT_ptr;
    const int32_t *colT_idx;
    const uint8_t *user;
    const int32_t *head_pass_begin; // passes of head h: [begin[h], begin[h+1])
    const MaskDesc *masks;          // the distinct masks of the layout's entries
    const uint8_t *mode;            // mask (index into masks) of each col_idx entry
    const uint8_t *modeT;           // and of each colT_idx entry
    const int32_t *order;           // per pass: query blocks by descending length of their CSR list
    const int32_t *orderT; // per pass: key blocks by descending length of their transposed list
    int32_t n_ctx, n_head, bs, user_nb;
};

struct DeviceLayout {
    DeviceBuffer<DevPass> passes;
    DeviceBuffer<DevComp> comps;
    DeviceBuffer<int64_t> row_ptr, colT_ptr;
    DeviceBuffer<int32_t> col_idx, colT_idx, head_pass_begin, order, orderT;
    DeviceBuffer<uint8_t> user, mode, modeT;
    DeviceBuffer<MaskDesc> masks;
    int32_t max_passes = 0;
    int32_t max_qblocks = 0;
    LayoutView view{};
};

__device__ __forceinline__ bool comp_ok(const LayoutView &L, const DevComp &c, int32_t h, int64_t q,
                                        int64_t k) {
    if (c.kind == static_cast<int32_t>(CompKind::User))
        return L.user[(static_cast<int64_t>(h) * L.user_nb + q / L.bs) * L.user_nb + k / L.bs] != 0;
    return component_allows_raw(static_cast<CompKind>(c.kind), c.l, c.c, c.g, h, q, k);
}

// Layout::pass_allows on the device: in pass pg, and in no earlier pass of the head.
__device__ inline bool pass_ok(const LayoutView &L, int32_t h, int32_t p0, int32_t pg, int64_t q,
                               int64_t k) {
    bool in = false;
    for (int32_t c = L.passes[pg].comp_begin; c < L.passes[pg].comp_end && !in; ++c)
        in = comp_ok(L, L.comps[c], h, q, k);
    if (!in) return false;
    for (int32_t p = p0; p < pg; ++p)
        for (int32_t c = L.passes[p].comp_begin; c < L.passes[p].comp_end; ++c)
            if (comp_ok(L, L.comps[c], h, q, k)) return false;
    return true;
}

// The tensor-core (mma.sync bf16) kernels: head dims (Dq, Dv) in {(32, 32), (64, 64),
// (128, 128), (32, 64), (64, 128)}, every block size of the layout (16 to 128).
bool tc_attention_supported(int32_t Dq, int32_t Dv, int32_t block_size);

// dst = bf16(src), n elements.
void tc_to_bf16(Context *ctx, __nv_bfloat16 *dst, const float *src, int64_t n);

// One pass of a head's layout: out and lse in the format of the fp32 kernels (lse over the
// keys of this pass only; -inf where it has none), for the passes to be merged by their lse.
void tc_attention_forward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                          const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                          float *out, float *lse, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                          float scale);

// One pass of backward: dq, dk, dv += the pass's share, from the merged lse and
// delta = rowsum(dout * out). Deterministic: every output row has one writer per launch.
void tc_attention_backward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl,
                           int32_t pass, const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                           const __nv_bfloat16 *v, const __nv_bfloat16 *dout, const float *lse,
                           const float *delta, float *dq, float *dk, float *dv, int32_t B,
                           int32_t T, int32_t Dq, int32_t Dv, float scale);

// Whether this context may use the sm_90a wgmma kernels (an sm_90 device, code built for
// sm_90a, not switched off).
bool wgmma_usable(Context *ctx);

// Hopper (sm_90a) wgmma version of tc_attention_forward for block sizes 32 (pairs of blocks a
// CTA: attention_wgmma_pairs.cu), 64 and 128 and (Dq, Dv) in {(64, 64), (128, 128), (64, 128)};
// false (nothing launched) elsewhere.
bool wg_attention_forward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                          const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                          float *out, float *lse, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                          float scale);

// Hopper (sm_90a) wgmma version of tc_attention_backward for block sizes 32 (pairs), 64 and
// 128 and (Dq, Dv) in {(64, 64), (128, 128), (64, 128)}; false (nothing launched) elsewhere.
bool wg_attention_backward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl,
                           int32_t pass, const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                           const __nv_bfloat16 *v, const __nv_bfloat16 *dout, const float *lse,
                           const float *delta, float *dq, float *dk, float *dv, int32_t B,
                           int32_t T, int32_t Dq, int32_t Dv, float scale);

// The block-32 versions of the two above (attention_wgmma_pairs.cu), which they call; the
// caller has checked the block size, the head dims and wgmma_usable.
void wg_pairs_forward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                      const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                      float *out, float *lse, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                      float scale);
void wg_pairs_backward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                       const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                       const __nv_bfloat16 *dout, const float *lse, const float *delta, float *dq,
                       float *dk, float *dv, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                       float scale);

} // namespace cuda
} // namespace stx
