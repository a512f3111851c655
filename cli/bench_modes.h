/* bench_modes.h: the sparsetx-bench commands that live in files of their own. */
#ifndef STX_BENCH_MODES_H
#define STX_BENCH_MODES_H

/* A comma-separated list of whole numbers in [min, 2^24] into out[0 .. max); returns the
 * count (exits 1 on a malformed item or an empty list, naming the option). bench.c. */
int parse_int_list(const char *text, const char *option, long long min, long long *out, int max);

/* sparsetx-bench decode (bench_decode.c): argv[0] is "decode". */
int stx_bench_decode(int argc, char **argv);

#endif
