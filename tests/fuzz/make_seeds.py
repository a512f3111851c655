#!/usr/bin/env python3
"""make_seeds.py: writes the seed corpora of the libFuzzer harnesses into tests/fuzz/seeds/.

Standard library only. The checkpoints and configs come from the library itself, through the
ctypes binding tests/python/sparsetx_ctypes.py, so a normal (non-fuzz) build is needed first.
Regenerate the committed seeds with:

    cmake -S . -B build -DSTX_ENABLE_CUDA=OFF && cmake --build build -j
    python3 tests/fuzz/make_seeds.py --lib build/libsparsetx.so

The output is deterministic for a given library (fixed seeds everywhere); the script clears
each seeds/<name>/ folder it writes, except files named regress-* (inputs that once crashed a
harness, kept as regression seeds). Layout of each harness's input: see the header comment of
tests/fuzz/fuzz_<name>.cpp.

  seeds/checkpoint  checkpoints saved by stx_model_save (fp32; with Adam moments; fp64 with
                    position axes and a per-head pattern), truncated at each structural
                    boundary and byte-mutated copies
  seeds/data        a selector byte + a payload: byte streams (raw, gzip made here, gzip made by
                    the harness, truncated and corrupt gzip), IDX, CIFAR-10 and WAV files built
                    by hand, valid and broken
  seeds/pattern     pattern strings, valid and malformed, some with the size bytes after a NUL
  seeds/config      stx_config structs as the library fills them (defaults, presets, tiny
                    models), with preset names after them, and broken ones
  seeds/args        argument vectors, NUL-separated
"""

import argparse
import ctypes
import gzip
import os
import random
import shutil
import struct
import sys
import tempfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))


def clear(folder):
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if not name.startswith("regress-"):
            os.remove(os.path.join(folder, name))


def write(folder, name, data):
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def mutate(data, rng, n_bytes):
    """A copy of data with n_bytes random bytes replaced."""
    b = bytearray(data)
    for _ in range(n_bytes):
        b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


# --------------------------------------------------------------------------- checkpoints

def sections(blob):
    """(tag, offset, payload length) of each section of a checkpoint."""
    out, pos = [], 16
    while pos + 12 <= len(blob):
        tag = blob[pos:pos + 4]
        (length,) = struct.unpack_from("<Q", blob, pos + 4)
        out.append((tag, pos, length))
        pos += 16 + length
        if tag == b"END\0":
            break
    return out


def fix_crc(blob, offset):
    """blob with the CRC of the section at offset recomputed."""
    b = bytearray(blob)
    (length,) = struct.unpack_from("<Q", b, offset + 4)
    payload = bytes(b[offset + 12:offset + 12 + length])
    struct.pack_into("<I", b, offset + 12 + length, zlib.crc32(payload) & 0xFFFFFFFF)
    return bytes(b)


