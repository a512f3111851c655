"""test_torch_oracle.py: an independent PyTorch float64 oracle for the whole sparsetx model.

Usage: /usr/bin/python3 test_torch_oracle.py path/to/libsparsetx.so
Needs Debian's python3-torch; without it the test prints SKIP and exits 77.

The oracle below is written from DESIGN.md ("The model", "Attention patterns") and the
header's documentation alone, as plainly as possible: attention is dense softmax attention
with a dense [T, T] boolean mask built from each pattern's element-wise definition. For
several configs it
  1. writes fresh random values into EVERY parameter through stx_param_write (W_out
     included: at its zero init every other gradient would be exactly zero) and builds the
     torch model from the values read back with stx_param_read;
  2. compares logits and loss of stx_forward and stx_evaluate with torch on random bytes;
  3. compares every parameter gradient (stx_zero_grad + stx_backward) with torch autograd,
     and checks that a second forward + backward accumulates (gradients double);
  4. takes 3 AdamW steps on both sides (torch.optim.AdamW, clip_grad_norm_) and compares
     every weight afterwards.
Error measure, per tensor: max|a - b| / max|ref|, bound 1e-10 everywhere.
Exit 0 when everything matches, 1 otherwise.
"""

import ctypes
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sparsetx_ctypes as stx  # noqa: E402

try:
    import torch
except ImportError:
    print("SKIP: python3-torch not installed (apt-get install python3-torch)")
    sys.exit(77)

TOL = 1e-10
B = 2
LN_EPS_BLOCK = 1e-5
LN_EPS_FINAL = 1e-6

# Each config: the stx_config fields that differ from the defaults, and T. One CPU thread per
# model keeps the run short and steady on a loaded machine; config d uses two threads.
CONFIGS = [
    dict(name="a dense", n_layer=2, n_embd=24, n_head=2, n_ctx=32, block_size=16,
         pattern="dense", T=32),
    dict(name="b fixed:8:2:2 4 heads qk 0.5 ff 2", n_layer=2, n_embd=32, n_head=4, n_ctx=48,
         block_size=16, qk_ratio=0.5, ff_mult=2, pattern="fixed:8:2:2", recompute=0, T=48),
    dict(name="c interleaved local:6,strided:5", n_layer=3, n_embd=24, n_head=2, n_ctx=40,
         block_size=16, pattern="local:6,strided:5", T=40),
    dict(name="d multi-head, 2 position axes", n_layer=2, n_embd=24, n_head=3, n_ctx=64,
         block_size=16, pattern="[local:6;strided:7+local:3]", pos_shape=[8, 8], n_threads=2,
         T=64),
    dict(name="e ragged n_ctx 50, T 45", n_layer=2, n_embd=16, n_head=2, n_ctx=50,
         block_size=16, pattern="local:7+strided:7", recompute=0, T=45),
    dict(name="f fixed G=3 and per-head dense/local, 3 axes", n_layer=2, n_embd=24, n_head=3,
         n_ctx=50, block_size=32, pattern="fixed:10:3:3,[dense;local:4]", pos_shape=[5, 5, 2],
         T=50),
]

