// data.cpp: the data sets of the C API (stx_dataset_*): byte streams, IDX images, CIFAR-10
// binary batches and PCM WAV audio, raw or gzip.
//
// Reading. A file is read once. Raw files are memory-mapped read-only and served from the
// mapping (so a 100 MB enwik8 costs nothing until pages are touched); a file that starts with
// the gzip magic 1f 8b is decompressed once into memory with zlib's gzread. A truncated gzip
// (no trailer: zlib's "unexpected end of file", Z_BUF_ERROR) and a corrupt one (Z_DATA_ERROR)
// are refused. A raw file must not be truncated by someone else while it is open (the mapping
// would then fault, as with any mmap).
//
// Kinds.
//  - STX_DATA_BYTES: the file's (decompressed) bytes as they are.
//  - STX_DATA_IDX: big-endian header, magic 0x00000803 (unsigned bytes, 3 dimensions), then
//    N, H, W as uint32; 16 + N*H*W must equal the (decompressed) file size exactly. Records
//    of H*W bytes, shape [H, W, 1]; raw files are served straight from the mapping.
//  - STX_DATA_CIFAR: records of 1 label byte + 3072 pixel bytes (1024 R, 1024 G, 1024 B, each
//    a row-major 32x32 plane); the file length must be a multiple of 3073. Converted once at
//    open to HWC raster order, index (row*32 + col)*3 + ch, labels dropped: records of 3072.
//  - STX_DATA_WAV: RIFF/WAVE with a "fmt " chunk of PCM (format tag 1, or WAVE_FORMAT_
//    EXTENSIBLE with the PCM sub-format), 8-bit unsigned or 16-bit signed little-endian, any
//    channel count and rate; other chunks are skipped. Samples are mapped to [-1, 1] (8-bit:
//    (v - 128) / 128, 16-bit: v / 32768), channels averaged, optionally resampled, then mu-law
//    encoded (lib/mulaw.h). Resampling is plain linear interpolation: output sample j sits at
//    input time j * rate_in / rate_out and is interpolated between its two neighbours (the
//    last input sample is held at the end); there are floor(frames * rate_out / rate_in)
//    output samples, so 24 kHz -> 12 kHz keeps every other sample exactly. There is no
//    anti-aliasing filter: content above the new Nyquist frequency folds back. For a
//    band-limited conversion, resample beforehand (e.g. sox, as data/make-audio.sh does).
//    A trailing partial frame in the data chunk is ignored.
//
// Splits (stx_dataset_split): n units (bytes for streams, whole records for record data):
// valid = test = floor(5% of n), train = the rest, in that order; when n >= 3 valid and test
// get at least one unit each, when n == 2 valid gets one and test none, when n == 1 all is
// train. A file of exactly 100,000,000 bytes (enwik8) thus splits 90M / 5M / 5M.
//
// Sampling (stx_dataset_sample): window starts are drawn uniformly from the allowed starts:
// streams, every offset in [begin, end - T]; record datasets, every record boundary in that
// interval (T may differ from the record size: a shorter window is the start of a record, a
// longer one runs on into the next records; the usual case is T == record_size). The
// generator is splitmix64 on the caller's state: state += 0x9E3779B97F4A7C15, z = mix(state);
// a draw in [0, count) rejects z < 2^64 mod count and returns z mod count (unbiased). Windows
// are drawn in order b = 0 .. B-1. A data-parallel rank (stx_dataset_sample_shard) draws all B
// and keeps its contiguous share, so W ranks together train on exactly the windows one process
// draws, and every rank's generator stays equal to that process's.
#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "error.h"
#include "model_handle.h"
#include "mulaw.h"