def checkpoint_seeds(lib, stx, folder):
    tmp = tempfile.mkdtemp(prefix="stx-seeds-")
    try:
        def save(name, cfg_fields, train_step=False, app="step=0\n"):
            cfg = stx.config(lib, **cfg_fields)
            with stx.Model(lib, cfg) as m:
                if train_step:
                    m.set_optimizer(lr=1e-2)
                    T = cfg_fields["n_ctx"]
                    m.zero_grad()
                    m.forward(bytes(range(97, 97 + T)), 1, T)
                    m.backward()
                    m.step()
                path = os.path.join(tmp, name)
                m.save(path, app)
            with open(path, "rb") as f:
                return f.read()

        tiny = dict(n_layer=1, n_embd=2, n_head=1, n_ctx=8, ff_mult=1, block_size=16,
                    pattern="local:4+strided:4", n_threads=1)
        base = save("fp32.ckpt", tiny)
        moments = save("moments.ckpt", dict(tiny, pattern="fixed:4:1"), train_step=True,
                       app="step=1\nrng=12345\n")
        fp64 = save("fp64.ckpt", dict(tiny, n_head=2, precision=1, pos_shape=[2, 4],
                                      pattern="[local:2;fixed:4:1:2]", dropout=0.25), app="")
        write(folder, "valid-fp32.ckpt", base)
        write(folder, "valid-moments.ckpt", moments)
        write(folder, "valid-fp64.ckpt", fp64)

        # Truncated copies: inside the header, and at and inside the sections CONF, OPTM,
        # the first and last TENS, APPS and END.
        cuts = {0, 7, 12, 16, 20, len(base) - 16, len(base) - 1}
        secs = sections(base)
        for tag, offset, length in secs[:3] + secs[-3:]:
            cuts.update({offset + 6, offset + 12 + length // 2, offset + 12 + length})
        for cut in sorted(c for c in cuts if 0 < c < len(base)):
            write(folder, "trunc-%05d.ckpt" % cut, base[:cut])

        # Byte-mutated copies (the harness also loads each with its CRCs recomputed).
        rng = random.Random(20190423)
        for i in range(6):
            write(folder, "mut-%d.ckpt" % i, mutate(base, rng, 1 + i % 4))
        write(folder, "mut-moments.ckpt", mutate(moments, rng, 2))

        # Targeted edits, CRCs fixed: a newer version, a wrong section count, a CONF with
        # n_ctx 9 (shapes no longer match), an unknown tag, bytes after END.
        b = bytearray(base)
        struct.pack_into("<I", b, 8, 2)
        write(folder, "edit-version.ckpt", bytes(b))
        b = bytearray(base)
        struct.pack_into("<I", b, 12, struct.unpack_from("<I", b, 12)[0] + 1)
        write(folder, "edit-count.ckpt", bytes(b))
        conf = sections(base)[0][1]
        b = bytearray(base)
        struct.pack_into("<i", b, conf + 12 + 12, 9)
        write(folder, "edit-nctx.ckpt", fix_crc(bytes(b), conf))
        b = bytearray(base)
        b[conf:conf + 4] = b"CONX"
        write(folder, "edit-tag.ckpt", bytes(b))
        write(folder, "edit-trailing.ckpt", base + b"\0")
    finally:
        shutil.rmtree(tmp)


# --------------------------------------------------------------------------------- data

BYTES, IDX, CIFAR, WAV = 0, 1, 2, 3
RATE_12K, RATE_8K, RATE_44K = 1 << 2, 2 << 2, 3 << 2
GZIP, CUT = 0x10, 0x20


def sel(kind, *flags):
    s = kind
    for f in flags:
        s |= f
    return bytes([s])


def idx(n, h, w, magic=0x803, extra=b""):
    pixels = bytes((i * 37) & 0xFF for i in range(n * h * w))
    return struct.pack(">IIII", magic, n, h, w) + pixels + extra


def cifar(records):
    out = bytearray()
    for r in range(records):
        out.append(r % 10)
        out += bytes(((p * 7 + r * 3) & 0xFF) for p in range(3072))
    return bytes(out)


def wav(frames, channels=1, bits=8, rate=8000, extensible=False, tag=1, extra_chunk=False,
        data_cut=0):
    width = bits // 8
    if bits == 8:
        samples = bytes((128 + int(100 * ((i % 16) - 8) / 8)) & 0xFF
                        for i in range(frames * channels))
    else:
        samples = b"".join(struct.pack("<h", ((i * 2111) % 65536) - 32768)
                           for i in range(frames * channels))
    if extensible:
        guid = struct.pack("<H", tag) + bytes([0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00,
                                                0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71])
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * channels * width,
                          channels * width, bits, 22, bits, 0) + guid
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * width,
                          channels * width, bits)
    body = b"WAVE"
    if extra_chunk:
        body += b"LIST" + struct.pack("<I", 5) + b"INFO!" + b"\0"  # odd size, padded
    body += b"fmt " + struct.pack("<I", len(fmt)) + fmt
    data_len = len(samples)
    body += b"data" + struct.pack("<I", data_len) + samples[:len(samples) - data_cut]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def data_seeds(folder):
    text = b"The quick brown fox jumps over the lazy dog.\n" * 3
    gz = gzip.compress(text, mtime=0)
    seeds = {
        "bytes-raw": sel(BYTES) + text,
        "bytes-one": sel(BYTES) + b"x",
        "bytes-harness-gzip": sel(BYTES, GZIP) + text,
        "bytes-harness-gzip-cut": sel(BYTES, GZIP, CUT) + text,
        "bytes-gzip": sel(BYTES) + gz,
        "bytes-gzip-truncated": sel(BYTES) + gz[:-5],
        "bytes-gzip-corrupt": sel(BYTES) + gz[:20] + bytes([gz[20] ^ 0x55]) + gz[21:],
        "bytes-gzip-two-members": sel(BYTES) + gz + gzip.compress(b"second member\n", mtime=0),
        "bytes-gzip-empty": sel(BYTES) + gzip.compress(b"", mtime=0),
        "bytes-gzip-magic-only": sel(BYTES) + b"\x1f\x8b",
        "idx": sel(IDX) + idx(2, 3, 4),
        "idx-gzip": sel(IDX, GZIP) + idx(5, 4, 4),
        "idx-one-pixel": sel(IDX) + idx(1, 1, 1),
        "idx-labels": sel(IDX) + struct.pack(">II", 0x801, 8) + bytes(range(8)),
        "idx-short": sel(IDX) + idx(3, 2, 2)[:-1],
        "idx-long": sel(IDX) + idx(3, 2, 2, extra=b"\0"),
        "idx-zero-images": sel(IDX) + idx(0, 2, 2),
        "idx-huge-header": sel(IDX) + struct.pack(">IIII", 0x803, 0xFFFFFFFF, 0x7FFFFFFF,
                                                  0x7FFFFFFF),
        "cifar": sel(CIFAR) + cifar(1),
        "cifar-gzip": sel(CIFAR, GZIP) + cifar(2),
        "cifar-short": sel(CIFAR) + cifar(1)[:-1],
        "wav-8bit": sel(WAV) + wav(32),
        "wav-8bit-up": sel(WAV, RATE_12K) + wav(32),
        "wav-16bit-stereo-down": sel(WAV, RATE_12K) + wav(48, channels=2, bits=16, rate=24000,
                                                           extra_chunk=True),
        "wav-16bit-same": sel(WAV, RATE_8K) + wav(16, bits=16),
        "wav-extensible": sel(WAV, RATE_44K) + wav(20, channels=3, bits=16, rate=22050,
                                                   extensible=True),
        "wav-float": sel(WAV) + wav(8, bits=16, tag=3),
        "wav-truncated": sel(WAV) + wav(16, data_cut=3),
        "wav-gzip": sel(WAV, GZIP) + wav(64, bits=16, rate=16000),
        "wav-header-only": sel(WAV) + b"RIFF\x04\0\0\0WAVE",
    }
    for name, data in seeds.items():
        write(folder, name, data)


