/*
 * common_args.c: the option table parser of common_args.h, and the tools' error exits.
 */
#include "common_args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sparsetx.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Column where the help text of an option starts. */
#define HELP_COLUMN 30

static const char *metavar(const stx_cli_opt *o) {
    if (o->meta) return o->meta;
    switch (o->type) {
    case STX_OPT_INT:
    case STX_OPT_INT64:
    case STX_OPT_UINT64:
        return "N";
    case STX_OPT_DOUBLE:
        return "X";
    case STX_OPT_STRING:
        return "VALUE";
    case STX_OPT_CHOICE: /* meta holds the choices */
    case STX_OPT_FLAG:
        break;
    }
    return NULL;
}

void stx_cli_usage(const stx_cli *cli, FILE *f) {
    fprintf(f, "usage: %s %s\n", cli->prog, cli->usage ? cli->usage : "[options]");
    if (cli->about) fprintf(f, "\n%s\n", cli->about);
    fprintf(f, "\noptions:\n");
    for (const stx_cli_opt *o = cli->opts; o && o->name; ++o) {
        char head[160];
        const char *mv = metavar(o);
        int n;
        if (o->short_name)
            n = snprintf(head, sizeof head, "  -%c, --%s%s%s", o->short_name, o->name,
                         mv ? " " : "", mv ? mv : "");
        else
            n = snprintf(head, sizeof head, "      --%s%s%s", o->name, mv ? " " : "", mv ? mv : "");
        if (n < 0) n = 0;
        if (n < HELP_COLUMN - 1)
            fprintf(f, "%-*s%s", HELP_COLUMN, head, o->help ? o->help : "");
        else
            fprintf(f, "%s\n%-*s%s", head, HELP_COLUMN, "", o->help ? o->help : "");
        if (o->default_text) fprintf(f, " (default: %s)", o->default_text);
        fputc('\n', f);
    }
    fprintf(f, "%-*s%s\n", HELP_COLUMN, "  -h, --help", "print this help and exit");
}

int stx_cli_usage_error(const stx_cli *cli, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: ", cli->prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see %s --help)\n", cli->prog);
    return 2;
}

const stx_cli_opt *stx_cli_find(const stx_cli *cli, const char *name) {
    for (const stx_cli_opt *o = cli->opts; o && o->name; ++o)
        if (strcmp(o->name, name) == 0) return o;
    return NULL;
}

/* The index of `word` among the '|'-separated `choices`, or -1. */
static int choice_index(const char *choices, const char *word) {
    const size_t len = strlen(word);
    int index = 0;
    for (const char *p = choices; p && *p; ++index) {
        const char *bar = strchr(p, '|');
        const size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && strncmp(p, word, n) == 0) return index;
        if (!bar) break;
        p = bar + 1;
    }
    return -1;
}

/* Store `text` into o's variable; a usage error (returns 2) when it does not parse. */
static int store(const stx_cli *cli, stx_cli_opt *o, const char *text) {
    char *end = NULL;
    errno = 0;
    switch (o->type) {
    case STX_OPT_INT:
    case STX_OPT_INT64: {
        const long long v = strtoll(text, &end, 10);
        if (end == text || *end != '\0')
            return stx_cli_usage_error(cli, "--%s: '%s' is not a whole number", o->name, text);
        if (errno == ERANGE || (o->type == STX_OPT_INT && (v < INT_MIN || v > INT_MAX)))
            return stx_cli_usage_error(cli, "--%s: %s is out of range", o->name, text);
        if (o->type == STX_OPT_INT)
            *(int *)o->value = (int)v;
        else
            *(int64_t *)o->value = (int64_t)v;
        return 0;
    }
    case STX_OPT_UINT64: {
        const char *p = text;
        while (*p == ' ' || *p == '\t') ++p;
        const unsigned long long v = strtoull(text, &end, 10);
        if (*p == '-' || *p == '+' || end == text || *end != '\0')
            return stx_cli_usage_error(cli, "--%s: '%s' is not an unsigned whole number", o->name,
                                       text);
        if (errno == ERANGE)
            return stx_cli_usage_error(cli, "--%s: %s is out of range", o->name, text);
        *(uint64_t *)o->value = (uint64_t)v;
        return 0;
    }
    case STX_OPT_DOUBLE: {
        const double v = strtod(text, &end);
        if (end == text || *end != '\0' || !isfinite(v))
            return stx_cli_usage_error(cli, "--%s: '%s' is not a finite number", o->name, text);
        if (errno == ERANGE && fabs(v) > 1.0)
            return stx_cli_usage_error(cli, "--%s: %s is out of range", o->name, text);
        *(double *)o->value = v;
        return 0;
    }
    case STX_OPT_STRING:
        *(const char **)o->value = text;
        return 0;
    case STX_OPT_CHOICE: {
        const int index = choice_index(o->meta, text);
        if (index < 0)
            return stx_cli_usage_error(cli, "--%s: '%s' is not one of %s", o->name, text, o->meta);
        *(int *)o->value = index;
        return 0;
    }
    case STX_OPT_FLAG:
        *(int *)o->value = 1;
        return 0;
    }
    return stx_cli_usage_error(cli, "--%s: unknown option type", o->name);
}

