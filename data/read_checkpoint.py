#!/usr/bin/env python3
"""read_checkpoint.py: read a sparsetx checkpoint (stx_model_save) with the standard library.

The format, version 1, documented by this reader (lib/checkpoint.cpp has the same text).
Everything is little-endian; floats are IEEE 754.

  file     = magic "STXCKPT\\0" (8 bytes), u32 version (1), u32 section_count, sections
  section  = 4-byte ASCII tag, u64 length, payload (length bytes), u32 CRC-32 of the payload
             (zlib.crc32)
  order    = CONF, OPTM, TENS..., APPS, "END\\0" (empty payload); nothing after END;
             section_count counts them all, END included

  CONF     i32 n_layer, n_embd, n_head, n_ctx, ff_mult, block_size, n_pos_axes,
           i32 pos_shape[4], i32 backend, device, precision, n_threads, recompute,
           f32 qk_ratio, f32 dropout, u64 seed, u32 pattern length + pattern bytes
  OPTM     f64 lr, min_lr, beta1, beta2, eps, weight_decay, grad_clip,
           i64 warmup_steps, total_steps, i64 step, u64 dropout_counter,
           u8 training, u8 has_moments (1 exactly when step > 0)
  TENS     u32 kind (0 parameter, 1 Adam m, 2 Adam v), u32 name length + name,
           u32 ndim + i64 dims[ndim], u32 dtype (0 f32, 1 f64), then the data,
           numel * 4 or 8 bytes, row-major. Linear weights are [out, in], as torch.nn.Linear.
  APPS     the application's text (UTF-8)

Use from Python::

    from read_checkpoint import read_checkpoint
    ck = read_checkpoint("model.ckpt")
    shape, values = ck["tensors"]["w_out"]      # (256, C), array.array('f') flat
    # e.g. torch.tensor(values).view(shape), or numpy.frombuffer(values, numpy.float32)

or from the shell: ``python3 read_checkpoint.py model.ckpt`` prints a summary.
"""

import array
import struct
import sys
import zlib

MAGIC = b"STXCKPT\0"
FORMAT_VERSION = 1
KINDS = {0: "param", 1: "adam_m", 2: "adam_v"}
DTYPES = {0: ("f32", "f", 4), 1: ("f64", "d", 8)}

CONFIG_FIELDS = ("n_layer", "n_embd", "n_head", "n_ctx", "ff_mult", "block_size", "n_pos_axes",
                 "pos_shape", "backend", "device", "precision", "n_threads", "recompute",
                 "qk_ratio", "dropout", "seed", "pattern")
OPTIM_FIELDS = ("lr", "min_lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip",
                "warmup_steps", "total_steps")


class CheckpointError(ValueError):
    """The file is not a valid sparsetx checkpoint (bad magic, truncated, a CRC mismatch...)."""


class _Cursor:
    """Little-endian fields from a bytes object; reading past the end raises."""

    def __init__(self, data, what):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            raise CheckpointError("%s: truncated (needs %d bytes at offset %d, %d left)" %
                                  (self.what, n, self.pos, len(self.data) - self.pos))
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt):
        fmt = "<" + fmt
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def left(self):
        return len(self.data) - self.pos


def _parse_config(payload):
    c = _Cursor(payload, "section CONF")
    ints = c.unpack("7i")
    pos_shape = list(c.unpack("4i"))
    more = c.unpack("5i")
    qk_ratio, dropout = c.unpack("2f")
    (seed,) = c.unpack("Q")
    (n,) = c.unpack("I")
    pattern = c.take(n).decode("utf-8")
    if c.left():
        raise CheckpointError("section CONF: %d stray bytes" % c.left())
    values = list(ints) + [pos_shape] + list(more) + [qk_ratio, dropout, seed, pattern]
    return dict(zip(CONFIG_FIELDS, values))


def _parse_optim(payload):
    c = _Cursor(payload, "section OPTM")
    values = c.unpack("7d2q")
    opt = dict(zip(OPTIM_FIELDS, values))
    opt["step"], opt["dropout_counter"] = c.unpack("qQ")
    training, has_moments = c.unpack("2B")
    opt["training"], opt["has_moments"] = bool(training), bool(has_moments)
    if c.left():
        raise CheckpointError("section OPTM: %d stray bytes" % c.left())
    return opt


