// test_layout: block layouts (lib/layout.cpp) against the element-wise definition of the
// patterns (lib/pattern.cpp), by brute force.
//
//  (a) for patterns covering every kind and integration mode, n_ctx in {1, 16, 77, 100, 130}
//      (ragged ends), block sizes 16 and 32 (64 and 128 on n_ctx 77 and 130), 3 heads: walk
//      every pass's CSR blocks and every slot in them as a kernel does (slot_position, k <= q,
//      pass_allows) and count how often each (q, k) is computed: exactly once where
//      merged_allows(head_pattern(h), h, q, k), never elsewhere; Layout::allows equals
//      merged_allows for every k <= q; the CSR is well formed (n_qblocks + 1 row pointers,
//      columns ascending, unique, in range, none above the diagonal, the diagonal present);
//      the passes are the documented ones (one natural pass for the natural-order parts,
//      one transposed pass per strided part);
//  (b) no wasted blocks: every block of a natural-order pass holds at least one pair the
//      pass computes;
//  (c) user layouts (build_layout_from_blocks): random lower-triangular block masks with the
//      diagonal set, different per head: allowed = block active && k <= q, same counting;
//      refusals (missing diagonal, block above the diagonal, bad sizes, NULL) with a message
//      naming the problem;
//  (d) the paper's table (PAPER.md 1.6, bs = 32): blocks per head and (q, k) pairs from
//      layout_stats for CIFAR-10 local:96 / strided:96, ImageNet64 local:128 / strided:128,
//      enwik8 fixed:128:32:4, against closed forms computed here (themselves checked by
//      brute force on small n) and the table's numbers; the local and strided block lists
//      equal the paper's formulas, and every enwik8 head reads its own summary blocks.
// Extra patterns beyond the kinds: local widths L = 1, 17, 18, 34 (L - 1 or L - 2 a multiple
// of the block, where an off-by-one in the window's first block shows) and longer contexts
// (301, 320) with several blocks per L and several L per block.
// harness.h is C: cmocka 1.1.5's header has no extern "C" of its own, so it is included
// inside one, after the C library headers it pulls in; its float INFINITY trips
// -Wdouble-promotion as C++.
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
extern "C" {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#include "harness.h"
#pragma GCC diagnostic pop
}

#include "layout.h"
#include "pattern.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace {

using stx::AttnPass;
using stx::CompKind;
using stx::Component;
using stx::LayerPattern;
using stx::Layout;
using stx::MergedPattern;

const int32_t kHeads = 3;
const int32_t kCtx[] = {1, 16, 77, 100, 130};

const char *const kPatterns[] = {
    "dense",
    "local:7",
    "local:16",
    "local:1", // the edge widths: see the header
    "local:17",
    "local:18",
    "local:34",
    "strided:9",
    "strided:16",
    "strided:1",
    "strided:500",
    "fixed:16:4",
    "fixed:16:4:3",
    "fixed:12:5:2",
    "local:8+strided:8",
    "fixed:16:4+strided:16",
    "local:8+strided:8+strided:5",
    "[local:8;strided:8;dense]",
    "[local:8+strided:8;fixed:12:3:2]",
    // Overlapping and repeated parts: each pair is still computed once.
    "strided:4+strided:8+local:4+local:4",
    "dense+strided:3",
};

int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

LayerPattern parse_layer(const char *text) {
    LayerPattern lp;
    if (stx::parse_layer_pattern(text, &lp) != STX_OK)
        fail_msg("parse_layer_pattern(\"%s\"): %s", text, stx_last_error());
    return lp;
}

// What a failure message says about the case.
struct Where {
    const char *pattern;
    int32_t n_ctx, block_size, head;
};
#define WHERE_FMT     "%s (n_ctx %d, block %d, head %d)"
#define WHERE_ARGS(w) (w).pattern, (w).n_ctx, (w).block_size, (w).head

