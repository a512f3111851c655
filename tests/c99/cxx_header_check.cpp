// cxx_header_check.cpp: the public header compiles as C++ (-Wall -Wextra -pedantic -Werror):
// extern "C" linkage, the structs, enums and function-like macros used from C++. Compiled
// only, never linked or run.
#include <sparsetx.h>

#include <type_traits>

static_assert(std::is_standard_layout<stx_config>::value, "stx_config is a plain C struct");
static_assert(sizeof(stx_config) >= STX_PATTERN_MAX, "stx_config holds the pattern inline");
static_assert(STX_VERSION_NUMBER == 100, "version macros are constant expressions");

int stx_cxx_header_check(stx_model **out) {
    stx_config cfg;
    if (stx_config_init(&cfg) != STX_OK) return -1;
    cfg.precision = STX_PRECISION_FP64;
    stx_optim_config opt;
    stx_optim_config_init(&opt);
    const stx_status st = stx_model_create(&cfg, out);
    return st == STX_OK ? 0 : static_cast<int>(st);
}
