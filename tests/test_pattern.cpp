// test_pattern: the attention-pattern grammar (lib/pattern.cpp) and the element-wise
// definition of each component.
//
//  (a) round trips: every grammar form parses with parse_model_pattern, the parsed structure
//      has the right kinds and numbers (fields checked one by one), and format_model prints
//      the canonical text back ("fixed:128:32:1" prints as "fixed:128:32"); the canonical text
//      parses to the same structure again;
//  (b) parse_layer_pattern accepts a layer and refuses a model-level ',' list;
//  (c) malformed strings each give STX_ERR_FORMAT and a last-error message that names the
//      problem (checked with strstr on a fragment of it); NULL gives STX_ERR_INVALID_ARGUMENT;
//  (d) component_allows / merged_allows against keys computed by hand for local, strided,
//      fixed (one group and G groups over heads, cycled) and a merged union.
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

// stx_last_error() and stx_clear_error() come from sparsetx.h (through pattern.h); error.h is
// not included: its stx::fail() collides with cmocka's fail() macro.
#include "pattern.h"

#include <cstring>
#include <string>
#include <vector>

namespace {

using stx::CompKind;
using stx::Component;
using stx::LayerPattern;
using stx::MergedPattern;
using stx::ModelPattern;

const char *kind_name(CompKind k) {
    switch (k) {
    case CompKind::Dense:
        return "dense";
    case CompKind::Local:
        return "local";
    case CompKind::Strided:
        return "strided";
    case CompKind::Fixed:
        return "fixed";
    case CompKind::User:
        return "user";
    }
    return "?";
}

Component comp(CompKind kind, int32_t l = 0, int32_t c = 0, int32_t g = 1) {
    Component x;
    x.kind = kind;
    x.l = l;
    x.c = c;
    x.g = g;
    return x;
}

ModelPattern parse_ok(const char *text) {
    ModelPattern m;
    stx_status st = stx::parse_model_pattern(text, &m);
    if (st != STX_OK) fail_msg("parse_model_pattern(\"%s\") = %d: %s", text, st, stx_last_error());
    return m;
}

// Field-by-field comparison, so a failure says which field of which part differs.
void expect_component(const char *text, const Component &got, const Component &want,
                      const char *where) {
    if (got.kind != want.kind)
        fail_msg("\"%s\" %s: kind %s, expected %s", text, where, kind_name(got.kind),
                 kind_name(want.kind));
    if (got.l != want.l) fail_msg("\"%s\" %s: l = %d, expected %d", text, where, got.l, want.l);
    if (got.c != want.c) fail_msg("\"%s\" %s: c = %d, expected %d", text, where, got.c, want.c);
    if (got.g != want.g) fail_msg("\"%s\" %s: g = %d, expected %d", text, where, got.g, want.g);
}

// want[layer][head][part]
using Shape = std::vector<std::vector<std::vector<Component>>>;

void expect_model(const char *text, const ModelPattern &m, const Shape &want) {
    if (m.layers.size() != want.size())
        fail_msg("\"%s\": %zu layers, expected %zu", text, m.layers.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
        const LayerPattern &lp = m.layers[i];
        if (lp.heads.size() != want[i].size())
            fail_msg("\"%s\" layer %zu: %zu heads, expected %zu", text, i, lp.heads.size(),
                     want[i].size());
        for (size_t h = 0; h < want[i].size(); ++h) {
            const MergedPattern &mp = lp.heads[h];
            if (mp.parts.size() != want[i][h].size())
                fail_msg("\"%s\" layer %zu head %zu: %zu parts, expected %zu", text, i, h,
                         mp.parts.size(), want[i][h].size());
            for (size_t p = 0; p < want[i][h].size(); ++p) {
                char where[96];
                snprintf(where, sizeof where, "layer %zu head %zu part %zu", i, h, p);
                expect_component(text, mp.parts[p], want[i][h][p], where);
            }
        }
    }
}

bool same_model(const ModelPattern &a, const ModelPattern &b) {
    if (a.layers.size() != b.layers.size()) return false;
    for (size_t i = 0; i < a.layers.size(); ++i) {
        if (a.layers[i].heads.size() != b.layers[i].heads.size()) return false;
        for (size_t h = 0; h < a.layers[i].heads.size(); ++h)
            if (a.layers[i].heads[h].parts != b.layers[i].heads[h].parts) return false;
    }
    return true;
}

// Parses `text`, checks the structure, prints it back and compares with `canonical`, then
// parses the canonical text and requires the same structure.
void round_trip(const char *text, const char *canonical, const Shape &want) {
    ModelPattern m = parse_ok(text);
    expect_model(text, m, want);
    std::string printed = stx::format_model(m);
    if (printed != canonical)
        fail_msg("format_model(parse(\"%s\")) = \"%s\", expected \"%s\"", text, printed.c_str(),
                 canonical);
    ModelPattern again = parse_ok(printed.c_str());
    if (!same_model(m, again))
        fail_msg("\"%s\" and its canonical text \"%s\" parse differently", text, printed.c_str());
}

const Component kDense = comp(CompKind::Dense);
Component local(int32_t l) {
    return comp(CompKind::Local, l);
}
Component strided(int32_t l) {
    return comp(CompKind::Strided, l);
}
Component fixed(int32_t l, int32_t c, int32_t g = 1) {
    return comp(CompKind::Fixed, l, c, g);
}

// ------------------------------------------------------------------ (a) round trips

void test_round_trip_components(void **state) {
    (void)state;
    round_trip("dense", "dense", {{{kDense}}});
    round_trip("local:128", "local:128", {{{local(128)}}});
    round_trip("strided:96", "strided:96", {{{strided(96)}}});
    round_trip("fixed:128:32:4", "fixed:128:32:4", {{{fixed(128, 32, 4)}}});
    round_trip("fixed:128:32", "fixed:128:32", {{{fixed(128, 32, 1)}}});
    round_trip("fixed:128:32:1", "fixed:128:32", {{{fixed(128, 32, 1)}}});
    // Bounds that are allowed: C == L, G*C == L, L == 1.
    round_trip("fixed:16:16", "fixed:16:16", {{{fixed(16, 16, 1)}}});
    round_trip("fixed:16:4:4", "fixed:16:4:4", {{{fixed(16, 4, 4)}}});
    round_trip("local:1", "local:1", {{{local(1)}}});
    round_trip("strided:1", "strided:1", {{{strided(1)}}});
    // Leading zeros are read as a decimal number and dropped when printed.
    round_trip("local:0128", "local:128", {{{local(128)}}});
}

void test_round_trip_integration(void **state) {
    (void)state;
    // Interleaved over layers (CIFAR-10 as the released code).
    round_trip("strided:96,local:96,local:96,local:96", "strided:96,local:96,local:96,local:96",
               {{{strided(96)}}, {{local(96)}}, {{local(96)}}, {{local(96)}}});
    // Merged: one softmax over the union.
    round_trip("local:128+strided:128", "local:128+strided:128", {{{local(128), strided(128)}}});
    // A pattern per head.
    round_trip("[local:128;strided:128]", "[local:128;strided:128]",
               {{{local(128)}, {strided(128)}}});
    // All three at once.
    round_trip("[local:8+strided:8;fixed:12:3:2],dense", "[local:8+strided:8;fixed:12:3:2],dense",
               {{{local(8), strided(8)}, {fixed(12, 3, 2)}}, {{kDense}}});
    round_trip("local:8+strided:8+strided:5,fixed:16:4:1+dense",
               "local:8+strided:8+strided:5,fixed:16:4+dense",
               {{{local(8), strided(8), strided(5)}}, {{fixed(16, 4, 1), kDense}}});
    // A one-head list is the same layer as the bare pattern; it prints without brackets.
    round_trip("[local:8]", "local:8", {{{local(8)}}});
}

void test_format_parts(void **state) {
    (void)state;
    assert_string_equal(stx::format_component(kDense).c_str(), "dense");
    assert_string_equal(stx::format_component(local(7)).c_str(), "local:7");
    assert_string_equal(stx::format_component(strided(9)).c_str(), "strided:9");
    assert_string_equal(stx::format_component(fixed(12, 5)).c_str(), "fixed:12:5");
    assert_string_equal(stx::format_component(fixed(12, 5, 2)).c_str(), "fixed:12:5:2");
    MergedPattern m;
    m.parts = {local(8), strided(8)};
    assert_string_equal(stx::format_merged(m).c_str(), "local:8+strided:8");
    LayerPattern lp;
    lp.heads = {m, MergedPattern{{fixed(12, 3, 2)}}};
    assert_string_equal(stx::format_layer(lp).c_str(), "[local:8+strided:8;fixed:12:3:2]");

    // Cycling: head h uses heads[h % size], layer i uses layers[i % size].
    assert_true(stx::head_pattern(lp, 0).parts == m.parts);
    assert_true(stx::head_pattern(lp, 1).parts[0] == fixed(12, 3, 2));
    assert_true(stx::head_pattern(lp, 2).parts == m.parts);
    assert_true(stx::head_pattern(lp, 5).parts[0] == fixed(12, 3, 2));
    ModelPattern mp = parse_ok("strided:96,local:96,local:96,local:96");
    for (int32_t i = 0; i < 12; ++i) {
        const Component &c = stx::layer_pattern(mp, i).heads[0].parts[0];
        assert_true(c == (i % 4 == 0 ? strided(96) : local(96)));
    }
}

// ------------------------------------------------------------------ (b) layer patterns

void test_parse_layer(void **state) {
    (void)state;
    LayerPattern lp;
    assert_int_equal(stx::parse_layer_pattern("[local:8+strided:8;fixed:12:3:2]", &lp), STX_OK);
    assert_int_equal(lp.heads.size(), 2);
    assert_int_equal(lp.heads[0].parts.size(), 2);
    assert_true(lp.heads[0].parts[0] == local(8));
    assert_true(lp.heads[0].parts[1] == strided(8));
    assert_int_equal(lp.heads[1].parts.size(), 1);
    assert_true(lp.heads[1].parts[0] == fixed(12, 3, 2));
    assert_string_equal(stx::format_layer(lp).c_str(), "[local:8+strided:8;fixed:12:3:2]");

    assert_int_equal(stx::parse_layer_pattern("fixed:128:32:4", &lp), STX_OK);
    assert_int_equal(lp.heads.size(), 1);
    assert_true(lp.heads[0].parts[0] == fixed(128, 32, 4));

    // A ',' is a list over layers: it belongs to the model grammar, not to one layer.
    const char *lists[] = {"local:8,strided:8", "[local:8;dense],dense", "dense,"};
    for (const char *text : lists) {
        stx_clear_error();
        stx_status st = stx::parse_layer_pattern(text, &lp);
        if (st != STX_ERR_FORMAT)
            fail_msg("parse_layer_pattern(\"%s\") = %d, expected STX_ERR_FORMAT", text, st);
        const char *msg = stx_last_error();
        if (!strstr(msg, "','") || !strstr(msg, text))
            fail_msg("parse_layer_pattern(\"%s\"): message \"%s\" does not name the ','", text,
                     msg);
    }
    stx_clear_error();
    assert_int_equal(stx::parse_layer_pattern(nullptr, &lp), STX_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(stx_last_error(), "NULL"));
}

// ------------------------------------------------------------------ (c) malformed strings

struct BadCase {
    const char *text;
    const char *fragment; // must appear in stx_last_error()
};

void test_malformed(void **state) {
    (void)state;
    const BadCase cases[] = {
        {"", "empty"},
        {"foo", "unknown pattern 'foo'"},
        {"Dense", "unknown pattern 'Dense'"},
        {"local", "expected ':'"},
        {"local:", "the width L"},
        {"local:0", "at least 1"},
        {"local:-3", "found '-'"},
        {"local:12x", "found 'x'"},
        {"strided:8+", "expected a pattern"},
        {"[local:8;strided:8", "expected ';' or ']'"},
        {"[local:8;]", "expected a pattern"},
        {"[]", "expected a pattern"},
        {"[[local:8]]", "found '['"},
        {"fixed:16", "expected ':'"},
        {"fixed:16:", "summary cells C"},
        {"fixed:16:0", "at least 1"},
        {"fixed:16:17", "C (17)"},
        {"fixed:16:8:3", "G*C (24)"},
        {"fixed:16:4:0", "at least 1"},
        {"fixed:16:4:2:1", "found ':'"},
        {"dense:4", "found ':'"},
        {"dense,,dense", "expected a pattern"},
        {"dense,", "expected a pattern"},
        {",dense", "expected a pattern"},
        {"local:99999999999", "too large"},
        {"local:2147483648", "too large"},
        {"local: 8", "white space"},
        {" dense", "white space"},
        {"dense\n", "white space"},
        {"dense]", "found ']'"},
        {"local:8;strided:8", "found ';'"},
        {"local:8|strided:8", "found '|'"},
    };
    for (const BadCase &bc : cases) {
        ModelPattern m;
        stx_clear_error();
        stx_status st = stx::parse_model_pattern(bc.text, &m);
        const char *msg = stx_last_error();
        if (st != STX_ERR_FORMAT)
            fail_msg("parse_model_pattern(\"%s\") = %d, expected STX_ERR_FORMAT (message \"%s\")",
                     bc.text, st, msg);
        if (!msg || !*msg) fail_msg("parse_model_pattern(\"%s\"): empty message", bc.text);
        if (!strstr(msg, bc.fragment))
            fail_msg("parse_model_pattern(\"%s\"): message \"%s\" lacks \"%s\"", bc.text, msg,
                     bc.fragment);
        // The message quotes the offending text (for all but the empty string).
        if (*bc.text && !strstr(msg, bc.text))
            fail_msg("parse_model_pattern(\"%s\"): message \"%s\" does not quote the pattern",
                     bc.text, msg);
        // The layer parser refuses them too.
        LayerPattern lp;
        stx_clear_error();
        st = stx::parse_layer_pattern(bc.text, &lp);
        if (st != STX_ERR_FORMAT || !*stx_last_error())
            fail_msg("parse_layer_pattern(\"%s\") = %d (message \"%s\"), expected STX_ERR_FORMAT",
                     bc.text, st, stx_last_error());
    }
    // Errors that come from a position name it.
    ModelPattern m;
    assert_int_equal(stx::parse_model_pattern("local:12x", &m), STX_ERR_FORMAT);
    assert_non_null(strstr(stx_last_error(), "offset 8"));
    assert_int_equal(stx::parse_model_pattern("dense,,dense", &m), STX_ERR_FORMAT);
    assert_non_null(strstr(stx_last_error(), "offset 6"));
    // The C > L message names both numbers.
    assert_int_equal(stx::parse_model_pattern("fixed:16:17", &m), STX_ERR_FORMAT);
    assert_non_null(strstr(stx_last_error(), "L (16)"));

    // The largest accepted number is 2^30.
    assert_int_equal(stx::parse_model_pattern("local:1073741824", &m), STX_OK);
    assert_int_equal(m.layers[0].heads[0].parts[0].l, 1073741824);
    assert_int_equal(stx::parse_model_pattern("local:1073741825", &m), STX_ERR_FORMAT);
    assert_non_null(strstr(stx_last_error(), "too large"));

    stx_clear_error();
    assert_int_equal(stx::parse_model_pattern(nullptr, &m), STX_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(stx_last_error(), "NULL"));
}

// ------------------------------------------------------------------ (d) element-wise definition

// Keys k in [0, q] that the predicate allows, as a list.
template <typename F> std::vector<int64_t> keys_of(int64_t q, F allows) {
    std::vector<int64_t> out;
    for (int64_t k = 0; k <= q; ++k)
        if (allows(k)) out.push_back(k);
    return out;
}

std::string list_text(const std::vector<int64_t> &v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
    return s;
}

void expect_keys(const char *what, int32_t head, int64_t q, const std::vector<int64_t> &got,
                 const std::vector<int64_t> &want) {
    if (got != want)
        fail_msg("%s head %d q %lld: keys {%s}, expected {%s}", what, head,
                 static_cast<long long>(q), list_text(got).c_str(), list_text(want).c_str());
}

void expect_component_keys(const Component &c, int32_t head, int64_t q,
                           const std::vector<int64_t> &want) {
    std::vector<int64_t> got =
        keys_of(q, [&](int64_t k) { return stx::component_allows(c, head, q, k); });
    expect_keys(stx::format_component(c).c_str(), head, q, got, want);
}

void test_component_allows(void **state) {
    (void)state;
    expect_component_keys(kDense, 0, 5, {0, 1, 2, 3, 4, 5});
    expect_component_keys(kDense, 0, 0, {0});
    // local:4: exactly 4 keys q-3..q.
    expect_component_keys(local(4), 0, 10, {7, 8, 9, 10});
    expect_component_keys(local(4), 2, 10, {7, 8, 9, 10});
    expect_component_keys(local(4), 0, 2, {0, 1, 2}); // fewer at the start
    expect_component_keys(local(1), 0, 10, {10});
    // strided:4: (q - k) mod 4 == 0.
    expect_component_keys(strided(4), 0, 10, {2, 6, 10});
    expect_component_keys(strided(4), 0, 3, {3});
    expect_component_keys(strided(1), 0, 4, {0, 1, 2, 3, 4});
    // fixed:8:2: own 8-block 16..20, and the last 2 cells (6, 7) of every block.
    expect_component_keys(fixed(8, 2), 0, 20, {6, 7, 14, 15, 16, 17, 18, 19, 20});
    expect_component_keys(fixed(8, 2), 3, 20, {6, 7, 14, 15, 16, 17, 18, 19, 20});
    expect_component_keys(fixed(8, 2), 0, 7, {0, 1, 2, 3, 4, 5, 6, 7});
    expect_component_keys(fixed(8, 2), 0, 8, {6, 7, 8});
    // fixed:8:2:3: head h uses group h mod 3: cells [6,8), [4,6), [2,4), then [6,8) again.
    expect_component_keys(fixed(8, 2, 3), 0, 20, {6, 7, 14, 15, 16, 17, 18, 19, 20});
    expect_component_keys(fixed(8, 2, 3), 1, 20, {4, 5, 12, 13, 16, 17, 18, 19, 20});
    expect_component_keys(fixed(8, 2, 3), 2, 20, {2, 3, 10, 11, 16, 17, 18, 19, 20});
    expect_component_keys(fixed(8, 2, 3), 3, 20, {6, 7, 14, 15, 16, 17, 18, 19, 20});
    expect_component_keys(fixed(8, 2, 3), 5, 20, {2, 3, 10, 11, 16, 17, 18, 19, 20});
    // G*C == L: the groups tile the block, [6,8), [4,6), [2,4), [0,2).
    expect_component_keys(fixed(8, 2, 4), 3, 9, {0, 1, 8, 9});
    // C == L: every earlier key.
    expect_component_keys(fixed(4, 4), 0, 9, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
    // Ragged L-block: the query's own block is read up to q only.
    expect_component_keys(fixed(5, 2), 1, 12, {3, 4, 8, 9, 10, 11, 12});
}

void expect_merged_keys(const char *text, int32_t head, int64_t q,
                        const std::vector<int64_t> &want) {
    LayerPattern lp;
    if (stx::parse_layer_pattern(text, &lp) != STX_OK)
        fail_msg("parse_layer_pattern(\"%s\"): %s", text, stx_last_error());
    const MergedPattern &m = stx::head_pattern(lp, head);
    std::vector<int64_t> got =
        keys_of(q, [&](int64_t k) { return stx::merged_allows(m, head, q, k); });
    expect_keys(text, head, q, got, want);
}

void test_merged_allows(void **state) {
    (void)state;
    // Union: local 7..10, strided 2, 6, 10 (10 once).
    expect_merged_keys("local:4+strided:4", 0, 10, {2, 6, 7, 8, 9, 10});
    expect_merged_keys("strided:4+local:4", 1, 10, {2, 6, 7, 8, 9, 10});
    expect_merged_keys("local:4+dense", 0, 6, {0, 1, 2, 3, 4, 5, 6});
    expect_merged_keys("strided:3+strided:4", 0, 12, {0, 3, 4, 6, 8, 9, 12});
    expect_merged_keys("fixed:8:2+local:3", 0, 13, {6, 7, 8, 9, 10, 11, 12, 13});
    expect_merged_keys("fixed:8:2:2+strided:5", 1, 20,
                       {0, 4, 5, 10, 12, 13, 15, 16, 17, 18, 19, 20});
    // A per-head list: head 0 and 2 local, head 1 strided.
    expect_merged_keys("[local:3;strided:3]", 0, 9, {7, 8, 9});
    expect_merged_keys("[local:3;strided:3]", 1, 9, {0, 3, 6, 9});
    expect_merged_keys("[local:3;strided:3]", 2, 9, {7, 8, 9});
}

} // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_components),
        cmocka_unit_test(test_round_trip_integration),
        cmocka_unit_test(test_format_parts),
        cmocka_unit_test(test_parse_layer),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_component_allows),
        cmocka_unit_test(test_merged_allows),
    };
    return cmocka_run_group_tests(tests, nullptr, nullptr);
}
