// attention.cu: block-sparse attention on the GPU, forward and backward, over the same
// layouts as the reference (lib/layout.h): per head one or more passes, each over slots in
// natural or strided-transposed order with a CSR list of active key blocks per query block.
//
// The kernels here are the simple, correct ones and the fp32 path: FlashAttention-style, one
// thread per query row, key and value tiles of one block in shared memory, an online softmax,
// the log-sum-exp saved for backward, the T x T matrix never stored, the element mask
// evaluated with the reference's own predicate (lib/pattern.h, lib/layout.h). The bf16 mode
// runs the tensor-core kernels of attention_tc.cu over the same device layout, which this file
// builds (with each entry's mask and a longest-first launch order) and whose passes it
// loops over. Passes of a merged pattern are combined through their log-sum-exp. Backward:
// D = rowsum(dO * O); dq query-centric over the CSR lists; dk and dv key-centric over the
// transposed lists, so nothing is accumulated with atomics and every run gives the same bits.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <vector>

#include "attention_tc.cuh"

namespace stx {
namespace cuda {

namespace {

template <typename T>
bool upload(const std::shared_ptr<Context> &ctx, DeviceBuffer<T> &dst, const std::vector<T> &src) {
    dst.allocate_for_context(ctx.get(), src.size()); // the Context caches the layout
    if (!ctx->ok()) return false;
    if (src.empty()) return true;
    return STX_CUDA_CHECK(ctx, cudaMemcpyAsync(dst.data(), src.data(), src.size() * sizeof(T),
                                               cudaMemcpyHostToDevice, ctx->stream));
}

// --- entry masks (the MaskDesc of attention_tc.cuh) ---
// While it is built, an entry's mask is one of two forms over the pairs (q, k) of the entry
// with k <= q: OR form, (q, k) computed iff cols[k offset] or lo <= q - k < hi (what the
// kernels evaluate); AND form (transposed passes), iff cols[k offset] and q - k >= lo.
struct EntryMask {
    uint32_t cols[4] = {0, 0, 0, 0};
    int64_t lo = 0, hi = 0;
    bool generic = false;
};

constexpr int64_t kBandOpen = 0x7fffffff; // hi of a band open to the right

bool col_bit(const EntryMask &m, int64_t o) {
    return (m.cols[o >> 5] >> (o & 31)) & 1u;
}
void set_col(EntryMask &m, int64_t o) {
    m.cols[o >> 5] |= 1u << (o & 31);
}
void set_cols(EntryMask &m, int64_t n) {
    for (int64_t o = 0; o < n; ++o) set_col(m, o);
}
// Whether (a & keep) == keep, and whether a & keep is empty.
bool cols_cover(const EntryMask &a, const EntryMask &keep) {
    for (int w = 0; w < 4; ++w)
        if ((a.cols[w] & keep.cols[w]) != keep.cols[w]) return false;
    return true;
}
bool cols_none(const EntryMask &a, const EntryMask &keep) {
    for (int w = 0; w < 4; ++w)
        if ((a.cols[w] & keep.cols[w]) != 0) return false;
    return true;
}

bool fixed_cell(const Component &c, int32_t h, int64_t k) {
    const int64_t g = h % c.g, cell = k % c.l;
    return cell >= c.l - (g + 1) * c.c && cell < c.l - g * c.c;
}

// OR form of natural-order component c over query positions [s0, s1] and keys [t0, t1]
// (entry (i, j) of pass 0; slots are positions there).
EntryMask natural_mask(const Layout &lay, const Component &c, int32_t h, int64_t i, int64_t j,
                       int64_t s0, int64_t s1, int64_t t0, int64_t t1) {
    EntryMask m;
    switch (c.kind) {
    case CompKind::Dense:
        set_cols(m, t1 - t0 + 1);
        break;
    case CompKind::Local:
        if (s1 - t0 < c.l)
            set_cols(m, t1 - t0 + 1); // the widest pair (s1, t0) is inside the window
        else if (s0 - t1 < c.l)
            m.hi = c.l; // else no pair is: nothing
        break;
    case CompKind::Strided:
        // natural order holds strided:1 (dense) and strided:L >= n (the diagonal q == k)
        if (c.l == 1)
            set_cols(m, t1 - t0 + 1);
        else if (c.l >= lay.n_ctx)
            m.hi = 1;
        else
            m.generic = true;
        break;
    case CompKind::Fixed: {
        // Queries q and keys k <= q share an L-block when k >= y (the L-block of the last
        // query; any q >= k lies there too); keys before x (the L-block of the first query)
        // are read through the summary cells only. Keys in [x, y) pair both ways: generic.
        const int64_t x = (s0 / c.l) * c.l, y = (s1 / c.l) * c.l;
        if (t1 < x || t0 >= y) {
            for (int64_t k = t0; k <= t1; ++k)
                if (k >= y || fixed_cell(c, h, k)) set_col(m, k - t0);
        } else {
            m.generic = true;
        }
        break;
    }
    case CompKind::User:
        if (lay.user_blocks[(static_cast<size_t>(h) * lay.user_nb + static_cast<size_t>(i)) *
                                lay.user_nb +
                            static_cast<size_t>(j)] != 0)
            set_cols(m, t1 - t0 + 1);
        break;
    }
    return m;
}

// a |= b in OR form: bands that overlap or touch merge, two apart are generic.
void unite(EntryMask &a, const EntryMask &b) {
    a.generic = a.generic || b.generic;
    for (int w = 0; w < 4; ++w) a.cols[w] |= b.cols[w];
    if (b.lo >= b.hi) return;
    if (a.lo >= a.hi) {
        a.lo = b.lo;
        a.hi = b.hi;
    } else if (b.lo <= a.hi && a.lo <= b.hi) {
        a.lo = std::min(a.lo, b.lo);
        a.hi = std::max(a.hi, b.hi);
    } else {
        a.generic = true;
    }
}

int64_t gcd64(int64_t a, int64_t b) {
    while (b != 0) {
        const int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

// The MaskDesc of an OR-form mask. valid: the key offsets holding a position (the others
// are masked at run time, so their bits do not matter); q - k of the entry's pairs lies in
// [dlo, dhi]; before: every key slot precedes every query slot.
MaskDesc finish_mask(EntryMask m, const EntryMask &valid, int64_t n_keys, int64_t dlo, int64_t dhi,
                     bool before) {
    MaskDesc d{};
    if (m.generic) {
        d.flags = kMaskGeneric;
        for (int64_t g = 0; g * 16 < n_keys; ++g) d.groups |= 1u << g;
        return d;
    }
    // A band covering every pair is all columns; one missing them all is nothing.
    if (m.lo < m.hi && m.lo <= dlo && m.hi > dhi) set_cols(m, n_keys);
    if (m.lo >= m.hi || m.lo > dhi || m.hi <= dlo || cols_cover(m, valid)) m.lo = m.hi = 0;
    for (int w = 0; w < 4; ++w) d.cols[w] = m.cols[w] & valid.cols[w];
    d.lo = static_cast<int32_t>(m.lo);
    d.hi = static_cast<int32_t>(std::min(m.hi, kBandOpen));
    if (cols_cover(m, valid) && before) d.flags = kMaskFull;
    for (int64_t g = 0; g * 16 < n_keys; ++g) {
        bool any = m.lo < m.hi;
        for (int64_t o = g * 16; o < std::min(n_keys, g * 16 + 16) && !any; ++o)
            any = col_bit(m, o) && col_bit(valid, o);
        if (any) d.groups |= 1u << g;
    }
    return d;
}

// The mask of entry (query block i, key block j) of pass p of head h, from the pattern's
// definition. O(block) per entry, so layouts of a million positions stay cheap.
MaskDesc entry_mask(const Layout &lay, const HeadLayout &hl, size_t p, int32_t h, int64_t i,
                    int64_t j) {
    const AttnPass &ap = hl.passes[p];
    const int64_t bs = lay.block_size;
    const int64_t s0 = i * bs, s1 = std::min(s0 + bs, ap.n_slots) - 1;
    const int64_t t0 = j * bs, t1 = std::min(t0 + bs, ap.n_slots) - 1;
    const int64_t n_keys = t1 - t0 + 1;
    EntryMask valid, m;
    for (int64_t o = 0; o < n_keys; ++o)
        if (slot_position(ap, lay.n_ctx, t0 + o) >= 0) set_col(valid, o);
    if (!ap.transposed) {
        if (p != 0) { // natural parts share pass 0; never reached
            m.generic = true;
        } else {
            for (const Component &c : ap.include)
                unite(m, natural_mask(lay, c, h, i, j, s0, s1, t0, t1));
        }
        return finish_mask(m, valid, n_keys, std::max<int64_t>(0, s0 - t1), s1 - t0, t1 <= s0);
    }
    // strided:L computes exactly the pairs of one chunk (a column of the transposed order)
    // with k <= q, which there is slot order, less those of earlier passes; blocks across
    // chunks are generic. Inside chunk `col`, key slot t holds col + (t - col R) L and
    // q - k = d L, d the slot distance, in [dmin, dmax].
    const int64_t R = ap.rows, L = ap.stride, col = s0 / R;
    const int64_t dmin = std::max<int64_t>(0, s0 - t1), dmax = s1 - t0;
    if (s1 / R != col || t0 / R != col || t1 / R != col) {
        m.generic = true;
        return finish_mask(m, valid, n_keys, dmin * L, dmax * L, false);
    }
    set_cols(m, n_keys); // AND form: cols allowed, q - k >= lo
    auto none = [&] { return finish_mask(EntryMask(), valid, n_keys, 0, 0, false); };
    for (size_t pp = 0; pp < p && !m.generic; ++pp)
        for (const Component &c : hl.passes[pp].include) {
            switch (c.kind) {
            case CompKind::Dense:
                return none();
            case CompKind::User:
                m.generic = true;
                break;
            case CompKind::Local:
                m.lo = std::max<int64_t>(m.lo, c.l);
                break;
            case CompKind::Strided: {
                // (d L) mod l' == 0 exactly when m' = l' / gcd(L, l') divides d: d = 0 always,
                // and then every m'-th row, which is generic unless no such d > 0 occurs.
                const int64_t mm = c.l / gcd64(L, c.l);
                if (mm == 1) return none();
                m.lo = std::max<int64_t>(m.lo, 1);
                if (mm <= dmax && (std::max<int64_t>(dmin, 1) + mm - 1) / mm * mm <= dmax)
                    m.generic = true;
                break;
            }
            case CompKind::Fixed:
                // Same L'-block: never when dmin L >= l'; only d = 0 when L >= l'.
                if (dmin * L < c.l) {
                    if (L >= c.l)
                        m.lo = std::max<int64_t>(m.lo, 1);
                    else
                        m.generic = true;
                }
                for (int64_t o = 0; o < n_keys; ++o) {
                    const int64_t pos = slot_position(ap, lay.n_ctx, t0 + o);
                    if (pos >= 0 && fixed_cell(c, h, pos)) m.cols[o >> 5] &= ~(1u << (o & 31));
                }
                break;
            }
            if (m.generic) break;
        }
    // AND form to OR form.
    if (!m.generic && m.lo > dmin * L) {
        if (m.lo > dmax * L || cols_none(m, valid)) return none();
        if (!cols_cover(m, valid)) {
            m.generic = true;
        } else {
            for (int w = 0; w < 4; ++w) m.cols[w] = 0;
            m.hi = kBandOpen;
        }
    } else {
        m.lo = m.hi = 0;
    }
    return finish_mask(m, valid, n_keys, dmin * L, dmax * L, t1 <= s0);
}
// --- end of entry masks ---

// Indices 0..n-1 by descending len(i) (stable), for launching long rows first.
template <typename Len> std::vector<int32_t> by_length(int32_t n, Len len) {
    std::vector<int32_t> order(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return len(a) > len(b); });
    return order;
}

// The blocks of a pass by descending length of their lists (ptr[first ..] into idx), and the
// pairs of blocks (2 p, 2 p + 1; the last alone when n is odd) by descending length of the
// union of their lists (both ascending), appended to `order`.
void append_orders(std::vector<int32_t> &order, const std::vector<int64_t> &ptr,
                   const std::vector<int32_t> &idx, size_t first, int32_t n) {
    auto at = [&](int32_t i) { return ptr[first + static_cast<size_t>(i)]; };
    const std::vector<int32_t> blocks = by_length(n, [&](int32_t i) { return at(i + 1) - at(i); });
    const std::vector<int32_t> pairs = by_length((n + 1) / 2, [&](int32_t p) {
        int64_t a = at(2 * p), b = 2 * p + 1 < n ? at(2 * p + 1) : a;
        const int64_t a1 = b, b1 = 2 * p + 1 < n ? at(2 * p + 2) : a;
        int64_t len = 0;
        for (; a < a1 || b < b1; ++len) {
            const int32_t x = a < a1 ? idx[static_cast<size_t>(a)] : INT32_MAX;
            const int32_t y = b < b1 ? idx[static_cast<size_t>(b)] : INT32_MAX;
            a += x <= y;
            b += y <= x;
        }
        return len;
    });
    order.insert(order.end(), blocks.begin(), blocks.end());
    order.insert(order.end(), pairs.begin(), pairs.end());
}

// Block size 32: the chunks of each pair's union (PairChunk, two entries a chunk in ascending
// order, each with the mode of either half where listed), appended to `order` after the pairs'
// ranks (ptr, idx, mode, first, n as for append_orders; masks for the groups): the (n + 1) / 2
// + 1 offsets of the pairs' chunks, then the chunks at *chunk_off. False where a pass has more
// chunks than the int32 offsets reach.
bool append_pair_chunks(std::vector<int32_t> &order, const std::vector<int64_t> &ptr,
                        const std::vector<int32_t> &idx, const std::vector<uint8_t> &mode,
                        const std::vector<MaskDesc> &masks, size_t first, int32_t n,
                        int64_t *chunk_off) {
    auto at = [&](int32_t i) { return ptr[first + static_cast<size_t>(i)]; };
    const int32_t np = (n + 1) / 2;
    const size_t offs = order.size();
    order.resize(offs + static_cast<size_t>(np) + 1);
    std::vector<PairChunk> chunks;
    for (int32_t p = 0; p < np; ++p) {
        order[offs + static_cast<size_t>(p)] = static_cast<int32_t>(chunks.size());
        const bool second = 2 * p + 1 < n;
        int64_t a[2] = {at(2 * p), second ? at(2 * p + 1) : 0};
        const int64_t end[2] = {at(2 * p + 1), second ? at(2 * p + 2) : 0};
        while (a[0] < end[0] || a[1] < end[1]) {
            PairChunk c{{-1, -1}, 0u, 0u};
            for (int h = 0; h < 2; ++h) {
                int32_t x[2];
                for (int r = 0; r < 2; ++r)
                    x[r] = a[r] < end[r] ? idx[static_cast<size_t>(a[r])] : INT32_MAX;
                const int32_t j = std::min(x[0], x[1]);
                if (j == INT32_MAX) break;
                c.blk[h] = j;
                for (int r = 0; r < 2; ++r) {
                    if (x[r] != j) continue;
                    const uint8_t m = mode[static_cast<size_t>(a[r]++)];
                    c.modes |= static_cast<uint32_t>(m) << (16 * h + 8 * r);
                    c.bits |= (1u << (4 + 2 * h + r)) | ((masks[m].groups & 3u) << (2 * h));
                }
            }
            chunks.push_back(c);
        }
        if (chunks.size() > static_cast<size_t>(INT32_MAX)) return false;
    }
    order[offs + static_cast<size_t>(np)] = static_cast<int32_t>(chunks.size());
    order.resize((order.size() + 3) / 4 * 4, 0); // 16-byte aligned chunks
    *chunk_off = static_cast<int64_t>(order.size());
    order.resize(order.size() + 4 * chunks.size());
    if (!chunks.empty())
        std::memcpy(&order[static_cast<size_t>(*chunk_off)], chunks.data(),
                    chunks.size() * sizeof(PairChunk));
    return true;
}

std::shared_ptr<DeviceLayout> build_device_layout(const std::shared_ptr<Context> &ctx,
                                                  const Layout &lay) {
    std::vector<DevPass> passes;
    std::vector<DevComp> comps;
    std::vector<int64_t> row_ptr, colT_ptr;
    std::vector<int32_t> col_idx, colT_idx, head_begin, order, orderT;
    std::vector<uint8_t> mode, modeT;
    // The distinct masks, index 0 the generic one (also used past 256 distinct masks, which
    // no pattern of the grammar reaches at a block size).
    std::vector<MaskDesc> masks(1);
    masks[0].flags = kMaskGeneric;
    masks[0].groups = 0xffu;
    std::map<std::vector<uint32_t>, uint8_t> mask_index;
    auto intern = [&](const MaskDesc &d) -> uint8_t {
        if (d.flags & kMaskGeneric) return 0;
        std::vector<uint32_t> key(sizeof(MaskDesc) / sizeof(uint32_t));
        std::memcpy(key.data(), &d, sizeof d);
        auto it = mask_index.find(key);
        if (it != mask_index.end()) return it->second;
        if (masks.size() >= 256) return 0;
        const uint8_t at = static_cast<uint8_t>(masks.size());
        masks.push_back(d);
        mask_index.emplace(key, at);
        return at;
    };
    auto dl = std::make_shared<DeviceLayout>();
    for (size_t h = 0; h < lay.heads.size(); ++h) {
        const HeadLayout &hl = lay.heads[h];
        head_begin.push_back(static_cast<int32_t>(passes.size()));
        dl->max_passes = std::max(dl->max_passes, static_cast<int32_t>(hl.passes.size()));
        for (size_t pi = 0; pi < hl.passes.size(); ++pi) {
            const AttnPass &ap = hl.passes[pi];
            DevPass p{};
            p.transposed = ap.transposed ? 1 : 0;
            p.stride = ap.stride;
            p.n_qblocks = ap.n_qblocks;
            p.rows = ap.rows;
            p.n_slots = ap.n_slots;
            p.comp_begin = static_cast<int32_t>(comps.size());
            for (const Component &c : ap.include)
                comps.push_back({static_cast<int32_t>(c.kind), c.l, c.c, c.g});
            p.comp_end = static_cast<int32_t>(comps.size());
            p.row_ptr_off = static_cast<int64_t>(row_ptr.size());
            const int64_t base = static_cast<int64_t>(col_idx.size());
            for (int64_t r : ap.row_ptr) row_ptr.push_back(base + r);
            col_idx.insert(col_idx.end(), ap.col_idx.begin(), ap.col_idx.end());
            // The transposed lists: for each key block, the query blocks that read it.
            std::vector<std::vector<int32_t>> readers(static_cast<size_t>(ap.n_qblocks));
            std::vector<std::vector<uint8_t>> reader_mode(static_cast<size_t>(ap.n_qblocks));
            for (int32_t i = 0; i < ap.n_qblocks; ++i)
                for (int64_t e = ap.row_ptr[i]; e < ap.row_ptr[i + 1]; ++e) {
                    const int32_t j = ap.col_idx[static_cast<size_t>(e)];
                    const uint8_t m =
                        intern(entry_mask(lay, hl, pi, static_cast<int32_t>(h), i, j));
                    mode.push_back(m);
                    readers[static_cast<size_t>(j)].push_back(i);
                    reader_mode[static_cast<size_t>(j)].push_back(m);
                }
            p.colT_ptr_off = static_cast<int64_t>(colT_ptr.size());
            for (size_t j = 0; j < readers.size(); ++j) {
                colT_ptr.push_back(static_cast<int64_t>(colT_idx.size()));
                colT_idx.insert(colT_idx.end(), readers[j].begin(), readers[j].end());
                modeT.insert(modeT.end(), reader_mode[j].begin(), reader_mode[j].end());
            }
            colT_ptr.push_back(static_cast<int64_t>(colT_idx.size()));
            p.order_off = static_cast<int64_t>(order.size());
            p.pair_off = p.order_off + ap.n_qblocks;
            append_orders(order, row_ptr, col_idx, static_cast<size_t>(p.row_ptr_off),
                          ap.n_qblocks);
            append_orders(orderT, colT_ptr, colT_idx, static_cast<size_t>(p.colT_ptr_off),
                          ap.n_qblocks);
            if (lay.block_size == 32 &&
                (!append_pair_chunks(order, row_ptr, col_idx, mode, masks,
                                     static_cast<size_t>(p.row_ptr_off), ap.n_qblocks,
                                     &p.chunk_off) ||
                 !append_pair_chunks(orderT, colT_ptr, colT_idx, modeT, masks,
                                     static_cast<size_t>(p.colT_ptr_off), ap.n_qblocks,
                                     &p.chunkT_off))) {
                ctx->err = fail(STX_ERR_UNSUPPORTED,
                                "CUDA attention: a pass of more than 2^31 pairs of entries");
                return nullptr;
            }
            // order and orderT share each pass's order_off: the two chunk lists differ in
            // length, so the shorter array is padded to the longer.
            const size_t both = std::max(order.size(), orderT.size());
            order.resize(both, 0);
            orderT.resize(both, 0);
            dl->max_qblocks = std::max(dl->max_qblocks, ap.n_qblocks);
            passes.push_back(p);
        }
    }
    head_begin.push_back(static_cast<int32_t>(passes.size()));
    if (!upload(ctx, dl->passes, passes) || !upload(ctx, dl->comps, comps) ||
        !upload(ctx, dl->row_ptr, row_ptr) || !upload(ctx, dl->col_idx, col_idx) ||
        !upload(ctx, dl->colT_ptr, colT_ptr) || !upload(ctx, dl->colT_idx, colT_idx) ||
        !upload(ctx, dl->head_pass_begin, head_begin) || !upload(ctx, dl->user, lay.user_blocks) ||
        !upload(ctx, dl->mode, mode) || !upload(ctx, dl->modeT, modeT) ||
        !upload(ctx, dl->masks, masks) || !upload(ctx, dl->order, order) ||
        !upload(ctx, dl->orderT, orderT))
        return nullptr;
    if (!STX_CUDA_CHECK(ctx, cudaStreamSynchronize(ctx->stream))) return nullptr; // host vectors
    LayoutView &v = dl->view;
    v.passes = dl->passes.data();
    v.comps = dl->comps.data();
    v.row_ptr = dl->row_ptr.data();
    v.col_idx = dl->col_idx.data();
    v.colT_ptr = dl->colT_ptr.data();
    v.colT_idx = dl->colT_idx.data();
    v.user = dl->user.data();
    v.head_pass_begin = dl->head_pass_begin.data();
    v.masks = dl->masks.data();
    v.mode = dl->mode.data();
    v.modeT = dl->modeT.data();
    v.order = dl->order.data();
    v.orderT = dl->orderT.data();
    v.n_ctx = lay.n_ctx;
    v.n_head = lay.n_head;
    v.bs = lay.block_size;
    v.user_nb = lay.user_nb;
    return dl;
}

const DeviceLayout *device_layout(const std::shared_ptr<Context> &ctx, const Layout &lay) {
    auto it = ctx->layouts.find(lay.id);
    if (it != ctx->layouts.end()) return it->second.get();
    std::shared_ptr<DeviceLayout> dl = build_device_layout(ctx, lay);
    if (!dl) return nullptr;
    ctx->layouts[lay.id] = dl;
    return dl.get();
}

__device__ __forceinline__ int64_t slot_pos(const LayoutView &L, const DevPass &P, int64_t slot,
                                            int32_t T) {
    if (slot >= P.n_slots) return -1;
    const int64_t pos = slot_position_raw(P.transposed != 0, P.stride, P.rows, L.n_ctx, slot);
    return pos < T ? pos : -1;
}

template <bool BF16> __device__ __forceinline__ float operand(float x) {
    return BF16 ? round_bf16(x) : x;
}

// Rows of one block (query or key) cooperatively into shared memory: tile[r * D + d] = the
// row at position pos[r] (zeros for padded rows).
template <int D, bool BF16>
__device__ void load_tile(float *tile, const int64_t *pos, const float *src, int32_t b, int32_t h,
                          int32_t T, int32_t H, int32_t bs) {
    for (int32_t i = threadIdx.x; i < bs * D; i += blockDim.x) {
        const int32_t r = i / D, d = i % D;
        const int64_t p = pos[r];
        tile[i] =
            p >= 0 ? operand<BF16>(src[((static_cast<int64_t>(b) * T + p) * H + h) * D + d]) : 0.0f;
    }
}

// Forward and dq: key block j of pass P into shared memory, once the previous tile is consumed:
// the positions of its slots into kp, its k rows into ks and its v rows into vs.
template <int DQ, int DV, bool BF16>
__device__ __forceinline__ void load_key_tile(float *ks, float *vs, int64_t *kp,
                                              const LayoutView &L, const DevPass &P, int32_t j,
                                              const float *k, const float *v, int32_t b, int32_t h,
                                              int32_t T, int32_t H, int32_t bs) {
    __syncthreads(); // the previous tile is consumed
    kp[threadIdx.x] = slot_pos(L, P, static_cast<int64_t>(j) * bs + threadIdx.x, T);
    __syncthreads();
    load_tile<DQ, BF16>(ks, kp, k, b, h, T, H, bs);
    load_tile<DV, BF16>(vs, kp, v, b, h, T, H, bs);
    __syncthreads();
}

// Which pass, if any, this block computes: returns false (for the whole block) if none.
__device__ __forceinline__ bool block_pass(const LayoutView &L, int32_t local_pass, int32_t *p0,
                                           int32_t *pg) {
    const int32_t h = blockIdx.y;
    *p0 = L.head_pass_begin[h];
    *pg = *p0 + local_pass;
    if (*pg >= L.head_pass_begin[h + 1]) return false;
    return static_cast<int32_t>(blockIdx.x) < L.passes[*pg].n_qblocks;
}

template <int DQ, int DV, bool BF16>
__global__ void attn_forward_kernel(LayoutView L, int32_t local_pass, const float *q,
                                    const float *k, const float *v, float *out, float *lse,
                                    int32_t T, float scale) {
    int32_t p0, pg;
    if (!block_pass(L, local_pass, &p0, &pg)) return;
    const int32_t h = blockIdx.y, b = blockIdx.z, H = L.n_head, bs = L.bs, qb = blockIdx.x;
    const DevPass P = L.passes[pg];
    extern __shared__ float smem[];
    float *ks = smem, *vs = ks + bs * DQ;
    int64_t *kp = reinterpret_cast<int64_t *>(vs + bs * DV);
    const int64_t qpos = slot_pos(L, P, static_cast<int64_t>(qb) * bs + threadIdx.x, T);
    float qr[DQ], o[DV];
    for (int d = 0; d < DQ; ++d)
        qr[d] = qpos >= 0
                    ? operand<BF16>(q[((static_cast<int64_t>(b) * T + qpos) * H + h) * DQ + d])
                    : 0.0f;
    for (int d = 0; d < DV; ++d) o[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int64_t e = L.row_ptr[P.row_ptr_off + qb]; e < L.row_ptr[P.row_ptr_off + qb + 1]; ++e) {
        load_key_tile<DQ, DV, BF16>(ks, vs, kp, L, P, L.col_idx[e], k, v, b, h, T, H, bs);
        if (qpos < 0) continue;
        for (int32_t kk = 0; kk < bs; ++kk) {
            const int64_t kpos = kp[kk];
            if (kpos < 0 || kpos > qpos || !pass_ok(L, h, p0, pg, qpos, kpos)) continue;
            float s = 0.0f;
            for (int d = 0; d < DQ; ++d) s += qr[d] * ks[kk * DQ + d];
            s *= scale;
            if (s > m) {
                const float corr = expf(m - s);
                l *= corr;
                for (int d = 0; d < DV; ++d) o[d] *= corr;
                m = s;
            }
            const float w = expf(s - m);
            l += w;
            for (int d = 0; d < DV; ++d) o[d] += w * vs[kk * DV + d];
        }
    }
    if (qpos < 0) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    float *dst = out + ((static_cast<int64_t>(b) * T + qpos) * H + h) * DV;
    for (int d = 0; d < DV; ++d) dst[d] = o[d] * inv;
    lse[(static_cast<int64_t>(b) * H + h) * T + qpos] = l > 0.0f ? m + logf(l) : -INFINITY;
}

// Merges the passes of each row: lse = log sum exp(lse_p), out = sum exp(lse_p - lse) o_p.
__global__ void attn_combine_kernel(LayoutView L, const float *o_parts, const float *lse_parts,
                                    float *out, float *lse, int32_t B, int32_t T, int32_t Dv) {
    const int64_t n = static_cast<int64_t>(B) * T * L.n_head;
    const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (idx >= n) return;
    const int32_t H = L.n_head, h = static_cast<int32_t>(idx % H);
    const int64_t bt = idx / H, t = bt % T, b = bt / T;
    const int32_t np = L.head_pass_begin[h + 1] - L.head_pass_begin[h];
    const int64_t lse_at = (b * H + h) * T + t, part_lse = static_cast<int64_t>(B) * H * T;
    const int64_t o_at = idx * Dv, part_o = n * Dv;
    float m = -INFINITY;
    for (int32_t p = 0; p < np; ++p) m = fmaxf(m, lse_parts[p * part_lse + lse_at]);
    float s = 0.0f;
    for (int32_t p = 0; p < np; ++p) s += expf(lse_parts[p * part_lse + lse_at] - m);
    const float total = m + logf(s);
    lse[lse_at] = total;
    for (int32_t d = 0; d < Dv; ++d) {
        float acc = 0.0f;
        for (int32_t p = 0; p < np; ++p) {
            const float w = expf(lse_parts[p * part_lse + lse_at] - total);
            if (w > 0.0f) acc += w * o_parts[p * part_o + o_at + d];
        }
        out[o_at + d] = acc;
    }
}

// D[b, h, t] = sum_d dout * out.
__global__ void attn_delta_kernel(float *delta, const float *dout, const float *out, int32_t B,
                                  int32_t T, int32_t H, int32_t Dv) {
    const int64_t n = static_cast<int64_t>(B) * T * H;
    const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (idx >= n) return;
    const int32_t h = static_cast<int32_t>(idx % H);
    const int64_t bt = idx / H, t = bt % T, b = bt / T;
    float s = 0.0f;
    for (int32_t d = 0; d < Dv; ++d) s += dout[idx * Dv + d] * out[idx * Dv + d];
    delta[(b * H + h) * T + t] = s;
}

template <int DQ, int DV, bool BF16>
__global__ void attn_backward_dq_kernel(LayoutView L, int32_t local_pass, const float *q,
                                        const float *k, const float *v, const float *dout,
                                        const float *lse, const float *delta, float *dq, int32_t T,
                                        float scale) {
    int32_t p0, pg;
    if (!block_pass(L, local_pass, &p0, &pg)) return;
    const int32_t h = blockIdx.y, b = blockIdx.z, H = L.n_head, bs = L.bs, qb = blockIdx.x;
    const DevPass P = L.passes[pg];
    extern __shared__ float smem[];
    float *ks = smem, *vs = ks + bs * DQ;
    int64_t *kp = reinterpret_cast<int64_t *>(vs + bs * DV);
    const int64_t qpos = slot_pos(L, P, static_cast<int64_t>(qb) * bs + threadIdx.x, T);
    float qr[DQ], dor[DV], acc[DQ];
    float lse_q = 0.0f, d_q = 0.0f;
    const int64_t row = qpos >= 0 ? (static_cast<int64_t>(b) * T + qpos) * H + h : 0;
    for (int d = 0; d < DQ; ++d) {
        qr[d] = qpos >= 0 ? operand<BF16>(q[row * DQ + d]) : 0.0f;
        acc[d] = 0.0f;
    }
    for (int d = 0; d < DV; ++d) dor[d] = qpos >= 0 ? operand<BF16>(dout[row * DV + d]) : 0.0f;
    if (qpos >= 0) {
        lse_q = lse[(static_cast<int64_t>(b) * H + h) * T + qpos];
        d_q = delta[(static_cast<int64_t>(b) * H + h) * T + qpos];
    }
    for (int64_t e = L.row_ptr[P.row_ptr_off + qb]; e < L.row_ptr[P.row_ptr_off + qb + 1]; ++e) {
        load_key_tile<DQ, DV, BF16>(ks, vs, kp, L, P, L.col_idx[e], k, v, b, h, T, H, bs);
        if (qpos < 0) continue;
        for (int32_t kk = 0; kk < bs; ++kk) {
            const int64_t kpos = kp[kk];
            if (kpos < 0 || kpos > qpos || !pass_ok(L, h, p0, pg, qpos, kpos)) continue;
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < DQ; ++d) s += qr[d] * ks[kk * DQ + d];
            for (int d = 0; d < DV; ++d) dp += dor[d] * vs[kk * DV + d];
            const float pr = expf(s * scale - lse_q);
            const float ds = pr * (dp - d_q);
            for (int d = 0; d < DQ; ++d) acc[d] += ds * ks[kk * DQ + d];
        }
    }
    if (qpos < 0) return;
    for (int d = 0; d < DQ; ++d) dq[row * DQ + d] += scale * acc[d];
}

template <int DQ, int DV, bool BF16>
__global__ void attn_backward_dkdv_kernel(LayoutView L, int32_t local_pass, const float *q,
                                          const float *k, const float *v, const float *dout,
                                          const float *lse, const float *delta, float *dk,
                                          float *dv, int32_t T, float scale) {
    int32_t p0, pg;
    if (!block_pass(L, local_pass, &p0, &pg)) return;
    const int32_t h = blockIdx.y, b = blockIdx.z, H = L.n_head, bs = L.bs, kb = blockIdx.x;
    const DevPass P = L.passes[pg];
    extern __shared__ float smem[];
    float *qs = smem, *dos = qs + bs * DQ;
    int64_t *qp = reinterpret_cast<int64_t *>(dos + bs * DV);
    float *lse_s = reinterpret_cast<float *>(qp + bs), *delta_s = lse_s + bs;
    const int64_t kpos = slot_pos(L, P, static_cast<int64_t>(kb) * bs + threadIdx.x, T);
    const int64_t row = kpos >= 0 ? (static_cast<int64_t>(b) * T + kpos) * H + h : 0;
    float kr[DQ], vr[DV], dk_acc[DQ], dv_acc[DV];
    for (int d = 0; d < DQ; ++d) {
        kr[d] = kpos >= 0 ? operand<BF16>(k[row * DQ + d]) : 0.0f;
        dk_acc[d] = 0.0f;
    }
    for (int d = 0; d < DV; ++d) {
        vr[d] = kpos >= 0 ? operand<BF16>(v[row * DV + d]) : 0.0f;
        dv_acc[d] = 0.0f;
    }
    for (int64_t e = L.colT_ptr[P.colT_ptr_off + kb]; e < L.colT_ptr[P.colT_ptr_off + kb + 1];
         ++e) {
        const int32_t i = L.colT_idx[e];
        __syncthreads();
        const int64_t mypos = slot_pos(L, P, static_cast<int64_t>(i) * bs + threadIdx.x, T);
        qp[threadIdx.x] = mypos;
        const int64_t stat = (static_cast<int64_t>(b) * H + h) * T + (mypos >= 0 ? mypos : 0);
        lse_s[threadIdx.x] = mypos >= 0 ? lse[stat] : 0.0f;
        delta_s[threadIdx.x] = mypos >= 0 ? delta[stat] : 0.0f;
        __syncthreads();
        load_tile<DQ, BF16>(qs, qp, q, b, h, T, H, bs);
        load_tile<DV, BF16>(dos, qp, dout, b, h, T, H, bs);
        __syncthreads();
        if (kpos < 0) continue;
        for (int32_t qq = 0; qq < bs; ++qq) {
            const int64_t qpos = qp[qq];
            if (qpos < 0 || kpos > qpos || !pass_ok(L, h, p0, pg, qpos, kpos)) continue;
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < DQ; ++d) s += qs[qq * DQ + d] * kr[d];
            for (int d = 0; d < DV; ++d) dp += dos[qq * DV + d] * vr[d];
            const float pr = expf(s * scale - lse_s[qq]);
            const float ds = pr * (dp - delta_s[qq]);
            for (int d = 0; d < DV; ++d) dv_acc[d] += pr * dos[qq * DV + d];
            for (int d = 0; d < DQ; ++d) dk_acc[d] += ds * qs[qq * DQ + d];
        }
    }
    if (kpos < 0) return;
    for (int d = 0; d < DQ; ++d) dk[row * DQ + d] += scale * dk_acc[d];
    for (int d = 0; d < DV; ++d) dv[row * DV + d] += dv_acc[d];
}

size_t tile_smem(int32_t bs, int DQ, int DV) {
    return static_cast<size_t>(bs) *
           ((DQ + DV) * sizeof(float) + sizeof(int64_t) + 2 * sizeof(float));
}

template <typename K> bool allow_smem(const std::shared_ptr<Context> &ctx, K kernel, size_t bytes) {
    if (bytes <= 48 * 1024) return true;
    return STX_CUDA_CHECK(ctx,
                          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(bytes)));
}

template <int DQ, int DV, bool BF16> struct Kernels {
    static void forward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                        const float *q, const float *k, const float *v, float *out, float *lse,
                        int32_t B, int32_t T, float scale) {
        const LayoutView &L = dl.view;
        const size_t smem = tile_smem(L.bs, DQ, DV);
        auto kernel = attn_forward_kernel<DQ, DV, BF16>;
        if (!allow_smem(ctx, kernel, smem)) return;
        dim3 grid(static_cast<unsigned>(dl.max_qblocks), static_cast<unsigned>(L.n_head),
                  static_cast<unsigned>(B));
        kernel<<<grid, L.bs, smem, ctx->stream>>>(L, pass, q, k, v, out, lse, T, scale);
        STX_LAUNCH_CHECK(ctx, "attn_forward_kernel");
    }
    static void backward(const std::shared_ptr<Context> &ctx, const DeviceLayout &dl, int32_t pass,
                         const float *q, const float *k, const float *v, const float *dout,
                         const float *lse, const float *delta, float *dq, float *dk, float *dv,
                         int32_t B, int32_t T, float scale) {
        const LayoutView &L = dl.view;
        const size_t smem = tile_smem(L.bs, DQ, DV);
        auto kq = attn_backward_dq_kernel<DQ, DV, BF16>;
        auto kkv = attn_backward_dkdv_kernel<DQ, DV, BF16>;
        if (!allow_smem(ctx, kq, smem) || !allow_smem(ctx, kkv, smem)) return;
        dim3 grid(static_cast<unsigned>(dl.max_qblocks), static_cast<unsigned>(L.n_head),
                  static_cast<unsigned>(B));
        kq<<<grid, L.bs, smem, ctx->stream>>>(L, pass, q, k, v, dout, lse, delta, dq, T, scale);
        kkv<<<grid, L.bs, smem, ctx->stream>>>(L, pass, q, k, v, dout, lse, delta, dk, dv, T,
                                               scale);
        STX_LAUNCH_CHECK(ctx, "attn_backward kernels");
    }
};

