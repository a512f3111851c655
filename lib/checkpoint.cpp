// checkpoint.cpp: stx_model_save, stx_model_load and stx_model_app_state: one
// self-describing, versioned file per checkpoint, each section under a CRC32, written
// atomically (temporary file, fsync, rename, fsync of the directory).
/*
 * The checkpoint file format, version 1 (data/read_checkpoint.py reads it in Python)
 * ==================================================================================
 * All integers and floats are little-endian; floats are IEEE 754 (f32, f64).
 *
 * File header, 16 bytes:
 *   magic          8 bytes  "STXCKPT\0"
 *   version        u32      1 (a reader refuses a newer version: STX_ERR_VERSION)
 *   section_count  u32      number of sections that follow, END included
 *
 * Then section_count sections, each:
 *   tag            4 ASCII bytes ("CONF", "OPTM", "TENS", "APPS", "END\0")
 *   length         u64      payload bytes
 *   payload        length bytes
 *   crc            u32      CRC-32 of the payload (zlib crc32, initial value 0)
 *
 * Sections appear in exactly this order, and the file ends right after the END section:
 *   CONF           once
 *   OPTM           once
 *   TENS           one per tensor: every parameter exactly once; when OPTM's has_moments is
 *                  1, also the Adam m and v of every parameter exactly once each (any order)
 *   APPS           once
 *   END\0          once, empty payload (its crc is 0)
 *
 * CONF payload: the stx_config, field by field (84 bytes + the pattern):
 *   i32 n_layer, i32 n_embd, i32 n_head, i32 n_ctx, i32 ff_mult, i32 block_size,
 *   i32 n_pos_axes, i32 pos_shape[4], i32 backend, i32 device, i32 precision,
 *   i32 n_threads, i32 recompute, f32 qk_ratio, f32 dropout, u64 seed,
 *   u32 pattern_length, pattern bytes (no terminating NUL, at most 255 bytes).
 *   backend and device record where the model was saved from; stx_model_load replaces them
 *   with its own arguments.
 *
 * OPTM payload: the stx_optim_config field by field and the training state (90 bytes):
 *   f64 lr, f64 min_lr, f64 beta1, f64 beta2, f64 eps, f64 weight_decay, f64 grad_clip,
 *   i64 warmup_steps, i64 total_steps,
 *   i64 step              optimizer steps taken
 *   u64 dropout_counter   the dropout counter (stx_model_get_dropout_counter)
 *   u8  training          the training flag (stx_model_set_training)
 *   u8  has_moments       1 when Adam moments follow as TENS sections; it is 1 exactly
 *                         when step > 0 (before the first step the moments are all zero)
 *
 * TENS payload: one tensor:
 *   u32 kind              0 parameter, 1 Adam m, 2 Adam v
 *   u32 name_length, name bytes (no NUL): a parameter name (stx_param_info)
 *   u32 ndim, i64 dims[ndim]   the parameter's shape, row-major
 *   u32 dtype             0 f32, 1 f64: f64 for precision fp64, else f32 (bf16 models keep
 *                         fp32 master weights)
 *   data                  numel * (4 or 8) bytes, the rest of the payload
 *
 * APPS payload: the application's text (stx_model_save's app_state), UTF-8 bytes without a
 * NUL, at most 16 MiB.
 *
 * Gradients are not saved: a resumed run starts each step with stx_zero_grad.
 *
 * Every byte is checked on load: the magic, the version, the section count (it must match
 * the sections up to END), each tag and the section order, each length against the bytes
 * left (before anything is allocated), each payload's CRC, and then each field's value
 * against the config; nothing may follow END.
 */
#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <unordered_map>
#include <vector>
#include <zlib.h>

#include "backend.h"
#include "config.h"
#include "error.h"
#include "handles.h"
#include "model_handle.h"
#include "params.h"

