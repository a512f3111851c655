// decode_plan.cpp: a layer's decoding plan from its block layout (decode_plan.h).
#include "decode_plan.h"

#include <algorithm>
#include <utility>

#include "backend.h"
#include "error.h"

namespace stx {

stx_status build_decode_plan(const Layout &layout, DecodePlan *out) {
    DecodePlan plan;
    plan.n_ctx = layout.n_ctx;
    plan.n_head = layout.n_head;
    plan.user = layout.user_blocks.empty() ? nullptr : layout.user_blocks.data();
    plan.user_nb = layout.user_nb;
    plan.user_bs = layout.block_size;
    for (int32_t h = 0; h < layout.n_head; ++h) {
        DecodeHead dh{};
        std::vector<Component> parts; // the head's parts, in pass order, each once
        for (const AttnPass &p : layout.heads[static_cast<size_t>(h)].passes)
            for (const Component &c : p.include)
                if (std::find(parts.begin(), parts.end(), c) == parts.end()) parts.push_back(c);
        int32_t n_fixed = 0;
        for (const Component &c : parts) {
            switch (c.kind) {
            case CompKind::Local:
                dh.ring = std::max(dh.ring, c.l);
                break;
            case CompKind::Fixed:
                dh.ring = std::max(dh.ring, c.l);
                dh.sum_l = c.l;
                dh.sum_c = c.c;
                dh.sum_lo = c.l - (h % c.g + 1) * c.c;
                ++n_fixed;
                break;
            default: // dense, strided, user
                dh.keep_all = 1;
                break;
            }
        }
        if (parts.size() > static_cast<size_t>(kDecodeMaxComps))
            return fail(STX_ERR_UNSUPPORTED,
                        "decoding reads at most %d distinct parts per head; head %d of this "
                        "layer's pattern has %zu",
                        kDecodeMaxComps, h, parts.size());
        if (n_fixed > 1) dh.keep_all = 1; // two fixed parts: two summary sets, keep everything
        if (dh.keep_all) dh.ring = dh.sum_l = dh.sum_lo = dh.sum_c = 0;
        dh.n_comps = static_cast<int32_t>(parts.size());
        for (int32_t e = 0; e < dh.n_comps; ++e) {
            const Component &c = parts[static_cast<size_t>(e)];
            dh.comps[e] = DecodeComp{static_cast<int32_t>(c.kind), c.l, c.c, c.g};
        }
        int64_t slots = layout.n_ctx;
        if (!dh.keep_all) {
            const int64_t blocks = dh.sum_c > 0 ? (layout.n_ctx + dh.sum_l - 1) / dh.sum_l : 0;
            slots = std::min<int64_t>(dh.ring + blocks * dh.sum_c, layout.n_ctx);
            if (slots == layout.n_ctx && dh.ring + blocks * dh.sum_c > layout.n_ctx) {
                // The ring and summaries would not save anything: keep every position.
                dh.keep_all = 1;
                dh.ring = dh.sum_l = dh.sum_lo = dh.sum_c = 0;
            }
        }
        plan.slots = std::max(plan.slots, slots);
        plan.heads.push_back(dh);
    }
    *out = std::move(plan);
    return STX_OK;
}

stx_status build_decode_plans(const ModelSpec &spec, std::vector<DecodePlan> *out) {
    std::vector<DecodePlan> plans;
    for (size_t l = 0; l < spec.layer_layouts.size(); ++l) {
        const Layout &lay = *spec.layer_layouts[l];
        if (l > 0 && spec.layer_layouts[l] == spec.layer_layouts[l - 1]) {
            plans.push_back(plans.back());
            continue;
        }
        DecodePlan p;
        stx_status st = build_decode_plan(lay, &p);
        if (st != STX_OK) return st;
        plans.push_back(std::move(p));
    }
    *out = std::move(plans);
    return STX_OK;
}

stx_status run_prefill(Backend &model, ForwardObserver *observer, const uint8_t *tokens, int32_t B,
                       int32_t n, PrefillGroup *group) {
    const int32_t T = n + 1;
    const int32_t per_group = std::max(1, std::min(B, kPrefillRows / T));
    std::vector<uint8_t> window;
    stx_status st = STX_OK;
    for (int32_t b0 = 0; b0 < B && st == STX_OK; b0 += per_group) {
        const int32_t nb = std::min(per_group, B - b0);
        window.assign(static_cast<size_t>(nb) * T, 0);
        for (int32_t b = 0; b < nb; ++b)
            std::copy(tokens + static_cast<size_t>(b0 + b) * n,
                      tokens + static_cast<size_t>(b0 + b + 1) * n,
                      window.begin() + static_cast<std::ptrdiff_t>(b) * T);
        *group = PrefillGroup{b0, nb, T};
        ForwardArgs args;
        args.tokens = window.data();
        args.B = nb;
        args.T = T;
        args.observer = observer;
        double loss = 0.0;
        st = model.forward(args, &loss);
    }
    group->T = 0;
    return st;
}

int64_t decode_state_bytes(const ModelSpec &spec, int32_t batch, int32_t elem_bytes) {
    std::vector<DecodePlan> plans;
    if (build_decode_plans(spec, &plans) != STX_OK) return 0;
    int64_t total = 0;
    for (const DecodePlan &p : plans)
        total += decode_cache_bytes(p, batch, spec.dims.Dq, spec.dims.Dv, elem_bytes);
    return total;
}

} // namespace stx