namespace {

using stx::fail;
using stx::guarded;

constexpr int64_t kCifarRecord = 3072;
constexpr int64_t kIdxHeader = 16;
constexpr uint32_t kIdxMagic = 0x00000803u;

// A read-only private mapping of a whole file; unmapped on destruction.
class Mapping {
public:
    Mapping() = default;
    Mapping(const Mapping &) = delete;
    Mapping &operator=(const Mapping &) = delete;
    Mapping(Mapping &&o) noexcept : ptr_(o.ptr_), len_(o.len_) {
        o.ptr_ = nullptr;
        o.len_ = 0;
    }
    Mapping &operator=(Mapping &&o) noexcept {
        if (this != &o) {
            reset();
            ptr_ = o.ptr_;
            len_ = o.len_;
            o.ptr_ = nullptr;
            o.len_ = 0;
        }
        return *this;
    }
    ~Mapping() { reset(); }
    void reset() {
        if (ptr_) munmap(ptr_, len_);
        ptr_ = nullptr;
        len_ = 0;
    }
    // Maps len bytes of fd; false with errno set on failure.
    bool map(int fd, size_t len) {
        void *p = mmap(nullptr, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) return false;
        reset();
        ptr_ = p;
        len_ = len;
        return true;
    }
    const uint8_t *data() const { return static_cast<const uint8_t *>(ptr_); }

private:
    void *ptr_ = nullptr;
    size_t len_ = 0;
};

class Fd {
public:
    explicit Fd(int fd) : fd_(fd) {}
    Fd(const Fd &) = delete;
    Fd &operator=(const Fd &) = delete;
    ~Fd() {
        if (fd_ >= 0) close(fd_);
    }
    int get() const { return fd_; }

private:
    int fd_;
};

// gzclose on every path that did not close explicitly.
class GzFile {
public:
    explicit GzFile(gzFile f) : f_(f) {}
    GzFile(const GzFile &) = delete;
    GzFile &operator=(const GzFile &) = delete;
    ~GzFile() {
        if (f_) gzclose(f_);
    }
    gzFile get() const { return f_; }
    int close_read() {
        gzFile f = f_;
        f_ = nullptr;
        return gzclose_r(f);
    }

private:
    gzFile f_;
};

// The decoded bytes of a file: a mapping (raw) or a buffer (gzip).
struct Loaded {
    Mapping map;
    std::vector<uint8_t> buf;
    bool gzip = false;
    size_t n = 0;
    const uint8_t *data() const { return gzip ? buf.data() : map.data(); }
};

double physical_memory_bytes() {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

// Refuses a buffer that could never fit in this machine's memory (an overcommitted
// allocation would otherwise "succeed" and the process be killed when it is touched).
stx_status check_fits(const char *path, const char *what, double bytes) {
    const double have = physical_memory_bytes();
    if (have > 0.0 && bytes > have)
        return fail(STX_ERR_OUT_OF_MEMORY,
                    "%s: %s needs %.3g GB of host memory but this machine has %.3g GB", path, what,
                    bytes / 1e9, have / 1e9);
    return STX_OK;
}

// zlib's message without the "<fd:N>: " it puts in front for a gzdopen'ed file.
const char *zlib_text(const char *msg) {
    if (!msg || !*msg) return "unknown error";
    if (std::strncmp(msg, "<fd:", 4) == 0) {
        const char *colon = std::strstr(msg, ": ");
        if (colon) return colon + 2;
    }
    return msg;
}

stx_status gunzip(const char *path, int fd, size_t file_size, Loaded &out) {
    const int fd2 = dup(fd);
    if (fd2 < 0) return fail(STX_ERR_IO, "%s: cannot read: %s", path, std::strerror(errno));
    gzFile raw = gzdopen(fd2, "rb");
    if (!raw) {
        close(fd2);
        return fail(STX_ERR_OUT_OF_MEMORY, "%s: cannot start gzip decompression", path);
    }
    GzFile gz(raw);
    gzbuffer(gz.get(), 1u << 17);
    std::vector<uint8_t> &buf = out.buf;
    size_t cap = file_size < (size_t(1) << 20) ? size_t(1) << 20 : file_size * 3;
    size_t n = 0;
    for (;;) {
        if (n == cap) cap *= 2;
        if (buf.size() < cap) {
            if (stx_status s = check_fits(path, "decompressing the file", static_cast<double>(cap)))
                return s;
            buf.resize(cap);
        }
        const size_t want = std::min(cap - n, size_t(1) << 30);
        const int got = gzread(gz.get(), buf.data() + n, static_cast<unsigned>(want));
        if (got < 0) {
            int errnum = 0;
            const char *msg = gzerror(gz.get(), &errnum);
            if (errnum == Z_ERRNO)
                return fail(STX_ERR_IO, "%s: cannot read: %s", path, std::strerror(errno));
            return fail(STX_ERR_FORMAT, "%s: corrupt gzip data (zlib: %s)", path, zlib_text(msg));
        }
        if (got == 0) break;
        n += static_cast<size_t>(got);
    }
    int errnum = Z_OK;
    const char *msg = gzerror(gz.get(), &errnum);
    if (errnum == Z_BUF_ERROR)
        return fail(STX_ERR_FORMAT,
                    "%s: truncated gzip file: it ends before the end of its compressed data "
                    "(zlib: %s)",
                    path, zlib_text(msg));
    if (errnum != Z_OK)
        return fail(STX_ERR_FORMAT, "%s: corrupt gzip data (zlib: %s)", path, zlib_text(msg));
    const int closed = gz.close_read();
    if (closed == Z_BUF_ERROR)
        return fail(STX_ERR_FORMAT,
                    "%s: truncated gzip file: it ends before the end of its compressed data", path);
    if (closed != Z_OK) return fail(STX_ERR_IO, "%s: error closing the gzip stream", path);
    if (n == 0) return fail(STX_ERR_FORMAT, "%s: the file is empty (after decompression)", path);
    buf.resize(n);
    if (buf.capacity() - n > n / 4) buf.shrink_to_fit(); // a copy: only when much is unused
    out.gzip = true;
    out.n = n;
    return STX_OK;
}

// Reads a file once: mapped when raw, decompressed when it starts with the gzip magic.
stx_status load_file(const char *path, Loaded &out) {
    Fd fd(open(path, O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return fail(STX_ERR_IO, "%s: cannot open: %s", path, std::strerror(errno));
    struct stat st;
    if (fstat(fd.get(), &st) != 0)
        return fail(STX_ERR_IO, "%s: cannot stat: %s", path, std::strerror(errno));
    if (S_ISDIR(st.st_mode)) return fail(STX_ERR_IO, "%s: is a directory, not a file", path);
    if (!S_ISREG(st.st_mode))
        return fail(STX_ERR_IO, "%s: not a regular file (pipes and devices cannot be mapped)",
                    path);
    if (st.st_size == 0) return fail(STX_ERR_FORMAT, "%s: the file is empty", path);
    const size_t size = static_cast<size_t>(st.st_size);
    unsigned char magic[2] = {0, 0};
    if (size >= 2) {
        const ssize_t got = pread(fd.get(), magic, 2, 0);
        if (got < 0) return fail(STX_ERR_IO, "%s: cannot read: %s", path, std::strerror(errno));
        if (got != 2) return fail(STX_ERR_IO, "%s: the file shrank while being opened", path);
    }
    if (magic[0] == 0x1f && magic[1] == 0x8b) return gunzip(path, fd.get(), size, out);
    if (!out.map.map(fd.get(), size))
        return fail(STX_ERR_IO, "%s: cannot map the file: %s", path, std::strerror(errno));
    out.gzip = false;
    out.n = size;
    return STX_OK;
}

uint32_t be32(const uint8_t *p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
}
uint32_t le32(const uint8_t *p) {
    return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
uint16_t le16(const uint8_t *p) {
    return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

// A 4-character chunk id made printable for messages.
std::string chunk_name(const uint8_t *p) {
    std::string s(4, '?');
    for (int i = 0; i < 4; ++i)
        if (p[i] >= 0x20 && p[i] < 0x7f) s[i] = static_cast<char>(p[i]);
    return s;
}

const char *wav_format_name(uint32_t tag) {
    switch (tag) {
    case 1:
        return "PCM";
    case 2:
        return "Microsoft ADPCM";
    case 3:
        return "IEEE float";
    case 6:
        return "A-law";
    case 7:
        return "mu-law";
    case 0x11:
        return "IMA ADPCM";
    case 0x55:
        return "MPEG layer 3";
    default:
        return "unknown";
    }
}

struct WavFormat {
    uint32_t tag = 0, channels = 0, rate = 0, block_align = 0, bits = 0;
};

stx_status decode_wav(const char *path, const uint8_t *p, size_t n, int32_t resample_hz,
                      std::vector<uint8_t> &out, int32_t &rate_out) {
    if (n < 12 || std::memcmp(p, "RIFF", 4) != 0 || std::memcmp(p + 8, "WAVE", 4) != 0)
        return fail(STX_ERR_FORMAT, "%s: not a WAV file: it does not start with a RIFF/WAVE header",
                    path);
    bool have_fmt = false, have_data = false;
    WavFormat fmt;
    size_t data_pos = 0, data_len = 0;
    size_t pos = 12;
    while (pos + 8 <= n && !(have_fmt && have_data)) {
        const uint8_t *h = p + pos;
        const size_t len = le32(h + 4), body = pos + 8;
        if (len > n - body)
            return fail(STX_ERR_FORMAT,
                        "%s: WAV chunk '%s' at byte %zu says %zu bytes but only %zu remain: the "
                        "file is truncated",
                        path, chunk_name(h).c_str(), pos, len, n - body);
        if (std::memcmp(h, "fmt ", 4) == 0 && !have_fmt) {
            if (len < 16)
                return fail(STX_ERR_FORMAT,
                            "%s: WAV 'fmt ' chunk has %zu bytes, fewer than the 16 of PCM", path,
                            len);
            const uint8_t *f = p + body;
            fmt.tag = le16(f);
            fmt.channels = le16(f + 2);
            fmt.rate = le32(f + 4);
            fmt.block_align = le16(f + 12);
            fmt.bits = le16(f + 14);
            if (fmt.tag == 0xFFFEu) { // WAVE_FORMAT_EXTENSIBLE: the real tag is the sub-format
                static const uint8_t guid_tail[14] = {0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80,
                                                      0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71};
                if (len < 40 || le16(f + 16) < 22)
                    return fail(STX_ERR_FORMAT,
                                "%s: WAV 'fmt ' chunk of WAVE_FORMAT_EXTENSIBLE is too short "
                                "(%zu bytes, 40 needed)",
                                path, len);
                fmt.tag = std::memcmp(f + 26, guid_tail, 14) == 0 ? le16(f + 24) : 0xFFFEu;
            }
            have_fmt = true;
        } else if (std::memcmp(h, "data", 4) == 0 && !have_data) {
            data_pos = body;
            data_len = len;
            have_data = true;
        }
        pos = body + len + (len & 1); // chunks are padded to even sizes
    }
    if (!have_fmt) return fail(STX_ERR_FORMAT, "%s: WAV file has no 'fmt ' chunk", path);
    if (!have_data) return fail(STX_ERR_FORMAT, "%s: WAV file has no 'data' chunk", path);
    if (fmt.tag != 1)
        return fail(STX_ERR_FORMAT,
                    "%s: WAV format tag %u (%s) is not supported: only PCM (format 1)", path,
                    fmt.tag, wav_format_name(fmt.tag));
    if (fmt.channels == 0) return fail(STX_ERR_FORMAT, "%s: WAV file declares 0 channels", path);
    if (fmt.bits != 8 && fmt.bits != 16)
        return fail(STX_ERR_FORMAT,
                    "%s: %u-bit WAV samples are not supported: only 8-bit unsigned or 16-bit "
                    "signed PCM",
                    path, fmt.bits);
    if (fmt.rate == 0 || fmt.rate > 0x7fffffffu)
        return fail(STX_ERR_FORMAT, "%s: WAV sample rate %u Hz is invalid", path, fmt.rate);
    const uint32_t bytes_per_sample = fmt.bits / 8, frame = fmt.channels * bytes_per_sample;
    if (fmt.block_align != frame)
        return fail(STX_ERR_FORMAT,
                    "%s: WAV block align %u does not match %u channels of %u bits (%u)", path,
                    fmt.block_align, fmt.channels, fmt.bits, frame);
    const size_t frames = data_len / frame;
    if (frames == 0) return fail(STX_ERR_FORMAT, "%s: WAV file has no audio samples", path);

    const uint8_t *d = p + data_pos;
    const uint32_t channels = fmt.channels;
    const bool eight = fmt.bits == 8;
    auto mixed = [d, frame, channels, eight](size_t i) {
        const uint8_t *s = d + i * frame;
        double sum = 0.0;
        if (eight) {
            for (uint32_t c = 0; c < channels; ++c)
                sum += (static_cast<double>(s[c]) - 128.0) / 128.0;
        } else {
            for (uint32_t c = 0; c < channels; ++c)
                sum += static_cast<double>(static_cast<int16_t>(le16(s + 2 * c))) / 32768.0;
        }
        return sum / static_cast<double>(channels);
    };

    const uint64_t rate_in = fmt.rate;
    if (resample_hz == 0 || static_cast<uint64_t>(resample_hz) == rate_in) {
        if (stx_status s = check_fits(path, "the decoded audio", static_cast<double>(frames)))
            return s;
        out.resize(frames);
        for (size_t i = 0; i < frames; ++i) out[i] = stx::mulaw_encode(mixed(i));
        rate_out = static_cast<int32_t>(rate_in);
        return STX_OK;
    }
    const uint64_t rate_new = static_cast<uint64_t>(resample_hz);
    const uint64_t n_out = static_cast<uint64_t>(frames) * rate_new / rate_in;
    if (n_out == 0)
        return fail(STX_ERR_FORMAT,
                    "%s: resampling %zu samples from %" PRIu64 " Hz to %" PRIu64
                    " Hz leaves no samples",
                    path, frames, rate_in, rate_new);
    if (stx_status s = check_fits(path, "the resampled audio", static_cast<double>(n_out)))
        return s;
    out.resize(static_cast<size_t>(n_out));
    // Output j sits at input time i0 + rem / rate_new, where j * rate_in = i0 * rate_new + rem.
    uint64_t i0 = 0, rem = 0;
    for (uint64_t j = 0; j < n_out; ++j) {
        const double frac = static_cast<double>(rem) / static_cast<double>(rate_new);
        const size_t a = static_cast<size_t>(i0);
        const size_t b = a + 1 < frames ? a + 1 : frames - 1;
        const double x = rem == 0 ? mixed(a) : mixed(a) * (1.0 - frac) + mixed(b) * frac;
        out[static_cast<size_t>(j)] = stx::mulaw_encode(x);
        rem += rate_in;
        i0 += rem / rate_new;
        rem %= rate_new;
    }
    rate_out = static_cast<int32_t>(rate_new);
    return STX_OK;
}

// splitmix64: advances *state, returns the next output.
uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform in [0, count), count >= 1, unbiased (rejection of the 2^64 mod count lowest draws).
uint64_t uniform_below(uint64_t *state, uint64_t count) {
    const uint64_t threshold = (0 - count) % count;
    for (;;) {
        const uint64_t z = splitmix64(state);
        if (z >= threshold) return z % count;
    }
}

} // namespace

struct stx_dataset {
    std::string path;
    stx_data_kind kind = STX_DATA_BYTES;
    Mapping map;              // raw files: the mapping the data lives in
    std::vector<uint8_t> buf; // gzip or converted files: the decoded bytes
    const uint8_t *data = nullptr;
    int64_t n_bytes = 0;
    int64_t record_size = 0; // 0 for streams
    int64_t n_records = 0;
    int32_t n_axes = 0;
    int32_t shape[STX_MAX_POS_AXES] = {0, 0, 0, 0};
    int32_t sample_rate = 0;
};

namespace {

stx_status open_idx(stx_dataset &ds, Loaded &src) {
    const char *path = ds.path.c_str();
    const uint8_t *p = src.data();
    const size_t n = src.n;
    if (n < static_cast<size_t>(kIdxHeader))
        return fail(STX_ERR_FORMAT,
                    "%s: the file has %zu bytes, fewer than the 16-byte IDX header of images", path,
                    n);
    const uint32_t magic = be32(p);
    if (magic != kIdxMagic)
        return fail(STX_ERR_FORMAT,
                    "%s: not an IDX image file: expected magic 0x%08x (unsigned bytes, 3 "
                    "dimensions [N, H, W]) but found 0x%08x%s",
                    path, kIdxMagic, magic,
                    magic == 0x00000801u ? " (an IDX label file: 1 dimension)" : "");
    const uint64_t N = be32(p + 4), H = be32(p + 8), W = be32(p + 12);
    if (H == 0 || W == 0 || H > 0x7fffffffu || W > 0x7fffffffu)
        return fail(STX_ERR_FORMAT,
                    "%s: IDX header gives images of %" PRIu64 "x%" PRIu64
                    ": each side must be 1 to 2^31 - 1",
                    path, H, W);
    // N, H, W < 2^32 each: N*H*W may overflow 64 bits, so compare by division.
    const uint64_t record = H * W; // < 2^62
    const uint64_t payload = n - static_cast<size_t>(kIdxHeader);
    const bool match = payload % record == 0 && payload / record == N;
    if (!match) {
        const long double want = static_cast<long double>(N) * static_cast<long double>(record) +
                                 static_cast<long double>(kIdxHeader);
        return fail(STX_ERR_FORMAT,
                    "%s: IDX header says %" PRIu64 " images of %" PRIu64 "x%" PRIu64
                    " = %.0Lf bytes (with the 16-byte header) but the file has %zu bytes%s",
                    path, N, H, W, want, n, src.gzip ? " (decompressed)" : "");
    }
    if (N == 0) return fail(STX_ERR_FORMAT, "%s: IDX file holds no images (N = 0)", path);
    ds.map = std::move(src.map);
    ds.buf = std::move(src.buf);
    ds.data = (src.gzip ? ds.buf.data() : ds.map.data()) + kIdxHeader;
    ds.n_bytes = static_cast<int64_t>(payload);
    ds.record_size = static_cast<int64_t>(record);
    ds.n_records = static_cast<int64_t>(N);
    ds.n_axes = 3;
    ds.shape[0] = static_cast<int32_t>(H);
    ds.shape[1] = static_cast<int32_t>(W);
    ds.shape[2] = 1;
    return STX_OK;
}

stx_status open_cifar(stx_dataset &ds, Loaded &src) {
    const char *path = ds.path.c_str();
    const size_t n = src.n, in_record = static_cast<size_t>(kCifarRecord) + 1;
    if (n % in_record != 0)
        return fail(STX_ERR_FORMAT,
                    "%s: a CIFAR-10 binary batch is a whole number of 3073-byte records (1 label "
                    "+ 3072 pixels) but the file has %zu bytes (%zu bytes past the last whole "
                    "record)",
                    path, n, n % in_record);
    const size_t records = n / in_record;
    const uint8_t *in = src.data();
    ds.buf.resize(records * static_cast<size_t>(kCifarRecord));
    uint8_t *out = ds.buf.data();
    for (size_t r = 0; r < records; ++r) {
        const uint8_t *planes = in + r * in_record + 1; // skip the label
        uint8_t *img = out + r * static_cast<size_t>(kCifarRecord);
        for (size_t px = 0; px < 1024; ++px)
            for (size_t ch = 0; ch < 3; ++ch) img[px * 3 + ch] = planes[ch * 1024 + px];
    }
    ds.data = ds.buf.data();
    ds.n_bytes = static_cast<int64_t>(ds.buf.size());
    ds.record_size = kCifarRecord;
    ds.n_records = static_cast<int64_t>(records);
    ds.n_axes = 3;
    ds.shape[0] = 32;
    ds.shape[1] = 32;
    ds.shape[2] = 3;
    return STX_OK;
}

stx_status check_dataset(const stx_dataset *ds, const char *fn) {
    if (!ds) return fail(STX_ERR_INVALID_ARGUMENT, "%s: dataset is NULL", fn);
    return STX_OK;
}

} // namespace

extern "C" {

STX_API stx_status stx_dataset_open(const char *path, stx_data_kind kind, int32_t resample_hz,
                                    stx_dataset **out) {
    return guarded("stx_dataset_open", [&]() -> stx_status {
        if (!out) return fail(STX_ERR_INVALID_ARGUMENT, "stx_dataset_open: out is NULL");
        *out = nullptr;
        if (!path) return fail(STX_ERR_INVALID_ARGUMENT, "stx_dataset_open: path is NULL");
        if (!*path) return fail(STX_ERR_INVALID_ARGUMENT, "stx_dataset_open: path is empty");
        const int32_t k = static_cast<int32_t>(kind);
        if (k < STX_DATA_BYTES || k > STX_DATA_WAV)
            return fail(STX_ERR_INVALID_ARGUMENT,
                        "stx_dataset_open: %s: kind (%d) is not an stx_data_kind (0 bytes, 1 "
                        "IDX, 2 CIFAR, 3 WAV)",
                        path, k);
        if (resample_hz < 0)
            return fail(STX_ERR_INVALID_ARGUMENT,
                        "stx_dataset_open: %s: resample_hz (%d) must be >= 0 (0 keeps the "
                        "file's rate)",
                        path, resample_hz);
        if (resample_hz != 0 && kind != STX_DATA_WAV)
            return fail(STX_ERR_INVALID_ARGUMENT,
                        "stx_dataset_open: %s: resample_hz (%d) applies to WAV files only; "
                        "pass 0",
                        path, resample_hz);
        auto ds = std::make_unique<stx_dataset>();
        ds->path = path;
        ds->kind = kind;
        Loaded src;
        if (stx_status s = load_file(path, src)) return s;
        switch (kind) {
        case STX_DATA_IDX:
            if (stx_status s = open_idx(*ds, src)) return s;
            break;
        case STX_DATA_CIFAR:
            if (stx_status s = open_cifar(*ds, src)) return s;
            break;
        case STX_DATA_WAV: {
            int32_t rate = 0;
            if (stx_status s = decode_wav(path, src.data(), src.n, resample_hz, ds->buf, rate))
                return s;
            ds->data = ds->buf.data();
            ds->n_bytes = static_cast<int64_t>(ds->buf.size());
            ds->sample_rate = rate;
            break;
        }
        default:
            ds->map = std::move(src.map);
            ds->buf = std::move(src.buf);
            ds->data = src.gzip ? ds->buf.data() : ds->map.data();
            ds->n_bytes = static_cast<int64_t>(src.n);
            break;
        }
        *out = ds.release();
        return STX_OK;
    });
}

STX_API void stx_dataset_free(stx_dataset *dataset) {
    delete dataset;
}

STX_API stx_status stx_dataset_info(const stx_dataset *dataset, stx_data_info *info) {
    if (stx_status s = check_dataset(dataset, "stx_dataset_info")) return s;
    if (!info) return fail(STX_ERR_INVALID_ARGUMENT, "stx_dataset_info: info is NULL");
    std::memset(info, 0, sizeof *info);
    info->n_bytes = dataset->n_bytes;
    info->record_size = dataset->record_size;
    info->n_records = dataset->n_records;
    info->n_axes = dataset->n_axes;
    for (int i = 0; i < STX_MAX_POS_AXES; ++i) info->shape[i] = dataset->shape[i];
    info->sample_rate = dataset->sample_rate;
    return STX_OK;
}

STX_API stx_status stx_dataset_split(const stx_dataset *dataset, stx_split split, int64_t *begin,
                                     int64_t *end) {
    if (stx_status s = check_dataset(dataset, "stx_dataset_split")) return s;
    if (!begin || !end)
        return fail(STX_ERR_INVALID_ARGUMENT, "stx_dataset_split: %s is NULL",
                    !begin ? "begin" : "end");
    const int32_t sp = static_cast<int32_t>(split);
    if (sp < STX_SPLIT_TRAIN || sp > STX_SPLIT_ALL)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "stx_dataset_split: split (%d) is not an stx_split (0 train, 1 valid, 2 "
                    "test, 3 all)",
                    sp);
    const int64_t unit = dataset->record_size > 0 ? dataset->record_size : 1;
    const int64_t n = dataset->record_size > 0 ? dataset->n_records : dataset->n_bytes;
    // floor(5% of n), exact for any n: 100,000,000 -> 5,000,000.
    int64_t valid = n / 100 * 5 + n % 100 * 5 / 100, test = valid;
    if (n >= 3) {
        if (valid < 1) valid = 1;
        if (test < 1) test = 1;
    } else {
        valid = n == 2 ? 1 : 0;
        test = 0;
    }
    const int64_t train = n - valid - test;
    int64_t b = 0, e = n;
    switch (split) {
    case STX_SPLIT_TRAIN:
        e = train;
        break;
    case STX_SPLIT_VALID:
        b = train;
        e = train + valid;
        break;
    case STX_SPLIT_TEST:
        b = train + valid;
        break;
    default:
        break;
    }
    *begin = b * unit;
    *end = e * unit;
    return STX_OK;
}

STX_API stx_status stx_dataset_read(const stx_dataset *dataset, int64_t offset, void *dst,
                                    int64_t n) {
    if (stx_status s = check_dataset(dataset, "stx_dataset_read")) return s;
    if (n < 0)
        return fail(STX_ERR_INVALID_ARGUMENT, "stx_dataset_read: n (%lld) is negative",
                    static_cast<long long>(n));
    if (offset < 0 || offset > dataset->n_bytes || n > dataset->n_bytes - offset)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "stx_dataset_read: %s: bytes [%lld, %lld + %lld) are outside the data "
                    "(%lld bytes)",
                    dataset->path.c_str(), static_cast<long long>(offset),
                    static_cast<long long>(offset), static_cast<long long>(n),
                    static_cast<long long>(dataset->n_bytes));
    if (n == 0) return STX_OK;
    if (!dst) return fail(STX_ERR_INVALID_ARGUMENT, "stx_dataset_read: dst is NULL");
    std::memcpy(dst, dataset->data + offset, static_cast<size_t>(n));
    return STX_OK;
}

} // extern "C"

namespace {

// The window starts of a batch: B draws in order b = 0 .. B-1 (stx_dataset_sample's rule), each
// handed to emit(b, start). The generator advances only when every argument is valid.
template <typename F>
stx_status sample_starts(const stx_dataset *dataset, const char *fn, int64_t begin, int64_t end,
                         int32_t B, int32_t T, uint64_t *rng, F &&emit) {
    if (stx_status s = check_dataset(dataset, fn)) return s;
    if (!rng) return fail(STX_ERR_INVALID_ARGUMENT, "%s: rng is NULL", fn);
    if (B < 1) return fail(STX_ERR_INVALID_ARGUMENT, "%s: B (%d) must be at least 1", fn, B);
    if (T < 1) return fail(STX_ERR_INVALID_ARGUMENT, "%s: T (%d) must be at least 1", fn, T);
    const char *path = dataset->path.c_str();
    if (begin < 0 || end < begin || end > dataset->n_bytes)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: %s: the range [%lld, %lld) is not within the data (%lld bytes)", fn, path,
                    static_cast<long long>(begin), static_cast<long long>(end),
                    static_cast<long long>(dataset->n_bytes));
    if (end - begin < T)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: %s: the range [%lld, %lld) holds %lld bytes, fewer than one window of "
                    "T = %d bytes",
                    fn, path, static_cast<long long>(begin), static_cast<long long>(end),
                    static_cast<long long>(end - begin), T);
    const int64_t last = end - T; // the last allowed start
    int64_t first = begin, step = 1;
    if (dataset->record_size > 0) {
        step = dataset->record_size;
        first = (begin + step - 1) / step * step;
        if (first > last)
            return fail(STX_ERR_INVALID_ARGUMENT,
                        "%s: %s: no record boundary (records of %lld bytes) in [%lld, %lld] where "
                        "a window of T = %d bytes could start",
                        fn, path, static_cast<long long>(step), static_cast<long long>(begin),
                        static_cast<long long>(last), T);
    }
    const uint64_t count = static_cast<uint64_t>((last - first) / step) + 1;
    for (int32_t b = 0; b < B; ++b)
        emit(b, first + static_cast<int64_t>(uniform_below(rng, count)) * step);
    return STX_OK;
}

// Windows [first, first + n) of a drawn batch into dst [n, T].
stx_status copy_windows(const stx_dataset *dataset, const char *fn, int32_t B, int32_t T,
                        int32_t first, int32_t n, uint64_t *rng, int64_t begin, int64_t end,
                        uint8_t *dst) {
    if (!dst) return fail(STX_ERR_INVALID_ARGUMENT, "%s: dst is NULL", fn);
    return sample_starts(dataset, fn, begin, end, B, T, rng, [&](int32_t b, int64_t start) {
        if (b >= first && b < first + n)
            std::memcpy(dst + static_cast<size_t>(b - first) * static_cast<size_t>(T),
                        dataset->data + start, static_cast<size_t>(T));
    });
}

} // namespace

extern "C" {

STX_API stx_status stx_dataset_sample(const stx_dataset *dataset, int64_t begin, int64_t end,
                                      int32_t B, int32_t T, uint64_t *rng, uint8_t *dst) {
    if (stx_status s = check_dataset(dataset, "stx_dataset_sample")) return s;
    return copy_windows(dataset, "stx_dataset_sample", B, T, 0, B, rng, begin, end, dst);
}

STX_API stx_status stx_dataset_sample_offsets(const stx_dataset *dataset, int64_t begin,
                                              int64_t end, int32_t B, int32_t T, uint64_t *rng,
                                              int64_t *offsets) {
    const char *fn = "stx_dataset_sample_offsets";
    if (stx_status s = check_dataset(dataset, fn)) return s;
    if (!offsets) return fail(STX_ERR_INVALID_ARGUMENT, "%s: offsets is NULL", fn);
    return sample_starts(dataset, fn, begin, end, B, T, rng,
                         [&](int32_t b, int64_t start) { offsets[b] = start; });
}

STX_API stx_status stx_dataset_sample_shard(const stx_dataset *dataset, int64_t begin, int64_t end,
                                            int32_t global_batch, int32_t T, int32_t rank,
                                            int32_t world, uint64_t *rng, uint8_t *dst) {
    const char *fn = "stx_dataset_sample_shard";
    if (stx_status s = check_dataset(dataset, fn)) return s;
    int32_t first = 0, n = 0;
    if (stx_shard_batch(global_batch, world, rank, &first, &n) != STX_OK)
        return stx::fail_context(STX_ERR_INVALID_ARGUMENT, fn);
    return copy_windows(dataset, fn, global_batch, T, first, n, rng, begin, end, dst);
}

} // extern "C"
