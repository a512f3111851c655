// decode_plan.h: which keys and values a decoder keeps for one layer, where, and which it reads
// for the query at position i: the pattern's own rules (lib/pattern.h), per head.
//
//  - A head whose pattern has a dense, strided or user part keeps every position p at slot p:
//    strided:L reads only i/L + 1 of them per query, but a later query reads every residue class.
//  - Otherwise (local and fixed parts only) it keeps a ring of the last R positions at slot
//    p mod R (R = the largest local width or fixed block length, so every key of the query's
//    own window or block is in the ring) and, for a fixed part, the summary cells of every
//    block for good: cell p mod L in [lo, lo + C) at slot R + (p / L) C + (p mod L - lo).
//    fixed:128:32:4 at n_ctx 12,288 keeps 128 + 96 x 32 = 3,200 slots a head instead of 12,288.
//
// The keys of query i are enumerated part by part as candidates (a range, a stride, the
// query's block then earlier summaries) and a candidate counts only where its part allows it
// and no earlier part of the head does, so each key is read once, as in the layout's passes.
// Everything here is STX_HD: the CPU decoder and the CUDA kernels share it.
#pragma once
#include <cstdint>
#include <vector>

#include "layout.h"
#include "pattern.h"

namespace stx {

struct DecodeComp {
    int32_t kind, l, c, g; // CompKind and the component's numbers
};

const int32_t kDecodeMaxComps = 8; // distinct parts of one head's merged pattern
// A prefill runs the ordinary forward over groups of sequences of at most this many rows
// (positions x sequences; one sequence at least), so its activations stay bounded.
const int32_t kPrefillRows = 1 << 13;

struct DecodeHead {
    int32_t keep_all;             // 1: slot = position
    int32_t ring;                 // else: the last `ring` positions at slot position mod ring
    int32_t sum_l, sum_lo, sum_c; // a fixed part's summary cells kept for good (sum_c 0: none)
    int32_t n_comps;
    DecodeComp comps[kDecodeMaxComps];
};

// A layer's plan: one DecodeHead per head, `slots` per head in the cache (the most any head
// needs). User layouts (a model with stx_model_set_layer_layout) keep every position and are
// answered by `user` (their [n_head][nb][nb] block mask, nb = user_nb, blocks of user_bs).
struct DecodePlan {
    int32_t n_ctx = 0, n_head = 0;
    int64_t slots = 0;
    std::vector<DecodeHead> heads;
    const uint8_t *user = nullptr; // the Layout's user_blocks (kept alive by the layout)
    int32_t user_nb = 0, user_bs = 0;
};

// STX_ERR_UNSUPPORTED when a head has more than kDecodeMaxComps distinct parts.
stx_status build_decode_plan(const Layout &layout, DecodePlan *out);

// The slot that holds key `pos` for a query at `query` (query - R < pos <= query: the ring).
STX_HD int64_t decode_read_slot(const DecodeHead &h, int64_t query, int64_t pos) {
    if (h.keep_all) return pos;
    if (query - pos < h.ring) return pos % h.ring;
    return h.ring + (pos / h.sum_l) * h.sum_c + (pos % h.sum_l - h.sum_lo);
}

// The slots position `pos` is written to: *ring_slot always, *summary_slot or -1.
STX_HD void decode_write_slots(const DecodeHead &h, int64_t pos, int64_t *ring_slot,
                               int64_t *summary_slot) {
    *summary_slot = -1;
    if (h.keep_all) {
        *ring_slot = pos;
        return;
    }
    *ring_slot = pos % h.ring;
    if (h.sum_c > 0) {
        const int64_t cell = pos % h.sum_l;
        if (cell >= h.sum_lo && cell < h.sum_lo + h.sum_c)
            *summary_slot = h.ring + (pos / h.sum_l) * h.sum_c + (cell - h.sum_lo);
    }
}

// Whether part c of head `head` allows key k for query q (user parts read the block mask).
STX_HD bool decode_comp_allows(const DecodeComp &c, const uint8_t *user, int32_t user_nb,
                               int32_t user_bs, int32_t head, int64_t q, int64_t k) {
    if (c.kind == static_cast<int32_t>(CompKind::User))
        return user[(static_cast<int64_t>(head) * user_nb + q / user_bs) * user_nb + k / user_bs] !=
               0;
    return component_allows_raw(static_cast<CompKind>(c.kind), c.l, c.c, c.g, head, q, k);
}

// Candidates part c proposes for query i: their number, and the t-th (0 <= t < count).
STX_HD int64_t decode_candidate_count(const DecodeComp &c, int64_t i) {
    switch (static_cast<CompKind>(c.kind)) {
    case CompKind::Local:
        return i + 1 < c.l ? i + 1 : c.l;
    case CompKind::Strided:
        return i / c.l + 1;
    case CompKind::Fixed: // the query's own block so far, then C summary cells per earlier block
        return i % c.l + 1 + (i / c.l) * c.c;
    default: // dense, user: every earlier key
        return i + 1;
    }
}

STX_HD int64_t decode_candidate(const DecodeComp &c, int32_t head, int64_t i, int64_t t) {
    switch (static_cast<CompKind>(c.kind)) {
    case CompKind::Local:
        return i - t;
    case CompKind::Strided:
        return i - t * c.l;
    case CompKind::Fixed: {
        const int64_t own = i % c.l + 1;
        if (t < own) return i - t;
        const int64_t s = t - own, lo = c.l - (head % c.g + 1) * c.c;
        return (s / c.c) * c.l + lo + s % c.c;
    }
    default:
        return i - t;
    }
}

// Whether candidate k of part `part` is read: allowed there and by no earlier part.
STX_HD bool decode_reads(const DecodeHead &h, const uint8_t *user, int32_t user_nb, int32_t user_bs,
                         int32_t head, int32_t part, int64_t q, int64_t k) {
    if (!decode_comp_allows(h.comps[part], user, user_nb, user_bs, head, q, k)) return false;
    for (int32_t e = 0; e < part; ++e)
        if (decode_comp_allows(h.comps[e], user, user_nb, user_bs, head, q, k)) return false;
    return true;
}

struct ModelSpec;
class Backend;
class ForwardObserver;

// The group of sequences a decoder's prefill forward runs now: sequences b0 .. b0 + nb, each
// T rows; T is 0 outside a prefill.
struct PrefillGroup {
    int32_t b0 = 0, nb = 0, T = 0;
};

// A decoder's prefill: tokens [B][n] go through `model`'s ordinary forward with `observer`, in
// groups of sequences of at most kPrefillRows rows, each a forward of T = n + 1 rows (the last
// row reads token n - 1; its own token is unused). *group is set before each forward (the
// observer's calls that follow are about its sequences) and cleared at the end.
stx_status run_prefill(Backend &model, ForwardObserver *observer, const uint8_t *tokens, int32_t B,
                       int32_t n, PrefillGroup *group);

// Plans of every layer of a model (layers sharing a layout share a plan's numbers).
stx_status build_decode_plans(const ModelSpec &spec, std::vector<DecodePlan> *out);
// Bytes of a whole model's cache for `batch` sequences in elements of elem_bytes.
int64_t decode_state_bytes(const ModelSpec &spec, int32_t batch, int32_t elem_bytes);

// Bytes of a layer's cache: batch x heads x slots x (Dq + Dv) elements of elem_bytes.
inline int64_t decode_cache_bytes(const DecodePlan &p, int32_t batch, int32_t Dq, int32_t Dv,
                                  int32_t elem_bytes) {
    return static_cast<int64_t>(batch) * p.n_head * p.slots * (Dq + Dv) * elem_bytes;
}

} // namespace stx