// Calls F::template run<DQ, DV, BF16>() for the compiled head dims.
template <typename F> void dispatch(int32_t Dq, int32_t Dv, bool bf16, F &&f) {
#define STX_ATTN_CASE(DQ, DV)                                                                      \
    if (Dq == DQ && Dv == DV) {                                                                    \
        if (bf16)                                                                                  \
            f(Kernels<DQ, DV, true>());                                                            \
        else                                                                                       \
            f(Kernels<DQ, DV, false>());                                                           \
        return;                                                                                    \
    }
    STX_ATTN_CASE(32, 32)
    STX_ATTN_CASE(64, 64)
    STX_ATTN_CASE(128, 128)
    STX_ATTN_CASE(32, 64)
    STX_ATTN_CASE(64, 128)
#undef STX_ATTN_CASE
}

// The device layout of an attention call, or null (the error recorded) when the context has
// failed, the head dims are not compiled or the layout cannot be uploaded.
const DeviceLayout *attention_layout(const std::shared_ptr<Context> &ctx, const Layout &layout,
                                     int32_t Dq, int32_t Dv) {
    if (!ctx->ok()) return nullptr;
    if (!attention_dims_supported(Dq, Dv)) {
        ctx->err = fail(STX_ERR_UNSUPPORTED,
                        "CUDA attention: head dims Dq %d, Dv %d are not compiled (Dq 32, 64 or "
                        "128; Dv = Dq or 2 Dq up to 128)",
                        Dq, Dv);
        return nullptr;
    }
    return device_layout(ctx, layout);
}

