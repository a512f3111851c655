/* common_progress.c: the progress line and the JSON-lines log (see common_progress.h). */
#include "common_progress.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define BAR_WIDTH 20

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cli_format_duration(double seconds, char *buf, size_t size) {
    if (!(seconds >= 0.0) || seconds > 1e9) {
        snprintf(buf, size, "?");
        return;
    }
    const long s = (long)(seconds + 0.5);
    if (s < 60)
        snprintf(buf, size, "%lds", s);
    else if (s < 3600)
        snprintf(buf, size, "%ldm%02lds", s / 60, s % 60);
    else
        snprintf(buf, size, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
}

void cli_format_count(double count, char *buf, size_t size) {
    if (!isfinite(count))
        snprintf(buf, size, "?");
    else if (count < 1e3)
        snprintf(buf, size, "%.0f", count);
    else if (count < 1e6)
        snprintf(buf, size, "%.1fk", count / 1e3);
    else if (count < 1e9)
        snprintf(buf, size, "%.2fM", count / 1e6);
    else
        snprintf(buf, size, "%.2fG", count / 1e9);
}

/* The terminal's width: asked of the terminal, else $COLUMNS, else 80. */
static int terminal_columns(void) {
#ifdef TIOCGWINSZ
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20) return ws.ws_col;
#endif
    const char *env = getenv("COLUMNS");
    const long n = env ? strtol(env, NULL, 10) : 0;
    return n >= 20 && n <= 1000 ? (int)n : 80;
}

void cli_progress_init(cli_progress *p, int64_t total, int64_t first, const char *unit,
                       int force_plain) {
    memset(p, 0, sizeof *p);
    p->tty = !force_plain && isatty(STDERR_FILENO);
    p->total = total;
    p->first = first;
    p->unit = unit ? unit : "";
    p->t_start = cli_now();
    p->t_drawn = -1.0;
}

int cli_progress_is_tty(const cli_progress *p) {
    return p->tty;
}

double cli_progress_elapsed(const cli_progress *p) {
    return cli_now() - p->t_start;
}

double cli_progress_eta(const cli_progress *p, int64_t done) {
    const int64_t since = done - p->first;
    if (since <= 0 || done > p->total) return -1.0;
    return cli_progress_elapsed(p) / (double)since * (double)(p->total - done);
}

void cli_progress_update(cli_progress *p, int64_t done, double rate, const char *text, int force) {
    if (!p->tty) return;
    const double now = cli_now();
    if (!force && p->shown && now - p->t_drawn < 0.1) return;
    p->t_drawn = now;

    char bar[BAR_WIDTH + 1];
    const double frac = p->total > 0 ? (double)done / (double)p->total : 0.0;
    const int filled = frac <= 0.0 ? 0 : frac >= 1.0 ? BAR_WIDTH : (int)(frac * BAR_WIDTH);
    for (int i = 0; i < BAR_WIDTH; ++i) bar[i] = i < filled ? '=' : (i == filled ? '>' : ' ');
    bar[BAR_WIDTH] = '\0';

    char rate_text[32], eta_text[32], line[512];
    cli_format_count(rate, rate_text, sizeof rate_text);
    cli_format_duration(cli_progress_eta(p, done), eta_text, sizeof eta_text);
    int n = snprintf(line, sizeof line, "[%s] %lld/%lld  %s  %s %s  ETA %s", bar, (long long)done,
                     (long long)p->total, text ? text : "", rate_text, p->unit, eta_text);
    if (n < 0) return;
    if (n >= (int)sizeof line) n = (int)sizeof line - 1;
    /* Never let the line wrap: a wrapped line cannot be rewritten with '\r'. */
    const int cols = terminal_columns() - 1;
    if (n > cols) n = cols;
    line[n] = '\0';
    const int pad = p->width > n ? p->width - n : 0;
    fprintf(stderr, "\r%s%*s", line, pad, "");
    if (pad) fprintf(stderr, "\r%s", line);
    fflush(stderr);
    p->width = n;
    p->shown = 1;
}

void cli_progress_clear(cli_progress *p) {
    if (!p->tty || !p->shown) return;
    fprintf(stderr, "\r%*s\r", p->width, "");
    fflush(stderr);
    p->shown = 0;
    p->width = 0;
}

void cli_progress_finish(cli_progress *p) {
    cli_progress_clear(p);
}

/* ---------------------------------------------------------------- JSON lines */

int cli_jsonl_open(cli_jsonl *log, const char *path, int append) {
    log->fields = 0;
    log->file = fopen(path, append ? "a+" : "w");
    if (!log->file) return -1;
    /* A process killed in the middle of a line left it unfinished: end it, so the next
     * record starts a line of its own. */
    if (append && fseek(log->file, -1, SEEK_END) == 0 && fgetc(log->file) != '\n') {
        fseek(log->file, 0, SEEK_END);
        fputc('\n', log->file);
        fflush(log->file);
    }
    return 0;
}

void cli_jsonl_none(cli_jsonl *log) {
    log->file = NULL;
    log->fields = 0;
}

void cli_jsonl_close(cli_jsonl *log) {
    if (log->file) fclose(log->file);
    log->file = NULL;
}

void cli_json_write_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)(s ? s : ""); *c; ++c) {
        if (*c == '"' || *c == '\\')
            fprintf(f, "\\%c", *c);
        else if (*c == '\n')
            fputs("\\n", f);
        else if (*c == '\t')
            fputs("\\t", f);
        else if (*c == '\r')
            fputs("\\r", f);
        else if (*c < 0x20 || *c == 0x7f)
            fprintf(f, "\\u%04x", *c);
        else
            fputc(*c, f);
    }
    fputc('"', f);
}

void cli_jsonl_begin(cli_jsonl *log) {
    if (!log->file) return;
    fputc('{', log->file);
    log->fields = 0;
}

static void key(cli_jsonl *log, const char *name) {
    if (log->fields++) fputc(',', log->file);
    cli_json_write_string(log->file, name);
    fputc(':', log->file);
}

void cli_jsonl_int(cli_jsonl *log, const char *name, int64_t value) {
    if (!log->file) return;
    key(log, name);
    fprintf(log->file, "%lld", (long long)value);
}

void cli_jsonl_num(cli_jsonl *log, const char *name, double value) {
    if (!log->file) return;
    key(log, name);
    if (isfinite(value))
        fprintf(log->file, "%.17g", value);
    else
        fputs("null", log->file);
}

void cli_jsonl_str(cli_jsonl *log, const char *name, const char *value) {
    if (!log->file) return;
    key(log, name);
    cli_json_write_string(log->file, value);
}

void cli_jsonl_null(cli_jsonl *log, const char *name) {
    if (!log->file) return;
    key(log, name);
    fputs("null", log->file);
}

int cli_jsonl_end(cli_jsonl *log) {
    if (!log->file) return 0;
    fputs("}\n", log->file);
    log->fields = 0;
    const int bad = fflush(log->file) != 0 || ferror(log->file);
    if (bad && !errno) errno = EIO;
    return bad ? -1 : 0;
}
