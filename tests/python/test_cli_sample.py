"""test_cli_sample.py: the sparsetx-sample tool end to end (standard library only).

Usage: python3 test_cli_sample.py path/to/libsparsetx.so BUILD_DIR
Small checkpoints are made through ctypes (stx_model_save), then the tool at
BUILD_DIR/cli/sparsetx-sample runs on them:
 - a text sample with a prompt and a seed is the same twice, starts with the prompt, and
   changes with the seed; --prompt-file gives what --prompt gives; --count 3 separates the
   samples by "----" lines;
 - --help exits 0 and names every flag; an unknown flag, a missing value and a non-numeric
   number exit 2; a missing checkpoint and a value the library refuses exit 1 with one line
   on stderr;
 - an image model ([4, 4, 3]) writes a valid PNG grid of the right size; image completion
   from an IDX file ([4, 4, 1]) shows the original first and keeps its first rows in every
   sample (the PNG is decoded here with zlib);
 - --wav writes a RIFF/WAVE file.
Exit 0 on success, 1 on failure (also when the tool is not built).
"""

import array
import ctypes
import os
import struct
import subprocess
import sys
import tempfile
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sparsetx_ctypes as stx  # noqa: E402

FLAGS = ["--device", "--prompt", "--prompt-file", "--image-prefix", "--kind", "--index",
         "--rows", "-n", "--length", "--temperature", "--top-k", "--top-p", "--seed", "--count",
         "--stop-byte", "--output", "--wav", "--rate", "--naive", "--stats", "--help"]

failures = []