# ------------------------------------------------------------------------------ patterns

def pattern_seeds(folder):
    def sized(text, n_ctx, n_head, block):
        b2 = (n_head - 1) | ({16: 0, 32: 1, 64: 2, 128: 3}[block] << 2)
        return text.encode() + b"\0" + bytes([n_ctx - 1, b2])

    seeds = [
        b"dense", b"local:4", b"strided:3", b"fixed:8:2", b"fixed:16:4:2", b"local:4+strided:4",
        b"[local:4;strided:5]", b"[dense;fixed:8:2:4;local:1]", b"local:1+strided:1",
        b"strided:100", b"fixed:128:32:4", b"local:128+strided:128",
        b"strided:96,local:96,local:96,local:96", b"local:128,strided:128",
        b"dense+dense+local:3", b"fixed:1:1",
        # malformed
        b"", b"local:", b"local:0", b"fixed:4:8", b"fixed:8:4:3", b"[local:4", b"[local:4;]",
        b"local:1073741825", b"dense ", b"sparse:4", b"local:4,", b"local:4++dense", b"[]",
        b"local:-1", b"fixed:8:2:", b"[local:2],[dense]",
        # with sizes: n_ctx, heads, block size
        sized("local:3+strided:7", 200, 4, 128),
        sized("[strided:5;local:9;fixed:12:3:2]", 77, 3, 16),
        sized("fixed:10:3:3+strided:6", 150, 4, 32),
        sized("strided:2", 1, 1, 64),
        sized("local:16", 33, 2, 16),
    ]
    for i, s in enumerate(seeds):
        write(folder, "pattern-%02d" % i, s)