// The CSR of one pass: sizes, ordering, causality in slot order, the diagonal in every row.
void check_csr(const AttnPass &p, size_t pass, int32_t n_ctx, int32_t bs, const Where &w) {
    if (p.transposed) {
        if (p.stride < 2) fail_msg(WHERE_FMT " pass %zu: stride %d", WHERE_ARGS(w), pass, p.stride);
        if (p.rows != ceil_div(n_ctx, p.stride) || p.n_slots != p.rows * p.stride)
            fail_msg(WHERE_FMT " pass %zu: rows %lld, n_slots %lld for stride %d", WHERE_ARGS(w),
                     pass, static_cast<long long>(p.rows), static_cast<long long>(p.n_slots),
                     p.stride);
    } else if (p.n_slots != n_ctx) {
        fail_msg(WHERE_FMT " pass %zu: n_slots %lld", WHERE_ARGS(w), pass,
                 static_cast<long long>(p.n_slots));
    }
    if (p.n_qblocks != ceil_div(p.n_slots, bs))
        fail_msg(WHERE_FMT " pass %zu: n_qblocks %d for %lld slots", WHERE_ARGS(w), pass,
                 p.n_qblocks, static_cast<long long>(p.n_slots));
    if (p.row_ptr.size() != static_cast<size_t>(p.n_qblocks) + 1)
        fail_msg(WHERE_FMT " pass %zu: %zu row pointers for %d query blocks", WHERE_ARGS(w), pass,
                 p.row_ptr.size(), p.n_qblocks);
    if (p.row_ptr[0] != 0 || p.row_ptr.back() != static_cast<int64_t>(p.col_idx.size()))
        fail_msg(WHERE_FMT " pass %zu: row_ptr runs %lld..%lld over %zu columns", WHERE_ARGS(w),
                 pass, static_cast<long long>(p.row_ptr[0]),
                 static_cast<long long>(p.row_ptr.back()), p.col_idx.size());
    for (int32_t i = 0; i < p.n_qblocks; ++i) {
        int64_t b = p.row_ptr[static_cast<size_t>(i)], e = p.row_ptr[static_cast<size_t>(i) + 1];
        if (e <= b)
            fail_msg(WHERE_FMT " pass %zu: query block %d is empty", WHERE_ARGS(w), pass, i);
        for (int64_t x = b; x < e; ++x) {
            int32_t j = p.col_idx[static_cast<size_t>(x)];
            if (j < 0 || j > i)
                fail_msg(WHERE_FMT " pass %zu: query block %d lists key block %d (above the "
                                   "diagonal or out of range)",
                         WHERE_ARGS(w), pass, i, j);
            if (x > b && j <= p.col_idx[static_cast<size_t>(x) - 1])
                fail_msg(WHERE_FMT " pass %zu: query block %d: columns not ascending and unique "
                                   "(%d after %d)",
                         WHERE_ARGS(w), pass, i, j, p.col_idx[static_cast<size_t>(x) - 1]);
        }
        // Every query reads at least itself, so the diagonal block is always there.
        if (p.col_idx[static_cast<size_t>(e) - 1] != i)
            fail_msg(WHERE_FMT " pass %zu: query block %d lacks its diagonal block", WHERE_ARGS(w),
                     pass, i);
    }
}

