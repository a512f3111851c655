/*
 * harness.h: what every cmocka test shares: the include order cmocka 1.1.x needs, a
 * seeded generator of fresh random data (never zeros), the project's error measure
 * max|got - ref| / max|ref| with a report of the worst element, and the skip convention
 * (exit code 77, registered as SKIP_RETURN_CODE, so a test that cannot run here shows as
 * skipped and says why, never as passed).
 */
#ifndef STX_TEST_HARNESS_H
#define STX_TEST_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the four headers above first; 1.1.5 has no extern "C" of its own. */
#ifdef __cplusplus
extern "C" {
#endif
#include <cmocka.h>
#ifdef __cplusplus
}
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define STX_TEST_SKIP 77

typedef struct stx_test_rng {
    uint64_t state;
} stx_test_rng;

static inline uint64_t stx_test_next(stx_test_rng *r) {
    /* splitmix64 */
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static inline double stx_test_uniform(stx_test_rng *r) {
    return (double)(stx_test_next(r) >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

static inline void stx_test_fill(stx_test_rng *r, double *x, size_t n, double scale) {
    for (size_t i = 0; i < n; ++i) x[i] = scale * stx_test_uniform(r);
}

static inline void stx_test_fill_f(stx_test_rng *r, float *x, size_t n, double scale) {
    for (size_t i = 0; i < n; ++i) x[i] = (float)(scale * stx_test_uniform(r));
}

static inline void stx_test_fill_bytes(stx_test_rng *r, uint8_t *x, size_t n) {
    for (size_t i = 0; i < n; ++i) x[i] = (uint8_t)(stx_test_next(r) >> 56);
}

/* max|got - ref| / max|ref|; NaN anywhere gives +inf. Writes the worst index. */
static inline double stx_test_rel_error(const double *got, const double *ref, size_t n,
                                        size_t *worst) {
    double max_diff = 0.0, max_ref = 0.0;
    size_t w = 0;
    for (size_t i = 0; i < n; ++i) {
        double d = fabs(got[i] - ref[i]);
        if (isnan(got[i]) || isnan(ref[i])) {
            if (worst) *worst = i;
            return (double)INFINITY;
        }
        if (d > max_diff) {
            max_diff = d;
            w = i;
        }
        if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
    }
    if (worst) *worst = w;
    if (max_ref == 0.0) return max_diff == 0.0 ? 0.0 : (double)INFINITY;
    return max_diff / max_ref;
}

/* Fails the test with the tensor's name, the error, the bound and the worst element. */
static inline void stx_test_expect_close(const char *name, const double *got, const double *ref,
                                         size_t n, double bound) {
    size_t worst = 0;
    double err = stx_test_rel_error(got, ref, n, &worst);
    if (!(err <= bound)) {
        fail_msg("%s: relative error %.3e > %.1e (worst [%zu]: got %.17g, ref %.17g)", name, err,
                 bound, worst, got[worst], ref[worst]);
    }
}

#endif
