// out_file.h: a file written from scratch (the PNG and WAV writers): opened for writing,
// and removed again unless closed successfully, so an error never leaves a partial file that
// looks like a result. Only regular files are removed (never a device such as /dev/full).
#pragma once
#include <cerrno>
#include <cstdio>

#include <sys/stat.h>
#include <unistd.h>

namespace stx {

class OutFile {
public:
    explicit OutFile(const char *path) : path_(path), f_(std::fopen(path, "wb")) {}
    OutFile(const OutFile &) = delete;
    OutFile &operator=(const OutFile &) = delete;
    ~OutFile() {
        if (f_) { // not closed explicitly: an error path; drop the partial file
            std::fclose(f_);
            drop_partial();
        }
    }
    FILE *get() const { return f_; }
    // fclose; 0 or errno. On failure the partial file is removed.
    int close() {
        FILE *f = f_;
        f_ = nullptr;
        if (std::fclose(f) != 0) {
            const int err = errno ? errno : EIO;
            drop_partial();
            return err;
        }
        return 0;
    }

private:
    // Removes what was written, but only a regular file (never a device such as /dev/full).
    void drop_partial() const {
        struct stat st;
        if (lstat(path_, &st) == 0 && S_ISREG(st.st_mode)) unlink(path_);
    }

    const char *path_;
    FILE *f_;
};

} // namespace stx