# AdamW settings of the optimizer comparison (grad_clip is set per config, see below).
OPTIM = dict(lr=2e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


# ------------------------------------------------------------------ attention patterns


def component_mask(comp, head, T):
    """[T, T] bool: may query q (row) read key k (column), for one pattern component, without
    the causal part (applied by the caller)."""
    q = torch.arange(T).view(T, 1)
    k = torch.arange(T).view(1, T)
    parts = comp.split(":")
    kind, args = parts[0], [int(a) for a in parts[1:]]
    if kind == "dense":
        return torch.ones(T, T, dtype=torch.bool)
    if kind == "local":
        (L,) = args
        return q - L < k
    if kind == "strided":
        (L,) = args
        return torch.remainder(q - k, L) == 0
    if kind == "fixed":
        L, C = args[0], args[1]
        G = args[2] if len(args) > 2 else 1
        g = head % G
        same_block = torch.div(k, L, rounding_mode="floor") == torch.div(q, L,
                                                                            rounding_mode="floor")
        km = torch.remainder(k, L)
        summary = (km >= L - (g + 1) * C) & (km < L - g * C)
        return (same_block | summary).expand(T, T)
    raise ValueError("unknown pattern component %r" % comp)


def layer_mask(pattern, layer, n_head, T):
    """[H, T, T] bool mask of one layer: the model pattern's layer list is cycled over layers,
    a bracketed head list is cycled over heads, '+' merges components (union), and k <= q."""
    layers = pattern.split(",")
    spec = layers[layer % len(layers)].strip()
    heads = spec[1:-1].split(";") if spec.startswith("[") else [spec]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    masks = []
    for h in range(n_head):
        merged = heads[h % len(heads)]
        m = torch.zeros(T, T, dtype=torch.bool)
        for comp in merged.split("+"):
            m |= component_mask(comp.strip(), h, T)
        masks.append(m & causal)
    return torch.stack(masks)


# ---------------------------------------------------------------------- the model


def expected_shapes(spec):
    """{name: shape} as the header documents the parameter tensors."""
    C, F = spec["n_embd"], spec.get("ff_mult", 4) * spec["n_embd"]
    QK = int(round(spec.get("qk_ratio", 1.0) * C))
    shapes = {"tok_emb": (256, C), "start": (C,)}
    for a, n in enumerate(spec.get("pos_shape", [spec["n_ctx"]])):
        shapes["pos_emb.%d" % a] = (n, C)
    for layer in range(spec["n_layer"]):
        p = "h.%d." % layer
        shapes.update({
            p + "ln1.g": (C,), p + "ln1.b": (C,),
            p + "attn.q.w": (QK, C), p + "attn.q.b": (QK,),
            p + "attn.k.w": (QK, C), p + "attn.k.b": (QK,),
            p + "attn.v.w": (C, C), p + "attn.v.b": (C,),
            p + "attn.proj.w": (C, C), p + "attn.proj.b": (C,),
            p + "ln2.g": (C,), p + "ln2.b": (C,),
            p + "ff.w1": (F, C), p + "ff.b1": (F,), p + "ff.w2": (C, F), p + "ff.b2": (C,),
        })
    shapes.update({"ln_f.g": (C,), "ln_f.b": (C,), "w_out": (256, C)})
    return shapes


def position_coords(pos_shape, n):
    """Row-major coordinates of positions 0..n-1 in pos_shape: one LongTensor per axis."""
    p = torch.arange(n)
    coords = []
    for size in reversed(pos_shape):
        coords.append(torch.remainder(p, size))
        p = torch.div(p, size, rounding_mode="floor")
    return list(reversed(coords))


def oracle_forward(spec, W, tokens):
    """Logits [B, T, 256] and the mean cross-entropy in nats of the model with weights W
    (a dict of float64 tensors) on tokens [B, T] (a LongTensor)."""
    Bn, T = tokens.shape
    C, H = spec["n_embd"], spec["n_head"]
    QK = W["h.0.attn.q.w"].shape[0]
    Dqk, Dv = QK // H, C // H
    pos_shape = spec.get("pos_shape", [spec["n_ctx"]])

    # Shift right behind the start vector: slot 0 = start, slot t = tok(x[t-1]) + pos(t-1).
    emb = W["tok_emb"][tokens[:, : T - 1]]
    for a, coord in enumerate(position_coords(pos_shape, T - 1)):
        emb = emb + W["pos_emb.%d" % a][coord]
    x = torch.cat([W["start"].view(1, 1, C).expand(Bn, 1, C), emb], dim=1)

    for layer in range(spec["n_layer"]):
        p = "h.%d." % layer
        a = torch.nn.functional.layer_norm(x, (C,), W[p + "ln1.g"], W[p + "ln1.b"], LN_EPS_BLOCK)
        q = (a @ W[p + "attn.q.w"].T + W[p + "attn.q.b"]).view(Bn, T, H, Dqk).transpose(1, 2)
        k = (a @ W[p + "attn.k.w"].T + W[p + "attn.k.b"]).view(Bn, T, H, Dqk).transpose(1, 2)
        v = (a @ W[p + "attn.v.w"].T + W[p + "attn.v.b"]).view(Bn, T, H, Dv).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(Dqk)  # [B, H, T, T]
        mask = layer_mask(spec["pattern"], layer, H, T)
        scores = scores.masked_fill(~mask, float("-inf"))
        o = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(Bn, T, C)
        x = x + o @ W[p + "attn.proj.w"].T + W[p + "attn.proj.b"]

        a = torch.nn.functional.layer_norm(x, (C,), W[p + "ln2.g"], W[p + "ln2.b"], LN_EPS_BLOCK)
        f = a @ W[p + "ff.w1"].T + W[p + "ff.b1"]
        f = f * torch.sigmoid(1.702 * f)
        x = x + f @ W[p + "ff.w2"].T + W[p + "ff.b2"]

    x = torch.nn.functional.layer_norm(x, (C,), W["ln_f.g"], W["ln_f.b"], LN_EPS_FINAL)
    logits = x @ W["w_out"].T
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), tokens.reshape(-1))
    return logits, loss


# ------------------------------------------------------------------------ helpers


