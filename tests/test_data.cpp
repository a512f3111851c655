// test_data: the data layer (lib/data.cpp, lib/png.cpp, lib/wav.cpp, lib/mulaw.h) on real
// files made in a fresh temporary directory (mkdtemp under /tmp, removed at the end).
//
//  - byte streams: a raw file and its gzip give the same bytes; reads outside the data are
//    refused; splits of a 1000-byte file (900/50/50), of tiny files (every split non-empty
//    from 3 bytes on), and of a sparse file of exactly 100,000,000 bytes (enwik8: 90M/5M/5M),
//    which is memory-mapped and read lazily (only a few marker bytes are touched);
//  - sampling: same seed -> same batch and same final state, the state advances, a different
//    seed differs; every window is a real window of the file inside [begin, end - T], every
//    start in that interval is reached (both ends included); the starts are exactly the
//    documented generator (splitmix64, rejection, modulo); record datasets start at record
//    boundaries (also from an unaligned begin, and windows of two records);
//  - IDX raw and gzip with a hand-made header (N = 5, 4x3): records, shape, bytes, splits;
//  - CIFAR-10: 2 records with known pixel values -> HWC order checked element by element;
//  - WAV: 8-bit and 16-bit stereo (with an odd-sized unknown chunk to skip) mixed down and
//    mu-law encoded, byte for byte against the formula; WAVE_FORMAT_EXTENSIBLE PCM accepted;
//    resampling 24000 -> 12000 halves the length (every other sample), 8000 -> 12000
//    interpolates linearly;
//  - mu-law: decode(encode(x)) within the quantization bound, encode(decode(b)) == b;
//  - bad input, each with its status and a message naming the file and the problem: missing
//    file, empty file, truncated gzip (cut in the middle, cut in the trailer), corrupt gzip
//    CRC, IDX wrong magic, IDX sizes that do not match (raw and gzip), CIFAR of the wrong
//    length, WAV not RIFF, non-PCM, 24-bit, 0 channels, truncated data chunk, no fmt chunk;
//    a range shorter than one window; bad arguments of every entry point;
//  - PNG: a 3x2 RGB and a 4x3 gray image read back: signature, IHDR fields, every CRC, the
//    IDAT inflated with zlib's uncompress (filter bytes 0 and the pixels); bad arguments and
//    an unwritable path;
//  - WAV writer: header fields, samples (decoded mu-law as 16-bit), and the round trip back
//    through stx_dataset_open to the same mu-law bytes;
//  - real data: Fashion-MNIST t10k images (Debian's dataset-fashion-mnist), when installed.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#include <sparsetx.h>

#include "mulaw.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <string>
#include <vector>

