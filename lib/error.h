// error.h: how library code reports failure. Every fallible internal function returns an
// stx_status; fail() records the detailed message in the thread-local last-error buffer
// that stx_last_error() returns, and hands the status back so callers can `return fail(...)`.
#pragma once
#include "sparsetx.h"

namespace stx {

stx_status fail(stx_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Thrown by host allocations that would pass the model's memory limit; stx::guarded turns it
// into STX_ERR_OUT_OF_MEMORY with this message (the bytes needed, held and allowed).
struct MemoryLimitError {
    char message[256];
};

// Prefix the current last-error message with "context: " (used where a lower layer's
// message needs to say which call or file it came from). Returns status unchanged.
stx_status fail_context(stx_status status, const char *context);

// Optional diagnostics through the user's callback (silent unless stx_log_set was called).
void log_message(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

} // namespace stx