def _parse_tensor(payload):
    c = _Cursor(payload, "section TENS")
    kind, name_len = c.unpack("2I")
    name = c.take(name_len).decode("utf-8")
    (ndim,) = c.unpack("I")
    shape = c.unpack("%dq" % ndim)
    (dtype,) = c.unpack("I")
    if kind not in KINDS or dtype not in DTYPES:
        raise CheckpointError("tensor %r: unknown kind %d or dtype %d" % (name, kind, dtype))
    _, typecode, size = DTYPES[dtype]
    numel = 1
    for d in shape:
        numel *= d
    if c.left() != numel * size:
        raise CheckpointError("tensor %r: %d data bytes, expected %d" %
                              (name, c.left(), numel * size))
    values = array.array(typecode)
    values.frombytes(c.take(numel * size))
    if sys.byteorder != "little":
        values.byteswap()
    return KINDS[kind], name, tuple(shape), DTYPES[dtype][0], values


def _label(tag, payload):
    """A section for messages: "TENS 'h.0.ff.w1'" when the tensor name is readable."""
    label = tag.rstrip(b"\0").decode("ascii", "replace")
    if tag == b"TENS" and len(payload) >= 8:
        kind, n = struct.unpack_from("<2I", payload)
        if kind in KINDS and 0 < n <= min(1024, len(payload) - 8):
            label += " '%s'" % payload[8:8 + n].decode("utf-8", "replace")
            if kind:
                label += " (%s)" % KINDS[kind]
    return label


def read_checkpoint(path):
    """Read and verify a checkpoint; raise CheckpointError if it is malformed or corrupt.

    Returns a dict:
      config     {field: value} of stx_config (pos_shape a list, pattern a str)
      optimizer  {field: value} of stx_optim_config, plus step, dropout_counter, training,
                 has_moments
      tensors    {name: (shape tuple, array.array)} of the parameters, flat row-major,
                 typecode 'f' (f32) or 'd' (f64)
      moments    {"m": {name: (shape, array)}, "v": {...}}: Adam moments (empty before the
                 first optimizer step)
      dtypes     {name: "f32" or "f64"}
      app_state  the application's text (str)
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != MAGIC:
        raise CheckpointError("%s: not a sparsetx checkpoint (bad magic)" % path)
    c = _Cursor(data, path)
    c.take(8)
    version, count = c.unpack("2I")
    if version != FORMAT_VERSION:
        raise CheckpointError("%s: format version %d, this reader knows %d" %
                              (path, version, FORMAT_VERSION))
    sections = []
    while True:
        tag, length = c.unpack("4sQ")
        payload = c.take(length)
        (crc,) = c.unpack("I")
        if zlib.crc32(payload) != crc:
            raise CheckpointError("%s: section %s: checksum mismatch (file corrupt)" %
                                  (path, _label(tag, payload)))
        sections.append((tag, payload))
        if tag == b"END\0":
            break
    if c.left():
        raise CheckpointError("%s: %d bytes after the END section" % (path, c.left()))
    if len(sections) != count:
        raise CheckpointError("%s: the header counts %d sections, the file has %d" %
                              (path, count, len(sections)))
    tags = [t for t, _ in sections]
    n_tens = len(tags) - 4
    if tags != [b"CONF", b"OPTM"] + [b"TENS"] * n_tens + [b"APPS", b"END\0"]:
        raise CheckpointError("%s: sections out of order: %s" % (path, tags))

    result = {
        "config": _parse_config(sections[0][1]),
        "optimizer": _parse_optim(sections[1][1]),
        "tensors": {},
        "moments": {"m": {}, "v": {}},
        "dtypes": {},
        "app_state": sections[-2][1].decode("utf-8"),
    }
    for _, payload in sections[2:-2]:
        kind, name, shape, dtype, values = _parse_tensor(payload)
        target = result["tensors"] if kind == "param" else result["moments"][kind[-1]]
        if name in target:
            raise CheckpointError("%s: tensor %r (%s) appears twice" % (path, name, kind))
        target[name] = (shape, values)
        result["dtypes"][name] = dtype
    return result


def main(argv):
    if len(argv) != 2:
        print("usage: read_checkpoint.py CHECKPOINT", file=sys.stderr)
        return 2
    try:
        ck = read_checkpoint(argv[1])
    except (OSError, CheckpointError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    cfg, opt = ck["config"], ck["optimizer"]
    print("config:")
    for key, value in cfg.items():
        print("  %-12s %s" % (key, value))
    print("optimizer:")
    for key, value in opt.items():
        print("  %-15s %s" % (key, value))
    total = 0
    print("tensors:")
    for name, (shape, values) in ck["tensors"].items():
        total += len(values)
        print("  %-22s %-14s %s" % (name, list(shape), ck["dtypes"][name]))
    print("parameters: %d in %d tensors; Adam moments: %s; step %d" %
          (total, len(ck["tensors"]), "yes" if ck["moments"]["m"] else "no", opt["step"]))
    if ck["app_state"]:
        print("app_state:")
        for line in ck["app_state"].splitlines():
            print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