// Walks every listed block of every pass of head h and every slot pair in it, as a kernel
// does, adding 1 to counts[q * n_ctx + k] for each pair computed. With `check_waste`, fails
// when a block of a natural-order pass computes nothing. Returns the blocks walked.
int64_t walk_head(const Layout &lay, int32_t h, bool check_waste, const Where &w,
                  std::vector<int32_t> *counts) {
    const int64_t n = lay.n_ctx, bs = lay.block_size;
    const std::vector<AttnPass> &passes = lay.heads[static_cast<size_t>(h)].passes;
    int64_t blocks = 0;
    for (size_t p = 0; p < passes.size(); ++p) {
        const AttnPass &ap = passes[p];
        for (int64_t i = 0; i < ap.n_qblocks; ++i)
            for (int64_t x = ap.row_ptr[static_cast<size_t>(i)];
                 x < ap.row_ptr[static_cast<size_t>(i) + 1]; ++x) {
                const int64_t j = ap.col_idx[static_cast<size_t>(x)];
                int64_t computed = 0;
                for (int64_t sq = i * bs; sq < std::min((i + 1) * bs, ap.n_slots); ++sq) {
                    const int64_t q = stx::slot_position(ap, lay.n_ctx, sq);
                    if (q < 0) continue;
                    for (int64_t sk = j * bs; sk < std::min((j + 1) * bs, ap.n_slots); ++sk) {
                        const int64_t k = stx::slot_position(ap, lay.n_ctx, sk);
                        if (k < 0 || k > q || !lay.pass_allows(h, p, q, k)) continue;
                        ++(*counts)[static_cast<size_t>(q * n + k)];
                        ++computed;
                    }
                }
                if (check_waste && !ap.transposed && computed == 0)
                    fail_msg(WHERE_FMT " pass %zu: block (%lld, %lld) computes no pair",
                             WHERE_ARGS(w), p, static_cast<long long>(i),
                             static_cast<long long>(j));
                ++blocks;
            }
    }
    return blocks;
}

// Each (q, k) computed exactly once where `allowed`, never elsewhere, and Layout::allows
// agrees with `allowed`.
template <typename F>
void check_counts(const Layout &lay, int32_t h, const std::vector<int32_t> &counts, F allowed,
                  const Where &w) {
    const int64_t n = lay.n_ctx;
    for (int64_t q = 0; q < n; ++q)
        for (int64_t k = 0; k < n; ++k) {
            const bool want = k <= q && allowed(q, k);
            const int32_t got = counts[static_cast<size_t>(q * n + k)];
            if (got != (want ? 1 : 0))
                fail_msg(WHERE_FMT ": (q %lld, k %lld) computed %d times, allowed %d",
                         WHERE_ARGS(w), static_cast<long long>(q), static_cast<long long>(k), got,
                         want ? 1 : 0);
            if (lay.allows(h, q, k) != want)
                fail_msg(WHERE_FMT ": Layout::allows(q %lld, k %lld) = %d, definition %d",
                         WHERE_ARGS(w), static_cast<long long>(q), static_cast<long long>(k),
                         lay.allows(h, q, k) ? 1 : 0, want ? 1 : 0);
        }
}

// strided:1 reads every earlier key and strided:L >= n_ctx only the query itself: both run
// in natural order (no transposed order of L slots a row for a stride longer than the text).
bool is_natural(const Component &c, int32_t n_ctx) {
    return c.kind != CompKind::Strided || c.l == 1 || c.l >= n_ctx;
}

// The documented passes: the natural-order parts (deduplicated) share the first pass; each
// distinct strided part (1 < L < n_ctx) gets its own transposed pass of stride L, in order.
void check_passes(const Layout &lay, const MergedPattern &m, const Where &w) {
    std::vector<Component> natural, strided;
    for (const Component &c : m.parts) {
        std::vector<Component> &group = is_natural(c, lay.n_ctx) ? natural : strided;
        if (std::find(group.begin(), group.end(), c) == group.end()) group.push_back(c);
    }
    const std::vector<AttnPass> &passes = lay.heads[static_cast<size_t>(w.head)].passes;
    const size_t want = (natural.empty() ? 0 : 1) + strided.size();
    if (passes.size() != want)
        fail_msg(WHERE_FMT ": %zu passes, expected %zu", WHERE_ARGS(w), passes.size(), want);
    size_t p = 0;
    if (!natural.empty()) {
        if (passes[0].transposed || passes[0].include != natural)
            fail_msg(WHERE_FMT ": pass 0 is not the natural pass of the natural-order parts",
                     WHERE_ARGS(w));
        p = 1;
    }
    for (const Component &c : strided) {
        const AttnPass &ap = passes[p];
        if (!ap.transposed || ap.stride != c.l || ap.include.size() != 1 || !(ap.include[0] == c))
            fail_msg(WHERE_FMT ": pass %zu is not the transposed pass of strided:%d", WHERE_ARGS(w),
                     p, c.l);
        ++p;
    }
}

