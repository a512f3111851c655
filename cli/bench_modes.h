/* bench_modes.h: the sparsetx-bench commands that live in files of their own. */
#ifndef STX_BENCH_MODES_H
#define STX_BENCH_MODES_H

#include "sparsetx.h"

/* A comma-separated list of whole numbers in [min, 2^24] into out[0 .. max); returns the
 * count (exits 1 on a malformed item or an empty list, naming the option). bench.c. */
int parse_int_list(const char *text, const char *option, long long min, long long *out, int max);

/* The --preset config (exits 1 naming it if unknown) with the overrides every mode shares: a
 * zero number or a NULL pattern keeps the preset's. --ctx is each mode's own. bench.c. */
void bench_preset_config(stx_config *cfg, const char *prog, const char *preset, int layers,
                         int width, int heads, int block, const char *pattern);

/* The --device (0 cpu, 1 cuda), --device-index and --precision (0 fp32, 1 bf16; cpu is always
 * fp32) choices into cfg. bench.c. */
void bench_set_backend(stx_config *cfg, int device, int device_index, int precision);

/* Option table entries (common_args.h) of those choices: --preset and the overrides of the
 * preset's n_layer, n_embd and n_head (enwik8 by default), and the backend's three. */
#define BENCH_PRESET_OPTS(preset, layers, width, heads)                                            \
    STX_OPT("preset", 0, STX_OPT_STRING, (preset), "enwik8",                                       \
            "enwik8, cifar10, imagenet64 or tiny"),                                                \
        STX_OPT("layers", 0, STX_OPT_INT, (layers), "preset", "override n_layer"),                 \
        STX_OPT("width", 0, STX_OPT_INT, (width), "preset", "override n_embd"),                    \
        STX_OPT("heads", 0, STX_OPT_INT, (heads), "preset", "override n_head")
#define BENCH_BACKEND_OPTS(device, device_index, precision)                                        \
    STX_OPT_CHOICE("device", 0, (device), "cpu|cuda", "cuda", "backend"),                          \
        STX_OPT("device-index", 0, STX_OPT_INT, (device_index), "0", "CUDA device"),               \
        STX_OPT_CHOICE("precision", 0, (precision), "fp32|bf16", "bf16", "precision (cpu: fp32)")

/* sparsetx-bench decode (bench_decode.c): argv[0] is "decode". */
int stx_bench_decode(int argc, char **argv);

#endif