def rel_error(got, ref):
    """max|got - ref| / max|ref| (inf for NaN or for a nonzero got against an all-zero ref)."""
    got, ref = got.reshape(-1), ref.reshape(-1)
    if torch.isnan(got).any() or torch.isnan(ref).any():
        return float("inf")
    diff = (got - ref).abs().max().item() if got.numel() else 0.0
    scale = ref.abs().max().item() if ref.numel() else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def as_tensor(values, shape):
    return torch.tensor(list(values), dtype=torch.float64).view(*shape)


def is_key_bias(name):
    """attn.k.b: its gradient is identically zero in exact arithmetic (a key bias adds
    q·b_k to every score of a query row, and softmax is shift-invariant), so each side holds
    only its own rounding noise there."""
    return name.endswith(".attn.k.b")


class Check:
    """Collects failures; one printed line per failure."""

    def __init__(self):
        self.failures = []

    def err(self, what, value, bound=TOL):
        ok = value <= bound
        if not ok:
            self.failures.append("%s: error %.3e > %.0e" % (what, value, bound))
            print("    FAIL %s: error %.3e > %.0e" % (what, value, bound))
        return value

    def true(self, what, ok):
        if not ok:
            self.failures.append(what)
            print("    FAIL " + what)
        return ok


# ------------------------------------------------------------------ one config