int stx_cli_parse(stx_cli *cli, int argc, char **argv, const char **positional, int max_positional,
                  int *n_positional) {
    int n_pos = 0, options_done = 0;
    if (n_positional) *n_positional = 0;
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        if (options_done || a[0] != '-' || a[1] == '\0') { /* "-" alone is positional */
            if (n_pos >= max_positional || !positional)
                return stx_cli_usage_error(cli, "unexpected argument '%s'", a);
            positional[n_pos++] = a;
            if (n_positional) *n_positional = n_pos;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            options_done = 1;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            stx_cli_usage(cli, stdout);
            return 0;
        }
        stx_cli_opt *opt = NULL;
        const char *value = NULL; /* attached: --name=VALUE or -nVALUE */
        if (a[1] == '-') {
            const char *name = a + 2, *eq = strchr(name, '=');
            const size_t len = eq ? (size_t)(eq - name) : strlen(name);
            for (stx_cli_opt *o = cli->opts; o && o->name; ++o)
                if (strlen(o->name) == len && strncmp(o->name, name, len) == 0) opt = o;
            if (!opt) return stx_cli_usage_error(cli, "unknown option '%.*s'", (int)len + 2, a);
            if (eq) value = eq + 1;
        } else {
            for (stx_cli_opt *o = cli->opts; o && o->name; ++o)
                if (o->short_name && o->short_name == a[1]) opt = o;
            if (!opt) return stx_cli_usage_error(cli, "unknown option '-%c'", a[1]);
            if (a[2] != '\0') value = a + 2;
        }
        if (opt->type == STX_OPT_FLAG) {
            if (value) return stx_cli_usage_error(cli, "--%s takes no value", opt->name);
        } else if (!value) {
            if (i + 1 >= argc) return stx_cli_usage_error(cli, "--%s needs a value", opt->name);
            value = argv[++i];
        }
        if (store(cli, opt, value) != 0) return 2;
        opt->seen = 1;
    }
    return STX_CLI_CONTINUE;
}

void stx_cli_die(const char *prog, const char *what) {
    const char *msg = stx_last_error();
    fprintf(stderr, "%s: %s: %s\n", prog, what, msg && *msg ? msg : "failed");
    exit(1);
}

void stx_cli_fail(const char *prog, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

int stx_cli_parse_device(const char *text, int32_t *backend, int32_t *device) {
    *device = 0;
    if (!strcmp(text, "cpu")) {
        *backend = STX_BACKEND_CPU;
    } else if (!strcmp(text, "auto")) {
        *backend = STX_BACKEND_AUTO;
    } else if (!strcmp(text, "cuda")) {
        *backend = STX_BACKEND_CUDA;
    } else if (!strncmp(text, "cuda:", 5)) {
        char *end = NULL;
        errno = 0;
        const long d = strtol(text + 5, &end, 10);
        if (end == text + 5 || *end || errno || d < 0 || d > 1023) return -1;
        *backend = STX_BACKEND_CUDA;
        *device = (int32_t)d;
    } else {
        return -1;
    }
    return 0;
}

int stx_cli_app_get(const char *text, const char *key, char *buf, size_t size) {
    const size_t klen = strlen(key);
    for (const char *line = text; line && *line;) {
        const char *nl = strchr(line, '\n');
        const size_t len = nl ? (size_t)(nl - line) : strlen(line);
        if (len > klen && !strncmp(line, key, klen) && line[klen] == '=') {
            size_t vlen = len - klen - 1;
            if (vlen >= size) vlen = size - 1;
            memcpy(buf, line + klen + 1, vlen);
            buf[vlen] = '\0';
            return 1;
        }
        line = nl ? nl + 1 : NULL;
    }
    return 0;
}
