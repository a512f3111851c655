/*
 * common_progress.h: the progress line and the JSON-lines log of the command-line tools.
 *
 * A progress line is one line on stderr rewritten in place with '\r' when stderr is a
 * terminal (a bar, the caller's text, the rate and the ETA), and nothing otherwise: tools
 * print plain log lines instead (cli_progress_is_tty tells them which). Anything else a
 * tool prints while a bar is shown goes through cli_progress_clear first, so it does not
 * land in the middle of the bar.
 *
 * A JSON-lines log holds one object per line, flushed at once, so another process can
 * follow it while the tool runs:
 *
 *     cli_jsonl log;
 *     if (cli_jsonl_open(&log, "log.jsonl", 1) != 0) ...;
 *     cli_jsonl_begin(&log);
 *     cli_jsonl_int(&log, "step", 12);
 *     cli_jsonl_num(&log, "loss", 2.5);
 *     cli_jsonl_end(&log);   // {"step":12,"loss":2.5}\n
 *     cli_jsonl_close(&log);
 *
 * Numbers are written with 17 significant digits, so they read back bit-exact; NaN and
 * infinities (not JSON) are written as null.
 */
#ifndef SPARSETX_CLI_COMMON_PROGRESS_H
#define SPARSETX_CLI_COMMON_PROGRESS_H

#include <stdint.h>
#include <stdio.h>

/* Seconds of a monotonic clock. */
double cli_now(void);

/* Write a duration as "42s", "3m05s" or "2h07m" (or "?" for a negative or non-finite one). */
void cli_format_duration(double seconds, char *buf, size_t size);

/* Write a count with a k/M/G suffix: "950", "12.3k", "4.56M". */
void cli_format_count(double count, char *buf, size_t size);

typedef struct cli_progress {
    int tty;          /* stderr is a terminal: the line is drawn */
    int shown;        /* a line is on the screen now */
    int width;        /* characters of the last line drawn (to blank its tail) */
    int64_t total;    /* units of the whole job (steps, bytes) */
    int64_t first;    /* units done when this process started (a resumed run) */
    double t_start;   /* cli_now() at init */
    double t_drawn;   /* when the line was last drawn (redraws are limited to 10 a second) */
    const char *unit; /* "tok/s", "B/s": the rate's unit */
} cli_progress;

/* Start a progress line for a job of `total` units of which `first` are already done.
 * force_plain != 0 turns the line off even on a terminal. */
void cli_progress_init(cli_progress *p, int64_t total, int64_t first, const char *unit,
                       int force_plain);

/* Whether the line is drawn (stderr is a terminal and not forced plain). */
int cli_progress_is_tty(const cli_progress *p);

/* Draw "[=====>    ] done/total  <text>  <rate> <unit>  ETA 3m05s" on a terminal. The ETA
 * comes from the units done since init; rate is the caller's (tokens or bytes a second).
 * At most 10 redraws a second unless force != 0 (use it for the last update). */
void cli_progress_update(cli_progress *p, int64_t done, double rate, const char *text, int force);

/* Erase the line (on a terminal) so that other output starts at column 0; the next update
 * draws it again. */
void cli_progress_clear(cli_progress *p);

/* Finish: erase the line on a terminal. */
void cli_progress_finish(cli_progress *p);

/* Seconds since init, and the estimated seconds left at `done` units (negative when
 * unknown). */
double cli_progress_elapsed(const cli_progress *p);
double cli_progress_eta(const cli_progress *p, int64_t done);

typedef struct cli_jsonl {
    FILE *file; /* NULL: every call is a no-op (no --log given) */
    int fields; /* fields written in the current object */
} cli_jsonl;

/* Open path for appending (append != 0; an unfinished last line is ended first) or
 * truncate it. 0 on success, -1 with errno set. */
int cli_jsonl_open(cli_jsonl *log, const char *path, int append);
/* A log that writes nothing (for tools run without --log). */
void cli_jsonl_none(cli_jsonl *log);
void cli_jsonl_close(cli_jsonl *log);

void cli_jsonl_begin(cli_jsonl *log);
void cli_jsonl_int(cli_jsonl *log, const char *key, int64_t value);
void cli_jsonl_num(cli_jsonl *log, const char *key, double value);
void cli_jsonl_str(cli_jsonl *log, const char *key, const char *value);
void cli_jsonl_null(cli_jsonl *log, const char *key);
/* Close the object, write the newline and flush. 0, or -1 when a write failed. */
int cli_jsonl_end(cli_jsonl *log);

/* Write s as a JSON string (with quotes and escapes) to f. */
void cli_json_write_string(FILE *f, const char *s);

#endif /* SPARSETX_CLI_COMMON_PROGRESS_H */