namespace {

using stx::fail;
using stx::guarded;

constexpr char kMagic[8] = {'S', 'T', 'X', 'C', 'K', 'P', 'T', '\0'};
constexpr uint32_t kFormatVersion = 1;
constexpr uint64_t kHeaderBytes = 16;    // magic, version, section count
constexpr uint64_t kSectionHead = 12;    // tag, length
constexpr uint64_t kSectionBytes = 16;   // tag, length, crc: a section's bytes besides payload
constexpr uint64_t kMaxConfBytes = 4096; // a CONF payload is 84 + at most 255 bytes
constexpr uint64_t kOptmBytes = 90;
constexpr uint64_t kMaxAppState = uint64_t(16) << 20;
constexpr uint64_t kMaxNameBytes = 1024;
constexpr uint64_t kSizeSlack = uint64_t(64) << 20; // what a file may hold beyond its tensors

constexpr uint32_t tag_value(const char (&s)[5]) {
    return static_cast<uint32_t>(static_cast<uint8_t>(s[0])) |
           static_cast<uint32_t>(static_cast<uint8_t>(s[1])) << 8 |
           static_cast<uint32_t>(static_cast<uint8_t>(s[2])) << 16 |
           static_cast<uint32_t>(static_cast<uint8_t>(s[3])) << 24;
}
constexpr uint32_t kTagConf = tag_value("CONF");
constexpr uint32_t kTagOptm = tag_value("OPTM");
constexpr uint32_t kTagTens = tag_value("TENS");
constexpr uint32_t kTagApps = tag_value("APPS");
constexpr uint32_t kTagEnd = tag_value("END\0");

enum TensorKindCode : uint32_t { kKindParam = 0, kKindAdamM = 1, kKindAdamV = 2, kKindCount = 3 };
const char *const kKindNames[kKindCount] = {"param", "adam m", "adam v"};
const stx::TensorKind kBackendKinds[kKindCount] = {stx::TensorKind::Param, stx::TensorKind::AdamM,
                                                   stx::TensorKind::AdamV};

bool host_is_little_endian() {
    const uint16_t one = 1;
    uint8_t first = 0;
    std::memcpy(&first, &one, 1);
    return first == 1;
}

// Reverses the bytes of each `size`-byte element (tensor data on a big-endian host).
void swap_elements(uint8_t *p, size_t count, size_t size) {
    for (size_t i = 0; i < count; ++i, p += size)
        for (size_t a = 0, b = size - 1; a < b; ++a, --b) std::swap(p[a], p[b]);
}

uint32_t crc_update(uint32_t crc, const uint8_t *p, uint64_t n) {
    uLong c = crc;
    while (n > 0) {
        const uInt chunk = static_cast<uInt>(n > (uint64_t(1) << 30) ? (uint64_t(1) << 30) : n);
        c = crc32(c, p, chunk);
        p += chunk;
        n -= chunk;
    }
    return static_cast<uint32_t>(c);
}

// The tag as printable text for messages ("TENS", or "\x01BC?" for a corrupt one).
std::string tag_text(uint32_t tag) {
    std::string s;
    for (int i = 0; i < 4; ++i) {
        const unsigned char c = static_cast<unsigned char>(tag >> (8 * i));
        if (c >= 0x20 && c < 0x7f) {
            s += static_cast<char>(c);
        } else if (c == 0 && i == 3) {
            break; // "END\0"
        } else {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", c);
            s += hex;
        }
    }
    return s;
}

// Bytes from the file as printable text for messages, at most 64 characters.
std::string printable(const uint8_t *p, size_t n) {
    std::string s;
    for (size_t i = 0; i < n && i < 64; ++i) s += (p[i] >= 0x20 && p[i] < 0x7f) ? char(p[i]) : '?';
    if (n > 64) s += "...";
    return s;
}

std::string shape_text(int64_t ndim, const int64_t *dims) {
    std::string s = "[";
    for (int64_t i = 0; i < ndim; ++i) {
        if (i) s += ", ";
        s += std::to_string(dims[i]);
    }
    return s + "]";
}

// ------------------------------------------------------------------ little-endian codecs

struct Out {
    std::vector<uint8_t> b;
    void u8(uint8_t v) { b.push_back(v); }
    void u32(uint32_t v) {
        for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
    }
    void u64(uint64_t v) {
        for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
    }
    void i32(int32_t v) { u32(static_cast<uint32_t>(v)); }
    void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
    void f32(float v) {
        uint32_t u;
        std::memcpy(&u, &v, sizeof u);
        u32(u);
    }
    void f64(double v) {
        uint64_t u;
        std::memcpy(&u, &v, sizeof u);
        u64(u);
    }
    void bytes(const void *p, size_t n) {
        const uint8_t *q = static_cast<const uint8_t *>(p);
        b.insert(b.end(), q, q + n);
    }
};

// Reads fields from a bounded buffer; reading past the end sets ok = false and gives zeros.
struct In {
    const uint8_t *p;
    uint64_t n;
    uint64_t pos = 0;
    bool ok = true;
    In(const uint8_t *data, uint64_t size) : p(data), n(size) {}
    uint64_t left() const { return n - pos; }
    bool need(uint64_t k) {
        if (!ok || left() < k) ok = false;
        return ok;
    }
    uint64_t le(int bytes) {
        if (!need(static_cast<uint64_t>(bytes))) return 0;
        uint64_t v = 0;
        for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[pos + i]) << (8 * i);
        pos += static_cast<uint64_t>(bytes);
        return v;
    }
    uint8_t u8() { return static_cast<uint8_t>(le(1)); }
    uint32_t u32() { return static_cast<uint32_t>(le(4)); }
    uint64_t u64() { return le(8); }
    int32_t i32() { return static_cast<int32_t>(u32()); }
    int64_t i64() { return static_cast<int64_t>(u64()); }
    float f32() {
        const uint32_t u = u32();
        float v;
        std::memcpy(&v, &u, sizeof v);
        return v;
    }
    double f64() {
        const uint64_t u = u64();
        double v;
        std::memcpy(&v, &u, sizeof v);
        return v;
    }
    const uint8_t *take(uint64_t k) {
        if (!need(k)) return nullptr;
        const uint8_t *q = p + pos;
        pos += k;
        return q;
    }
};

size_t dtype_size(stx_dtype d) {
    return d == STX_DTYPE_F64 ? sizeof(double) : sizeof(float);
}

// The dtype a model of this precision stores (bf16 keeps fp32 master weights).
stx_dtype storage_dtype(const stx_config &cfg) {
    return cfg.precision == STX_PRECISION_FP64 ? STX_DTYPE_F64 : STX_DTYPE_F32;
}

