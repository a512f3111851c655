// layout.cpp: block layouts from patterns (layout.h). For each query block, each pattern
// part proposes the key blocks that hold at least one key it allows, computed from the
// part's definition in O(candidates) rather than by scanning the T x T mask, so layouts
// for a million positions are cheap. tests/test_layout.cpp checks the result against a
// brute-force enumeration of the element-wise definition.
#include "layout.h"

#include <algorithm>
#include <atomic>
#include <unistd.h>

#include "error.h"

namespace stx {
namespace {

// strided:1 reads every earlier key and strided:L with L >= n_ctx only the query itself:
// both are cheaper in natural order than in a transposed order of L slots a row.
bool is_natural(const Component &c, int32_t n_ctx) {
    return c.kind != CompKind::Strided || c.l == 1 || c.l >= n_ctx;
}

int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

// Key blocks (natural order) that natural-order part `c` needs for query block i of head h.
void natural_candidates(const Layout &lay, const Component &c, int32_t head, int64_t i,
                        std::vector<int32_t> *out) {
    const int64_t bs = lay.block_size;
    const int64_t q_lo = i * bs;
    const int64_t q_hi = std::min<int64_t>(q_lo + bs, lay.n_ctx) - 1;
    auto add_range = [&](int64_t k_lo, int64_t k_hi) { // keys [k_lo, k_hi], inclusive
        for (int64_t j = k_lo / bs; j <= k_hi / bs; ++j) out->push_back(static_cast<int32_t>(j));
    };
    switch (c.kind) {
    case CompKind::Dense:
        add_range(0, q_hi);
        break;
    case CompKind::Strided: // strided:1 (dense) or strided:L >= n_ctx (the diagonal)
        add_range(c.l == 1 ? 0 : q_lo, q_hi);
        break;
    case CompKind::Local:
        add_range(std::max<int64_t>(0, q_lo - c.l + 1), q_hi);
        break;
    case CompKind::Fixed: {
        add_range((q_lo / c.l) * c.l, q_hi); // the query's own L-block, from its start
        const int64_t g = head % c.g;
        const int64_t cell_lo = c.l - (g + 1) * c.c, cell_hi = c.l - g * c.c; // [lo, hi)
        for (int64_t m = 0; m * c.l + cell_lo <= q_hi; ++m) {
            int64_t a = m * c.l + cell_lo, b = std::min<int64_t>(m * c.l + cell_hi - 1, q_hi);
            add_range(a, b);
        }
        break;
    }
    case CompKind::User: {
        const uint8_t *row =
            &lay.user_blocks[(static_cast<size_t>(head) * lay.user_nb + i) * lay.user_nb];
        for (int64_t j = 0; j <= i; ++j)
            if (row[j]) out->push_back(static_cast<int32_t>(j));
        break;
    }
    }
}

void sort_unique(std::vector<int32_t> *v) {
    std::sort(v->begin(), v->end());
    v->erase(std::unique(v->begin(), v->end()), v->end());
}

AttnPass natural_pass(const Layout &lay, const std::vector<Component> &parts, int32_t head) {
    AttnPass p;
    p.n_slots = lay.n_ctx;
    p.n_qblocks = static_cast<int32_t>(ceil_div(lay.n_ctx, lay.block_size));
    p.include = parts;
    p.row_ptr.push_back(0);
    std::vector<int32_t> row;
    for (int64_t i = 0; i < p.n_qblocks; ++i) {
        row.clear();
        for (const Component &c : parts) natural_candidates(lay, c, head, i, &row);
        sort_unique(&row);
        p.col_idx.insert(p.col_idx.end(), row.begin(), row.end());
        p.row_ptr.push_back(static_cast<int64_t>(p.col_idx.size()));
    }
    return p;
}

// strided:L in the transposed order: slot c*R + r holds position r*L + c, so a query slot
// reads the slots of its own chunk (same c) up to itself.
AttnPass transposed_pass(const Layout &lay, const Component &c) {
    AttnPass p;
    p.transposed = true;
    p.stride = c.l;
    p.rows = ceil_div(lay.n_ctx, c.l);
    p.n_slots = p.rows * c.l;
    p.n_qblocks = static_cast<int32_t>(ceil_div(p.n_slots, lay.block_size));
    p.include.push_back(c);
    p.row_ptr.push_back(0);
    const int64_t bs = lay.block_size;
    for (int64_t i = 0; i < p.n_qblocks; ++i) {
        int64_t chunk = (i * bs) / p.rows;
        for (int64_t j = (chunk * p.rows) / bs; j <= i; ++j)
            p.col_idx.push_back(static_cast<int32_t>(j));
        p.row_ptr.push_back(static_cast<int64_t>(p.col_idx.size()));
    }
    return p;
}

uint64_t next_layout_id() {
    static std::atomic<uint64_t> counter{0};
    return ++counter;
}

stx_status check_sizes(int32_t n_ctx, int32_t n_head, int32_t block_size) {
    if (n_ctx < 1 || n_ctx > (1 << 24))
        return fail(STX_ERR_INVALID_ARGUMENT, "n_ctx (%d) must be in [1, 16777216]", n_ctx);
    if (n_head < 1 || n_head > 4096)
        return fail(STX_ERR_INVALID_ARGUMENT, "n_head (%d) must be in [1, 4096]", n_head);
    if (block_size != 16 && block_size != 32 && block_size != 64 && block_size != 128)
        return fail(STX_ERR_INVALID_ARGUMENT, "block_size (%d) must be 16, 32, 64 or 128",
                    block_size);
    return STX_OK;
}

// Key blocks natural-order part `c` proposes for query block i, the ranges of
// natural_candidates that start at the query's own block or before (a lower bound of what
// it adds; fixed's summary ranges are left out).
int64_t natural_row_count(const Component &c, int64_t bs, int64_t i) {
    const int64_t q_lo = i * bs;
    switch (c.kind) {
    case CompKind::Dense:
        return i + 1;
    case CompKind::Strided:
        return c.l == 1 ? i + 1 : 1;
    case CompKind::Local:
        return i - std::max<int64_t>(0, q_lo - c.l + 1) / bs + 1;
    case CompKind::Fixed:
        return i - (q_lo / c.l) * c.l / bs + 1;
    case CompKind::User:
        break;
    }
    return 1;
}

// Bytes a layout of `pattern` holds at least (block lists and row pointers), computed from
// the rows of each pass without building them: per head, the largest natural-order part
// (their union holds at least each of them) and every transposed strided pass.
double layout_bytes_lower_bound(const LayerPattern &pattern, int32_t n_ctx, int32_t n_head,
                                int32_t block_size) {
    const int64_t bs = block_size;
    const int64_t nq = ceil_div(n_ctx, bs);
    const size_t n_lists = pattern.heads.size();
    double total = 0.0;
    for (size_t m = 0; m < n_lists && m < static_cast<size_t>(n_head); ++m) {
        // Heads m, m + n_lists, ... use this merged pattern.
        const int64_t first = static_cast<int64_t>(m), step = static_cast<int64_t>(n_lists);
        const double uses = static_cast<double>((n_head - 1 - first) / step + 1);
        std::vector<Component> seen;
        double natural = 0.0, head = 0.0;
        for (const Component &c : pattern.heads[m].parts) {
            if (std::find(seen.begin(), seen.end(), c) != seen.end()) continue;
            seen.push_back(c);
            double entries = 0.0;
            if (is_natural(c, n_ctx)) {
                for (int64_t i = 0; i < nq; ++i)
                    entries += static_cast<double>(natural_row_count(c, bs, i));
                natural = std::max(natural, entries);
            } else {
                const int64_t rows = ceil_div(n_ctx, c.l), nqt = ceil_div(rows * c.l, bs);
                for (int64_t i = 0; i < nqt; ++i)
                    entries += static_cast<double>(i - ((i * bs) / rows) * rows / bs + 1);
                head += entries * sizeof(int32_t) + static_cast<double>(nqt + 1) * sizeof(int64_t);
            }
        }
        if (natural > 0.0)
            head += natural * sizeof(int32_t) + static_cast<double>(nq + 1) * sizeof(int64_t);
        total += uses * head;
    }
    return total;
}

// Refuses a layout that could never fit in this machine's memory before building it (a dense
// pattern over 2^24 positions would need terabytes, and hours to fill them).
stx_status check_layout_fits(const LayerPattern &pattern, int32_t n_ctx, int32_t n_head,
                             int32_t block_size) {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page <= 0) return STX_OK;
    const double have = static_cast<double>(pages) * static_cast<double>(page);
    const double need = layout_bytes_lower_bound(pattern, n_ctx, n_head, block_size);
    if (need > have)
        return fail(STX_ERR_OUT_OF_MEMORY,
                    "the block layout of pattern \"%s\" for n_ctx %d, %d heads and blocks of "
                    "%d needs at least %.3g GB of host memory but this machine has %.3g GB",
                    format_layer(pattern).c_str(), n_ctx, n_head, block_size, need / 1e9,
                    have / 1e9);
    return STX_OK;
}

} // namespace