// Whether the bf16 mode runs on tensor cores (attention_tc.cu, attention_wgmma*.cu).
bool use_tc(const std::shared_ptr<Context> &ctx, const Layout &layout, int32_t Dq, int32_t Dv) {
    return ctx->bf16 && tc_attention_supported(Dq, Dv, layout.block_size);
}

// The tensor cores' bf16 copies of q, k, v and, for backward, dout.
struct Bf16Operands {
    const __nv_bfloat16 *q = nullptr, *k = nullptr, *v = nullptr;
    __nv_bfloat16 *dout = nullptr;
};

// q, k (rows x Dq each), v and, unless null, dout (rows x Dv each) as bf16 in ctx->cast_scratch,
// one after the other (each a multiple of 8 elements, so every copy starts 16-byte aligned for
// cp.async), or for q, k, v their cached copies (Context::bf16_operand: placed as they would
// be there, modulo 256 bytes); false (the error recorded) if the scratch cannot be had.
bool to_bf16_operands(const std::shared_ptr<Context> &ctx, size_t rows, int32_t Dq, int32_t Dv,
                      const float *q, const float *k, const float *v, const float *dout,
                      Bf16Operands *x) {
    const size_t nq = rows * Dq, nv = rows * Dv;
    const size_t n = 2 * nq + (dout ? 2 : 1) * nv;
    if (!ctx->reserve(ctx->cast_scratch, n * sizeof(__nv_bfloat16))) return false;
    __nv_bfloat16 *at = reinterpret_cast<__nv_bfloat16 *>(ctx->cast_scratch.data());
    x->q = ctx->bf16_operand(q, static_cast<int64_t>(nq), at);
    x->k = ctx->bf16_operand(k, static_cast<int64_t>(nq), at + nq);
    x->v = ctx->bf16_operand(v, static_cast<int64_t>(nv), at + 2 * nq);
    if (dout) {
        x->dout = at + 2 * nq + nv;
        tc_to_bf16(ctx.get(), x->dout, dout, static_cast<int64_t>(nv));
    }
    return true;
}

} // namespace