# ------------------------------------------------------------------------------- configs

def config_seeds(lib, stx, folder):
    def cfg_bytes(preset=None, **fields):
        return bytes(stx.config(lib, preset, **fields))

    seeds = {
        "default": cfg_bytes(),
        "tiny-model": cfg_bytes(n_layer=1, n_embd=8, n_head=2, n_ctx=16, ff_mult=1,
                                block_size=16, pattern="local:4+strided:4"),
        "tiny-fp64-pos": cfg_bytes(n_layer=2, n_embd=4, n_head=2, n_ctx=12, ff_mult=2,
                                   precision=1, pos_shape=[3, 2, 2], qk_ratio=0.5,
                                   dropout=0.5, pattern="[fixed:4:2;dense],strided:3"),
        "tiny-auto": cfg_bytes(n_layer=1, n_embd=6, n_head=3, n_ctx=5, ff_mult=1, backend=2,
                               recompute=0, pattern="dense"),
        "cuda-bf16": cfg_bytes(backend=1, precision=2),
        "bad-divisible": cfg_bytes(n_embd=10, n_head=3),
        "bad-pos": cfg_bytes(n_ctx=16, pos_shape=[4, 5]),
        "bad-qk": cfg_bytes(n_embd=6, n_head=2, qk_ratio=0.3),
        "n_layer-only": struct.pack("<i", 1),
        "short-fields": struct.pack("<iiii", 1, 4, 1, 4),
    }
    for preset in ("enwik8", "cifar10", "imagenet64", "tiny"):
        seeds["preset-" + preset] = cfg_bytes(preset) + preset.encode()
    size = len(seeds["default"])
    seeds["no-nul-pattern"] = seeds["default"][:size - 256] + b"A" * 256
    seeds["name-bad"] = seeds["default"] + b"tinyx"
    seeds["name-empty"] = seeds["default"] + b"\0"
    for name, data in seeds.items():
        write(folder, name, data)


# ---------------------------------------------------------------------------------- args

def args_seeds(folder):
    lines = [
        ["data.txt", "--steps", "100", "--lr=3e-4", "-o", "out.ckpt", "--device", "cuda:1",
         "--precision", "bf16", "-v"],
        ["--help"], ["-h"], ["--seed", "-1"], ["--steps", "99999999999"], ["--lr", "nan"],
        ["--", "-x", "y"], ["-n5", "-s18446744073709551615"], ["--quiet=1"], ["--unknown"],
        ["a", "b", "c"], ["--offset", "-9223372036854775808"], ["-"], ["--lr", "1e-400"],
        ["--device=cuda:1024"], ["--precision=fp16"], ["--steps"], ["-pfp64", "--offset=12abc"],
        ["--seed", " 5"], ["--lr", "inf"], ["--lr", "1e400"], ["--device", "auto", "in", "out"],
        ["--output="], ["-"], ["--verbose", "--quiet", "--seed=18446744073709551616"],
    ]
    for i, argv in enumerate(lines):
        write(folder, "argv-%02d" % i, b"\0".join(a.encode() for a in argv))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", default=os.path.join(ROOT, "build", "libsparsetx.so"),
                    help="the shared library of a normal build (default: build/libsparsetx.so)")
    ap.add_argument("--out", default=os.path.join(HERE, "seeds"), help="seeds folder")
    args = ap.parse_args()
    import sparsetx_ctypes as stx  # tests/python, standard library only

    lib = stx.load(args.lib)
    folders = {n: os.path.join(args.out, n) for n in ("checkpoint", "data", "pattern", "config",
                                                     "args")}
    for f in folders.values():
        clear(f)
    checkpoint_seeds(lib, stx, folders["checkpoint"])
    data_seeds(folders["data"])
    pattern_seeds(folders["pattern"])
    config_seeds(lib, stx, folders["config"])
    args_seeds(folders["args"])
    total = 0
    for name, f in sorted(folders.items()):
        files = os.listdir(f)
        size = sum(os.path.getsize(os.path.join(f, x)) for x in files)
        total += size
        print("%-10s %3d files %7d bytes" % (name, len(files), size))
    print("total %d bytes" % total)


if __name__ == "__main__":
    main()