void check_pattern(const char *text, int32_t n_ctx, int32_t bs) {
    const LayerPattern lp = parse_layer(text);
    Layout lay;
    if (stx::build_layout(lp, n_ctx, kHeads, bs, &lay) != STX_OK)
        fail_msg("build_layout(\"%s\", n_ctx %d, block %d): %s", text, n_ctx, bs, stx_last_error());
    if (lay.n_ctx != n_ctx || lay.n_head != kHeads || lay.block_size != bs ||
        lay.heads.size() != static_cast<size_t>(kHeads))
        fail_msg("build_layout(\"%s\", n_ctx %d, block %d): sizes not recorded", text, n_ctx, bs);
    std::vector<int32_t> counts;
    for (int32_t h = 0; h < kHeads; ++h) {
        const Where w{text, n_ctx, bs, h};
        const MergedPattern &m = stx::head_pattern(lp, h);
        check_passes(lay, m, w);
        const std::vector<AttnPass> &passes = lay.heads[static_cast<size_t>(h)].passes;
        int64_t listed = 0;
        for (size_t p = 0; p < passes.size(); ++p) {
            check_csr(passes[p], p, n_ctx, bs, w);
            listed += static_cast<int64_t>(passes[p].col_idx.size());
        }
        counts.assign(static_cast<size_t>(n_ctx) * n_ctx, 0);
        const int64_t walked = walk_head(lay, h, true, w, &counts);
        check_counts(
            lay, h, counts, [&](int64_t q, int64_t k) { return stx::merged_allows(m, h, q, k); },
            w);
        // layout_stats agrees with the walk.
        int64_t n_blocks = -1, n_pairs = -1, pairs = 0;
        stx::layout_stats(lay, h, &n_blocks, &n_pairs);
        for (int32_t c : counts) pairs += c;
        if (n_blocks != listed || walked != listed || n_pairs != pairs)
            fail_msg(WHERE_FMT ": layout_stats gives %lld blocks, %lld pairs; the walk %lld, %lld",
                     WHERE_ARGS(w), static_cast<long long>(n_blocks),
                     static_cast<long long>(n_pairs), static_cast<long long>(listed),
                     static_cast<long long>(pairs));
    }
}

// ------------------------------------------------------------------ (a), (b) brute force

void test_brute_force(void **state) {
    (void)state;
    for (const char *text : kPatterns)
        for (int32_t n : kCtx) {
            check_pattern(text, n, 16);
            check_pattern(text, n, 32);
            if (n == 77 || n == 130) {
                check_pattern(text, n, 64);
                check_pattern(text, n, 128);
            }
        }
}

// Longer contexts for the L-based patterns, with several blocks per L and several L per block.
void test_brute_force_longer(void **state) {
    (void)state;
    const char *const patterns[] = {
        "local:40",    "strided:40",          "fixed:40:8:3",
        "fixed:7:2:3", "local:33+strided:33", "fixed:64:16:4+strided:64"};
    for (const char *text : patterns) {
        check_pattern(text, 301, 16);
        check_pattern(text, 301, 32);
        check_pattern(text, 320, 64);
    }
}

