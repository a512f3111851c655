/*
 * launch.c: sparsetx-launch, one process per GPU for data-parallel training on one host.
 *
 *   sparsetx-launch --gpus N [--grace S] -- sparsetx-train DATA --batch 32 ...
 *
 * Starts N copies of the command, copy i with RANK=i, LOCAL_RANK=i, WORLD_SIZE=N,
 * LOCAL_WORLD_SIZE=N and STX_DIST_RENDEZVOUS=<a fresh temporary directory>/rendezvous (where
 * sparsetx-train's rank 0 publishes the communicator id for the others). SIGINT, SIGTERM and
 * SIGHUP are passed on to every copy (each runs in a process group of its own, so a Ctrl-C on
 * the terminal reaches the copies once, through the launcher) (sparsetx-train then saves and stops,
 * all ranks at the same step). When a copy fails (a non-zero exit or a signal), the others are sent
 * SIGTERM, and SIGKILL after --grace seconds (default 10) if they are still there, and
 * sparsetx-launch exits 1 with a message naming the rank. It exits 0 when every copy did, 2 on bad
 * usage. Several hosts: run the tool on each host with torchrun- or mpirun-style variables instead
 * (README).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common_progress.h"

#define PROG     "sparsetx-launch"
#define MAX_RANK 1024

static pid_t g_pids[MAX_RANK];
static int g_n = 0;
static volatile sig_atomic_t g_signal = 0;

static void on_signal(int sig) {
    g_signal = sig;
    for (int i = 0; i < g_n; ++i)
        if (g_pids[i] > 0) kill(-g_pids[i], sig);
}

static void usage(FILE *f) {
    fprintf(f, "usage: " PROG " --gpus N [--grace SECONDS] -- COMMAND [ARGS...]\n"
               "Runs N copies of COMMAND (one per GPU) with RANK, LOCAL_RANK, WORLD_SIZE,\n"
               "LOCAL_WORLD_SIZE and STX_DIST_RENDEZVOUS set; passes on SIGINT/SIGTERM/SIGHUP;\n"
               "if one copy fails, stops the others and exits 1 naming its rank.\n");
}

static int parse_int(const char *text, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    const long v = strtol(text, &end, 10);
    if (!*text || *end || errno || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static void describe(int status, char *buf, size_t n) {
    if (WIFEXITED(status))
        snprintf(buf, n, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, n, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, n, "stopped (status %d)", status);
}

int main(int argc, char **argv) {
    long gpus = 0, grace = 10;
    int cmd = -1;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--")) {
            cmd = i + 1;
            break;
        }
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        const int is_gpus = !strcmp(argv[i], "--gpus"), is_grace = !strcmp(argv[i], "--grace");
        if ((is_gpus || is_grace) && i + 1 < argc) {
            long *dst = is_gpus ? &gpus : &grace;
            if (parse_int(argv[i + 1], is_gpus ? 1 : 0, is_gpus ? MAX_RANK : 86400, dst) != 0) {
                fprintf(stderr, PROG ": %s: '%s' is not a whole number in [%d, %d]\n", argv[i],
                        argv[i + 1], is_gpus ? 1 : 0, is_gpus ? MAX_RANK : 86400);
                return 2;
            }
            ++i;
            continue;
        }
        fprintf(stderr, PROG ": unknown argument '%s'\n", argv[i]);
        usage(stderr);
        return 2;
    }
    if (gpus < 1 || cmd < 0 || cmd >= argc) {
        fprintf(stderr, PROG ": %s\n", gpus < 1 ? "--gpus N is required" : "no COMMAND after --");
        usage(stderr);
        return 2;
    }

    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/sparsetx-launch.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        fprintf(stderr, PROG ": cannot make a temporary directory %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char rendezvous[4200];
    snprintf(rendezvous, sizeof rendezvous, "%s/rendezvous", dir);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &old); /* no forwarding half-way through the forks */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    g_n = (int)gpus;
    for (int r = 0; r < g_n; ++r) {
        const pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, PROG ": fork failed for rank %d: %s\n", r, strerror(errno));
            g_n = r;
            on_signal(SIGTERM);
            break;
        }
        if (pid == 0) {
            /* A process group per rank: a signal reaches the copy and whatever it started, and
             * Ctrl-C on the terminal reaches only the launcher, which passes it on once. */
            setpgid(0, 0);
            signal(SIGINT, SIG_DFL);
            signal(SIGTERM, SIG_DFL);
            signal(SIGHUP, SIG_DFL);
            sigprocmask(SIG_SETMASK, &old, NULL);
            char v[32];
            snprintf(v, sizeof v, "%d", r);
            setenv("RANK", v, 1);
            setenv("LOCAL_RANK", v, 1);
            snprintf(v, sizeof v, "%d", g_n);
            setenv("WORLD_SIZE", v, 1);
            setenv("LOCAL_WORLD_SIZE", v, 1);
            setenv("STX_DIST_RENDEZVOUS", rendezvous, 1);
            execvp(argv[cmd], argv + cmd);
            fprintf(stderr, PROG ": rank %d: cannot run %s: %s\n", r, argv[cmd], strerror(errno));
            _exit(127);
        }
        setpgid(pid, pid); /* also here: no signal may find the group missing */
        g_pids[r] = pid;
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (g_signal == 0 && g_n < gpus) g_signal = SIGTERM;

    /* Wait for every copy; the first failure stops the rest. */
    int failed_rank = -1, failed_status = 0, left = g_n;
    double kill_at = 0.0; /* when the survivors get SIGKILL (0: not yet asked to stop) */
    while (left > 0) {
        int status = 0;
        const pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid < 0 && errno != EINTR) break;
        if (pid <= 0) {
            if (kill_at > 0.0 && cli_now() > kill_at) {
                for (int i = 0; i < g_n; ++i)
                    if (g_pids[i] > 0) kill(-g_pids[i], SIGKILL);
                kill_at = cli_now() + 1e9;
            }
            const struct timespec pause = {0, 20 * 1000 * 1000};
            nanosleep(&pause, NULL);
            continue;
        }
        int rank = -1;
        for (int i = 0; i < g_n; ++i)
            if (g_pids[i] == pid) rank = i;
        if (rank < 0) continue;
        g_pids[rank] = 0;
        --left;
        const int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && failed_rank < 0 && !g_signal) {
            failed_rank = rank;
            failed_status = status;
            char what[128];
            describe(status, what, sizeof what);
            fprintf(stderr, PROG ": rank %d (pid %ld) %s; stopping the other %d rank%s\n", rank,
                    (long)pid, what, left, left == 1 ? "" : "s");
            for (int i = 0; i < g_n; ++i)
                if (g_pids[i] > 0) kill(-g_pids[i], SIGTERM);
            kill_at = cli_now() + (double)grace;
        } else if (!ok && failed_rank < 0) {
            failed_rank = rank;
            failed_status = status;
        }
    }
    unlink(rendezvous);
    rmdir(dir);
    if (failed_rank >= 0) {
        char what[128];
        describe(failed_status, what, sizeof what);
        fprintf(stderr, PROG ": failed: rank %d %s\n", failed_rank, what);
        return 1;
    }
    if (g_n < gpus) return 1;
    return 0;
}