void CudaOps::attention_forward(float *out, float *lse, const float *q, const float *k,
                                const float *v, const Layout &layout, int32_t B, int32_t T,
                                int32_t Dq, int32_t Dv, double scale) {
    const DeviceLayout *dl = attention_layout(ctx_, layout, Dq, Dv);
    if (!dl) return;
    const float sc = static_cast<float>(scale);
    const int32_t H = layout.n_head;
    const size_t rows = static_cast<size_t>(B) * T * H, nv = rows * Dv;
    const int64_t nq_ = static_cast<int64_t>(rows) * Dq, nv_ = static_cast<int64_t>(nv);
    OpAccess io(ctx_.get(), {Span(q, nq_), Span(k, nq_), Span(v, nv_)},
                {Span(out, nv_), Span(lse, static_cast<int64_t>(B) * H * T)});
    // bf16 mode runs on tensor cores from bf16 copies of q, k, v.
    const bool tc = use_tc(ctx_, layout, Dq, Dv);
    Bf16Operands x;
    if (tc && !to_bf16_operands(ctx_, rows, Dq, Dv, q, k, v, nullptr, &x)) return;
    auto run_pass = [&](int32_t p, float *o_p, float *lse_p) {
        if (tc) {
            if (!wg_attention_forward(ctx_, *dl, p, x.q, x.k, x.v, o_p, lse_p, B, T, Dq, Dv, sc))
                tc_attention_forward(ctx_, *dl, p, x.q, x.k, x.v, o_p, lse_p, B, T, Dq, Dv, sc);
        } else
            dispatch(Dq, Dv, ctx_->bf16,
                     [&](auto kern) { kern.forward(ctx_, *dl, p, q, k, v, o_p, lse_p, B, T, sc); });
    };
    if (dl->max_passes == 1) {
        run_pass(0, out, lse);
        return;
    }
    const size_t n_o = nv, n_l = static_cast<size_t>(B) * H * T;
    if (!ctx_->reserve(ctx_->scratch, dl->max_passes * (n_o + n_l))) return;
    float *o_parts = ctx_->scratch.data(), *lse_parts = o_parts + dl->max_passes * n_o;
    for (int32_t p = 0; p < dl->max_passes; ++p)
        run_pass(p, o_parts + p * n_o, lse_parts + p * n_l);
    attn_combine_kernel<<<blocks_for(static_cast<int64_t>(rows), 128), 128, 0, ctx_->stream>>>(
        dl->view, o_parts, lse_parts, out, lse, B, T, Dv);
    STX_LAUNCH_CHECK(ctx_, "attn_combine_kernel");
}