void encode_config(const stx_config &c, Out *o) {
    o->i32(c.n_layer);
    o->i32(c.n_embd);
    o->i32(c.n_head);
    o->i32(c.n_ctx);
    o->i32(c.ff_mult);
    o->i32(c.block_size);
    o->i32(c.n_pos_axes);
    for (int a = 0; a < STX_MAX_POS_AXES; ++a) o->i32(c.pos_shape[a]);
    o->i32(c.backend);
    o->i32(c.device);
    o->i32(c.precision);
    o->i32(c.n_threads);
    o->i32(c.recompute);
    o->f32(c.qk_ratio);
    o->f32(c.dropout);
    o->u64(c.seed);
    const size_t len = strnlen(c.pattern, STX_PATTERN_MAX - 1);
    o->u32(static_cast<uint32_t>(len));
    o->bytes(c.pattern, len);
}

// ------------------------------------------------------------------------------- save

// The temporary file of one save: closed, and removed unless committed, on every path out.
struct TmpFile {
    std::string path;
    FILE *f = nullptr;
    bool created = false, committed = false;
    ~TmpFile() {
        if (f) std::fclose(f);
        if (created && !committed) unlink(path.c_str());
    }
};

class Saver {
public:
    Saver(const std::string &target, TmpFile *tmp) : target_(target), tmp_(tmp) {}

    // Writes one section from payload pieces; false (errno kept) when a write fails.
    bool section(uint32_t tag, std::initializer_list<std::pair<const void *, size_t>> parts) {
        uint64_t len = 0;
        uint32_t crc = 0;
        for (const auto &part : parts) {
            len += part.second;
            crc = crc_update(crc, static_cast<const uint8_t *>(part.first), part.second);
        }
        Out head;
        head.u32(tag);
        head.u64(len);
        if (!write(head.b.data(), head.b.size())) return false;
        for (const auto &part : parts)
            if (!write(part.first, part.second)) return false;
        Out tail;
        tail.u32(crc);
        return write(tail.b.data(), tail.b.size());
    }
    bool write(const void *p, size_t n) {
        if (n == 0) return true;
        return std::fwrite(p, 1, n, tmp_->f) == n;
    }
    stx_status io_error(const char *what, int err) const {
        return fail(STX_ERR_IO, "stx_model_save: %s: %s %s: %s", target_.c_str(), what,
                    tmp_->path.c_str(), std::strerror(err));
    }

private:
    const std::string &target_;
    TmpFile *tmp_;
};

void sync_parent_directory(const std::string &path) {
    const size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? std::string(".")
                            : slash == 0               ? "/"
                                                       : path.substr(0, slash);
    const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return; // the rename is done; a directory we cannot open is not an error
    (void)fsync(fd);
    close(fd);
}

stx_status save_model(const stx_model *m, const char *path_c, const char *app_state) {
    const std::string target(path_c);
    const std::string apps = app_state ? std::string(app_state) : std::string();
    if (apps.size() > kMaxAppState)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "stx_model_save: app_state is %zu bytes, more than the %llu allowed",
                    apps.size(), static_cast<unsigned long long>(kMaxAppState));
    const stx::ParamTable &table = m->table;
    const bool has_moments = m->step > 0;
    const stx_dtype dtype = storage_dtype(m->cfg);
    const size_t esize = dtype_size(dtype);
    const uint32_t n_kinds = has_moments ? 3u : 1u;
    const uint64_t n_sections = 4 + static_cast<uint64_t>(table.tensors.size()) * n_kinds;
    if (n_sections > UINT32_MAX)
        return fail(STX_ERR_INTERNAL, "stx_model_save: too many tensors (%zu)",
                    table.tensors.size());

    TmpFile tmp;
    tmp.path = target + ".tmp";
    Saver out(target, &tmp);
    tmp.f = std::fopen(tmp.path.c_str(), "wb");
    if (!tmp.f) return out.io_error("cannot create", errno);
    tmp.created = true;

    Out header;
    header.bytes(kMagic, sizeof kMagic);
    header.u32(kFormatVersion);
    header.u32(static_cast<uint32_t>(n_sections));
    if (!out.write(header.b.data(), header.b.size())) return out.io_error("cannot write", errno);

    Out conf;
    encode_config(m->cfg, &conf);
    if (!out.section(kTagConf, {{conf.b.data(), conf.b.size()}}))
        return out.io_error("cannot write", errno);

    Out optm;
    const stx_optim_config &o = m->optim;
    for (double v : {o.lr, o.min_lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.grad_clip})
        optm.f64(v);
    optm.i64(o.warmup_steps);
    optm.i64(o.total_steps);
    optm.i64(m->step);
    optm.u64(m->dropout_step);
    optm.u8(m->training ? 1 : 0);
    optm.u8(has_moments ? 1 : 0);
    if (!out.section(kTagOptm, {{optm.b.data(), optm.b.size()}}))
        return out.io_error("cannot write", errno);

    const bool swap = !host_is_little_endian();
    std::vector<double> data; // aligned for both dtypes
    for (uint32_t kind = 0; kind < n_kinds; ++kind) {
        for (size_t i = 0; i < table.tensors.size(); ++i) {
            const stx::TensorSpec &ts = table.tensors[i];
            const size_t bytes = static_cast<size_t>(ts.numel) * esize;
            data.resize((bytes + sizeof(double) - 1) / sizeof(double));
            stx_status st = m->backend->tensor_read(kBackendKinds[kind], static_cast<int32_t>(i),
                                                    dtype, data.data());
            if (st != STX_OK) return stx::fail_context(st, "stx_model_save");
            if (swap)
                swap_elements(reinterpret_cast<uint8_t *>(data.data()),
                              static_cast<size_t>(ts.numel), esize);
            Out head;
            head.u32(kind);
            head.u32(static_cast<uint32_t>(ts.name.size()));
            head.bytes(ts.name.data(), ts.name.size());
            head.u32(static_cast<uint32_t>(ts.ndim));
            for (int32_t d = 0; d < ts.ndim; ++d) head.i64(ts.shape[d]);
            head.u32(static_cast<uint32_t>(dtype));
            if (!out.section(kTagTens, {{head.b.data(), head.b.size()}, {data.data(), bytes}}))
                return out.io_error("cannot write", errno);
        }
    }
    if (!out.section(kTagApps, {{apps.data(), apps.size()}}))
        return out.io_error("cannot write", errno);
    if (!out.section(kTagEnd, {})) return out.io_error("cannot write", errno);

    if (std::fflush(tmp.f) != 0) return out.io_error("cannot write", errno);
    if (fsync(fileno(tmp.f)) != 0) return out.io_error("cannot sync", errno);
    FILE *f = tmp.f;
    tmp.f = nullptr;
    if (std::fclose(f) != 0) return out.io_error("cannot close", errno);
    if (std::rename(tmp.path.c_str(), target.c_str()) != 0) {
        const int err = errno;
        return fail(STX_ERR_IO, "stx_model_save: %s: cannot rename %s over it: %s", target.c_str(),
                    tmp.path.c_str(), std::strerror(err));
    }
    tmp.committed = true;
    sync_parent_directory(target);
    return STX_OK;
}