def run_config(lib, spec, check, seed):
    T = spec["T"]
    gen = torch.Generator().manual_seed(seed)
    fields = {k: v for k, v in spec.items() if k not in ("name", "T")}
    fields.setdefault("n_threads", 1)
    cfg = stx.config(lib, backend=stx.BACKEND_CPU, precision=stx.PRECISION_FP64, dropout=0.0,
                     seed=seed, **fields)
    worst = {"logits": 0.0, "loss": 0.0, "grad": 0.0, "adamw": 0.0}
    worst_grad_name = ""
    with stx.Model(lib, cfg) as model:
        shapes = model.params()
        want = expected_shapes(spec)
        if not check.true("%s: parameter names and shapes %s, expected %s" %
                          (spec["name"], shapes, want), shapes == want):
            return
        check.true("%s: stx_param_total" % spec["name"],
                   model.param_total() == sum(math.prod(s) for s in shapes.values()))

        # The oracle's masks against the library's own element-wise definition.
        for layer in range(spec["n_layer"]):
            layers = spec["pattern"].split(",")
            mask = layer_mask(spec["pattern"], layer, spec["n_head"], T)
            handle = stx.LayoutPtr()
            stx.check(lib, lib.stx_layout_create(layers[layer % len(layers)].encode(),
                                                 spec["n_ctx"], spec["n_head"],
                                                 spec["block_size"], ctypes.byref(handle)),
                      "stx_layout_create")
            try:
                allows = torch.tensor([[[lib.stx_layout_allows(handle, h, q, k) != 0
                                         for k in range(T)] for q in range(T)]
                                       for h in range(spec["n_head"])])
            finally:
                lib.stx_layout_free(handle)
            check.true("%s: layer %d: stx_layout_allows differs from the oracle's mask at %d "
                       "(head, q, k) pairs" % (spec["name"], layer, int((allows != mask).sum())),
                       bool((allows == mask).all()))

        # 1. Fresh random weights into every tensor; the oracle gets what reads back.
        W = {}
        for name, shape in shapes.items():
            values = torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.3
            if name.endswith(".g"):
                values += 1.0  # LayerNorm gains around 1, still all different
            model.write_param(name, values.reshape(-1).tolist())
            back = as_tensor(model.read_param(name), shape)
            check.true("%s: %s reads back as written" % (spec["name"], name),
                       torch.equal(back, values))
            W[name] = back.clone().requires_grad_(True)

        tokens = torch.randint(0, 256, (B, T), generator=gen)
        tok_bytes = bytes(tokens.reshape(-1).tolist())

        # 2. Logits and loss, forward and evaluate.
        ref_logits, ref_loss = oracle_forward(spec, W, tokens)
        loss = model.forward(tok_bytes, B, T)
        e = check.err("%s: stx_forward logits" % spec["name"],
                      rel_error(as_tensor(model.logits(), (B, T, 256)), ref_logits.detach()))
        worst["logits"] = max(worst["logits"], e)
        e = check.err("%s: stx_forward loss (%.12f vs %.12f)" %
                      (spec["name"], loss, ref_loss.item()),
                      abs(loss - ref_loss.item()) / abs(ref_loss.item()))
        worst["loss"] = max(worst["loss"], e)

        # 3. Every gradient.
        model.zero_grad()
        model.backward()
        ref_loss.backward()
        key_noise = 0.0
        for name, shape in shapes.items():
            got = as_tensor(model.read_grad(name), shape)
            ref = W[name].grad
            if is_key_bias(name):
                # Compare both sides' noise with the scale of the key weights' gradient.
                scale = W[name.replace(".k.b", ".k.w")].grad.abs().max().item()
                e = max(got.abs().max().item(), ref.abs().max().item()) / scale
                key_noise = max(key_noise, e)
                check.err("%s: grad %s (identically zero: max|grad| / max|grad k.w|)" %
                          (spec["name"], name), e)
                continue
            check.true("%s: grad %s is not all zero" % (spec["name"], name),
                       bool(ref.abs().max() > 0))
            e = check.err("%s: grad %s" % (spec["name"], name), rel_error(got, ref))
            if e >= worst["grad"]:
                worst["grad"], worst_grad_name = e, name

        # Accumulation: a second forward + backward without zero_grad doubles every gradient.
        model.forward(tok_bytes, B, T)
        model.backward()
        acc = 0.0
        for name, shape in shapes.items():
            if not is_key_bias(name):
                acc = max(acc, rel_error(as_tensor(model.read_grad(name), shape), 2 * W[name].grad))
        check.err("%s: gradients accumulate over two forward + backward" % spec["name"], acc)

        # stx_evaluate gives the same loss and logits as the forward.
        eval_loss = model.evaluate(tok_bytes, B, T)
        check.err("%s: stx_evaluate loss" % spec["name"],
                  abs(eval_loss - ref_loss.item()) / abs(ref_loss.item()))
        check.err("%s: stx_evaluate logits" % spec["name"],
                  rel_error(as_tensor(model.logits(), (B, T, 256)), ref_logits.detach()))

        # 4. Three AdamW steps on both sides. Clip at half the first gradient norm so the
        # clipping is active at least in the first step.
        ref_norm0 = math.sqrt(sum(float((W[n].grad ** 2).sum()) for n in shapes
                                  if not is_key_bias(n)))
        clip = 0.5 * ref_norm0
        model.set_optimizer(grad_clip=clip, warmup_steps=0, total_steps=0, min_lr=0.0, **OPTIM)
        decay = [W[n] for n, s in shapes.items() if len(s) == 2]
        no_decay = [W[n] for n, s in shapes.items() if len(s) != 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": OPTIM["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=OPTIM["lr"], betas=(OPTIM["beta1"], OPTIM["beta2"]),
                                eps=OPTIM["eps"])
        norms = []
        for step in range(3):
            step_tokens = tokens if step == 0 else torch.randint(0, 256, (B, T), generator=gen)
            model.zero_grad()
            model.forward(bytes(step_tokens.reshape(-1).tolist()), B, T)
            model.backward()
            opt.zero_grad()
            _, loss_t = oracle_forward(spec, W, step_tokens)
            loss_t.backward()
            # The key bias' gradient is rounding noise on each side (see is_key_bias), which
            # Adam's 1/sqrt(v) would amplify into different steps: make it exactly 0 on both.
            for name, shape in shapes.items():
                if is_key_bias(name):
                    model.write_grad(name, [0.0] * math.prod(shape))
                    W[name].grad.zero_()
            ref_norm = float(torch.nn.utils.clip_grad_norm_(list(W.values()), clip))
            lr_used, norm = model.step()
            opt.step()
            norms.append(norm)
            check.err("%s: AdamW step %d gradient norm (%.6g vs %.6g)" %
                      (spec["name"], step, norm, ref_norm), abs(norm - ref_norm) / ref_norm)
            check.true("%s: AdamW step %d lr %g" % (spec["name"], step, lr_used),
                       abs(lr_used - OPTIM["lr"]) <= 1e-15)
        for name, shape in shapes.items():
            e = check.err("%s: weights %s after 3 AdamW steps" % (spec["name"], name),
                          rel_error(as_tensor(model.read_param(name), shape), W[name].detach()))
            worst["adamw"] = max(worst["adamw"], e)
        check.true("%s: step count 3" % spec["name"], model.step_count == 3)

    print("  %-48s logits %.1e  loss %.1e  grads %.1e (%s)  k.b noise %.1e  AdamW %.1e  "
          "(norms %s, clip %.3g)" %
          (spec["name"], worst["logits"], worst["loss"], worst["grad"], worst_grad_name,
           key_noise, worst["adamw"], " ".join("%.3g" % n for n in norms), clip))


def main():
    lib = stx.load(sys.argv[1] if len(sys.argv) > 1 else None)
    torch.set_num_threads(2)
    print("sparsetx %s against torch %s, float64, bound %.0e per tensor" %
          (lib.stx_version_string().decode(), torch.__version__, TOL))
    check = Check()
    for i, spec in enumerate(CONFIGS):
        try:
            run_config(lib, spec, check, seed=1000 + i)
        except stx.SparsetxError as exc:
            check.true("%s: %s" % (spec["name"], exc), False)
    if check.failures:
        print("FAILED: %d check(s)" % len(check.failures))
        return 1
    print("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