void CudaOps::attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                 const float *k, const float *v, const float *out, const float *lse,
                                 const Layout &layout, int32_t B, int32_t T, int32_t Dq, int32_t Dv,
                                 double scale) {
    const DeviceLayout *dl = attention_layout(ctx_, layout, Dq, Dv);
    if (!dl) return;
    const int32_t H = layout.n_head;
    const size_t n_l = static_cast<size_t>(B) * H * T;
    // dq, dk, dv are added into pass after pass (and rows no pass reaches are left alone):
    // a pending zero there is written to memory first, never taken as written by the kernels.
    const int64_t nq_ = static_cast<int64_t>(n_l) * Dq, nv_ = static_cast<int64_t>(n_l) * Dv;
    OpAccess io(ctx_.get(),
                {Span(dout, nv_), Span(q, nq_), Span(k, nq_), Span(v, nv_), Span(out, nv_),
                 Span(lse, static_cast<int64_t>(n_l))},
                {Span(dq, nq_), Span(dk, nq_), Span(dv, nv_)});
    if (!ctx_->reserve(ctx_->scratch, n_l)) return;
    float *delta = ctx_->scratch.data();
    attn_delta_kernel<<<blocks_for(static_cast<int64_t>(n_l), 128), 128, 0, ctx_->stream>>>(
        delta, dout, out, B, T, H, Dv);
    if (!STX_LAUNCH_CHECK(ctx_, "attn_delta_kernel")) return;
    const float sc = static_cast<float>(scale);
    if (use_tc(ctx_, layout, Dq, Dv)) {
        Bf16Operands x;
        if (!to_bf16_operands(ctx_, n_l, Dq, Dv, q, k, v, dout, &x)) return; // n_l: B T H rows
        for (int32_t p = 0; p < dl->max_passes; ++p)
            if (!wg_attention_backward(ctx_, *dl, p, x.q, x.k, x.v, x.dout, lse, delta, dq, dk, dv,
                                       B, T, Dq, Dv, sc))
                tc_attention_backward(ctx_, *dl, p, x.q, x.k, x.v, x.dout, lse, delta, dq, dk, dv,
                                      B, T, Dq, Dv, sc);
        return;
    }
    for (int32_t p = 0; p < dl->max_passes; ++p)
        dispatch(Dq, Dv, ctx_->bf16, [&](auto kern) {
            kern.backward(ctx_, *dl, p, q, k, v, dout, lse, delta, dq, dk, dv, B, T, sc);
        });
}

} // namespace cuda
} // namespace stx
