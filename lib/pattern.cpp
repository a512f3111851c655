// pattern.cpp: parser and printer of the pattern grammar (pattern.h) and the element-wise
// definition of each component. Parsing is a small recursive descent over the text; every
// error names the offset and what was expected.
#include "pattern.h"

#include <cctype>
#include <cstdlib>
#include <cstring>

#include "error.h"

namespace stx {
namespace {

const int64_t kMaxNumber = int64_t(1) << 30;

struct Parser {
    const char *text;
    size_t pos = 0;

    char peek() const { return text[pos]; }

    stx_status error(const char *expected) const {
        if (text[pos] == '\0')
            return fail(STX_ERR_FORMAT, "pattern \"%s\": at offset %zu: expected %s, found the end",
                        text, pos, expected);
        return fail(STX_ERR_FORMAT, "pattern \"%s\": at offset %zu: expected %s, found '%c'", text,
                    pos, expected, text[pos]);
    }

    stx_status number(const char *what, int32_t *out) {
        if (!std::isdigit(static_cast<unsigned char>(peek()))) return error(what);
        size_t start = pos;
        int64_t v = 0;
        while (std::isdigit(static_cast<unsigned char>(peek()))) {
            v = v * 10 + (peek() - '0');
            if (v > kMaxNumber)
                return fail(STX_ERR_FORMAT, "pattern \"%s\": at offset %zu: %s is too large", text,
                            start, what);
            ++pos;
        }
        if (v < 1)
            return fail(STX_ERR_FORMAT, "pattern \"%s\": at offset %zu: %s must be at least 1",
                        text, start, what);
        *out = static_cast<int32_t>(v);
        return STX_OK;
    }

    stx_status argument(const char *what, int32_t *out) {
        if (peek() != ':') return error("':'");
        ++pos;
        return number(what, out);
    }

    stx_status component(Component *out) {
        size_t start = pos;
        while (std::isalpha(static_cast<unsigned char>(peek()))) ++pos;
        std::string word(text + start, pos - start);
        stx_status st = STX_OK;
        if (word == "dense") {
            out->kind = CompKind::Dense;
        } else if (word == "local" || word == "strided") {
            out->kind = word == "local" ? CompKind::Local : CompKind::Strided;
            st = argument("the width L", &out->l);
        } else if (word == "fixed") {
            out->kind = CompKind::Fixed;
            if ((st = argument("the block length L", &out->l)) != STX_OK) return st;
            if ((st = argument("the summary cells C", &out->c)) != STX_OK) return st;
            out->g = 1;
            if (peek() == ':' && (st = argument("the summary groups G", &out->g)) != STX_OK)
                return st;
            if (out->c > out->l)
                return fail(STX_ERR_FORMAT,
                            "pattern \"%s\": fixed:%d:%d: summary cells C (%d) must not exceed "
                            "the block length L (%d)",
                            text, out->l, out->c, out->c, out->l);
            if (int64_t(out->g) * out->c > out->l)
                return fail(STX_ERR_FORMAT,
                            "pattern \"%s\": fixed:%d:%d:%d: G*C (%lld) must not exceed L (%d)",
                            text, out->l, out->c, out->g,
                            static_cast<long long>(int64_t(out->g) * out->c), out->l);
        } else {
            pos = start;
            if (word.empty()) return error("a pattern (dense, local:L, strided:L, fixed:L:C[:G])");
            return fail(STX_ERR_FORMAT,
                        "pattern \"%s\": at offset %zu: unknown pattern '%s' (expected dense, "
                        "local:L, strided:L or fixed:L:C[:G])",
                        text, start, word.c_str());
        }
        return st;
    }

    stx_status merged(MergedPattern *out) {
        out->parts.clear();
        for (;;) {
            Component c;
            stx_status st = component(&c);
            if (st != STX_OK) return st;
            out->parts.push_back(c);
            if (peek() != '+') return STX_OK;
            ++pos;
        }
    }

