// layout.h: block layouts derived from patterns. A head's attention is one or more
// "passes"; each pass runs over slots in one order with a CSR list of active key blocks
// per query block:
//  - natural order: slot s holds position s (dense, local, fixed, user layouts);
//  - strided transposed order (the paper's trick): with R = ceil(n_ctx / L), slot
//    c*R + r holds position r*L + c (padded slots whose position >= n_ctx hold nothing),
//    so strided:L becomes causal attention inside chunks of R slots.
// All natural-order parts of a merged pattern share one pass (their union); each strided
// part gets its own transposed pass. Pass p allows (q, k) when one of its `include`
// components allows it and no earlier pass of the head does, so a key shared by two parts
// is counted once and the passes combine exactly through their log-sum-exp.
#pragma once
#include <cstdint>
#include <vector>

#include "pattern.h"

namespace stx {

struct AttnPass {
    bool transposed = false;
    int32_t stride = 0;             // L of the transposed order
    int64_t rows = 0;               // R = ceil(n_ctx / L) (transposed only)
    int64_t n_slots = 0;            // n_ctx (natural) or R * L (transposed)
    int32_t n_qblocks = 0;          // ceil(n_slots / block_size)
    std::vector<int64_t> row_ptr;   // CSR over query blocks, n_qblocks + 1 entries
    std::vector<int32_t> col_idx;   // active key blocks of each query block, ascending
    std::vector<Component> include; // the pattern parts this pass computes
};

struct HeadLayout {
    std::vector<AttnPass> passes;
};

struct Layout {
    uint64_t id = 0; // unique per built layout: a device copy is cached under it
    int32_t n_ctx = 0;
    int32_t n_head = 0;
    int32_t block_size = 0;
    std::vector<HeadLayout> heads; // one per head
    // User-supplied layouts: [n_head][nb][nb] with nb = ceil(n_ctx / block_size); a
    // Component of kind User in a pass reads from here.
    std::vector<uint8_t> user_blocks;
    int32_t user_nb = 0;

    // Element-wise union over all passes of the head (0 <= k <= q < n_ctx).
    bool allows(int32_t head, int64_t q, int64_t k) const;
    // Whether pass `pass` of the head computes (q, k): included there and in no earlier pass.
    bool pass_allows(int32_t head, size_t pass, int64_t q, int64_t k) const;
    // Whether one component allows (q, k) for this head (User kind answered from user_blocks).
    bool component_allows_at(const Component &c, int32_t head, int64_t q, int64_t k) const;
};

// Position held by a slot, or -1 for a padded slot (shared with the CUDA kernels).
STX_HD int64_t slot_position_raw(bool transposed, int32_t stride, int64_t rows, int64_t n,
                                 int64_t slot) {
    if (!transposed) return slot < n ? slot : -1;
    const int64_t r = slot % rows, c = slot / rows;
    const int64_t pos = r * stride + c;
    return pos < n ? pos : -1;
}

inline int64_t slot_position(const AttnPass &p, int32_t n_ctx, int64_t slot) {
    return slot_position_raw(p.transposed, p.stride, p.rows, n_ctx, slot);
}

// Errors: STX_ERR_INVALID_ARGUMENT (n_ctx, n_head or block size out of range) with a message.
stx_status build_layout(const LayerPattern &pattern, int32_t n_ctx, int32_t n_head,
                        int32_t block_size, Layout *out);
stx_status build_layout_from_blocks(int32_t n_ctx, int32_t n_head, int32_t block_size,
                                    const uint8_t *blocks, Layout *out);

// Computed blocks and allowed (q, k) pairs of one head over a full n_ctx.
void layout_stats(const Layout &layout, int32_t head, int64_t *n_blocks, int64_t *n_pairs);

} // namespace stx
