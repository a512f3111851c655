// fuzz_util.h: helpers shared by the libFuzzer harnesses: a private scratch directory (in
// /dev/shm when it exists, so writing each input costs no disk I/O) removed at exit, and
// writing bytes to a file in it. The harnesses never print.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

namespace fuzz {

// Aborts the run with a libFuzzer crash report: an invariant of the API does not hold.
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

inline std::string &scratch_dir_storage() {
    static std::string dir;
    return dir;
}

inline void remove_scratch_dir() {
    const std::string &dir = scratch_dir_storage();
    if (dir.empty()) return;
    if (DIR *d = opendir(dir.c_str())) {
        while (struct dirent *e = readdir(d)) {
            if (!std::strcmp(e->d_name, ".") || !std::strcmp(e->d_name, "..")) continue;
            unlink((dir + "/" + e->d_name).c_str());
        }
        closedir(d);
    }
    rmdir(dir.c_str());
}

// The directory of this process (created on first use).
inline const std::string &scratch_dir() {
    std::string &dir = scratch_dir_storage();
    if (!dir.empty()) return dir;
    struct stat st;
    std::string base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    if (const char *t = std::getenv("STX_FUZZ_TMPDIR")) base = t;
    std::string templ = base + "/stx-fuzz-XXXXXX";
    if (!mkdtemp(&templ[0])) std::abort();
    dir = templ;
    std::atexit(remove_scratch_dir);
    return dir;
}

// scratch_dir()/name.
inline std::string scratch_path(const char *name) {
    return scratch_dir() + "/" + name;
}

// Writes n bytes to path (truncating it); aborts when the scratch file system fails, which
// would otherwise look like a finding.
inline void write_file(const std::string &path, const void *data, size_t n) {
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) std::abort();
    const uint8_t *p = static_cast<const uint8_t *>(data);
    while (n > 0) {
        const ssize_t k = write(fd, p, n);
        if (k <= 0) std::abort();
        p += k;
        n -= static_cast<size_t>(k);
    }
    close(fd);
}

} // namespace fuzz