// The block lists of the paper's layouts (PAPER.md 1.6) when L and R = n/L are multiples of the
// block: local: key blocks i - L/bs .. i; strided (transposed): i - (i mod R/bs) .. i.
void test_paper_block_lists(void **state) {
    (void)state;
    const int32_t n = 3072, bs = 32;
    Layout lay;
    assert_int_equal(stx::build_layout(parse_layer("local:96"), n, 1, bs, &lay), STX_OK);
    const AttnPass &lp = lay.heads[0].passes[0];
    for (int32_t i = 0; i < lp.n_qblocks; ++i) {
        std::vector<int32_t> want;
        for (int32_t j = std::max(0, i - 96 / bs); j <= i; ++j) want.push_back(j);
        std::vector<int32_t> got(lp.col_idx.begin() + lp.row_ptr[static_cast<size_t>(i)],
                                 lp.col_idx.begin() + lp.row_ptr[static_cast<size_t>(i) + 1]);
        if (got != want) fail_msg("local:96, n 3072: query block %d differs from the paper", i);
    }
    assert_int_equal(stx::build_layout(parse_layer("strided:128"), 12288, 1, bs, &lay), STX_OK);
    const AttnPass &sp = lay.heads[0].passes[0];
    const int32_t chunks = 96 / bs; // R = 12288 / 128 = 96
    assert_true(sp.transposed);
    assert_int_equal(sp.rows, 96);
    for (int32_t i = 0; i < sp.n_qblocks; ++i) {
        std::vector<int32_t> want;
        for (int32_t j = i - i % chunks; j <= i; ++j) want.push_back(j);
        std::vector<int32_t> got(sp.col_idx.begin() + sp.row_ptr[static_cast<size_t>(i)],
                                 sp.col_idx.begin() + sp.row_ptr[static_cast<size_t>(i) + 1]);
        if (got != want) fail_msg("strided:128, n 12288: query block %d differs from the paper", i);
    }
}

// ------------------------------------------------------------------ (c) user layouts

void test_user_layouts(void **state) {
    (void)state;
    stx_test_rng rng = {0x5eed1a7017ull};
    const int32_t sizes[] = {16, 32, 64};
    for (int32_t n : kCtx)
        for (int32_t bs : sizes)
            for (int rep = 0; rep < 3; ++rep) {
                const int32_t nb = static_cast<int32_t>(ceil_div(n, bs));
                // rep 0: half the blocks; rep 1: a sparse mask (diagonal and few others);
                // rep 2: full lower triangle for head 0, diagonal only for head 1.
                std::vector<uint8_t> mask(static_cast<size_t>(kHeads) * nb * nb, 0);
                auto at = [&](int32_t h, int64_t i, int64_t j) -> uint8_t & {
                    return mask[(static_cast<size_t>(h) * nb + static_cast<size_t>(i)) * nb +
                                static_cast<size_t>(j)];
                };
                for (int32_t h = 0; h < kHeads; ++h)
                    for (int32_t i = 0; i < nb; ++i)
                        for (int32_t j = 0; j < i; ++j) {
                            const uint64_t r = stx_test_next(&rng) % 8;
                            uint8_t on = rep == 0 ? r < 4 : r == 0;
                            if (rep == 2) on = h == 0 ? 1 : h == 1 ? 0 : r < 4;
                            at(h, i, j) = on;
                        }
                for (int32_t h = 0; h < kHeads; ++h)
                    for (int32_t i = 0; i < nb; ++i) at(h, i, i) = 1;
                Layout lay;
                if (stx::build_layout_from_blocks(n, kHeads, bs, mask.data(), &lay) != STX_OK)
                    fail_msg("build_layout_from_blocks(n_ctx %d, block %d): %s", n, bs,
                             stx_last_error());
                std::vector<int32_t> counts;
                for (int32_t h = 0; h < kHeads; ++h) {
                    const Where w{"user", n, bs, h};
                    const std::vector<AttnPass> &passes = lay.heads[static_cast<size_t>(h)].passes;
                    if (passes.size() != 1 || passes[0].transposed)
                        fail_msg(WHERE_FMT ": %zu passes, expected one natural pass", WHERE_ARGS(w),
                                 passes.size());
                    check_csr(passes[0], 0, n, bs, w);
                    // The CSR lists exactly the mask's blocks.
                    for (int32_t i = 0; i < nb; ++i)
                        for (int32_t j = 0; j < nb; ++j) {
                            const auto b = passes[0].col_idx.begin();
                            const bool listed = std::binary_search(
                                b + passes[0].row_ptr[static_cast<size_t>(i)],
                                b + passes[0].row_ptr[static_cast<size_t>(i) + 1], j);
                            if (listed != (at(h, i, j) != 0))
                                fail_msg(WHERE_FMT ": block (%d, %d) listed %d, mask %d",
                                         WHERE_ARGS(w), i, j, listed ? 1 : 0, at(h, i, j));
                        }
                    counts.assign(static_cast<size_t>(n) * n, 0);
                    walk_head(lay, h, true, w, &counts);
                    check_counts(
                        lay, h, counts,
                        [&](int64_t q, int64_t k) { return at(h, q / bs, k / bs) != 0; }, w);
                }
            }
}