namespace {

char g_dir[64];

std::string tmp_path(const char *name) {
    return std::string(g_dir) + "/" + name;
}

void write_file(const std::string &path, const void *data, size_t n) {
    FILE *f = fopen(path.c_str(), "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

void write_file(const std::string &path, const std::vector<uint8_t> &v) {
    write_file(path, v.data(), v.size());
}

void write_gz(const std::string &path, const void *data, size_t n) {
    gzFile gz = gzopen(path.c_str(), "wb");
    assert_non_null(gz);
    if (n) assert_int_equal(gzwrite(gz, data, static_cast<unsigned>(n)), static_cast<int>(n));
    assert_int_equal(gzclose(gz), Z_OK);
}

std::vector<uint8_t> read_file(const std::string &path) {
    std::vector<uint8_t> v;
    FILE *f = fopen(path.c_str(), "rb");
    assert_non_null(f);
    uint8_t buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) v.insert(v.end(), buf, buf + got);
    fclose(f);
    return v;
}

std::vector<uint8_t> random_bytes(uint64_t seed, size_t n) {
    stx_test_rng r = {seed};
    std::vector<uint8_t> v(n);
    stx_test_fill_bytes(&r, v.data(), n);
    return v;
}

// The status is want and the last error contains every given piece.
void expect_error(stx_status got, stx_status want, const char *a, const char *b = nullptr,
                  const char *c = nullptr) {
    const char *msg = stx_last_error();
    if (got != want)
        fail_msg("status %d (%s), wanted %d (%s); message: %s", got, stx_status_string(got), want,
                 stx_status_string(want), msg);
    const char *parts[3] = {a, b, c};
    for (const char *p : parts)
        if (p && !strstr(msg, p)) fail_msg("message \"%s\" lacks \"%s\"", msg, p);
}

stx_dataset *open_ok(const std::string &path, stx_data_kind kind, int32_t resample_hz = 0) {
    stx_dataset *ds = nullptr;
    stx_status s = stx_dataset_open(path.c_str(), kind, resample_hz, &ds);
    if (s != STX_OK) fail_msg("open %s: %s", path.c_str(), stx_last_error());
    assert_non_null(ds);
    return ds;
}

stx_data_info info_of(const stx_dataset *ds) {
    stx_data_info info;
    assert_int_equal(stx_dataset_info(ds, &info), STX_OK);
    return info;
}

std::vector<uint8_t> read_all(const stx_dataset *ds) {
    const stx_data_info info = info_of(ds);
    std::vector<uint8_t> v(static_cast<size_t>(info.n_bytes));
    assert_int_equal(stx_dataset_read(ds, 0, v.data(), info.n_bytes), STX_OK);
    return v;
}

void expect_split(const stx_dataset *ds, stx_split split, int64_t want_b, int64_t want_e) {
    int64_t b = -1, e = -1;
    assert_int_equal(stx_dataset_split(ds, split, &b, &e), STX_OK);
    if (b != want_b || e != want_e)
        fail_msg("split %d: [%lld, %lld), wanted [%lld, %lld)", static_cast<int>(split),
                 static_cast<long long>(b), static_cast<long long>(e),
                 static_cast<long long>(want_b), static_cast<long long>(want_e));
}

// ---------------------------------------------------------------- helpers for formats

void put_be32(std::vector<uint8_t> &v, uint32_t x) {
    for (int i = 3; i >= 0; --i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
}
void put_le(std::vector<uint8_t> &v, uint32_t x, int bytes) {
    for (int i = 0; i < bytes; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
}
uint32_t get_be32(const uint8_t *p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
}
uint32_t get_le(const uint8_t *p, int bytes) {
    uint32_t x = 0;
    for (int i = bytes - 1; i >= 0; --i) x = (x << 8) | p[i];
    return x;
}

std::vector<uint8_t> make_idx(uint32_t magic, uint32_t n, uint32_t h, uint32_t w,
                              const std::vector<uint8_t> &payload) {
    std::vector<uint8_t> v;
    put_be32(v, magic);
    put_be32(v, n);
    put_be32(v, h);
    put_be32(v, w);
    v.insert(v.end(), payload.begin(), payload.end());
    return v;
}

struct WavSpec {
    uint32_t tag = 1, channels = 1, rate = 8000, bits = 16;
    bool extra_chunk = false;       // an odd-sized "LIST" chunk before "data"
    int64_t data_len_override = -1; // the data chunk's declared size, when >= 0
};

std::vector<uint8_t> make_wav(const WavSpec &s, const std::vector<uint8_t> &data) {
    std::vector<uint8_t> v;
    v.insert(v.end(), {'R', 'I', 'F', 'F'});
    put_le(v, 0, 4); // patched below
    v.insert(v.end(), {'W', 'A', 'V', 'E', 'f', 'm', 't', ' '});
    put_le(v, 16, 4);
    put_le(v, s.tag, 2);
    put_le(v, s.channels, 2);
    put_le(v, s.rate, 4);
    put_le(v, s.rate * s.channels * s.bits / 8, 4);
    put_le(v, s.channels * s.bits / 8, 2);
    put_le(v, s.bits, 2);
    if (s.extra_chunk) {
        v.insert(v.end(), {'L', 'I', 'S', 'T'});
        put_le(v, 5, 4);
        v.insert(v.end(), {'a', 'b', 'c', 'd', 'e', 0}); // 5 bytes + pad
    }
    v.insert(v.end(), {'d', 'a', 't', 'a'});
    put_le(v,
           s.data_len_override >= 0 ? static_cast<uint32_t>(s.data_len_override)
                                    : static_cast<uint32_t>(data.size()),
           4);
    v.insert(v.end(), data.begin(), data.end());
    const uint32_t riff = static_cast<uint32_t>(v.size() - 8);
    for (int i = 0; i < 4; ++i) v[4 + i] = static_cast<uint8_t>(riff >> (8 * i));
    return v;
}

// The mu-law formula, written out here independently of lib/mulaw.h.
uint8_t ref_mulaw(double x) {
    const double y = copysign(log1p(255.0 * fabs(x)) / log(256.0), x);
    return static_cast<uint8_t>(lround((y + 1.0) / 2.0 * 255.0));
}
double ref_mulaw_decode(uint8_t b) {
    const double y = static_cast<double>(b) / 255.0 * 2.0 - 1.0;
    return copysign((pow(256.0, fabs(y)) - 1.0) / 255.0, y);
}

int remove_entry(const char *path, const struct stat *, int, struct FTW *) {
    return remove(path);
}

int setup_dir(void **) {
    strcpy(g_dir, "/tmp/stx_test_data_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

int teardown_dir(void **) {
    return nftw(g_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}

// ---------------------------------------------------------------- byte streams

void test_bytes_raw_and_gzip(void **) {
    const std::vector<uint8_t> data = random_bytes(1, 5000);
    write_file(tmp_path("bytes.bin"), data);
    write_gz(tmp_path("bytes.bin.gz"), data.data(), data.size());
    stx_dataset *raw = open_ok(tmp_path("bytes.bin"), STX_DATA_BYTES);
    stx_dataset *gz = open_ok(tmp_path("bytes.bin.gz"), STX_DATA_BYTES);
    for (stx_dataset *ds : {raw, gz}) {
        const stx_data_info info = info_of(ds);
        assert_int_equal(info.n_bytes, 5000);
        assert_int_equal(info.record_size, 0);
        assert_int_equal(info.n_records, 0);
        assert_int_equal(info.n_axes, 0);
        assert_int_equal(info.sample_rate, 0);
        const std::vector<uint8_t> got = read_all(ds);
        assert_memory_equal(got.data(), data.data(), data.size());
        uint8_t part[7];
        assert_int_equal(stx_dataset_read(ds, 4993, part, 7), STX_OK);
        assert_memory_equal(part, data.data() + 4993, 7);
        assert_int_equal(stx_dataset_read(ds, 5000, part, 0), STX_OK);
        expect_error(stx_dataset_read(ds, 4994, part, 7), STX_ERR_INVALID_ARGUMENT, "outside",
                     "bytes.bin");
        expect_error(stx_dataset_read(ds, -1, part, 1), STX_ERR_INVALID_ARGUMENT, "outside");
        expect_error(stx_dataset_read(ds, 0, part, -1), STX_ERR_INVALID_ARGUMENT, "negative");
        expect_error(stx_dataset_read(ds, 0, nullptr, 1), STX_ERR_INVALID_ARGUMENT, "dst");
    }
    stx_dataset_free(raw);
    stx_dataset_free(gz);
    stx_dataset_free(nullptr);
}

void test_splits(void **) {
    const std::vector<uint8_t> data = random_bytes(2, 1000);
    write_file(tmp_path("k.bin"), data);
    stx_dataset *ds = open_ok(tmp_path("k.bin"), STX_DATA_BYTES);
    expect_split(ds, STX_SPLIT_TRAIN, 0, 900);
    expect_split(ds, STX_SPLIT_VALID, 900, 950);
    expect_split(ds, STX_SPLIT_TEST, 950, 1000);
    expect_split(ds, STX_SPLIT_ALL, 0, 1000);
    int64_t b, e;
    expect_error(stx_dataset_split(ds, static_cast<stx_split>(4), &b, &e), STX_ERR_INVALID_ARGUMENT,
                 "split (4)");
    expect_error(stx_dataset_split(ds, STX_SPLIT_TRAIN, nullptr, &e), STX_ERR_INVALID_ARGUMENT,
                 "begin");
    expect_error(stx_dataset_split(nullptr, STX_SPLIT_TRAIN, &b, &e), STX_ERR_INVALID_ARGUMENT,
                 "dataset is NULL");
    stx_dataset_free(ds);

    // Tiny files: valid and test non-empty as soon as there are 3 bytes.
    const struct {
        size_t n;
        int64_t train, valid, test;
    } tiny[] = {{1, 1, 0, 0}, {2, 1, 1, 0}, {3, 1, 1, 1}, {10, 8, 1, 1}, {41, 37, 2, 2}};
    for (const auto &t : tiny) {
        write_file(tmp_path("tiny.bin"), data.data(), t.n);
        stx_dataset *d = open_ok(tmp_path("tiny.bin"), STX_DATA_BYTES);
        expect_split(d, STX_SPLIT_TRAIN, 0, t.train);
        expect_split(d, STX_SPLIT_VALID, t.train, t.train + t.valid);
        expect_split(d, STX_SPLIT_TEST, t.train + t.valid, static_cast<int64_t>(t.n));
        assert_int_equal(t.train + t.valid + t.test, static_cast<int64_t>(t.n));
        stx_dataset_free(d);
    }
}

void test_enwik8_sized_sparse(void **) {
    // A sparse file of exactly 10^8 bytes: mapped, never read whole.
    const std::string path = tmp_path("enwik8_like");
    const int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 100000000), 0);
    const struct {
        off_t at;
        uint8_t v;
    } marks[] = {{0, 11}, {89999999, 22}, {90000000, 33}, {94999999, 44}, {99999999, 55}};
    for (const auto &m : marks) assert_int_equal(pwrite(fd, &m.v, 1, m.at), 1);
    assert_int_equal(close(fd), 0);
    stx_dataset *ds = open_ok(path, STX_DATA_BYTES);
    assert_int_equal(info_of(ds).n_bytes, 100000000);
    expect_split(ds, STX_SPLIT_TRAIN, 0, 90000000);
    expect_split(ds, STX_SPLIT_VALID, 90000000, 95000000);
    expect_split(ds, STX_SPLIT_TEST, 95000000, 100000000);
    expect_split(ds, STX_SPLIT_ALL, 0, 100000000);
    for (const auto &m : marks) {
        uint8_t v = 0;
        assert_int_equal(stx_dataset_read(ds, static_cast<int64_t>(m.at), &v, 1), STX_OK);
        assert_int_equal(v, m.v);
    }
    uint8_t hole[3] = {1, 1, 1};
    assert_int_equal(stx_dataset_read(ds, 50000000, hole, 3), STX_OK);
    assert_int_equal(hole[0] | hole[1] | hole[2], 0);
    // The last window of the test split ends on the last byte.
    uint64_t rng = 5;
    std::vector<uint8_t> batch(4 * 64);
    assert_int_equal(stx_dataset_sample(ds, 99999936, 100000000, 4, 64, &rng, batch.data()),
                     STX_OK);
    for (int b = 0; b < 4; ++b) assert_int_equal(batch[b * 64 + 63], 55);
    stx_dataset_free(ds);
}

// ---------------------------------------------------------------- sampling

void test_sample_stream(void **) {
    const std::vector<uint8_t> data = random_bytes(3, 1000);
    write_file(tmp_path("sample.bin"), data);
    stx_dataset *ds = open_ok(tmp_path("sample.bin"), STX_DATA_BYTES);
    const int32_t B = 64, T = 16;
    const int64_t begin = 100, end = 140; // starts 100 .. 124
    std::vector<uint8_t> a(B * T), b(B * T), c(B * T);
    uint64_t s1 = 42, s2 = 42, s3 = 43;
    assert_int_equal(stx_dataset_sample(ds, begin, end, B, T, &s1, a.data()), STX_OK);
    assert_int_equal(stx_dataset_sample(ds, begin, end, B, T, &s2, b.data()), STX_OK);
    assert_int_equal(stx_dataset_sample(ds, begin, end, B, T, &s3, c.data()), STX_OK);
    assert_memory_equal(a.data(), b.data(), a.size());
    assert_true(s1 == s2);
    assert_true(s1 != 42);
    assert_true(memcmp(a.data(), c.data(), a.size()) != 0);

    // The documented generator: splitmix64 (= the harness's), reject below 2^64 mod count,
    // then modulo.
    stx_test_rng ref = {42};
    const uint64_t count = 25, threshold = (0 - count) % count;
    for (int32_t i = 0; i < B; ++i) {
        uint64_t z;
        do z = stx_test_next(&ref);
        while (z < threshold);
        const int64_t start = begin + static_cast<int64_t>(z % count);
        assert_memory_equal(a.data() + i * T, data.data() + start, T);
    }
    assert_true(ref.state == s1);

    // Many draws: each window is a real one inside the range, and every start is reached.
    std::vector<int> hits(1000, 0);
    uint64_t s = 7;
    for (int rep = 0; rep < 40; ++rep) {
        assert_int_equal(stx_dataset_sample(ds, begin, end, B, T, &s, a.data()), STX_OK);
        for (int32_t i = 0; i < B; ++i) {
            int found = -1, matches = 0;
            for (int off = 0; off + T <= 1000; ++off)
                if (memcmp(a.data() + i * T, data.data() + off, T) == 0) {
                    found = off;
                    ++matches;
                }
            assert_int_equal(matches, 1);
            assert_true(found >= begin && found <= end - T);
            ++hits[found];
        }
    }
    for (int64_t off = begin; off <= end - T; ++off)
        if (hits[off] == 0) fail_msg("start %lld never drawn", static_cast<long long>(off));

    // T equal to the whole range: the one window.
    uint64_t one = 9;
    assert_int_equal(stx_dataset_sample(ds, 200, 216, 2, 16, &one, a.data()), STX_OK);
    assert_memory_equal(a.data(), data.data() + 200, 16);
    assert_memory_equal(a.data() + 16, data.data() + 200, 16);
    stx_dataset_free(ds);
}

void test_sample_errors(void **) {
    const std::vector<uint8_t> data = random_bytes(4, 100);
    write_file(tmp_path("short.bin"), data);
    stx_dataset *ds = open_ok(tmp_path("short.bin"), STX_DATA_BYTES);
    std::vector<uint8_t> dst(4 * 256);
    uint64_t rng = 1;
    expect_error(stx_dataset_sample(ds, 0, 100, 4, 256, &rng, dst.data()), STX_ERR_INVALID_ARGUMENT,
                 "short.bin", "100 bytes", "T = 256");
    assert_true(rng == 1); // not advanced on failure
    expect_error(stx_dataset_sample(ds, 10, 20, 1, 11, &rng, dst.data()), STX_ERR_INVALID_ARGUMENT,
                 "10 bytes", "T = 11");
    expect_error(stx_dataset_sample(ds, 0, 100, 0, 8, &rng, dst.data()), STX_ERR_INVALID_ARGUMENT,
                 "B (0)");
    expect_error(stx_dataset_sample(ds, 0, 100, 1, 0, &rng, dst.data()), STX_ERR_INVALID_ARGUMENT,
                 "T (0)");
    expect_error(stx_dataset_sample(ds, 0, 100, 1, 8, nullptr, dst.data()),
                 STX_ERR_INVALID_ARGUMENT, "rng is NULL");
    expect_error(stx_dataset_sample(ds, 0, 100, 1, 8, &rng, nullptr), STX_ERR_INVALID_ARGUMENT,
                 "dst is NULL");
    expect_error(stx_dataset_sample(ds, 0, 101, 1, 8, &rng, dst.data()), STX_ERR_INVALID_ARGUMENT,
                 "not within");
    expect_error(stx_dataset_sample(ds, -1, 50, 1, 8, &rng, dst.data()), STX_ERR_INVALID_ARGUMENT,
                 "not within");
    expect_error(stx_dataset_sample(ds, 60, 50, 1, 8, &rng, dst.data()), STX_ERR_INVALID_ARGUMENT,
                 "not within");
    expect_error(stx_dataset_sample(nullptr, 0, 100, 1, 8, &rng, dst.data()),
                 STX_ERR_INVALID_ARGUMENT, "dataset is NULL");
    expect_error(stx_dataset_info(ds, nullptr), STX_ERR_INVALID_ARGUMENT, "info is NULL");
    stx_data_info info;
    expect_error(stx_dataset_info(nullptr, &info), STX_ERR_INVALID_ARGUMENT, "dataset is NULL");
    stx_dataset_free(ds);
}

// ---------------------------------------------------------------- IDX and CIFAR

void test_idx(void **) {
    const std::vector<uint8_t> payload = random_bytes(5, 5 * 4 * 3);
    const std::vector<uint8_t> file = make_idx(0x00000803u, 5, 4, 3, payload);
    write_file(tmp_path("images-idx3-ubyte"), file);
    write_gz(tmp_path("images-idx3-ubyte.gz"), file.data(), file.size());
    for (const char *name : {"images-idx3-ubyte", "images-idx3-ubyte.gz"}) {
        stx_dataset *ds = open_ok(tmp_path(name), STX_DATA_IDX);
        const stx_data_info info = info_of(ds);
        assert_int_equal(info.n_bytes, 60);
        assert_int_equal(info.record_size, 12);
        assert_int_equal(info.n_records, 5);
        assert_int_equal(info.n_axes, 3);
        assert_int_equal(info.shape[0], 4);
        assert_int_equal(info.shape[1], 3);
        assert_int_equal(info.shape[2], 1);
        assert_int_equal(info.sample_rate, 0);
        const std::vector<uint8_t> got = read_all(ds);
        assert_memory_equal(got.data(), payload.data(), payload.size());
        // 5 records: 3 / 1 / 1, in bytes.
        expect_split(ds, STX_SPLIT_TRAIN, 0, 36);
        expect_split(ds, STX_SPLIT_VALID, 36, 48);
        expect_split(ds, STX_SPLIT_TEST, 48, 60);
        expect_split(ds, STX_SPLIT_ALL, 0, 60);
        // Windows of one record start at record boundaries.
        std::vector<uint8_t> batch(50 * 24);
        std::vector<int> seen(5, 0);
        uint64_t rng = 3;
        assert_int_equal(stx_dataset_sample(ds, 0, 60, 50, 12, &rng, batch.data()), STX_OK);
        for (int b = 0; b < 50; ++b) {
            int rec = -1;
            for (int r = 0; r < 5; ++r)
                if (memcmp(batch.data() + b * 12, payload.data() + r * 12, 12) == 0) rec = r;
            assert_true(rec >= 0);
            ++seen[rec];
        }
        for (int r = 0; r < 5; ++r) assert_true(seen[r] > 0);
        // An unaligned begin starts at the next boundary; windows of two records are
        // consecutive records.
        assert_int_equal(stx_dataset_sample(ds, 5, 60, 50, 24, &rng, batch.data()), STX_OK);
        for (int b = 0; b < 50; ++b) {
            int rec = -1;
            for (int r = 1; r <= 3; ++r)
                if (memcmp(batch.data() + b * 24, payload.data() + r * 12, 24) == 0) rec = r;
            assert_true(rec >= 1);
        }
        uint8_t one[12];
        expect_error(stx_dataset_sample(ds, 1, 23, 1, 12, &rng, one), STX_ERR_INVALID_ARGUMENT,
                     "no record boundary", name);
        stx_dataset_free(ds);
    }
}

void test_cifar(void **) {
    // Record r, channel ch, pixel (row, col) has value (r*97 + ch*61 + row*7 + col*3 + 1) % 256;
    // labels 3 and 8.
    auto value = [](int r, int ch, int row, int col) {
        return static_cast<uint8_t>((r * 97 + ch * 61 + row * 7 + col * 3 + 1) % 256);
    };
    std::vector<uint8_t> file;
    for (int r = 0; r < 2; ++r) {
        file.push_back(static_cast<uint8_t>(r == 0 ? 3 : 8));
        for (int ch = 0; ch < 3; ++ch)
            for (int row = 0; row < 32; ++row)
                for (int col = 0; col < 32; ++col) file.push_back(value(r, ch, row, col));
    }
    assert_int_equal(file.size(), 2 * 3073);
    write_file(tmp_path("data_batch_1.bin"), file);
    stx_dataset *ds = open_ok(tmp_path("data_batch_1.bin"), STX_DATA_CIFAR);
    const stx_data_info info = info_of(ds);
    assert_int_equal(info.n_bytes, 2 * 3072);
    assert_int_equal(info.record_size, 3072);
    assert_int_equal(info.n_records, 2);
    assert_int_equal(info.n_axes, 3);
    assert_int_equal(info.shape[0], 32);
    assert_int_equal(info.shape[1], 32);
    assert_int_equal(info.shape[2], 3);
    const std::vector<uint8_t> got = read_all(ds);
    for (int r = 0; r < 2; ++r)
        for (int row = 0; row < 32; ++row)
            for (int col = 0; col < 32; ++col)
                for (int ch = 0; ch < 3; ++ch) {
                    const size_t at = static_cast<size_t>(r) * 3072 + (row * 32 + col) * 3 + ch;
                    if (got[at] != value(r, ch, row, col))
                        fail_msg("record %d (row %d, col %d, ch %d): got %d, wanted %d", r, row,
                                 col, ch, got[at], value(r, ch, row, col));
                }
    // 2 records: 1 train, 1 valid, 0 test.
    expect_split(ds, STX_SPLIT_TRAIN, 0, 3072);
    expect_split(ds, STX_SPLIT_VALID, 3072, 6144);
    expect_split(ds, STX_SPLIT_TEST, 6144, 6144);
    stx_dataset_free(ds);
}

// ---------------------------------------------------------------- WAV

void test_wav_8bit_stereo(void **) {
    const size_t frames = 3001;
    const std::vector<uint8_t> pcm = random_bytes(6, 2 * frames); // L R L R ...
    WavSpec spec;
    spec.channels = 2;
    spec.bits = 8;
    spec.rate = 11025;
    write_file(tmp_path("stereo8.wav"), make_wav(spec, pcm));
    stx_dataset *ds = open_ok(tmp_path("stereo8.wav"), STX_DATA_WAV);
    const stx_data_info info = info_of(ds);
    assert_int_equal(info.n_bytes, static_cast<int64_t>(frames));
    assert_int_equal(info.sample_rate, 11025);
    assert_int_equal(info.record_size, 0);
    const std::vector<uint8_t> got = read_all(ds);
    for (size_t i = 0; i < frames; ++i) {
        double x = 0.0;
        x += (static_cast<double>(pcm[2 * i]) - 128.0) / 128.0;
        x += (static_cast<double>(pcm[2 * i + 1]) - 128.0) / 128.0;
        x /= 2.0;
        if (got[i] != ref_mulaw(x))
            fail_msg("sample %zu: got %d, wanted %d (x = %.17g)", i, got[i], ref_mulaw(x), x);
    }
    stx_dataset_free(ds);
}

std::vector<uint8_t> pcm16(const std::vector<int16_t> &s) {
    std::vector<uint8_t> v;
    for (int16_t x : s) put_le(v, static_cast<uint16_t>(x), 2);
    return v;
}

std::vector<int16_t> random_pcm16(uint64_t seed, size_t n) {
    stx_test_rng r = {seed};
    std::vector<int16_t> s(n);
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<int16_t>(stx_test_next(&r) >> 48);
    s[0] = -32768; // the extremes too
    if (n > 1) s[1] = 32767;
    return s;
}

void test_wav_16bit_stereo(void **) {
    const size_t frames = 2000;
    const std::vector<int16_t> s = random_pcm16(7, 2 * frames);
    WavSpec spec;
    spec.channels = 2;
    spec.bits = 16;
    spec.rate = 16000;
    spec.extra_chunk = true;
    write_file(tmp_path("stereo16.wav"), make_wav(spec, pcm16(s)));
    write_gz(tmp_path("stereo16.wav.gz"), make_wav(spec, pcm16(s)).data(),
             make_wav(spec, pcm16(s)).size());
    for (const char *name : {"stereo16.wav", "stereo16.wav.gz"}) {
        stx_dataset *ds = open_ok(tmp_path(name), STX_DATA_WAV);
        const stx_data_info info = info_of(ds);
        assert_int_equal(info.n_bytes, static_cast<int64_t>(frames));
        assert_int_equal(info.sample_rate, 16000);
        const std::vector<uint8_t> got = read_all(ds);
        for (size_t i = 0; i < frames; ++i) {
            double x = 0.0;
            x += static_cast<double>(s[2 * i]) / 32768.0;
            x += static_cast<double>(s[2 * i + 1]) / 32768.0;
            x /= 2.0;
            if (got[i] != ref_mulaw(x))
                fail_msg("%s sample %zu: got %d, wanted %d", name, i, got[i], ref_mulaw(x));
        }
        stx_dataset_free(ds);
    }

    // WAVE_FORMAT_EXTENSIBLE with the PCM sub-format is PCM; with IEEE float it is refused.
    for (int sub : {1, 3}) {
        std::vector<uint8_t> v = {'R', 'I', 'F', 'F', 0,   0,   0,   0,
                                  'W', 'A', 'V', 'E', 'f', 'm', 't', ' '};
        put_le(v, 40, 4);
        put_le(v, 0xFFFE, 2);
        put_le(v, 1, 2);
        put_le(v, 8000, 4);
        put_le(v, 16000, 4);
        put_le(v, 2, 2);
        put_le(v, 16, 2);
        put_le(v, 22, 2);
        put_le(v, 16, 2);
        put_le(v, 4, 4);
        put_le(v, static_cast<uint32_t>(sub), 2);
        v.insert(v.end(), {0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38,
                           0x9B, 0x71});
        v.insert(v.end(), {'d', 'a', 't', 'a'});
        put_le(v, 4, 4);
        put_le(v, static_cast<uint16_t>(int16_t(-1000)), 2);
        put_le(v, 1000, 2);
        write_file(tmp_path("ext.wav"), v);
        if (sub == 1) {
            stx_dataset *ds = open_ok(tmp_path("ext.wav"), STX_DATA_WAV);
            const std::vector<uint8_t> got = read_all(ds);
            assert_int_equal(got.size(), 2);
            assert_int_equal(got[0], ref_mulaw(-1000.0 / 32768.0));
            assert_int_equal(got[1], ref_mulaw(1000.0 / 32768.0));
            stx_dataset_free(ds);
        } else {
            stx_dataset *ds = nullptr;
            expect_error(stx_dataset_open(tmp_path("ext.wav").c_str(), STX_DATA_WAV, 0, &ds),
                         STX_ERR_FORMAT, "ext.wav", "format tag 3");
            assert_null(ds);
        }
    }
}

void test_wav_resample(void **) {
    const size_t frames = 2400;
    const std::vector<int16_t> s = random_pcm16(8, frames);
    WavSpec spec;
    spec.rate = 24000;
    write_file(tmp_path("mono24k.wav"), make_wav(spec, pcm16(s)));
    stx_dataset *ds = open_ok(tmp_path("mono24k.wav"), STX_DATA_WAV, 12000);
    stx_data_info info = info_of(ds);
    assert_int_equal(info.n_bytes, 1200);
    assert_int_equal(info.sample_rate, 12000);
    std::vector<uint8_t> got = read_all(ds);
    for (size_t j = 0; j < 1200; ++j)
        assert_int_equal(got[j], ref_mulaw(static_cast<double>(s[2 * j]) / 32768.0));
    stx_dataset_free(ds);
    // Same rate: unchanged.
    ds = open_ok(tmp_path("mono24k.wav"), STX_DATA_WAV, 24000);
    assert_int_equal(info_of(ds).n_bytes, 2400);
    stx_dataset_free(ds);

    // 8000 -> 12000: output j at input time j * 2/3, linear between neighbours, the last
    // input held at the end.
    const size_t n8 = 301;
    const std::vector<int16_t> u = random_pcm16(9, n8);
    spec.rate = 8000;
    write_file(tmp_path("mono8k.wav"), make_wav(spec, pcm16(u)));
    ds = open_ok(tmp_path("mono8k.wav"), STX_DATA_WAV, 12000);
    info = info_of(ds);
    assert_int_equal(info.n_bytes, 451); // floor(301 * 12000 / 8000)
    assert_int_equal(info.sample_rate, 12000);
    got = read_all(ds);
    for (size_t j = 0; j < 451; ++j) {
        const size_t a = j * 8000 / 12000, b = a + 1 < n8 ? a + 1 : n8 - 1;
        const double frac = static_cast<double>(j * 8000 % 12000) / 12000.0;
        const double xa = static_cast<double>(u[a]) / 32768.0;
        const double xb = static_cast<double>(u[b]) / 32768.0;
        const double x = frac == 0.0 ? xa : xa * (1.0 - frac) + xb * frac;
        if (got[j] != ref_mulaw(x))
            fail_msg("sample %zu: got %d, wanted %d", j, got[j], ref_mulaw(x));
    }
    stx_dataset_free(ds);
}

void test_mulaw(void **) {
    // encode(decode(b)) == b for every byte; decode is odd-symmetric around the middle.
    for (int b = 0; b < 256; ++b) {
        const uint8_t byte = static_cast<uint8_t>(b);
        assert_int_equal(stx::mulaw_encode(stx::mulaw_decode(byte)), b);
        assert_true(fabs(stx::mulaw_decode(byte) - ref_mulaw_decode(byte)) <= 1e-15);
        assert_true(fabs(stx::mulaw_decode(byte) +
                         stx::mulaw_decode(static_cast<uint8_t>(255 - b))) <= 1e-15);
    }
    assert_true(stx::mulaw_decode(0) == -1.0);
    assert_true(stx::mulaw_decode(255) == 1.0);
    assert_int_equal(stx::mulaw_encode(0.0), 128);
    assert_int_equal(stx::mulaw_encode(2.0), 255); // clamped
    assert_int_equal(stx::mulaw_encode(-2.0), 0);
    // decode(encode(x)) is within half a code of x: dx/dy = ln 256 (|x| + 1/255) and half a
    // code is 1/255 in y, so |err| <= ln 256 (|x| + 1/255) / 255 * 256^(1/255) (convexity).
    stx_test_rng r = {10};
    double worst = 0.0;
    for (int i = 0; i < 200000; ++i) {
        double x = stx_test_uniform(&r);
        if (i % 2) x *= 1e-3; // dense near zero too
        const double back = stx::mulaw_decode(stx::mulaw_encode(x));
        assert_int_equal(stx::mulaw_encode(x), ref_mulaw(x));
        const double bound =
            log(256.0) * (fabs(x) + 1.0 / 255.0) / 255.0 * pow(256.0, 1.0 / 255.0) + 1e-15;
        const double err = fabs(back - x);
        if (!(err <= bound)) fail_msg("x = %.17g: error %.3e > bound %.3e", x, err, bound);
        if (err / bound > worst) worst = err / bound;
    }
    assert_true(worst > 0.5); // the bound is tight, not vacuous
}

// ---------------------------------------------------------------- bad input

stx_status try_open(const char *name, stx_data_kind kind, int32_t resample_hz = 0) {
    stx_dataset *ds = reinterpret_cast<stx_dataset *>(&ds); // must be reset to NULL
    const stx_status s = stx_dataset_open(tmp_path(name).c_str(), kind, resample_hz, &ds);
    if (s != STX_OK) assert_null(ds);
    stx_dataset_free(s == STX_OK ? ds : nullptr);
    return s;
}

void test_bad_files(void **) {
    expect_error(try_open("missing.bin", STX_DATA_BYTES), STX_ERR_IO, "missing.bin",
                 "No such file");
    write_file(tmp_path("empty.bin"), nullptr, 0);
    expect_error(try_open("empty.bin", STX_DATA_BYTES), STX_ERR_FORMAT, "empty.bin",
                 "the file is empty");
    expect_error(try_open("", STX_DATA_BYTES), STX_ERR_IO, "is a directory");

    // gzip: cut in the middle, cut inside the 8-byte trailer, a wrong CRC; and one that
    // decompresses to nothing.
    const std::vector<uint8_t> data = random_bytes(11, 20000);
    write_gz(tmp_path("good.gz"), data.data(), data.size());
    std::vector<uint8_t> gz = read_file(tmp_path("good.gz"));
    write_file(tmp_path("cut.gz"), gz.data(), gz.size() / 2);
    expect_error(try_open("cut.gz", STX_DATA_BYTES), STX_ERR_FORMAT, "cut.gz", "truncated");
    write_file(tmp_path("cut_trailer.gz"), gz.data(), gz.size() - 3);
    expect_error(try_open("cut_trailer.gz", STX_DATA_BYTES), STX_ERR_FORMAT, "cut_trailer.gz",
                 "truncated");
    std::vector<uint8_t> bad_crc = gz;
    bad_crc[bad_crc.size() - 8] ^= 0x5a;
    write_file(tmp_path("bad_crc.gz"), bad_crc);
    expect_error(try_open("bad_crc.gz", STX_DATA_BYTES), STX_ERR_FORMAT, "bad_crc.gz", "corrupt");
    write_gz(tmp_path("nothing.gz"), nullptr, 0);
    expect_error(try_open("nothing.gz", STX_DATA_BYTES), STX_ERR_FORMAT, "nothing.gz", "empty");
    const uint8_t magic_only[2] = {0x1f, 0x8b};
    write_file(tmp_path("magic_only.gz"), magic_only, 2);
    expect_error(try_open("magic_only.gz", STX_DATA_BYTES), STX_ERR_FORMAT, "magic_only.gz");

    // IDX
    const std::vector<uint8_t> payload = random_bytes(12, 60);
    write_file(tmp_path("labels-idx1-ubyte"), make_idx(0x00000801u, 5, 4, 3, payload));
    expect_error(try_open("labels-idx1-ubyte", STX_DATA_IDX), STX_ERR_FORMAT, "labels-idx1-ubyte",
                 "expected magic 0x00000803", "found 0x00000801");
    const std::vector<uint8_t> short_payload(payload.begin(), payload.begin() + 54);
    const std::vector<uint8_t> short_idx = make_idx(0x00000803u, 5, 4, 3, short_payload);
    write_file(tmp_path("short-idx3-ubyte"), short_idx);
    expect_error(try_open("short-idx3-ubyte", STX_DATA_IDX), STX_ERR_FORMAT, "short-idx3-ubyte",
                 "header says 5 images of 4x3 = 76 bytes", "the file has 70 bytes");
    write_gz(tmp_path("short-idx3-ubyte.gz"), short_idx.data(), short_idx.size());
    expect_error(try_open("short-idx3-ubyte.gz", STX_DATA_IDX), STX_ERR_FORMAT,
                 "short-idx3-ubyte.gz", "5 images of 4x3", "70 bytes (decompressed)");
    std::vector<uint8_t> long_payload = payload;
    long_payload.push_back(1);
    write_file(tmp_path("long-idx3-ubyte"), make_idx(0x00000803u, 5, 4, 3, long_payload));
    expect_error(try_open("long-idx3-ubyte", STX_DATA_IDX), STX_ERR_FORMAT, "long-idx3-ubyte",
                 "the file has 77 bytes");
    write_file(tmp_path("huge-idx3-ubyte"),
               make_idx(0x00000803u, 0xffffffffu, 65535, 65535, payload));
    expect_error(try_open("huge-idx3-ubyte", STX_DATA_IDX), STX_ERR_FORMAT, "huge-idx3-ubyte",
                 "header says 4294967295 images of 65535x65535");
    write_file(tmp_path("zero-idx3-ubyte"), make_idx(0x00000803u, 5, 0, 3, payload));
    expect_error(try_open("zero-idx3-ubyte", STX_DATA_IDX), STX_ERR_FORMAT, "zero-idx3-ubyte",
                 "images of 0x3");
    write_file(tmp_path("tiny-idx"), payload.data(), 10);
    expect_error(try_open("tiny-idx", STX_DATA_IDX), STX_ERR_FORMAT, "tiny-idx", "16-byte");

    // CIFAR
    const std::vector<uint8_t> cifar = random_bytes(13, 2 * 3073 + 5);
    write_file(tmp_path("batch.bin"), cifar);
    expect_error(try_open("batch.bin", STX_DATA_CIFAR), STX_ERR_FORMAT, "batch.bin", "6151 bytes",
                 "3073");

    // WAV
    write_file(tmp_path("text.wav"), "hello, this is not a WAV file", 29);
    expect_error(try_open("text.wav", STX_DATA_WAV), STX_ERR_FORMAT, "text.wav", "RIFF/WAVE");
    const std::vector<uint8_t> samples = random_bytes(14, 400);
    WavSpec spec;
    spec.tag = 3;
    spec.bits = 32;
    write_file(tmp_path("float.wav"), make_wav(spec, samples));
    expect_error(try_open("float.wav", STX_DATA_WAV), STX_ERR_FORMAT, "float.wav",
                 "format tag 3 (IEEE float)", "only PCM");
    spec = WavSpec();
    spec.bits = 24;
    write_file(tmp_path("24bit.wav"),
               make_wav(spec, std::vector<uint8_t>(samples.begin(), samples.begin() + 399)));
    expect_error(try_open("24bit.wav", STX_DATA_WAV), STX_ERR_FORMAT, "24bit.wav", "24-bit");
    spec = WavSpec();
    spec.channels = 0;
    write_file(tmp_path("nochan.wav"), make_wav(spec, samples));
    expect_error(try_open("nochan.wav", STX_DATA_WAV), STX_ERR_FORMAT, "nochan.wav", "0 channels");
    spec = WavSpec();
    spec.data_len_override = 1000;
    write_file(tmp_path("cut.wav"), make_wav(spec, samples));
    expect_error(try_open("cut.wav", STX_DATA_WAV), STX_ERR_FORMAT, "cut.wav", "chunk 'data'",
                 "truncated");
    std::vector<uint8_t> nofmt = {'R', 'I', 'F', 'F', 12,  0, 0, 0, 'W', 'A', 'V',
                                  'E', 'd', 'a', 't', 'a', 2, 0, 0, 0,   1,   2};
    write_file(tmp_path("nofmt.wav"), nofmt);
    expect_error(try_open("nofmt.wav", STX_DATA_WAV), STX_ERR_FORMAT, "nofmt.wav", "'fmt '");
    spec = WavSpec();
    write_file(tmp_path("nodata.wav"), make_wav(spec, {}));
    expect_error(try_open("nodata.wav", STX_DATA_WAV), STX_ERR_FORMAT, "nodata.wav",
                 "no audio samples");
    write_file(tmp_path("few.wav"), make_wav(spec, samples));
    expect_error(try_open("few.wav", STX_DATA_WAV, 1), STX_ERR_FORMAT, "few.wav",
                 "leaves no samples");

    // Arguments.
    stx_dataset *ds = nullptr;
    const std::string ok = tmp_path("good.gz");
    expect_error(stx_dataset_open(ok.c_str(), STX_DATA_BYTES, 0, nullptr), STX_ERR_INVALID_ARGUMENT,
                 "out is NULL");
    expect_error(stx_dataset_open(nullptr, STX_DATA_BYTES, 0, &ds), STX_ERR_INVALID_ARGUMENT,
                 "path is NULL");
    expect_error(stx_dataset_open(ok.c_str(), static_cast<stx_data_kind>(9), 0, &ds),
                 STX_ERR_INVALID_ARGUMENT, "kind (9)");
    expect_error(stx_dataset_open(ok.c_str(), STX_DATA_BYTES, 12000, &ds), STX_ERR_INVALID_ARGUMENT,
                 "WAV files only");
    expect_error(stx_dataset_open(ok.c_str(), STX_DATA_WAV, -5, &ds), STX_ERR_INVALID_ARGUMENT,
                 "resample_hz (-5)");
    assert_null(ds);
}

// ---------------------------------------------------------------- PNG

struct PngChunk {
    std::string type;
    std::vector<uint8_t> data;
};

std::vector<PngChunk> parse_png(const std::vector<uint8_t> &f) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    assert_true(f.size() >= 8);
    assert_memory_equal(f.data(), sig, 8);
    std::vector<PngChunk> chunks;
    size_t at = 8;
    while (at < f.size()) {
        assert_true(at + 12 <= f.size());
        const uint32_t len = get_be32(&f[at]);
        assert_true(at + 12 + len <= f.size());
        PngChunk c;
        c.type.assign(reinterpret_cast<const char *>(&f[at + 4]), 4);
        c.data.assign(f.begin() + static_cast<long>(at + 8),
                      f.begin() + static_cast<long>(at + 8 + len));
        const uint32_t crc = get_be32(&f[at + 8 + len]);
        const uLong want = crc32(0L, &f[at + 4], len + 4);
        if (crc != want) fail_msg("chunk %s: CRC %08x, computed %08lx", c.type.c_str(), crc, want);
        chunks.push_back(c);
        at += 12 + len;
    }
    return chunks;
}

void check_png(const char *name, int32_t w, int32_t h, int32_t ch, const uint8_t *pixels) {
    const std::vector<uint8_t> f = read_file(tmp_path(name));
    const std::vector<PngChunk> chunks = parse_png(f);
    assert_true(chunks.size() == 3);
    assert_string_equal(chunks[0].type.c_str(), "IHDR");
    assert_string_equal(chunks[1].type.c_str(), "IDAT");
    assert_string_equal(chunks[2].type.c_str(), "IEND");
    assert_int_equal(chunks[2].data.size(), 0);
    const std::vector<uint8_t> &ihdr = chunks[0].data;
    assert_int_equal(ihdr.size(), 13);
    assert_int_equal(get_be32(&ihdr[0]), static_cast<uint32_t>(w));
    assert_int_equal(get_be32(&ihdr[4]), static_cast<uint32_t>(h));
    assert_int_equal(ihdr[8], 8);               // bit depth
    assert_int_equal(ihdr[9], ch == 3 ? 2 : 0); // color type
    assert_int_equal(ihdr[10], 0);              // compression
    assert_int_equal(ihdr[11], 0);              // filter method
    assert_int_equal(ihdr[12], 0);              // interlace
    const size_t row = static_cast<size_t>(w * ch);
    std::vector<uint8_t> raw(static_cast<size_t>(h) * (row + 1) + 16);
    uLongf n = static_cast<uLongf>(raw.size());
    assert_int_equal(uncompress(raw.data(), &n, chunks[1].data.data(),
                                static_cast<uLong>(chunks[1].data.size())),
                     Z_OK);
    assert_int_equal(n, static_cast<size_t>(h) * (row + 1));
    for (int32_t y = 0; y < h; ++y) {
        assert_int_equal(raw[static_cast<size_t>(y) * (row + 1)], 0); // filter byte
        assert_memory_equal(&raw[static_cast<size_t>(y) * (row + 1) + 1], pixels + y * row, row);
    }
}

void test_png(void **) {
    const std::vector<uint8_t> rgb = random_bytes(15, 3 * 2 * 3);
    assert_int_equal(stx_png_write(tmp_path("rgb.png").c_str(), rgb.data(), 3, 2, 3), STX_OK);
    check_png("rgb.png", 3, 2, 3, rgb.data());
    const std::vector<uint8_t> gray = random_bytes(16, 4 * 3);
    assert_int_equal(stx_png_write(tmp_path("gray.png").c_str(), gray.data(), 4, 3, 1), STX_OK);
    check_png("gray.png", 4, 3, 1, gray.data());
    const std::vector<uint8_t> big = random_bytes(17, 32 * 32 * 3);
    assert_int_equal(stx_png_write(tmp_path("cifar.png").c_str(), big.data(), 32, 32, 3), STX_OK);
    check_png("cifar.png", 32, 32, 3, big.data());

    const std::string p = tmp_path("bad.png");
    expect_error(stx_png_write(nullptr, rgb.data(), 3, 2, 3), STX_ERR_INVALID_ARGUMENT,
                 "path is NULL");
    expect_error(stx_png_write(p.c_str(), nullptr, 3, 2, 3), STX_ERR_INVALID_ARGUMENT, "bad.png",
                 "pixels is NULL");
    expect_error(stx_png_write(p.c_str(), rgb.data(), 0, 2, 3), STX_ERR_INVALID_ARGUMENT,
                 "width (0)");
    expect_error(stx_png_write(p.c_str(), rgb.data(), 3, -1, 3), STX_ERR_INVALID_ARGUMENT,
                 "height (-1)");
    expect_error(stx_png_write(p.c_str(), rgb.data(), 3, 2, 2), STX_ERR_INVALID_ARGUMENT,
                 "channels (2)");
    const std::string nowhere = tmp_path("no/such/dir/x.png");
    expect_error(stx_png_write(nowhere.c_str(), rgb.data(), 3, 2, 3), STX_ERR_IO,
                 "no/such/dir/x.png", "No such file or directory");
    if (access("/dev/full", W_OK) == 0)
        expect_error(stx_png_write("/dev/full", big.data(), 32, 32, 3), STX_ERR_IO, "/dev/full",
                     "No space left");
}

// ---------------------------------------------------------------- WAV writer

void test_wav_writer(void **) {
    std::vector<uint8_t> mu(256);
    for (int i = 0; i < 256; ++i) mu[i] = static_cast<uint8_t>(i);
    const std::vector<uint8_t> more = random_bytes(18, 70000); // more than one write block
    mu.insert(mu.end(), more.begin(), more.end());
    const int64_t n = static_cast<int64_t>(mu.size());
    const std::string path = tmp_path("out.wav");
    assert_int_equal(stx_wav_write_mulaw(path.c_str(), mu.data(), n, 12000), STX_OK);
    const std::vector<uint8_t> f = read_file(path);
    assert_int_equal(f.size(), 44 + 2 * mu.size());
    assert_memory_equal(f.data(), "RIFF", 4);
    assert_int_equal(get_le(&f[4], 4), 36 + 2 * mu.size());
    assert_memory_equal(&f[8], "WAVEfmt ", 8);
    assert_int_equal(get_le(&f[16], 4), 16);
    assert_int_equal(get_le(&f[20], 2), 1);     // PCM
    assert_int_equal(get_le(&f[22], 2), 1);     // mono
    assert_int_equal(get_le(&f[24], 4), 12000); // rate
    assert_int_equal(get_le(&f[28], 4), 24000); // byte rate
    assert_int_equal(get_le(&f[32], 2), 2);     // block align
    assert_int_equal(get_le(&f[34], 2), 16);    // bits
    assert_memory_equal(&f[36], "data", 4);
    assert_int_equal(get_le(&f[40], 4), 2 * mu.size());
    for (size_t i = 0; i < mu.size(); ++i) {
        const int16_t got = static_cast<int16_t>(get_le(&f[44 + 2 * i], 2));
        long want = lround(ref_mulaw_decode(mu[i]) * 32768.0);
        if (want > 32767) want = 32767;
        if (got != want)
            fail_msg("sample %zu (mu-law %d): got %d, wanted %ld", i, mu[i], got, want);
    }
    // Reading it back gives the same mu-law bytes.
    stx_dataset *ds = open_ok(path, STX_DATA_WAV);
    assert_int_equal(info_of(ds).sample_rate, 12000);
    const std::vector<uint8_t> back = read_all(ds);
    assert_int_equal(back.size(), mu.size());
    assert_memory_equal(back.data(), mu.data(), mu.size());
    stx_dataset_free(ds);

    assert_int_equal(stx_wav_write_mulaw(tmp_path("empty.wav").c_str(), nullptr, 0, 8000), STX_OK);
    assert_int_equal(read_file(tmp_path("empty.wav")).size(), 44);
    expect_error(stx_wav_write_mulaw(nullptr, mu.data(), n, 8000), STX_ERR_INVALID_ARGUMENT,
                 "path is NULL");
    expect_error(stx_wav_write_mulaw(path.c_str(), nullptr, n, 8000), STX_ERR_INVALID_ARGUMENT,
                 "out.wav", "mulaw is NULL");
    expect_error(stx_wav_write_mulaw(path.c_str(), mu.data(), -1, 8000), STX_ERR_INVALID_ARGUMENT,
                 "n (-1)");
    expect_error(stx_wav_write_mulaw(path.c_str(), mu.data(), n, 0), STX_ERR_INVALID_ARGUMENT,
                 "sample_rate (0)");
    expect_error(stx_wav_write_mulaw(tmp_path("nodir/x.wav").c_str(), mu.data(), n, 8000),
                 STX_ERR_IO, "nodir/x.wav", "No such file or directory");
}

// ---------------------------------------------------------------- real data

void test_fashion_mnist(void **) {
    const char *dir = "/usr/share/datasets/fashion-mnist";
    struct stat st;
    if (stat(dir, &st) != 0) {
        printf("SKIP: dataset-fashion-mnist not installed (%s)\n", dir);
        skip();
    }
    const std::string path = std::string(dir) + "/t10k-images-idx3-ubyte.gz";
    stx_dataset *ds = open_ok(path, STX_DATA_IDX);
    const stx_data_info info = info_of(ds);
    assert_int_equal(info.n_records, 10000);
    assert_int_equal(info.record_size, 784);
    assert_int_equal(info.n_bytes, 7840000);
    assert_int_equal(info.n_axes, 3);
    assert_int_equal(info.shape[0], 28);
    assert_int_equal(info.shape[1], 28);
    assert_int_equal(info.shape[2], 1);
    // Real images: not blank; the border is mostly background.
    std::vector<uint8_t> img(784);
    assert_int_equal(stx_dataset_read(ds, 0, img.data(), 784), STX_OK);
    int nonzero = 0;
    for (uint8_t v : img) nonzero += v != 0;
    assert_true(nonzero > 50);
    expect_split(ds, STX_SPLIT_TRAIN, 0, 9000 * 784);
    expect_split(ds, STX_SPLIT_VALID, 9000 * 784, 9500 * 784);
    expect_split(ds, STX_SPLIT_TEST, 9500 * 784, 10000 * 784);
    stx_dataset_free(ds);
}

} // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_raw_and_gzip),
        cmocka_unit_test(test_splits),
        cmocka_unit_test(test_enwik8_sized_sparse),
        cmocka_unit_test(test_sample_stream),
        cmocka_unit_test(test_sample_errors),
        cmocka_unit_test(test_idx),
        cmocka_unit_test(test_cifar),
        cmocka_unit_test(test_wav_8bit_stereo),
        cmocka_unit_test(test_wav_16bit_stereo),
        cmocka_unit_test(test_wav_resample),
        cmocka_unit_test(test_mulaw),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_png),
        cmocka_unit_test(test_wav_writer),
        cmocka_unit_test(test_fashion_mnist),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
