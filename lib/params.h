// params.h: THE parameter table: every tensor's name, shape, offset into the one flat
// parameter buffer, whether weight decay applies, and its initializer. Gradients and the
// Adam moments use the same offsets in buffers of the same length; checkpoints and the API
// walk the same table.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "config.h"

namespace stx {

struct TensorSpec {
    std::string name;
    int32_t ndim = 1;
    int64_t shape[STX_MAX_DIMS] = {0, 0, 0, 0};
    int64_t offset = 0;
    int64_t numel = 0;
    bool decay = false;      // decoupled weight decay (matrices only)
    double init_std = 0.0;   // normal(0, init_std) when > 0
    double init_value = 0.0; // constant otherwise (1 for LayerNorm gains)
};

struct LayerParams { // indices into ParamTable::tensors
    int32_t ln1_g, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, proj_w, proj_b;
    int32_t ln2_g, ln2_b, w1, b1, w2, b2;
};

struct ParamTable {
    std::vector<TensorSpec> tensors;
    int64_t total = 0;
    int32_t tok_emb = -1, start = -1;
    std::vector<int32_t> pos_emb; // one per position axis
    std::vector<LayerParams> layers;
    int32_t lnf_g = -1, lnf_b = -1, w_out = -1;

    int32_t find(const char *name) const; // -1 when absent
};

ParamTable build_param_table(const Dims &d);

// The initial value of element `index` of tensor `tensor`: a pure function of the seed,
// so every backend and precision starts from the same weights.
double init_value_at(const ParamTable &t, int32_t tensor, int64_t index, uint64_t seed);

} // namespace stx