    stx_status layer(LayerPattern *out) {
        out->heads.clear();
        if (peek() != '[') {
            MergedPattern m;
            stx_status st = merged(&m);
            if (st == STX_OK) out->heads.push_back(m);
            return st;
        }
        ++pos;
        for (;;) {
            MergedPattern m;
            stx_status st = merged(&m);
            if (st != STX_OK) return st;
            out->heads.push_back(m);
            if (peek() == ';') {
                ++pos;
                continue;
            }
            if (peek() != ']') return error("';' or ']'");
            ++pos;
            return STX_OK;
        }
    }

    stx_status model(ModelPattern *out) {
        out->layers.clear();
        for (;;) {
            LayerPattern l;
            stx_status st = layer(&l);
            if (st != STX_OK) return st;
            out->layers.push_back(l);
            if (peek() != ',') break;
            ++pos;
        }
        return STX_OK;
    }

    stx_status finish() const { return peek() == '\0' ? STX_OK : error("',' or the end"); }
};

stx_status check_text(const char *text) {
    if (!text) return fail(STX_ERR_INVALID_ARGUMENT, "pattern is NULL");
    if (!*text) return fail(STX_ERR_FORMAT, "pattern is empty");
    for (const char *p = text; *p; ++p)
        if (std::isspace(static_cast<unsigned char>(*p)))
            return fail(STX_ERR_FORMAT, "pattern \"%s\": at offset %zu: unexpected white space",
                        text, static_cast<size_t>(p - text));
    return STX_OK;
}

} // namespace

stx_status parse_model_pattern(const char *text, ModelPattern *out) {
    stx_status st = check_text(text);
    if (st != STX_OK) return st;
    Parser p{text};
    if ((st = p.model(out)) != STX_OK) return st;
    return p.finish();
}

stx_status parse_layer_pattern(const char *text, LayerPattern *out) {
    stx_status st = check_text(text);
    if (st != STX_OK) return st;
    Parser p{text};
    if ((st = p.layer(out)) != STX_OK) return st;
    if (p.peek() == ',')
        return fail(STX_ERR_FORMAT,
                    "pattern \"%s\": at offset %zu: a layer pattern has no ',' (a list over "
                    "layers belongs to the model)",
                    text, p.pos);
    return p.finish();
}

std::string format_component(const Component &c) {
    switch (c.kind) {
    case CompKind::Dense:
        return "dense";
    case CompKind::Local:
        return "local:" + std::to_string(c.l);
    case CompKind::Strided:
        return "strided:" + std::to_string(c.l);
    case CompKind::Fixed: {
        std::string s = "fixed:" + std::to_string(c.l) + ":" + std::to_string(c.c);
        if (c.g != 1) s += ":" + std::to_string(c.g);
        return s;
    }
    case CompKind::User:
        return "user";
    }
    return "?";
}

std::string format_merged(const MergedPattern &m) {
    std::string s;
    for (size_t i = 0; i < m.parts.size(); ++i) {
        if (i) s += "+";
        s += format_component(m.parts[i]);
    }
    return s;
}

std::string format_layer(const LayerPattern &p) {
    if (p.heads.size() == 1) return format_merged(p.heads[0]);
    std::string s = "[";
    for (size_t i = 0; i < p.heads.size(); ++i) {
        if (i) s += ";";
        s += format_merged(p.heads[i]);
    }
    return s + "]";
}

std::string format_model(const ModelPattern &p) {
    std::string s;
    for (size_t i = 0; i < p.layers.size(); ++i) {
        if (i) s += ",";
        s += format_layer(p.layers[i]);
    }
    return s;
}

bool merged_allows(const MergedPattern &m, int32_t head, int64_t q, int64_t k) {
    for (const Component &c : m.parts)
        if (component_allows(c, head, q, k)) return true;
    return false;
}

} // namespace stx