// ------------------------------------------------------------------------------- load

struct FileCloser {
    void operator()(FILE *f) const { std::fclose(f); }
};

// Every failure of a load names the file: "stx_model_load: PATH: what".
class Loader {
public:
    explicit Loader(const char *path) : path_(path) {}

    stx_status bad(stx_status st, const char *fmt, ...) const __attribute__((format(printf, 3, 4)));

    stx_status load(int32_t backend, int32_t device, stx_model **out);

private:
    struct Section {
        uint32_t tag = 0;
        uint64_t offset = 0; // of the section header in the file
        const uint8_t *payload = nullptr;
        uint64_t size = 0;
    };
    struct Tensor {
        uint32_t kind = 0;
        int32_t index = -1;
        const uint8_t *data = nullptr; // unaligned, little-endian
    };
    struct Optim {
        stx_optim_config opt;
        int64_t step = 0;
        uint64_t dropout_counter = 0;
        bool training = true, has_moments = false;
    };

    stx_status read_file(FILE *f, uint64_t size, std::vector<uint8_t> *buf) const;
    stx_status check_header(const uint8_t *p, uint64_t n, uint64_t file_size,
                            uint32_t *count) const;
    stx_status next_section(const uint8_t *p, uint64_t n, uint32_t index, uint64_t *pos,
                            Section *s) const;
    stx_status walk(const uint8_t *p, uint64_t n, std::vector<Section> *sections) const;
    stx_status parse_config(const Section &s, stx_config *cfg, stx::Dims *dims) const;
    stx_status parse_optim(const Section &s, Optim *o) const;
    stx_status parse_tensor(const Section &s, uint32_t number, const stx::ParamTable &table,
                            const std::unordered_map<std::string, int32_t> &names, stx_dtype dtype,
                            Tensor *t) const;
    std::string section_label(const Section &s) const;

    std::string path_;
};

stx_status Loader::bad(stx_status st, const char *fmt, ...) const {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return fail(st, "stx_model_load: %s: %s", path_.c_str(), msg);
}

stx_status Loader::read_file(FILE *f, uint64_t size, std::vector<uint8_t> *buf) const {
    buf->resize(static_cast<size_t>(size));
    uint64_t got = 0;
    while (got < size) {
        const size_t k = std::fread(buf->data() + got, 1, static_cast<size_t>(size - got), f);
        if (k == 0) {
            if (std::ferror(f)) return bad(STX_ERR_IO, "cannot read: %s", std::strerror(errno));
            return bad(STX_ERR_FORMAT, "truncated while reading (%llu of %llu bytes)",
                       static_cast<unsigned long long>(got), static_cast<unsigned long long>(size));
        }
        got += k;
    }
    return STX_OK;
}

stx_status Loader::check_header(const uint8_t *p, uint64_t n, uint64_t file_size,
                                uint32_t *count) const {
    if (n == 0 || file_size == 0)
        return bad(STX_ERR_FORMAT, "empty file, not a sparsetx checkpoint");
    const uint64_t k = n < sizeof kMagic ? n : sizeof kMagic;
    if (std::memcmp(p, kMagic, static_cast<size_t>(k)) != 0)
        return bad(STX_ERR_FORMAT, "not a sparsetx checkpoint (bad magic)");
    if (n < kHeaderBytes)
        return bad(STX_ERR_FORMAT, "truncated: %llu bytes, the file header alone needs %llu",
                   static_cast<unsigned long long>(n),
                   static_cast<unsigned long long>(kHeaderBytes));
    In in(p + sizeof kMagic, 8);
    const uint32_t version = in.u32();
    *count = in.u32();
    if (version > kFormatVersion)
        return bad(STX_ERR_VERSION, "format version %u is newer than this library's %u", version,
                   kFormatVersion);
    if (version == 0) return bad(STX_ERR_FORMAT, "format version 0 is not valid (corrupt header)");
    // CONF, OPTM, APPS, END at least; each section takes at least 16 bytes.
    if (*count < 4 || *count > (file_size - kHeaderBytes) / kSectionBytes)
        return bad(STX_ERR_FORMAT,
                   "the header counts %u sections, impossible in a file of %llu bytes (corrupt "
                   "or truncated)",
                   *count, static_cast<unsigned long long>(file_size));
    return STX_OK;
}