void expect_refusal(stx_status st, stx_status want, const char *what, const char *fragment) {
    const char *msg = stx_last_error();
    if (st != want) fail_msg("%s: status %d, expected %d (message \"%s\")", what, st, want, msg);
    if (!strstr(msg, fragment))
        fail_msg("%s: message \"%s\" does not mention \"%s\"", what, msg, fragment);
}

void test_refusals(void **state) {
    (void)state;
    const int32_t n = 77, bs = 16, nb = 5;
    std::vector<uint8_t> good(static_cast<size_t>(kHeads) * nb * nb, 0);
    for (int32_t h = 0; h < kHeads; ++h)
        for (int32_t i = 0; i < nb; ++i)
            for (int32_t j = 0; j <= i; ++j)
                good[(static_cast<size_t>(h) * nb + static_cast<size_t>(i)) * nb +
                     static_cast<size_t>(j)] = 1;
    Layout lay;
    assert_int_equal(stx::build_layout_from_blocks(n, kHeads, bs, good.data(), &lay), STX_OK);

    std::vector<uint8_t> bad = good;
    bad[(1 * nb + 2) * nb + 2] = 0; // head 1, query block 2 misses its diagonal
    stx_clear_error();
    expect_refusal(stx::build_layout_from_blocks(n, kHeads, bs, bad.data(), &lay),
                   STX_ERR_INVALID_ARGUMENT, "missing diagonal block", "diagonal");
    assert_non_null(strstr(stx_last_error(), "head 1"));
    assert_non_null(strstr(stx_last_error(), "block 2"));

    bad = good;
    bad[(2 * nb + 1) * nb + 3] = 1; // head 2, query block 1 reads key block 3
    stx_clear_error();
    expect_refusal(stx::build_layout_from_blocks(n, kHeads, bs, bad.data(), &lay),
                   STX_ERR_INVALID_ARGUMENT, "block above the diagonal", "above the diagonal");
    assert_non_null(strstr(stx_last_error(), "head 2"));

    stx_clear_error();
    expect_refusal(stx::build_layout_from_blocks(n, kHeads, bs, nullptr, &lay),
                   STX_ERR_INVALID_ARGUMENT, "NULL blocks", "blocks");

    // Sizes, for both builders: the message names the field and the value.
    const LayerPattern lp = parse_layer("local:8");
    struct SizeCase {
        int32_t n_ctx, n_head, block_size;
        const char *fragment;
    };
    const SizeCase cases[] = {
        {n, kHeads, 24, "block_size (24)"},
        {n, kHeads, 8, "block_size (8)"},
        {n, kHeads, 256, "block_size (256)"},
        {n, kHeads, 0, "block_size (0)"},
        {0, kHeads, bs, "n_ctx (0)"},
        {-5, kHeads, bs, "n_ctx (-5)"},
        {n, 0, bs, "n_head (0)"},
        {n, -1, bs, "n_head (-1)"},
    };
    for (const SizeCase &c : cases) {
        char what[128];
        snprintf(what, sizeof what, "build_layout_from_blocks(n_ctx %d, n_head %d, block %d)",
                 c.n_ctx, c.n_head, c.block_size);
        stx_clear_error();
        expect_refusal(
            stx::build_layout_from_blocks(c.n_ctx, c.n_head, c.block_size, good.data(), &lay),
            STX_ERR_INVALID_ARGUMENT, what, c.fragment);
        snprintf(what, sizeof what, "build_layout(n_ctx %d, n_head %d, block %d)", c.n_ctx,
                 c.n_head, c.block_size);
        stx_clear_error();
        expect_refusal(stx::build_layout(lp, c.n_ctx, c.n_head, c.block_size, &lay),
                       STX_ERR_INVALID_ARGUMENT, what, c.fragment);
    }
    // A layer pattern with no heads.
    stx_clear_error();
    expect_refusal(stx::build_layout(LayerPattern{}, n, kHeads, bs, &lay), STX_ERR_INVALID_ARGUMENT,
                   "empty pattern", "no heads");
}