def expect(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL: " + what)


def save_model(lib, path, seed, **fields):
    """Create a CPU fp32 model with random weights (W_out included) and save it."""
    cfg = stx.config(lib, n_layer=1, n_embd=16, n_head=2, block_size=16, n_threads=1,
                     backend=stx.BACKEND_CPU, seed=seed, **fields)
    with stx.Model(lib, cfg) as model:
        state = seed * 2654435761 % (1 << 32) + 1
        for name, shape in model.params().items():
            n = 1
            for s in shape:
                n *= s
            values = array.array("d")
            for _ in range(n):
                state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
                values.append(((state >> 11) / float(1 << 53) * 2.0 - 1.0) *
                              (1.0 if name == "w_out" else 0.3))
            model.write_param(name, values)
        lib.stx_model_save.restype = ctypes.c_int
        lib.stx_model_save.argtypes = [stx.ModelPtr, ctypes.c_char_p, ctypes.c_char_p]
        stx.check(lib, lib.stx_model_save(model.handle, path.encode(), None), "stx_model_save")


def run(tool, *args):
    p = subprocess.run([tool] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=300)
    return p.returncode, p.stdout, p.stderr


def read_png(path):
    """(width, height, channels, rows of bytes) of an 8-bit gray or RGB PNG."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("no PNG signature")
    at, idat, ihdr = 8, b"", None
    while at < len(data):
        (n,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + n]
        (crc,) = struct.unpack(">I", data[at + 8 + n:at + 12 + n])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError("bad CRC in chunk %r" % kind)
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        at += 12 + n
    if ihdr is None or not idat:
        raise ValueError("no IHDR or IDAT")
    width, height, depth, color = ihdr[:4]
    if depth != 8 or color not in (0, 2):
        raise ValueError("not 8-bit gray or RGB: depth %d color %d" % (depth, color))
    ch = 1 if color == 0 else 3
    raw = zlib.decompress(idat)
    stride = width * ch
    rows, prev, at = [], bytearray(stride), 0
    for _ in range(height):
        ftype, line = raw[at], bytearray(raw[at + 1:at + 1 + stride])
        at += 1 + stride
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, ch, rows


def one_line_error(rc, err, what):
    lines = err.decode(errors="replace").strip().splitlines()
    expect(rc == 1, "%s: exit %d, expected 1" % (what, rc))
    expect(len(lines) == 1 and lines[0].startswith("sparsetx-sample: "),
           "%s: stderr is not one 'sparsetx-sample: ...' line: %r" % (what, lines))
    return lines[0] if lines else ""


def main():
    lib = stx.load(sys.argv[1])
    tool = os.path.join(sys.argv[2], "cli", "sparsetx-sample")
    if not os.access(tool, os.X_OK):
        print("FAIL: %s is not built" % tool)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        text = os.path.join(tmp, "text.ckpt")
        save_model(lib, text, 3, n_ctx=32, pattern="local:8+strided:8")

        # text: deterministic, prompt in front, seed-dependent
        base = ["--device", "cpu", "--prompt", "hello", "-n", "20"]
        rc1, out1, err1 = run(tool, text, *base, "--seed", "5")
        rc2, out2, _ = run(tool, text, *base, "--seed", "5")
        rc3, out3, _ = run(tool, text, *base, "--seed", "6")
        expect(rc1 == 0 and rc2 == 0 and rc3 == 0,
               "text sampling failed: %d %d %d %r" % (rc1, rc2, rc3, err1))
        expect(out1 == out2, "same seed, different output")
        expect(out1 != out3, "different seeds, same output")
        expect(out1.startswith(b"hello") and len(out1) == 5 + 20 + 1,
               "output is not prompt + 20 bytes + newline: %r" % out1)
        prompt_file = os.path.join(tmp, "prompt.txt")
        with open(prompt_file, "wb") as f:
            f.write(b"hello")
        rc, out, _ = run(tool, text, "--device", "cpu", "--prompt-file", prompt_file, "-n", "20",
                         "--seed", "5")
        expect(rc == 0 and out == out1, "--prompt-file differs from --prompt")
        rc, out, _ = run(tool, text, "--prompt", "ab", "--count", "3", "--length=8", "--seed=2")
        expect(rc == 0 and out.count(b"\n----\n") == 2,
               "--count 3: not three samples separated by ----: %r" % out)
        rc, out, _ = run(tool, text, "-n", "40")  # unconditional, beyond n_ctx
        expect(rc == 0 and len(out) == 41, "unconditional 40 bytes: %d %r" % (rc, out))
        # the naive sampler draws the same bytes within n_ctx (the same distributions up to
        # rounding, the same uniforms); --stats reports on stderr only
        rc, out, err = run(tool, text, *base, "--seed", "5", "--naive", "--stats")
        expect(rc == 0 and out == out1, "--naive differs from the decoder: %r vs %r" % (out, out1))
        expect(b"bytes/s" in err and b"naive" in err, "--stats printed %r" % err)
        rc, _, err = run(tool, text, *base, "--stats")
        expect(rc == 0 and b"key/value cache" in err and b"state" in err,
               "--stats printed %r" % err)

        # usage
        rc, out, _ = run(tool, "--help")
        helptext = out.decode()
        expect(rc == 0, "--help exit %d" % rc)
        for flag in FLAGS:
            expect(flag in helptext, "--help does not mention %s" % flag)
        expect("default" in helptext, "--help shows no defaults")
        for args in (["--bogus"], [text, "--bogus"], [text, "--seed"], [text, "--seed", "abc"],
                     [text, "--temperature", "hot"], [text, "-n", "1.5"], [],
                     [text, "--device", "tpu"], [text, "--prompt", "a", "--prompt-file", "b"]):
            rc, _, err = run(tool, *args)
            expect(rc == 2, "%s: exit %d, expected 2" % (args, rc))
            expect(err.strip() != b"", "%s: no message on stderr" % args)

        # bad input
        rc, _, err = run(tool, os.path.join(tmp, "missing.ckpt"))
        one_line_error(rc, err, "missing checkpoint")
        rc, _, err = run(tool, text, "--temperature", "0")
        line = one_line_error(rc, err, "temperature 0")
        expect("temperature" in line, "temperature 0: message does not name it: %s" % line)
        rc, _, err = run(tool, text, "--prompt-file", os.path.join(tmp, "nope.txt"))
        one_line_error(rc, err, "missing prompt file")
        rc, _, err = run(tool, text, "--top-k", "300")
        one_line_error(rc, err, "top-k 300")

        # image model: a PNG grid
        image = os.path.join(tmp, "image.ckpt")
        save_model(lib, image, 4, n_ctx=48, pos_shape=[4, 4, 3], pattern="dense")
        grid = os.path.join(tmp, "grid.png")
        rc, out, err = run(tool, image, "--count", "3", "--output", grid, "--seed", "9")
        expect(rc == 0, "image sampling failed: %d %r" % (rc, err))
        try:
            with open(grid, "rb") as f:
                head = f.read(24)
            expect(head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and
                   struct.unpack(">II", head[16:24]) == (10, 10), "PNG signature or IHDR wrong")
            w, h, ch, _ = read_png(grid)
            expect((w, h, ch) == (10, 10, 3), "3 samples of 4x4x3: PNG %dx%dx%d, expected 10x10x3"
                   % (w, h, ch))
        except (OSError, ValueError, struct.error) as exc:
            expect(False, "grid.png: %s" % exc)
        rc, _, _ = run(tool, image, "--count", "2")
        expect(rc == 2, "image model without --output: exit %d, expected 2" % rc)

        # image completion from an IDX file of 4x4 gray images
        gray = os.path.join(tmp, "gray.ckpt")
        save_model(lib, gray, 5, n_ctx=16, pos_shape=[4, 4, 1], pattern="dense")
        idx = os.path.join(tmp, "images.idx")
        pixels = bytes((17 * i + 3) % 256 for i in range(5 * 16))
        with open(idx, "wb") as f:
            f.write(struct.pack(">IIII", 0x00000803, 5, 4, 4) + pixels)
        original = pixels[2 * 16:3 * 16]
        png = os.path.join(tmp, "complete.png")
        rc, out, err = run(tool, gray, "--image-prefix", idx, "--kind", "idx", "--index", "2",
                           "--rows", "2", "--count", "2", "--output", png)
        expect(rc == 0, "image completion failed: %d %r" % (rc, err))
        if rc == 0:
            try:
                w, h, ch, rows = read_png(png)
                expect((w, h, ch) == (3 * 4 + 2 * 2, 4, 1),
                       "completion grid %dx%dx%d, expected 16x4x1" % (w, h, ch))
                if (w, h, ch) == (16, 4, 1):
                    for col in range(3):
                        cell = b"".join(r[col * 6:col * 6 + 4] for r in rows)
                        want = original if col == 0 else original[:8]
                        expect(cell[:len(want)] == want,
                               "cell %d does not hold the original's rows" % col)
            except (OSError, ValueError, struct.error) as exc:
                expect(False, "complete.png: %s" % exc)
        rc, _, _ = run(tool, gray, "--image-prefix", idx, "--output", png)
        expect(rc == 2, "--image-prefix without --kind: exit %d, expected 2" % rc)
        rc, _, err = run(tool, gray, "--image-prefix", idx, "--kind", "idx", "--index", "9",
                         "--output", png)
        one_line_error(rc, err, "image index out of range")

        # audio
        wav = os.path.join(tmp, "out.wav")
        rc, out, err = run(tool, text, "--wav", wav, "--rate", "8000", "-n", "30", "--count", "2")
        expect(rc == 0, "--wav failed: %d %r" % (rc, err))
        if rc == 0:
            with open(wav, "rb") as f:
                head = f.read(44)
            expect(len(head) == 44 and head[:4] == b"RIFF" and head[8:12] == b"WAVE",
                   "not a RIFF/WAVE file: %r" % head[:12])
            expect(len(head) == 44 and struct.unpack("<I", head[24:28])[0] == 8000,
                   "WAV rate is not 8000")

    if failures:
        print("%d failure(s)" % len(failures))
        return 1
    print("sparsetx-sample: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