std::string Loader::section_label(const Section &s) const {
    std::string label = tag_text(s.tag);
    if (s.tag != kTagTens) return label;
    In in(s.payload, s.size);
    const uint32_t kind = in.u32();
    const uint32_t len = in.u32();
    if (!in.ok || kind >= kKindCount || len > kMaxNameBytes || len > in.left()) return label;
    label += " '" + printable(s.payload + in.pos, len) + "'";
    if (kind != kKindParam) label += std::string(" (") + kKindNames[kind] + ")";
    return label;
}

// The section at *pos: its header must fit, its tag be known, its length fit in the bytes
// left (checked before the payload is touched), and its CRC match.
stx_status Loader::next_section(const uint8_t *p, uint64_t n, uint32_t index, uint64_t *pos,
                                Section *s) const {
    const uint64_t at = *pos;
    if (n - at < kSectionHead)
        return bad(STX_ERR_FORMAT,
                   "truncated: section %u at offset %llu needs a %llu-byte header, %llu bytes "
                   "left",
                   index, static_cast<unsigned long long>(at),
                   static_cast<unsigned long long>(kSectionHead),
                   static_cast<unsigned long long>(n - at));
    In in(p + at, kSectionHead);
    s->tag = in.u32();
    s->size = in.u64();
    s->offset = at;
    if (s->tag != kTagConf && s->tag != kTagOptm && s->tag != kTagTens && s->tag != kTagApps &&
        s->tag != kTagEnd)
        return bad(STX_ERR_FORMAT, "section %u at offset %llu has an unknown tag '%s' (corrupt)",
                   index, static_cast<unsigned long long>(at), tag_text(s->tag).c_str());
    const std::string tag = tag_text(s->tag);
    if ((s->tag == kTagConf && s->size > kMaxConfBytes) ||
        (s->tag == kTagApps && s->size > kMaxAppState) || (s->tag == kTagEnd && s->size != 0))
        return bad(STX_ERR_FORMAT, "section %s at offset %llu: length %llu is impossible (corrupt)",
                   tag.c_str(), static_cast<unsigned long long>(at),
                   static_cast<unsigned long long>(s->size));
    const uint64_t left = n - at - kSectionHead;
    if (left < 4 || s->size > left - 4)
        return bad(STX_ERR_FORMAT,
                   "section %s at offset %llu: length %llu exceeds the %llu bytes left "
                   "(truncated or corrupt)",
                   tag.c_str(), static_cast<unsigned long long>(at),
                   static_cast<unsigned long long>(s->size),
                   static_cast<unsigned long long>(left < 4 ? 0 : left - 4));
    s->payload = p + at + kSectionHead;
    In crc_in(s->payload + s->size, 4);
    const uint32_t stored = crc_in.u32();
    if (crc_update(0, s->payload, s->size) != stored)
        return bad(STX_ERR_FORMAT, "section %s: checksum mismatch (file corrupt)",
                   section_label(*s).c_str());
    *pos = at + kSectionHead + s->size + 4;
    return STX_OK;
}

// The whole file's structure: header, then sections in order up to END, which must be the
// header's last section and the file's last byte.
stx_status Loader::walk(const uint8_t *p, uint64_t n, std::vector<Section> *sections) const {
    uint32_t count = 0;
    stx_status st = check_header(p, n, n, &count);
    if (st != STX_OK) return st;
    uint64_t pos = kHeaderBytes;
    int stage = 0; // 0: CONF next, 1: OPTM, 2: TENS or APPS, 3: END
    static const char *const expected[] = {"CONF", "OPTM", "TENS or APPS", "END"};
    for (uint32_t i = 0;; ++i) {
        if (i >= count)
            return bad(STX_ERR_FORMAT,
                       "the header counts %u sections but no END section follows them (corrupt)",
                       count);
        Section s;
        if ((st = next_section(p, n, i, &pos, &s)) != STX_OK) return st;
        const bool in_order = (stage == 0 && s.tag == kTagConf) ||
                              (stage == 1 && s.tag == kTagOptm) ||
                              (stage == 2 && (s.tag == kTagTens || s.tag == kTagApps)) ||
                              (stage == 3 && s.tag == kTagEnd);
        if (!in_order)
            return bad(STX_ERR_FORMAT, "section %u is %s where %s was expected (corrupt)", i,
                       tag_text(s.tag).c_str(), expected[stage]);
        if (s.tag == kTagConf) stage = 1;
        if (s.tag == kTagOptm || s.tag == kTagTens) stage = 2;
        if (s.tag == kTagApps) stage = 3;
        sections->push_back(s);
        if (s.tag == kTagEnd) {
            if (i + 1 != count)
                return bad(STX_ERR_FORMAT,
                           "END is section %u but the header counts %u sections (corrupt)", i,
                           count);
            if (pos != n)
                return bad(STX_ERR_FORMAT, "%llu bytes follow the END section (corrupt)",
                           static_cast<unsigned long long>(n - pos));
            return STX_OK;
        }
    }
}