bool Layout::component_allows_at(const Component &c, int32_t head, int64_t q, int64_t k) const {
    if (c.kind != CompKind::User) return component_allows(c, head, q, k);
    size_t i = static_cast<size_t>(q / block_size), j = static_cast<size_t>(k / block_size);
    return user_blocks[(static_cast<size_t>(head) * user_nb + i) * user_nb + j] != 0;
}

bool Layout::pass_allows(int32_t head, size_t pass, int64_t q, int64_t k) const {
    const std::vector<AttnPass> &passes = heads[static_cast<size_t>(head)].passes;
    bool in = false;
    for (const Component &c : passes[pass].include)
        if (component_allows_at(c, head, q, k)) {
            in = true;
            break;
        }
    if (!in) return false;
    for (size_t p = 0; p < pass; ++p)
        for (const Component &c : passes[p].include)
            if (component_allows_at(c, head, q, k)) return false;
    return true;
}

bool Layout::allows(int32_t head, int64_t q, int64_t k) const {
    if (k > q || k < 0) return false;
    for (const AttnPass &p : heads[static_cast<size_t>(head)].passes)
        for (const Component &c : p.include)
            if (component_allows_at(c, head, q, k)) return true;
    return false;
}

stx_status build_layout(const LayerPattern &pattern, int32_t n_ctx, int32_t n_head,
                        int32_t block_size, Layout *out) {
    stx_status st = check_sizes(n_ctx, n_head, block_size);
    if (st != STX_OK) return st;
    if (pattern.heads.empty()) return fail(STX_ERR_INVALID_ARGUMENT, "pattern has no heads");
    if ((st = check_layout_fits(pattern, n_ctx, n_head, block_size)) != STX_OK) return st;
    Layout lay;
    lay.id = next_layout_id();
    lay.n_ctx = n_ctx;
    lay.n_head = n_head;
    lay.block_size = block_size;
    lay.heads.resize(static_cast<size_t>(n_head));
    for (int32_t h = 0; h < n_head; ++h) {
        const MergedPattern &m = head_pattern(pattern, h);
        std::vector<Component> natural, strided;
        for (const Component &c : m.parts) {
            std::vector<Component> &group = is_natural(c, n_ctx) ? natural : strided;
            if (std::find(group.begin(), group.end(), c) == group.end()) group.push_back(c);
        }
        HeadLayout &hl = lay.heads[static_cast<size_t>(h)];
        if (!natural.empty()) hl.passes.push_back(natural_pass(lay, natural, h));
        for (const Component &c : strided) hl.passes.push_back(transposed_pass(lay, c));
    }
    *out = std::move(lay);
    return STX_OK;
}

