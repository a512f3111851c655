/*
 * common_args.h: command-line parsing shared by the sparsetx-* tools.
 *
 * A tool describes its options in one table and hands argv to stx_cli_parse:
 *
 *     int steps = 100;
 *     double lr = 3e-4;
 *     const char *out = NULL;
 *     int device = STX_BACKEND_AUTO;       (a choice: index into "cpu|cuda|auto")
 *     int verbose = 0;
 *     stx_cli_opt opts[] = {
 *         STX_OPT("steps", 0, STX_OPT_INT, &steps, "100", "optimizer steps"),
 *         STX_OPT("lr", 0, STX_OPT_DOUBLE, &lr, "3e-4", "peak learning rate"),
 *         STX_OPT_META("output", 'o', STX_OPT_STRING, &out, "FILE", "none", "checkpoint"),
 *         STX_OPT_CHOICE("device", 0, &device, "cpu|cuda|auto", "auto", "backend"),
 *         STX_OPT("verbose", 'v', STX_OPT_FLAG, &verbose, NULL, "print more"),
 *         STX_OPT_END};
 *     stx_cli cli = {"sparsetx-train", "DATAFILE [options]", "Train a model.", opts};
 *     const char *pos[1];
 *     int n_pos = 0;
 *     int rc = stx_cli_parse(&cli, argc, argv, pos, 1, &n_pos);
 *     if (rc != STX_CLI_CONTINUE) return rc;     (0 after --help, 2 after a usage error)
 *
 * Accepted forms: --name VALUE, --name=VALUE, -s VALUE (s the short name), flags without a
 * value, and "--" to end the options. Every other argument is positional. The value pointer's
 * type follows the option type (int, int64_t, uint64_t, double, const char *, int for a
 * choice index, int set to 1 for a flag); it is left untouched unless the option is given,
 * so it holds the default beforehand. Numbers must be whole and in range (no "12abc", no
 * "-1" for an unsigned, no NaN or infinity for a double).
 *
 * Exit codes of the tools: 0 success, 1 bad input (a file that cannot be read, a value the
 * library refuses: stx_cli_die / stx_cli_fail), 2 bad usage (reported by stx_cli_parse).
 */
#ifndef STX_CLI_COMMON_ARGS_H
#define STX_CLI_COMMON_ARGS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum stx_cli_type {
    STX_OPT_INT,    /* int *; base 10 */
    STX_OPT_INT64,  /* int64_t * */
    STX_OPT_UINT64, /* uint64_t *; no sign */
    STX_OPT_DOUBLE, /* double *; finite */
    STX_OPT_STRING, /* const char **; points into argv */
    STX_OPT_CHOICE, /* int *: the index of the value among `meta`, e.g. "cpu|cuda|auto" */
    STX_OPT_FLAG    /* int *: set to 1; takes no value */
} stx_cli_type;

typedef struct stx_cli_opt {
    const char *name;  /* long name without the dashes; NULL ends the table */
    char short_name;   /* 'n' for -n, or 0 */
    stx_cli_type type; /* what the value is and where it goes */
    void *value;       /* the variable that receives it (see the types) */
    const char *meta;  /* STX_OPT_CHOICE: the accepted words separated by '|'; other types: the
                          value's name in --help, e.g. "FILE" (NULL: N, X or VALUE) */
    const char *default_text; /* shown by --help as "(default: ...)"; NULL: nothing shown */
    const char *help;         /* one line for --help */
    int seen;                 /* set to 1 by stx_cli_parse when the option was given */
} stx_cli_opt;

typedef struct stx_cli {
    const char *prog;  /* "sparsetx-sample": prefixes every message */
    const char *usage; /* what follows the program name in the usage line */
    const char *about; /* a paragraph printed by --help under the usage line (may be NULL) */
    stx_cli_opt *opts; /* the table, ended by an entry whose name is NULL */
} stx_cli;

/* Table entries (every field set, so -Wextra stays quiet). */
#define STX_OPT(name, short_name, type, value, default_text, help)                                 \
    { (name), (short_name), (type), (value), NULL, (default_text), (help), 0 }
#define STX_OPT_META(name, short_name, type, value, meta, default_text, help)                      \
    { (name), (short_name), (type), (value), (meta), (default_text), (help), 0 }
#define STX_OPT_CHOICE(name, short_name, value, choices, default_text, help)                       \
    { (name), (short_name), STX_OPT_CHOICE, (value), (choices), (default_text), (help), 0 }
#define STX_OPT_END                                                                                \
    { NULL, 0, STX_OPT_FLAG, NULL, NULL, NULL, NULL, 0 }

#define STX_CLI_CONTINUE (-1)

/* Parse argv[1..argc) into the table; -h and --help print the usage to stdout. Positional
 * arguments go to positional[0 .. max_positional) and their number to *n_positional (both
 * may be NULL/0 when the tool takes none). Returns STX_CLI_CONTINUE when the tool should go
 * on, 0 after --help, or 2 after a usage error (unknown option, missing or malformed value,
 * too many positional arguments), which it has reported on stderr as
 * "prog: <problem> (see prog --help)". */
int stx_cli_parse(stx_cli *cli, int argc, char **argv, const char **positional, int max_positional,
                  int *n_positional);

/* Print the usage line, the about text and one line per option with its default. */
void stx_cli_usage(const stx_cli *cli, FILE *f);

/* Report a usage error ("prog: <printf message> (see prog --help)") and return 2, so that a
 * tool can write `return stx_cli_usage_error(&cli, "...")`. */
int stx_cli_usage_error(const stx_cli *cli, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The option named `name` of the table (NULL if none), e.g. to ask whether it was seen. */
const stx_cli_opt *stx_cli_find(const stx_cli *cli, const char *name);

/* "cpu", "cuda", "cuda:N" or "auto" into an stx_backend and a device index; 0 on success,
 * -1 for anything else. */
int stx_cli_parse_device(const char *text, int32_t *backend, int32_t *device);

/* The value of `key` in the "key=value" lines of a checkpoint's app_state (the tools'
 * record of their run), copied into buf (truncated to size - 1); 1 when found, else 0. */
int stx_cli_app_get(const char *text, const char *key, char *buf, size_t size);

/* Bad input after a failed library call: prints "prog: what: <stx_last_error()>" on stderr
 * and exits with status 1. */
void stx_cli_die(const char *prog, const char *what) __attribute__((noreturn));

/* Bad input found by the tool itself: prints "prog: <printf message>" and exits with 1. */
void stx_cli_fail(const char *prog, const char *fmt, ...) __attribute__((noreturn))
__attribute__((format(printf, 2, 3)));

#endif
