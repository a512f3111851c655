/* bench_modes.h: the sparsetx-bench commands that live in files of their own. */
#ifndef STX_BENCH_MODES_H
#define STX_BENCH_MODES_H

/* sparsetx-bench decode (bench_decode.c): argv[0] is "decode". */
int stx_bench_decode(int argc, char **argv);

#endif