stx_status build_layout_from_blocks(int32_t n_ctx, int32_t n_head, int32_t block_size,
                                    const uint8_t *blocks, Layout *out) {
    stx_status st = check_sizes(n_ctx, n_head, block_size);
    if (st != STX_OK) return st;
    if (!blocks) return fail(STX_ERR_INVALID_ARGUMENT, "blocks is NULL");
    const int32_t nb = static_cast<int32_t>(ceil_div(n_ctx, block_size));
    for (int32_t h = 0; h < n_head; ++h)
        for (int32_t i = 0; i < nb; ++i) {
            const uint8_t *row = blocks + (static_cast<size_t>(h) * nb + i) * nb;
            if (!row[i])
                return fail(STX_ERR_INVALID_ARGUMENT,
                            "blocks: head %d query block %d must read its diagonal block (every "
                            "query reads at least itself)",
                            h, i);
            for (int32_t j = i + 1; j < nb; ++j)
                if (row[j])
                    return fail(STX_ERR_INVALID_ARGUMENT,
                                "blocks: head %d query block %d reads key block %d above the "
                                "diagonal (attention is causal)",
                                h, i, j);
        }
    Layout lay;
    lay.id = next_layout_id();
    lay.n_ctx = n_ctx;
    lay.n_head = n_head;
    lay.block_size = block_size;
    lay.user_nb = nb;
    lay.user_blocks.assign(blocks, blocks + static_cast<size_t>(n_head) * nb * nb);
    lay.heads.resize(static_cast<size_t>(n_head));
    Component user;
    user.kind = CompKind::User;
    for (int32_t h = 0; h < n_head; ++h)
        lay.heads[static_cast<size_t>(h)].passes.push_back(natural_pass(lay, {user}, h));
    *out = std::move(lay);
    return STX_OK;
}

void layout_stats(const Layout &layout, int32_t head, int64_t *n_blocks, int64_t *n_pairs) {
    const std::vector<AttnPass> &passes = layout.heads[static_cast<size_t>(head)].passes;
    int64_t blocks = 0, pairs = 0;
    const int64_t bs = layout.block_size;
    for (size_t p = 0; p < passes.size(); ++p) {
        const AttnPass &ap = passes[p];
        blocks += static_cast<int64_t>(ap.col_idx.size());
#pragma omp parallel for reduction(+ : pairs) schedule(dynamic, 4)
        for (int64_t i = 0; i < ap.n_qblocks; ++i)
            for (int64_t e = ap.row_ptr[i]; e < ap.row_ptr[i + 1]; ++e)
                for (int64_t sq = i * bs; sq < std::min((i + 1) * bs, ap.n_slots); ++sq) {
                    int64_t qp = slot_position(ap, layout.n_ctx, sq);
                    if (qp < 0) continue;
                    int64_t j = ap.col_idx[static_cast<size_t>(e)];
                    for (int64_t sk = j * bs; sk < std::min((j + 1) * bs, ap.n_slots); ++sk) {
                        int64_t kp = slot_position(ap, layout.n_ctx, sk);
                        if (kp >= 0 && kp <= qp && layout.pass_allows(head, p, qp, kp)) ++pairs;
                    }
                }
    }
    *n_blocks = blocks;
    *n_pairs = pairs;
}

} // namespace stx
