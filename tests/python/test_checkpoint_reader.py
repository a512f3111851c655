"""test_checkpoint_reader.py: data/read_checkpoint.py reads what stx_model_save writes.

Standard library only. Usage: python3 test_checkpoint_reader.py path/to/libsparsetx.so
A small fp32 CPU model gets random values in a few tensors and takes 2 AdamW steps, then is
saved with an app_state text. The pure-Python reader must give every parameter exactly as
stx_param_read gives it in float32, the config fields, the optimizer settings, the step, the
dropout counter, the Adam moments and the app_state. Then single corrupted bytes (in a
tensor's data, in a CRC, in the magic) must make the reader raise, and the library refuse
the same file with STX_ERR_FORMAT. Exit 0 on success, 1 on failure.
"""

import array
import ctypes
import os
import random
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "data"))
import sparsetx_ctypes as stx  # noqa: E402
import read_checkpoint as rc  # noqa: E402

APP_STATE = "data_rng=99\nposition=1234\n"
B, T = 2, 32


def declare_checkpoint_calls(lib):
    """The checkpoint functions are not in the binding's table: declare them here."""
    lib.stx_model_save.restype = ctypes.c_int
    lib.stx_model_save.argtypes = [stx.ModelPtr, ctypes.c_char_p, ctypes.c_char_p]
    lib.stx_model_load.restype = ctypes.c_int
    lib.stx_model_load.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32,
                                   ctypes.POINTER(stx.ModelPtr)]
    lib.stx_model_app_state.restype = ctypes.c_char_p
    lib.stx_model_app_state.argtypes = [stx.ModelPtr]


def read_f32(lib, model, name, numel):
    out = array.array("f", bytes(4 * numel))
    stx.check(lib, lib.stx_param_read(model.handle, name.encode(), stx.DTYPE_F32,
                                      ctypes.c_void_p(out.buffer_info()[0]), numel),
              "stx_param_read")
    return out


def expect_corrupt(lib, path, data, offset, failures, what):
    """Flip one byte at offset: the reader must raise, the library must refuse."""
    bad = bytearray(data)
    bad[offset] ^= 0x5A
    bad_path = path + ".bad"
    with open(bad_path, "wb") as f:
        f.write(bad)
    try:
        rc.read_checkpoint(bad_path)
        failures.append("reader accepted a checkpoint with %s corrupted (byte %d)" %
                        (what, offset))
    except rc.CheckpointError as exc:
        print("reader refused %s: %s" % (what, exc))
    out = stx.ModelPtr()
    status = lib.stx_model_load(bad_path.encode(), stx.BACKEND_CPU, 0, ctypes.byref(out))
    if status != stx.ERR_FORMAT or out:
        failures.append("library: load with %s corrupted gave status %d" % (what, status))
        if out:
            lib.stx_model_free(out)