stx_status Loader::parse_config(const Section &s, stx_config *cfg, stx::Dims *dims) const {
    stx::config_defaults(cfg);
    In in(s.payload, s.size);
    cfg->n_layer = in.i32();
    cfg->n_embd = in.i32();
    cfg->n_head = in.i32();
    cfg->n_ctx = in.i32();
    cfg->ff_mult = in.i32();
    cfg->block_size = in.i32();
    cfg->n_pos_axes = in.i32();
    for (int a = 0; a < STX_MAX_POS_AXES; ++a) cfg->pos_shape[a] = in.i32();
    cfg->backend = in.i32();
    cfg->device = in.i32();
    cfg->precision = in.i32();
    cfg->n_threads = in.i32();
    cfg->recompute = in.i32();
    cfg->qk_ratio = in.f32();
    cfg->dropout = in.f32();
    cfg->seed = in.u64();
    const uint32_t len = in.u32();
    if (!in.ok || len != in.left())
        return bad(STX_ERR_FORMAT, "section CONF: %llu bytes do not hold a config (corrupt)",
                   static_cast<unsigned long long>(s.size));
    if (len >= STX_PATTERN_MAX)
        return bad(STX_ERR_FORMAT, "section CONF: pattern of %u bytes, at most %d allowed", len,
                   STX_PATTERN_MAX - 1);
    const uint8_t *pattern = in.take(len);
    if (len > 0 && std::memchr(pattern, '\0', len))
        return bad(STX_ERR_FORMAT, "section CONF: the pattern contains a NUL byte");
    std::memset(cfg->pattern, 0, sizeof cfg->pattern);
    if (len > 0) std::memcpy(cfg->pattern, pattern, len);
    // The config as the file has it, before the caller's backend replaces the saved one.
    stx_status st = stx::config_validate(*cfg, nullptr, dims);
    if (st != STX_OK) {
        const std::string why = stx_last_error();
        return bad(STX_ERR_FORMAT, "section CONF: invalid config: %s", why.c_str());
    }
    return STX_OK;
}

stx_status Loader::parse_optim(const Section &s, Optim *o) const {
    if (s.size != kOptmBytes)
        return bad(STX_ERR_FORMAT, "section OPTM: %llu bytes, expected %llu (corrupt)",
                   static_cast<unsigned long long>(s.size),
                   static_cast<unsigned long long>(kOptmBytes));
    In in(s.payload, s.size);
    o->opt.lr = in.f64();
    o->opt.min_lr = in.f64();
    o->opt.beta1 = in.f64();
    o->opt.beta2 = in.f64();
    o->opt.eps = in.f64();
    o->opt.weight_decay = in.f64();
    o->opt.grad_clip = in.f64();
    o->opt.warmup_steps = in.i64();
    o->opt.total_steps = in.i64();
    o->step = in.i64();
    o->dropout_counter = in.u64();
    const uint8_t training = in.u8();
    const uint8_t has_moments = in.u8();
    if (o->step < 0)
        return bad(STX_ERR_FORMAT, "section OPTM: step (%lld) is negative",
                   static_cast<long long>(o->step));
    if (training > 1 || has_moments > 1)
        return bad(STX_ERR_FORMAT, "section OPTM: flags (training %u, has_moments %u) must be 0/1",
                   training, has_moments);
    if ((has_moments == 1) != (o->step > 0))
        return bad(STX_ERR_FORMAT,
                   "section OPTM: has_moments (%u) must be 1 exactly when step (%lld) > 0",
                   has_moments, static_cast<long long>(o->step));
    o->training = training == 1;
    o->has_moments = has_moments == 1;
    return STX_OK;
}

