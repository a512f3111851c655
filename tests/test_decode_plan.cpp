// test_decode_plan: the decoder's cache plan (lib/decode_plan.h), which both decoders (the CPU
// one and the CUDA kernels) run, against the layouts by brute force, at lengths where rings
// wrap many times.
//
//  (a) for patterns of every kind and integration mode (local widths that do and do not divide
//      the block, strided wider than n_ctx, fixed with 1 and 3 summary groups, merges of two
//      and three parts, two fixed parts, a per-head list, dense merged with local), n_ctx 97
//      and 300, blocks of 16 and 32, 3 or 4 heads: write every position in turn with
//      decode_write_slots into a simulated cache, and at each query i enumerate the keys
//      part by part as the decoders do. The keys read are exactly {k <= i : Layout::allows},
//      each once, and the slot read for each holds that key (never an overwritten one);
//  (b) the same for user block layouts (random, different per head);
//  (c) the sizes: heads with a dense, strided or user part (or two fixed parts) keep every
//      position; local:L alone keeps L slots; fixed:L:C keeps L + ceil(n / L) C; no plan has
//      more than n_ctx slots a head.
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

#include "decode_plan.h"
#include "layout.h"
#include "pattern.h"

#include <string>
#include <vector>

namespace {

using stx::DecodeHead;
using stx::DecodePlan;
using stx::Layout;

// Runs one head of a plan over every position and checks (a) for it; returns the keys read.
int64_t check_head(const Layout &lay, const DecodePlan &plan, int32_t h, const char *what) {
    const DecodeHead &hd = plan.heads[static_cast<size_t>(h)];
    std::vector<int64_t> cache(static_cast<size_t>(plan.slots), -1); // the position each holds
    std::vector<int32_t> seen(static_cast<size_t>(lay.n_ctx), -1);   // last query that read it
    int64_t total = 0;
    for (int64_t i = 0; i < lay.n_ctx; ++i) {
        int64_t s[2];
        stx::decode_write_slots(hd, i, &s[0], &s[1]);
        for (int64_t slot : s) {
            if (slot < 0) continue;
            if (slot >= plan.slots)
                fail_msg("%s head %d: position %lld written to slot %lld of %lld", what, h,
                         static_cast<long long>(i), static_cast<long long>(slot),
                         static_cast<long long>(plan.slots));
            cache[static_cast<size_t>(slot)] = i;
        }
        int64_t read = 0;
        for (int32_t part = 0; part < hd.n_comps; ++part) {
            const int64_t n = stx::decode_candidate_count(hd.comps[part], i);
            for (int64_t t = 0; t < n; ++t) {
                const int64_t k = stx::decode_candidate(hd.comps[part], h, i, t);
                if (k < 0 || k > i ||
                    !stx::decode_reads(hd, plan.user, plan.user_nb, plan.user_bs, h, part, i, k))
                    continue;
                if (seen[static_cast<size_t>(k)] == i)
                    fail_msg("%s head %d: query %lld reads key %lld twice", what, h,
                             static_cast<long long>(i), static_cast<long long>(k));
                seen[static_cast<size_t>(k)] = static_cast<int32_t>(i);
                if (!lay.allows(h, i, k))
                    fail_msg("%s head %d: query %lld reads key %lld, which the layout does not "
                             "allow",
                             what, h, static_cast<long long>(i), static_cast<long long>(k));
                const int64_t slot = stx::decode_read_slot(hd, i, k);
                if (slot < 0 || slot >= plan.slots || cache[static_cast<size_t>(slot)] != k)
                    fail_msg("%s head %d: query %lld reads key %lld from slot %lld, which holds "
                             "position %lld",
                             what, h, static_cast<long long>(i), static_cast<long long>(k),
                             static_cast<long long>(slot),
                             slot >= 0 && slot < plan.slots
                                 ? static_cast<long long>(cache[static_cast<size_t>(slot)])
                                 : -2LL);
                ++read;
            }
        }
        for (int64_t k = 0; k <= i; ++k)
            if (lay.allows(h, i, k) && seen[static_cast<size_t>(k)] != i)
                fail_msg("%s head %d: query %lld does not read key %lld, which the layout allows",
                         what, h, static_cast<long long>(i), static_cast<long long>(k));
        total += read;
    }
    return total;
}

int64_t check_layout(const Layout &lay, const char *what) {
    DecodePlan plan;
    if (stx::build_decode_plan(lay, &plan) != STX_OK) fail_msg("%s: %s", what, stx_last_error());
    assert_int_equal(static_cast<int64_t>(plan.heads.size()), lay.n_head);
    if (plan.slots > lay.n_ctx) fail_msg("%s: %lld slots > n_ctx", what, (long long)plan.slots);
    int64_t keys = 0;
    for (int32_t h = 0; h < lay.n_head; ++h) keys += check_head(lay, plan, h, what);
    return keys;
}

const char *const kPatterns[] = {
    "dense",
    "local:7",
    "local:16",
    "local:40",
    "strided:9",
    "strided:1",
    "strided:2000",
    "fixed:16:4",
    "fixed:16:4:3",
    "fixed:30:7:2",
    "local:8+strided:8",
    "fixed:16:4+strided:16",
    "local:5+fixed:32:8",
    "local:8+fixed:32:8+strided:11",
    "fixed:16:4+fixed:32:8",
    "[local:8;strided:8;fixed:16:4:2]",
    "dense+local:4",
};

void test_patterns(void **state) {
    (void)state;
    int cases = 0;
    int64_t keys = 0;
    for (const char *text : kPatterns)
        for (int32_t n_ctx : {97, 300})
            for (int32_t bs : {16, 32}) {
                stx::LayerPattern pattern;
                if (stx::parse_layer_pattern(text, &pattern) != STX_OK)
                    fail_msg("%s: %s", text, stx_last_error());
                const int32_t heads = text[0] == '[' ? 3 : 4;
                Layout lay;
                if (stx::build_layout(pattern, n_ctx, heads, bs, &lay) != STX_OK)
                    fail_msg("%s: %s", text, stx_last_error());
                const std::string what =
                    std::string(text) + " n " + std::to_string(n_ctx) + " bs " + std::to_string(bs);
                keys += check_layout(lay, what.c_str());
                ++cases;
            }
    printf("  %d layouts: every query's keys (%lld in all), once each, from slots that hold them\n",
           cases, static_cast<long long>(keys));
}

void test_user_layouts(void **state) {
    (void)state;
    stx_test_rng rng = {99};
    for (int32_t n_ctx : {97, 200}) {
        const int32_t bs = 16, heads = 3, nb = (n_ctx + bs - 1) / bs;
        std::vector<uint8_t> blocks(static_cast<size_t>(heads) * nb * nb, 0);
        for (int32_t h = 0; h < heads; ++h)
            for (int32_t i = 0; i < nb; ++i)
                for (int32_t j = 0; j <= i; ++j)
                    blocks[(static_cast<size_t>(h) * nb + i) * nb + j] =
                        static_cast<uint8_t>(i == j || stx_test_uniform(&rng) > 0.0);
        Layout lay;
        if (stx::build_layout_from_blocks(n_ctx, heads, bs, blocks.data(), &lay) != STX_OK)
            fail_msg("user layout: %s", stx_last_error());
        check_layout(lay, "user layout");
    }
}

int64_t slots_of(const char *text, int32_t n_ctx) {
    stx::LayerPattern pattern;
    Layout lay;
    DecodePlan plan;
    if (stx::parse_layer_pattern(text, &pattern) != STX_OK ||
        stx::build_layout(pattern, n_ctx, 2, 32, &lay) != STX_OK ||
        stx::build_decode_plan(lay, &plan) != STX_OK)
        fail_msg("%s: %s", text, stx_last_error());
    return plan.slots;
}

void test_sizes(void **state) {
    (void)state;
    assert_int_equal(slots_of("dense", 300), 300);
    assert_int_equal(slots_of("strided:16", 300), 300);
    assert_int_equal(slots_of("local:8+strided:16", 300), 300);
    assert_int_equal(slots_of("fixed:16:4+fixed:32:8", 300), 300);
    assert_int_equal(slots_of("local:40", 300), 40);
    assert_int_equal(slots_of("local:400", 300), 300); /* the window covers everything */
    assert_int_equal(slots_of("fixed:16:4", 300), 16 + 19 * 4);
    assert_int_equal(slots_of("local:24+fixed:16:4", 300), 24 + 19 * 4);
    /* The paper's enwik8 head: 128 + 96 x 32 of 12,288. */
    assert_int_equal(slots_of("fixed:128:32:4", 12288), 128 + 96 * 32);
}

} // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_patterns),
        cmocka_unit_test(test_user_layouts),
        cmocka_unit_test(test_sizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
