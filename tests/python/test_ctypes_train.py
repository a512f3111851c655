"""test_ctypes_train.py: train a small fp32 CPU model through the ctypes binding.

Standard library only. Usage: python3 test_ctypes_train.py path/to/libsparsetx.so
A 2-layer model with a merged local+strided pattern takes 60 AdamW steps (lr 3e-3) on
windows of a repeated English sentence. The loss starts at ln 256 (W_out starts at zero) and
must fall below half of that, and below the sentence's unigram entropy (so the model uses
the context, not only byte frequencies). A few calls first check the binding itself: the
version, a refused config raising SparsetxError with the library's message, the config
round trip. Exit 0 on success, 1 on failure.
"""

import collections
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sparsetx_ctypes as stx  # noqa: E402

TEXT = b"The quick brown fox jumps over the lazy dog. "
B, T = 4, 64
STEPS = 60


def batch(step):
    """B windows of T bytes from the repeated text, at offsets that move with the step."""
    data = TEXT * (2 + (B * T) // len(TEXT))
    out = bytearray()
    for b in range(B):
        start = (step * 7 + b * 19) % len(TEXT)
        out += data[start:start + T]
    return bytes(out)


def unigram_entropy(data):
    """Entropy in nats of the byte frequencies of data."""
    counts = collections.Counter(data)
    return -sum(c / len(data) * math.log(c / len(data)) for c in counts.values())


def check_binding(lib, failures):
    """The binding's plumbing: versions, errors as exceptions, struct round trips."""
    if lib.stx_version_number() != stx.VERSION_NUMBER:
        failures.append("library version %d, header %d" % (lib.stx_version_number(),
                                                            stx.VERSION_NUMBER))
    try:
        stx.Model(lib, n_embd=30, n_head=4)
        failures.append("n_embd 30 with n_head 4 was accepted")
    except stx.SparsetxError as exc:
        print("refused as expected: %s" % exc)
        if exc.status != stx.ERR_INVALID_ARGUMENT or "n_embd" not in exc.message:
            failures.append("wrong error for n_embd 30, n_head 4: %s" % exc)
    with stx.Model(lib, n_layer=1, n_embd=16, n_head=2, n_ctx=32, block_size=16,
                   pattern="[local:4;strided:4]", pos_shape=[4, 8], n_threads=1) as model:
        cfg = model.get_config()
        got = (cfg.n_layer, cfg.n_embd, cfg.pattern, cfg.n_pos_axes, list(cfg.pos_shape))
        want = (1, 16, b"[local:4;strided:4]", 2, [4, 8, 0, 0])
        if got != want:
            failures.append("stx_model_get_config gave %s, expected %s" % (got, want))
        pos = {n: s for n, s in model.params().items() if n.startswith("pos_emb")}
        if pos != {"pos_emb.0": (4, 16), "pos_emb.1": (8, 16)}:
            failures.append("position shape [4, 8] gave tables %s" % pos)


def main():
    lib = stx.load(sys.argv[1] if len(sys.argv) > 1 else None)
    failures = []
    check_binding(lib, failures)
    cfg = stx.config(lib, n_layer=2, n_embd=32, n_head=2, n_ctx=T, block_size=16,
                     pattern="local:16+strided:16", precision=stx.PRECISION_FP32,
                     backend=stx.BACKEND_CPU, n_threads=1, seed=1234)
    t0 = time.time()
    with stx.Model(lib, cfg) as model:
        model.set_optimizer(lr=3e-3, warmup_steps=0, total_steps=0)
        losses = []
        for step in range(STEPS):
            model.zero_grad()
            losses.append(model.forward(batch(step), B, T))
            model.backward()
            lr, norm = model.step()
            if step % 10 == 0 or step == STEPS - 1:
                print("step %2d  loss %.4f nats  lr %.1e  grad norm %.3f" %
                      (step, losses[-1], lr, norm))
        evaluated = model.evaluate(batch(STEPS + 3), B, T)
        if model.step_count != STEPS:
            failures.append("step count %d, expected %d" % (model.step_count, STEPS))
    unigram = unigram_entropy(TEXT)
    print("losses: " + " ".join("%.3f" % x for x in losses))
    print("evaluate after training: %.4f nats (%.3f bits per byte), %.2f s" %
          (evaluated, evaluated / math.log(2), time.time() - t0))
    print("unigram entropy of the text: %.4f nats" % unigram)

    if abs(losses[0] - math.log(256)) > 1e-4:
        failures.append("loss at init %.6f, expected ln 256 = %.6f" % (losses[0], math.log(256)))
    if not all(math.isfinite(x) for x in losses):
        failures.append("a loss is not finite")
    if not losses[-1] < 0.5 * losses[0]:
        failures.append("final loss %.4f is not below half the initial %.4f" %
                        (losses[-1], losses[0]))
    if not evaluated < 0.5 * losses[0]:
        failures.append("evaluated loss %.4f is not below half the initial %.4f" %
                        (evaluated, losses[0]))
    if not losses[-1] < unigram:
        failures.append("final loss %.4f is not below the unigram entropy %.4f" %
                        (losses[-1], unigram))
    for f in failures:
        print("FAIL: " + f)
    print("FAILED" if failures else "PASSED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