// One TENS section against the table of the file's config: kind, name, shape, dtype and
// data length, all checked before the data is used.
stx_status Loader::parse_tensor(const Section &s, uint32_t number, const stx::ParamTable &table,
                                const std::unordered_map<std::string, int32_t> &names,
                                stx_dtype dtype, Tensor *t) const {
    In in(s.payload, s.size);
    const uint32_t kind = in.u32();
    const uint32_t name_len = in.u32();
    if (!in.ok || kind >= kKindCount || name_len == 0 || name_len > kMaxNameBytes ||
        name_len > in.left())
        return bad(STX_ERR_FORMAT,
                   "TENS section %u: malformed tensor header (kind %u, name of %u "
                   "bytes)",
                   number, kind, name_len);
    const uint8_t *name_bytes = in.take(name_len);
    const std::string name(reinterpret_cast<const char *>(name_bytes), name_len);
    const std::string shown = printable(name_bytes, name_len);
    const auto found = names.find(name);
    if (found == names.end())
        return bad(STX_ERR_FORMAT,
                   "tensor '%s' is not a parameter of the model its config describes",
                   shown.c_str());
    const stx::TensorSpec &ts = table.tensors[static_cast<size_t>(found->second)];
    const uint32_t ndim = in.u32();
    if (!in.ok || ndim < 1 || ndim > STX_MAX_DIMS || in.left() < 8ull * ndim + 4)
        return bad(STX_ERR_FORMAT, "tensor '%s': malformed shape (ndim %u)", shown.c_str(), ndim);
    int64_t dims[STX_MAX_DIMS] = {0, 0, 0, 0};
    for (uint32_t d = 0; d < ndim; ++d) dims[d] = in.i64();
    bool same = static_cast<int32_t>(ndim) == ts.ndim;
    for (uint32_t d = 0; same && d < ndim; ++d) same = dims[d] == ts.shape[d];
    if (!same)
        return bad(STX_ERR_FORMAT,
                   "tensor '%s': shape %s in the file does not match %s of the config (shape "
                   "mismatch)",
                   shown.c_str(), shape_text(ndim, dims).c_str(),
                   shape_text(ts.ndim, ts.shape).c_str());
    const uint32_t file_dtype = in.u32();
    if (file_dtype != static_cast<uint32_t>(dtype))
        return bad(STX_ERR_FORMAT,
                   "tensor '%s': dtype %u in the file, but the config's precision stores dtype %u "
                   "(0 f32, 1 f64)",
                   shown.c_str(), file_dtype, static_cast<uint32_t>(dtype));
    const uint64_t want = static_cast<uint64_t>(ts.numel) * dtype_size(dtype);
    if (in.left() != want)
        return bad(STX_ERR_FORMAT, "tensor '%s': %llu data bytes, expected %llu (%lld x %zu)",
                   shown.c_str(), static_cast<unsigned long long>(in.left()),
                   static_cast<unsigned long long>(want), static_cast<long long>(ts.numel),
                   dtype_size(dtype));
    t->kind = kind;
    t->index = found->second;
    t->data = in.take(want);
    return STX_OK;
}