def main():
    lib = stx.load(sys.argv[1] if len(sys.argv) > 1 else None)
    declare_checkpoint_calls(lib)
    failures = []
    tmp = tempfile.mkdtemp(prefix="stx_ckpt_py_")
    try:
        path = os.path.join(tmp, "model.ckpt")
        cfg = stx.config(lib, n_layer=2, n_embd=16, n_head=2, n_ctx=T, block_size=16,
                         pattern="local:8+strided:8", precision=stx.PRECISION_FP32,
                         backend=stx.BACKEND_CPU, n_threads=1, dropout=0.1, seed=4321,
                         qk_ratio=0.5)
        rng = random.Random(7)
        with stx.Model(lib, cfg) as model:
            shapes = model.params()
            for name in ("w_out", "h.1.attn.q.w", "h.0.ln1.g"):
                n = model._numel(name)
                model.write_param(name, [rng.uniform(-0.5, 0.5) for _ in range(n)])
            model.set_optimizer(lr=3e-3, warmup_steps=1, total_steps=10, weight_decay=0.02)
            data = bytes(rng.randrange(256) for _ in range(B * T))
            for _ in range(2):
                model.zero_grad()
                model.forward(data, B, T)
                model.backward()
                model.step()
            stx.check(lib, lib.stx_model_save(model.handle, path.encode(), APP_STATE.encode()),
                      "stx_model_save")

            ck = rc.read_checkpoint(path)
            if list(ck["tensors"]) != list(shapes):
                failures.append("tensor names %s, expected %s" % (list(ck["tensors"]),
                                                                  list(shapes)))
            for name, shape in shapes.items():
                got_shape, got = ck["tensors"].get(name, (None, None))
                numel = model._numel(name)
                want = read_f32(lib, model, name, numel)
                if got_shape != shape:
                    failures.append("%s: shape %s, expected %s" % (name, got_shape, shape))
                elif got.typecode != "f" or got.tobytes() != want.tobytes():
                    failures.append("%s: values differ from stx_param_read" % name)
                for kind in ("m", "v"):
                    moment = ck["moments"][kind].get(name)
                    if moment is None or moment[0] != shape or len(moment[1]) != numel:
                        failures.append("%s: Adam %s missing or misshapen" % (name, kind))
            if not any(x != 0.0 for x in ck["moments"]["v"]["w_out"][1]):
                failures.append("Adam v of w_out is all zeros after 2 steps")

            got_cfg = ck["config"]
            want_cfg = model.get_config()
            for field in ("n_layer", "n_embd", "n_head", "n_ctx", "ff_mult", "block_size",
                          "n_pos_axes", "backend", "device", "precision", "n_threads",
                          "recompute", "seed"):
                if got_cfg[field] != getattr(want_cfg, field):
                    failures.append("config %s: %r, expected %r" %
                                    (field, got_cfg[field], getattr(want_cfg, field)))
            if got_cfg["pos_shape"] != list(want_cfg.pos_shape):
                failures.append("config pos_shape %s" % got_cfg["pos_shape"])
            for field in ("qk_ratio", "dropout"):
                want = ctypes.c_float(getattr(want_cfg, field)).value
                if got_cfg[field] != want:
                    failures.append("config %s: %r, expected %r" % (field, got_cfg[field], want))
            if got_cfg["pattern"] != want_cfg.pattern.decode():
                failures.append("config pattern %r" % got_cfg["pattern"])

            opt = ck["optimizer"]
            want_opt = {"lr": 3e-3, "warmup_steps": 1, "total_steps": 10, "weight_decay": 0.02,
                        "step": 2, "dropout_counter": model.dropout_counter, "training": True,
                        "has_moments": True}
            for key, value in want_opt.items():
                if opt[key] != value:
                    failures.append("optimizer %s: %r, expected %r" % (key, opt[key], value))
            if opt["step"] != model.step_count:
                failures.append("step %d, model says %d" % (opt["step"], model.step_count))
            if ck["app_state"] != APP_STATE:
                failures.append("app_state %r" % ck["app_state"])
            print("read %d tensors, step %d, config %s" %
                  (len(ck["tensors"]), opt["step"], got_cfg["pattern"]))

        # The library loads the same file back.
        loaded = stx.ModelPtr()
        stx.check(lib, lib.stx_model_load(path.encode(), stx.BACKEND_CPU, 0,
                                          ctypes.byref(loaded)), "stx_model_load")
        if lib.stx_model_app_state(loaded).decode() != APP_STATE:
            failures.append("stx_model_app_state after load differs")
        lib.stx_model_free(loaded)

        with open(path, "rb") as f:
            data = f.read()
        expect_corrupt(lib, path, data, len(data) // 2, failures, "a tensor's data")
        expect_corrupt(lib, path, data, len(data) - 20, failures, "the APPS section's CRC")
        expect_corrupt(lib, path, data, 3, failures, "the magic")
        with open(path + ".short", "wb") as f:
            f.write(data[:-1])
        try:
            rc.read_checkpoint(path + ".short")
            failures.append("reader accepted a truncated checkpoint")
        except rc.CheckpointError as exc:
            print("reader refused a truncated file: %s" % exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    for f in failures:
        print("FAIL: " + f)
    print("OK" if not failures else "%d failure(s)" % len(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
