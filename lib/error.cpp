// error.cpp: the thread-local last-error message, status strings and the optional log
// callback. The library prints nothing itself.
#include "error.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>

namespace {

thread_local char last_error[1024];

stx_log_fn log_fn = nullptr;
void *log_user_data = nullptr;

} // namespace

namespace stx {

stx_status fail(stx_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

stx_status fail_context(stx_status status, const char *context) {
    std::string joined = std::string(context) + ": " + last_error;
    size_t n = std::min(joined.size(), sizeof last_error - 1);
    std::memcpy(last_error, joined.data(), n);
    last_error[n] = '\0';
    return status;
}

void log_message(int level, const char *fmt, ...) {
    if (!log_fn) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_fn(level, buf, log_user_data);
}

} // namespace stx

extern "C" {

STX_API const char *stx_status_string(stx_status status) {
    switch (status) {
    case STX_OK:
        return "ok";
    case STX_ERR_INVALID_ARGUMENT:
        return "invalid argument";
    case STX_ERR_OUT_OF_MEMORY:
        return "out of memory";
    case STX_ERR_IO:
        return "input/output error";
    case STX_ERR_FORMAT:
        return "malformed or corrupt input";
    case STX_ERR_VERSION:
        return "version mismatch";
    case STX_ERR_UNSUPPORTED:
        return "not supported by this build or machine";
    case STX_ERR_DEVICE:
        return "device (CUDA) error";
    case STX_ERR_STATE:
        return "call out of order";
    case STX_ERR_INTERNAL:
        return "internal error";
    case STX_ERR_COMM:
        return "a data-parallel peer failed or timed out";
    case STX_STEP_SKIPPED:
        return "step skipped: non-finite gradients";
    case STX_STATUS_RANGE:
        break;
    }
    return "unknown status";
}

STX_API const char *stx_last_error(void) {
    return last_error;
}

STX_API void stx_clear_error(void) {
    last_error[0] = '\0';
}

STX_API void stx_log_set(stx_log_fn fn, void *user_data) {
    log_fn = fn;
    log_user_data = user_data;
}

} // extern "C"
