// pattern.h: the attention-pattern grammar and the element-wise definition of every
// pattern (which key k a query q may read). The block layouts in layout.h are derived from
// these predicates and must never change what they allow.
//
//   component := dense | local:L | strided:L | fixed:L:C[:G]
//   merged    := component ('+' component)*            one softmax over the union
//   layer     := merged | '[' merged (';' merged)* ']' a list over heads, cycled
//   model     := layer (',' layer)*                    a list over layers, cycled
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "hd.h"
#include "sparsetx.h"

namespace stx {

enum class CompKind : int32_t { Dense, Local, Strided, Fixed, User };

struct Component {
    CompKind kind = CompKind::Dense;
    int32_t l = 0; // local / strided / fixed width L
    int32_t c = 0; // fixed: summary cells per group C
    int32_t g = 1; // fixed: number of summary groups G (head h uses group h mod G)
    bool operator==(const Component &o) const {
        return kind == o.kind && l == o.l && c == o.c && g == o.g;
    }
};

struct MergedPattern {
    std::vector<Component> parts; // one softmax over the union of the parts
};
struct LayerPattern {
    std::vector<MergedPattern> heads; // head h uses heads[h % heads.size()]
};
struct ModelPattern {
    std::vector<LayerPattern> layers; // layer i uses layers[i % layers.size()]
};

// Parse the grammar. STX_ERR_FORMAT with a message giving the offending text and what was
// expected; also checks the numbers (L >= 1, 1 <= C <= L, G >= 1, G*C <= L).
stx_status parse_model_pattern(const char *text, ModelPattern *out);
stx_status parse_layer_pattern(const char *text, LayerPattern *out);

std::string format_component(const Component &c);
std::string format_merged(const MergedPattern &m);
std::string format_layer(const LayerPattern &p);
std::string format_model(const ModelPattern &p);

inline const MergedPattern &head_pattern(const LayerPattern &p, int32_t head) {
    return p.heads[static_cast<size_t>(head) % p.heads.size()];
}
inline const LayerPattern &layer_pattern(const ModelPattern &p, int32_t layer) {
    return p.layers[static_cast<size_t>(layer) % p.layers.size()];
}

// Element-wise definition for query q and key k of head `head` (0 <= k <= q required;
// the User kind is answered by the Layout, never here). One definition for both backends.
STX_HD bool component_allows_raw(CompKind kind, int32_t l, int32_t c, int32_t g, int32_t head,
                                 int64_t q, int64_t k) {
    switch (kind) {
    case CompKind::Dense:
        return true;
    case CompKind::Local:
        return q - k < l;
    case CompKind::Strided:
        return (q - k) % l == 0;
    case CompKind::Fixed: {
        if (q / l == k / l) return true;
        const int64_t group = head % g, cell = k % l;
        return cell >= l - (group + 1) * c && cell < l - group * c;
    }
    case CompKind::User:
        return false;
    }
    return false;
}

inline bool component_allows(const Component &c, int32_t head, int64_t q, int64_t k) {
    return component_allows_raw(c.kind, c.l, c.c, c.g, head, q, k);
}
bool merged_allows(const MergedPattern &m, int32_t head, int64_t q, int64_t k);

} // namespace stx
