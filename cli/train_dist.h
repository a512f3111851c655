/*
 * train_dist.h: sparsetx-train's data-parallel setup: the rank, world size and local rank from
 * the environment (torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or mpirun's OMPI_COMM_WORLD_RANK /
 * _SIZE / _LOCAL_RANK), and the rendezvous through a shared file in which rank 0 publishes the
 * communicator id (written to a temporary name and renamed, so a reader never sees half of it;
 * the others poll for it with a timeout).
 */
#ifndef STX_CLI_TRAIN_DIST_H
#define STX_CLI_TRAIN_DIST_H

#include <sparsetx.h>
#include <stddef.h>

typedef struct dist_env {
    int present;        /* 1 when WORLD_SIZE (or OMPI_COMM_WORLD_SIZE) is set */
    int rank, world;    /* 0 and 1 when not present */
    int local_rank;     /* the GPU of this rank on its host: LOCAL_RANK, else rank */
    const char *source; /* "RANK/WORLD_SIZE", "OMPI_COMM_WORLD_*" or "" */
} dist_env;

/* Reads the environment; 0 on success, -1 with a message in err for a malformed or
 * contradictory one (WORLD_SIZE=abc, RANK missing or outside [0, WORLD_SIZE)). */
int dist_env_read(dist_env *e, char *err, size_t err_size);

/* Rank 0: writes id to path (path.tmp.PID, fsync, rename); refuses a path that exists (a
 * stale file from an earlier run would send the other ranks to a communicator that never
 * forms). 0, or -1 with a message. */
int dist_rendezvous_publish(const char *path, const stx_dist_id *id, char *err, size_t err_size);

/* Other ranks: waits up to timeout_s for path to hold a whole id and reads it. 0, or -1 with a
 * message. */
int dist_rendezvous_read(const char *path, double timeout_s, stx_dist_id *id, char *err,
                         size_t err_size);

#endif