stx_status Loader::load(int32_t backend, int32_t device, stx_model **out) {
    FILE *f = std::fopen(path_.c_str(), "rb");
    if (!f) {
        const int err = errno;
        return fail(STX_ERR_IO, "stx_model_load: cannot open %s: %s", path_.c_str(),
                    std::strerror(err));
    }
    std::unique_ptr<FILE, FileCloser> file(f);
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) return bad(STX_ERR_IO, "cannot stat: %s", std::strerror(errno));
    if (!S_ISREG(sb.st_mode)) return bad(STX_ERR_IO, "not a regular file");
    const uint64_t size = static_cast<uint64_t>(sb.st_size);

    // First the header and the CONF section alone: what the config implies bounds the file
    // size before the whole file is read into memory.
    stx_config cfg;
    stx::Dims dims;
    {
        const uint64_t want = kHeaderBytes + kSectionBytes + kMaxConfBytes;
        std::vector<uint8_t> prefix;
        stx_status st = read_file(f, size < want ? size : want, &prefix);
        if (st != STX_OK) return st;
        uint32_t count = 0;
        if ((st = check_header(prefix.data(), prefix.size(), size, &count)) != STX_OK) return st;
        uint64_t pos = kHeaderBytes;
        Section s;
        if ((st = next_section(prefix.data(), prefix.size(), 0, &pos, &s)) != STX_OK) return st;
        if (s.tag != kTagConf)
            return bad(STX_ERR_FORMAT, "section 0 is %s where CONF was expected (corrupt)",
                       tag_text(s.tag).c_str());
        if ((st = parse_config(s, &cfg, &dims)) != STX_OK) return st;
        const stx::ParamTable table = stx::build_param_table(dims);
        const uint64_t esize = dtype_size(storage_dtype(cfg));
        uint64_t bound = kHeaderBytes + 4 * kSectionBytes + kMaxConfBytes + kOptmBytes +
                         kMaxAppState + kSizeSlack;
        for (const stx::TensorSpec &ts : table.tensors)
            bound += 3 * (kSectionBytes + 16 + ts.name.size() + 8 * STX_MAX_DIMS +
                          static_cast<uint64_t>(ts.numel) * esize);
        if (size > bound)
            return bad(
                STX_ERR_FORMAT, "%llu bytes, more than the %llu its config can explain (corrupt)",
                static_cast<unsigned long long>(size), static_cast<unsigned long long>(bound));
    }

    std::vector<uint8_t> buf;
    std::rewind(f);
    stx_status st = read_file(f, size, &buf);
    if (st != STX_OK) return st;
    file.reset();

    // Structure and checksums of every section, before anything is built.
    std::vector<Section> sections;
    if ((st = walk(buf.data(), buf.size(), &sections)) != STX_OK) return st;
    // The file was read twice: parse its CONF again from the bytes that are used.
    if ((st = parse_config(sections[0], &cfg, &dims)) != STX_OK) return st;
    Optim optim;
    if ((st = parse_optim(sections[1], &optim)) != STX_OK) return st;

    const stx::ParamTable table = stx::build_param_table(dims);
    std::unordered_map<std::string, int32_t> names;
    for (size_t i = 0; i < table.tensors.size(); ++i)
        names.emplace(table.tensors[i].name, static_cast<int32_t>(i));
    const stx_dtype dtype = storage_dtype(cfg);
    std::vector<Tensor> tensors;
    std::vector<uint8_t> seen(table.tensors.size() * kKindCount, 0);
    const Section *apps = nullptr;
    uint32_t number = 0;
    for (const Section &s : sections) {
        if (s.tag == kTagApps) apps = &s;
        if (s.tag != kTagTens) continue;
        Tensor t;
        if ((st = parse_tensor(s, number++, table, names, dtype, &t)) != STX_OK) return st;
        const std::string &name = table.tensors[static_cast<size_t>(t.index)].name;
        if (t.kind != kKindParam && !optim.has_moments)
            return bad(STX_ERR_FORMAT,
                       "tensor '%s' (%s) is present but OPTM says there are no Adam moments",
                       name.c_str(), kKindNames[t.kind]);
        uint8_t &mark = seen[static_cast<size_t>(t.index) * kKindCount + t.kind];
        if (mark)
            return bad(STX_ERR_FORMAT, "tensor '%s' (%s) appears twice", name.c_str(),
                       kKindNames[t.kind]);
        mark = 1;
        tensors.push_back(t);
    }
    for (size_t i = 0; i < table.tensors.size(); ++i)
        for (uint32_t kind = 0; kind < (optim.has_moments ? 3u : 1u); ++kind)
            if (!seen[i * kKindCount + kind])
                return bad(STX_ERR_FORMAT, "tensor '%s'%s%s%s missing",
                           table.tensors[i].name.c_str(), kind ? " (" : "",
                           kind ? kKindNames[kind] : "", kind ? ")" : "");
    if (!apps) return bad(STX_ERR_INTERNAL, "no APPS section after the walk");
    if (apps->size > 0 && std::memchr(apps->payload, '\0', static_cast<size_t>(apps->size)))
        return bad(STX_ERR_FORMAT, "section APPS: the application text contains a NUL byte");

    // Build the model on the caller's backend; a refusal here concerns the arguments (e.g.
    // an fp64 model on CUDA), so its status is kept.
    cfg.backend = backend;
    cfg.device = device;
    stx_model *raw = nullptr;
    if ((st = stx::create_model(cfg, &raw)) != STX_OK) {
        const std::string context = "stx_model_load: " + path_;
        return stx::fail_context(st, context.c_str());
    }
    // Freed through the API on any failure below, so the handle registry forgets it too.
    std::unique_ptr<stx_model, void (*)(stx_model *)> model(raw, &stx_model_free);
    if (model->table.tensors.size() != table.tensors.size())
        return bad(STX_ERR_INTERNAL, "the model's parameter table differs from the config's");
    if ((st = stx_model_set_optimizer(model.get(), &optim.opt)) != STX_OK) {
        const std::string why = stx_last_error();
        return bad(STX_ERR_FORMAT, "section OPTM: invalid optimizer settings: %s", why.c_str());
    }

    const bool swap = !host_is_little_endian();
    const size_t esize = dtype_size(dtype);
    std::vector<double> aligned;
    for (const Tensor &t : tensors) {
        const stx::TensorSpec &ts = table.tensors[static_cast<size_t>(t.index)];
        const size_t bytes = static_cast<size_t>(ts.numel) * esize;
        aligned.resize((bytes + sizeof(double) - 1) / sizeof(double));
        std::memcpy(aligned.data(), t.data, bytes);
        if (swap)
            swap_elements(reinterpret_cast<uint8_t *>(aligned.data()),
                          static_cast<size_t>(ts.numel), esize);
        if ((st = model->backend->tensor_write(kBackendKinds[t.kind], t.index, dtype,
                                               aligned.data())) != STX_OK) {
            const std::string context = "stx_model_load: " + path_;
            return stx::fail_context(st, context.c_str());
        }
    }
    model->step = optim.step;
    model->dropout_step = optim.dropout_counter;
    model->training = optim.training;
    model->app_state.assign(reinterpret_cast<const char *>(apps->payload),
                            static_cast<size_t>(apps->size));
    *out = model.release();
    return STX_OK;
}

} // namespace

extern "C" {

STX_API stx_status stx_model_save(const stx_model *model, const char *path, const char *app_state) {
    stx_status st = stx::check_model(model, "stx_model_save");
    if (st != STX_OK) return st;
    if (!path) return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_save: path is NULL");
    if (!*path) return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_save: path is empty");
    if (model->user_layouts) // the file would come back with the config's pattern instead
        return fail(
            STX_ERR_UNSUPPORTED,
            "stx_model_save: %s: a layer uses a layout given by stx_model_set_layer_layout, "
            "which checkpoints do not record yet",
            path);
    return guarded("stx_model_save", [&] { return save_model(model, path, app_state); });
}

STX_API stx_status stx_model_load(const char *path, int32_t backend, int32_t device,
                                  stx_model **out) {
    if (!out) return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_load: out is NULL");
    *out = nullptr;
    if (!path) return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_load: path is NULL");
    if (backend < STX_BACKEND_CPU || backend > STX_BACKEND_AUTO)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "stx_model_load: backend (%d) must be 0 (cpu), 1 (cuda) or 2 (auto)", backend);
    if (device < 0 || device > 1023)
        return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_load: device (%d) must be in [0, 1023]",
                    device);
    return guarded("stx_model_load", [&] {
        Loader loader(path);
        return loader.load(backend, device, out);
    });
}

STX_API const char *stx_model_app_state(const stx_model *model) {
    return model && stx::handle_live(model) ? model->app_state.c_str() : "";
}

} // extern "C"
