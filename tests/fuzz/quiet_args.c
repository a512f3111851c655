/*
 * quiet_args.c: cli/common_args.c compiled for the fuzz_args harness, with its stdout and
 * stderr (usage errors, --help) sent to a sink stream instead, so that a fuzzing run does not
 * print millions of usage lines while libFuzzer's and the sanitizers' own reports still reach
 * stderr.
 */
#include <stdio.h>

/* The sink: /dev/null, opened on first use. */
FILE *stx_fuzz_cli_sink(void);

FILE *stx_fuzz_cli_sink(void) {
    static FILE *sink = NULL;
    if (!sink) sink = fopen("/dev/null", "w");
    if (!sink) sink = tmpfile();
    return sink;
}

#undef stdout
#undef stderr
#define stdout (stx_fuzz_cli_sink())
#define stderr (stx_fuzz_cli_sink())
#include "common_args.c"