// ------------------------------------------------------------------ (d) the paper's numbers

// Closed forms of the allowed (q, k) pairs summed over queries q < n, from the element-wise
// definitions (one term per query, so each is plainly the definition).
int64_t local_pairs(int64_t n, int64_t L) {
    int64_t s = 0;
    for (int64_t q = 0; q < n; ++q) s += std::min(q + 1, L); // keys q-L+1..q, clipped at 0
    return s;
}
int64_t strided_pairs(int64_t n, int64_t L) {
    int64_t s = 0;
    for (int64_t q = 0; q < n; ++q) s += q / L + 1; // keys q, q-L, q-2L, ... >= 0
    return s;
}
int64_t fixed_pairs(int64_t n, int64_t L, int64_t C) {
    int64_t s = 0;
    // Own L-block up to q, and C summary cells in each complete earlier L-block.
    for (int64_t q = 0; q < n; ++q) s += q % L + 1 + (q / L) * C;
    return s;
}

struct PaperCase {
    const char *name, *pattern;
    int32_t n_ctx, n_head;
    int64_t blocks; // per head, from the table
    int64_t pairs;  // per head, from the closed form (the table rounds the large ones)
};

void test_paper_numbers(void **state) {
    (void)state;
    const int32_t bs = 32;
    // The table's dense causal block counts: nb (nb + 1) / 2.
    Layout lay;
    assert_int_equal(stx::build_layout(parse_layer("dense"), 3072, 1, bs, &lay), STX_OK);
    assert_int_equal(lay.heads[0].passes[0].col_idx.size(), 4656);
    assert_int_equal(stx::build_layout(parse_layer("dense"), 12288, 1, bs, &lay), STX_OK);
    assert_int_equal(lay.heads[0].passes[0].col_idx.size(), 73920);

    // The closed forms against the table's numbers (and the brief's arithmetic).
    assert_int_equal(local_pairs(3072, 96), 96 * 3072 - 96 * 95 / 2);
    assert_int_equal(local_pairs(3072, 96), 290352);
    assert_int_equal(strided_pairs(3072, 96), 50688);        // 96 chunks of 32: 96 * 32 * 33 / 2
    assert_int_equal(local_pairs(12288, 128), 1564736);      // the table's 1.56M
    assert_int_equal(strided_pairs(12288, 128), 595968);     // the table's 0.60M
    assert_int_equal(fixed_pairs(12288, 128, 32), 19470336); // the table's 19.5M
    // 25.8% of dense n (n + 1) / 2 = 75,503,616.
    const int64_t dense_pairs = int64_t(12288) * 12289 / 2;
    assert_int_equal(dense_pairs, 75503616);
    assert_true(fixed_pairs(12288, 128, 32) * 1000 >= 257 * dense_pairs + dense_pairs / 2);
    assert_true(fixed_pairs(12288, 128, 32) * 1000 < 258 * dense_pairs + dense_pairs / 2);

    const PaperCase cases[] = {
        {"CIFAR-10 local", "local:96", 3072, 1, 378, local_pairs(3072, 96)},
        {"CIFAR-10 strided", "strided:96", 3072, 1, 96, strided_pairs(3072, 96)},
        {"ImageNet64 local", "local:128", 12288, 1, 1910, local_pairs(12288, 128)},
        {"ImageNet64 strided", "strided:128", 12288, 1, 768, strided_pairs(12288, 128)},
        {"enwik8 fixed", "fixed:128:32:4", 12288, 4, 19200, fixed_pairs(12288, 128, 32)},
    };
    for (const PaperCase &c : cases) {
        assert_int_equal(stx::build_layout(parse_layer(c.pattern), c.n_ctx, c.n_head, bs, &lay),
                         STX_OK);
        for (int32_t h = 0; h < c.n_head; ++h) {
            int64_t blocks = -1, pairs = -1;
            stx::layout_stats(lay, h, &blocks, &pairs);
            if (blocks != c.blocks || pairs != c.pairs)
                fail_msg("%s (%s, n %d, bs %d) head %d: layout_stats %lld blocks, %lld pairs; "
                         "expected %lld, %lld",
                         c.name, c.pattern, c.n_ctx, bs, h, static_cast<long long>(blocks),
                         static_cast<long long>(pairs), static_cast<long long>(c.blocks),
                         static_cast<long long>(c.pairs));
        }
    }
    // Enwik8: query block i reads i/4 summary blocks and blocks 4(i/4)..i of its own L-block.
    assert_int_equal(stx::build_layout(parse_layer("fixed:128:32:4"), 12288, 4, bs, &lay), STX_OK);
    for (int32_t h = 0; h < 4; ++h) {
        const AttnPass &p = lay.heads[static_cast<size_t>(h)].passes[0];
        for (int32_t i = 0; i < p.n_qblocks; ++i) {
            const int64_t row =
                p.row_ptr[static_cast<size_t>(i) + 1] - p.row_ptr[static_cast<size_t>(i)];
            if (row != i / 4 + i % 4 + 1)
                fail_msg("fixed:128:32:4 head %d query block %d: %lld blocks, expected %d", h, i,
                         static_cast<long long>(row), i / 4 + i % 4 + 1);
            // The summary blocks of head h: 4m + 3 - h for each earlier L-block m.
            for (int32_t m = 0; m < i / 4; ++m)
                if (!std::binary_search(p.col_idx.begin() + p.row_ptr[static_cast<size_t>(i)],
                                        p.col_idx.begin() + p.row_ptr[static_cast<size_t>(i) + 1],
                                        4 * m + 3 - h))
                    fail_msg("fixed:128:32:4 head %d query block %d lacks summary block %d", h, i,
                             4 * m + 3 - h);
        }
    }
}

