/* train_dist.c: the environment and rendezvous of sparsetx-train's data parallel runs. */
#include "train_dist.h"

#include "common_progress.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A whole number in [lo, hi] from the environment: 1 found, 0 unset, -1 malformed. */
static int env_int(const char *name, long lo, long hi, int *out, char *err, size_t n) {
    const char *text = getenv(name);
    if (!text) return 0;
    char *end = NULL;
    errno = 0;
    const long v = strtol(text, &end, 10);
    if (!*text || end == text || *end || errno || v < lo || v > hi) {
        snprintf(err, n, "environment: %s='%s' is not a whole number in [%ld, %ld]", name, text, lo,
                 hi);
        return -1;
    }
    *out = (int)v;
    return 1;
}

int dist_env_read(dist_env *e, char *err, size_t n) {
    static const char *const names[2][3] = {
        {"WORLD_SIZE", "RANK", "LOCAL_RANK"},
        {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"}};
    memset(e, 0, sizeof *e);
    e->world = 1;
    e->source = "";
    for (int k = 0; k < 2; ++k) {
        int world = 0, rank = 0, local = 0;
        const int w = env_int(names[k][0], 1, 1 << 20, &world, err, n);
        if (w < 0) return -1;
        if (w == 0) {
            if (getenv(names[k][1])) {
                snprintf(err, n, "environment: %s is set but %s is not", names[k][1], names[k][0]);
                return -1;
            }
            continue;
        }
        const int r = env_int(names[k][1], 0, world - 1, &rank, err, n);
        if (r < 0) return -1;
        if (r == 0) {
            if (world > 1) {
                snprintf(err, n, "environment: %s=%d but %s is not set", names[k][0], world,
                         names[k][1]);
                return -1;
            }
            rank = 0;
        }
        const int l = env_int(names[k][2], 0, 1 << 20, &local, err, n);
        if (l < 0) return -1;
        e->present = 1;
        e->world = world;
        e->rank = rank;
        e->local_rank = l ? local : rank;
        e->source = k == 0 ? "RANK/WORLD_SIZE" : "OMPI_COMM_WORLD_*";
        return 0;
    }
    return 0;
}

static const char kHex[] = "0123456789abcdef";

int dist_rendezvous_publish(const char *path, const stx_dist_id *id, char *err, size_t n) {
    struct stat st;
    if (stat(path, &st) == 0) {
        snprintf(err, n,
                 "--dist-rendezvous: %s already exists (left by an earlier run?): remove it, or "
                 "give each run a new file",
                 path);
        return -1;
    }
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        snprintf(err, n, "--dist-rendezvous: the path is too long");
        return -1;
    }
    char text[2 * STX_DIST_ID_BYTES + 1];
    for (int i = 0; i < STX_DIST_ID_BYTES; ++i) {
        text[2 * i] = kHex[id->bytes[i] >> 4];
        text[2 * i + 1] = kHex[id->bytes[i] & 15];
    }
    text[2 * STX_DIST_ID_BYTES] = '\n';
    const int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        snprintf(err, n, "--dist-rendezvous: cannot write %s: %s", tmp, strerror(errno));
        return -1;
    }
    const ssize_t w = write(fd, text, sizeof text);
    const int ok = w == (ssize_t)sizeof text && fsync(fd) == 0;
    const int saved = errno;
    close(fd);
    if (!ok || rename(tmp, path) != 0) {
        snprintf(err, n, "--dist-rendezvous: cannot write %s: %s", path,
                 strerror(ok ? errno : saved));
        unlink(tmp);
        return -1;
    }
    return 0;
}

static int hex_value(char c) {
    const char *p = strchr(kHex, c);
    return c && p ? (int)(p - kHex) : -1;
}

int dist_rendezvous_read(const char *path, double timeout_s, stx_dist_id *id, char *err, size_t n) {
    const double t0 = cli_now();
    for (;;) {
        FILE *f = fopen(path, "r");
        if (f) {
            char text[2 * STX_DIST_ID_BYTES + 2];
            const size_t got = fread(text, 1, sizeof text, f);
            fclose(f);
            /* The rename makes the file whole; anything else is not an id file. */
            int ok = got == 2 * STX_DIST_ID_BYTES + 1 && text[2 * STX_DIST_ID_BYTES] == '\n';
            for (int i = 0; ok && i < STX_DIST_ID_BYTES; ++i) {
                const int hi = hex_value(text[2 * i]), lo = hex_value(text[2 * i + 1]);
                if (hi < 0 || lo < 0) ok = 0;
                id->bytes[i] = (uint8_t)(hi * 16 + lo);
            }
            if (!ok) {
                snprintf(err, n, "--dist-rendezvous: %s does not hold a communicator id", path);
                return -1;
            }
            return 0;
        }
        if (cli_now() - t0 > timeout_s) {
            snprintf(err, n,
                     "--dist-rendezvous: %s did not appear within %g s (did rank 0 start, and "
                     "do all ranks see the same file?)",
                     path, timeout_s);
            return -1;
        }
        const struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}
