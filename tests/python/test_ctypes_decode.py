"""test_ctypes_decode.py: generation byte by byte from Python through the decoder API.

Standard library only. Usage: python3 test_ctypes_decode.py path/to/libsparsetx.so
A small fp64 CPU model with random weights (a fixed:16:4 pattern, n_ctx 64). Python drives
an stx_decoder: prefill a prompt per sequence, then repeatedly read the logits, take the
argmax, feed it. The bytes must equal stx_sample's at a near-zero temperature (greedy), and
after the model's weights change the decoder must refuse until it is reset. Exit 0 on
success, 1 on failure.
"""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sparsetx_ctypes as stx  # noqa: E402

N_CTX, BATCH, N_NEW = 64, 3, 40


def randomize(model, rng):
    for name in model.params():
        n = model._numel(name)
        values = [rng.uniform(-0.5, 0.5) + (1.0 if name.endswith(".g") else 0.0)
                  for _ in range(n)]
        model.write_param(name, values)


def main():
    lib = stx.load(sys.argv[1] if len(sys.argv) > 1 else None)
    rng = random.Random(7)
    with stx.Model(lib, n_layer=2, n_embd=64, n_head=2, n_ctx=N_CTX, block_size=16,
                   precision=stx.PRECISION_FP64, pattern="fixed:16:4") as model:
        randomize(model, rng)
        prompts = [bytes(rng.randrange(256) for _ in range(5)) for _ in range(BATCH)]
        with model.decoder(BATCH) as dec:
            dec.prefill(prompts)
            assert dec.position == 5, dec.position
            seqs = [bytearray(p) for p in prompts]
            for i in range(N_NEW):
                rows = dec.logits()
                picks = [max(range(256), key=lambda v, r=r: (r[v], -v)) for r in rows]
                for s, b in zip(seqs, picks):
                    s.append(b)
                if i + 1 < N_NEW:
                    dec.step(bytes(picks))
            want = model.sample(prompts, N_NEW, batch=BATCH, temperature=1e-6)
            got = [bytes(s) for s in seqs]
            if got != want:
                print("FAIL: Python greedy decoding %r differs from stx_sample %r" % (got, want))
                return 1
            if len(set(got[0][5:])) < 3:
                print("FAIL: the greedy bytes are nearly constant; the check proves little")
                return 1
            print("greedy bytes through the decoder equal stx_sample's: %r" % got[0][5:20])
            print("state: %d bytes for batch %d" % (model.decoder_state_bytes(BATCH), BATCH))
            model.write_param("w_out", [0.0] * model._numel("w_out"))
            try:
                dec.step(bytes(BATCH))
                print("FAIL: a decoder went on after the weights changed")
                return 1
            except stx.SparsetxError as e:
                assert "reset" in e.message, e.message
            dec.reset()
            assert dec.position == 0
            flat = dec.logits()[0]
            if max(flat) != min(flat):
                print("FAIL: after the reset the decoder does not use the new (zero) W_out")
                return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