// The closed forms are the definition: check them against a brute-force count on small n.
void test_closed_forms(void **state) {
    (void)state;
    const int64_t ns[] = {1, 5, 77, 100, 301};
    const int64_t ls[] = {1, 3, 16, 40};
    for (int64_t n : ns)
        for (int64_t L : ls) {
            Component lc;
            lc.kind = CompKind::Local;
            lc.l = static_cast<int32_t>(L);
            Component sc = lc, fc = lc;
            sc.kind = CompKind::Strided;
            fc.kind = CompKind::Fixed;
            fc.c = static_cast<int32_t>(std::max<int64_t>(1, L / 4));
            int64_t nl = 0, ns_ = 0, nf = 0;
            for (int64_t q = 0; q < n; ++q)
                for (int64_t k = 0; k <= q; ++k) {
                    nl += stx::component_allows(lc, 0, q, k);
                    ns_ += stx::component_allows(sc, 0, q, k);
                    nf += stx::component_allows(fc, 0, q, k);
                }
            assert_int_equal(nl, local_pairs(n, L));
            assert_int_equal(ns_, strided_pairs(n, L));
            assert_int_equal(nf, fixed_pairs(n, L, fc.c));
        }
}

} // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_brute_force),       cmocka_unit_test(test_brute_force_longer),
        cmocka_unit_test(test_paper_block_lists), cmocka_unit_test(test_user_layouts),
        cmocka_unit_test(test_refusals),          cmocka_unit_test(test_closed_forms),
        cmocka_unit_test(test_paper_numbers),
    };
    return cmocka_run_group_tests(tests, nullptr, nullptr);
}
