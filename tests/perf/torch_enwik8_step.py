#!/usr/bin/env python3
"""torch_enwik8_step.py: a whole training step of the paper's enwik8 model in PyTorch with
FlexAttention, compiled, against sparsetx's own step, in one command on one machine.

    python3 tests/perf/torch_enwik8_step.py --bench ./build-gpu/cli/sparsetx-bench

The PyTorch model is sparsetx's model (DESIGN.md "The model"; lib/model_loop.h, lib/params.cpp,
lib/config.cpp), layer for layer:
  - bytes in, bytes out (256); slot 0 holds a learned start vector, slot t >= 1 holds
    tok_emb(x[t-1]) + the sum over position axes of pos_emb.a(coordinate a of t-1) (row-major
    coordinates in the position shape, [96, 128] for enwik8); output slot t predicts x[t];
  - pre-LayerNorm blocks (eps 1e-5): x2 = x + drop(proj(attn(q, k, v of LN1(x)))),
    x' = x2 + drop(W2 gelu(W1 LN2(x2) + b1) + b2), gelu(z) = z * sigmoid(1.702 z), width 4d;
    every linear has a bias; q, k width qk_ratio * d (1 for enwik8);
  - final LayerNorm (eps 1e-6) and a separate output matrix W_out without bias, zero at init;
  - attention: softmax(q k^T / sqrt(D)) v over the keys the layer's pattern allows, here
    FlexAttention with a block mask of that pattern (128 x 128 blocks). enwik8's pattern is
    "fixed:128:32:4": the same 128-block, or the last-32-cells summary group of head h,
    g = h mod 4 (cells [128-32(g+1), 128-32g)), k <= q;
  - dropout 0.4 at the end of each residual branch (the preset's; --dropout changes it);
  - the released code's initialization; AdamW (0.9, 0.999, 1e-8), decoupled weight decay 0.01
    on matrices (token, position and output tables included) only, global-norm clipping at 1.
It trains in bf16 autocast with fp32 master weights and optimizer state (sparsetx's bf16 mode),
compiled with torch.compile (the whole model; fused AdamW), and no activation checkpointing
unless --checkpoint (sparsetx recomputes by default; checkpointing trades time for memory).

A step = forward, backward, clipping, AdamW, zero_grad; the median of --steps steps after
--warmup (compilation happens there), each ended by a device synchronize. Peak memory is
torch.cuda.max_memory_allocated over the timed steps (weights, gradients, Adam state and
activations; the caching allocator's reserve is printed beside it).

With --bench, sparsetx-bench train --preset enwik8 --device cuda --precision bf16 runs first in
the same command and the ratio of tokens/s (ours over PyTorch's) is printed; the performance
issue's target is >= 1.5.

--smoke runs on the CPU at a tiny shape, eager (no compile), fp32, with the attention as a dense
boolean mask of the same pattern, so the model code can be checked without a GPU; with --lib
PATH/libsparsetx.so it also loads random weights into both sparsetx (CPU, fp64) and this model
(fp64) and compares the loss, the logits and every gradient (bound 1e-9), which proves the two
are the same model. Standard library + torch only.
"""

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from perf_common import parse_train_csv  # noqa: E402
from stx_masks import dense_mask, layer_mask_mod, parse_model_pattern  # noqa: E402

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.utils.checkpoint
except ImportError:  # main() says so; the classes below are defined but never used
    torch = None
    nn = types.SimpleNamespace(Module=object)

ENWIK8 = dict(n_layer=30, n_embd=512, n_head=8, n_ctx=12288, pos_shape=[96, 128],
              pattern="fixed:128:32:4", ff_mult=4, qk_ratio=1.0, dropout=0.4)
SMOKE = dict(n_layer=2, n_embd=32, n_head=4, n_ctx=32, pos_shape=[4, 8], pattern="fixed:8:2:4",
             ff_mult=4, qk_ratio=1.0, dropout=0.0)


# ------------------------------------------------------------------------- the model

def position_coords(pos_shape, n):
    """Row-major coordinates of positions 0..n-1 in pos_shape, one LongTensor per axis."""
    p = torch.arange(n)
    coords = []
    for size in reversed(pos_shape):
        coords.append(torch.remainder(p, size))
        p = torch.div(p, size, rounding_mode="floor")
    return list(reversed(coords))


class Attention(nn.Module):
    def __init__(self, cfg, resid_scale):
        super().__init__()
        C, QK = cfg["n_embd"], int(round(cfg["qk_ratio"] * cfg["n_embd"]))
        self.H = cfg["n_head"]
        self.q = nn.Linear(C, QK)
        self.k = nn.Linear(C, QK)
        self.v = nn.Linear(C, C)
        self.proj = nn.Linear(C, C)
        for lin in (self.q, self.k, self.v, self.proj):
            init_linear(lin, resid_scale if lin is self.proj else 1.0)

    def forward(self, x, attend):
        B, T, C = x.shape
        H = self.H
        q = self.q(x).view(B, T, H, -1).transpose(1, 2)
        k = self.k(x).view(B, T, H, -1).transpose(1, 2)
        v = self.v(x).view(B, T, H, -1).transpose(1, 2)
        k, v = k.to(q.dtype), v.to(q.dtype)  # one dtype for the kernel (autocast: bf16)
        o = attend(q, k, v)  # [B, H, T, Dv]
        return self.proj(o.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, cfg, resid_scale):
        super().__init__()
        C, Fw = cfg["n_embd"], cfg["ff_mult"] * cfg["n_embd"]
        self.w1 = nn.Linear(C, Fw)
        self.w2 = nn.Linear(Fw, C)
        init_linear(self.w1, 1.0)
        init_linear(self.w2, resid_scale)

    def forward(self, x):
        f = self.w1(x)
        return self.w2(f * torch.sigmoid(1.702 * f))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["n_embd"]
        resid_scale = 1.0 / math.sqrt(2.0 * cfg["n_layer"])
        self.ln1 = nn.LayerNorm(C, eps=1e-5)
        self.attn = Attention(cfg, resid_scale)
        self.ln2 = nn.LayerNorm(C, eps=1e-5)
        self.ff = FeedForward(cfg, resid_scale)
        self.p = cfg["dropout"]

    def forward(self, x, attend):
        x = x + F.dropout(self.attn(self.ln1(x), attend), self.p, self.training)
        return x + F.dropout(self.ff(self.ln2(x)), self.p, self.training)


def init_linear(lin, scale):
    """The released code's init: std sqrt(0.125 / fan_in) (times scale), bias 0."""
    nn.init.normal_(lin.weight, std=math.sqrt(0.125 / lin.in_features) * scale)
    nn.init.zeros_(lin.bias)


class SparseTransformer(nn.Module):
    """sparsetx's model. `attention` is a list with each layer's attend(q, k, v) -> o, set by
    use_flex() or use_eager() (kept outside the module's state)."""

    def __init__(self, cfg):
        super().__init__()
        C = cfg["n_embd"]
        self.cfg = cfg
        self.tok_emb = nn.Embedding(256, C)
        self.start = nn.Parameter(torch.empty(C))
        self.pos_emb = nn.ModuleList(nn.Embedding(n, C) for n in cfg["pos_shape"])
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg["n_layer"]))
        self.ln_f = nn.LayerNorm(C, eps=1e-6)
        self.w_out = nn.Linear(C, 256, bias=False)
        nn.init.normal_(self.tok_emb.weight, std=0.01)
        nn.init.normal_(self.start, std=0.01)
        for e in self.pos_emb:
            nn.init.normal_(e.weight, std=0.01 / math.sqrt(len(cfg["pos_shape"])))
        nn.init.zeros_(self.w_out.weight)
        coords = position_coords(cfg["pos_shape"], cfg["n_ctx"])
        for a, c in enumerate(coords):
            self.register_buffer(f"coord{a}", c, persistent=False)
        self.attention = None
        self.checkpoint = False
        self.keep_logits = False  # a Python constant, so compiled code has no side effect

    def forward(self, tokens):
        """Mean cross-entropy in nats of tokens [B, T]."""
        B, T = tokens.shape
        C = self.cfg["n_embd"]
        x = self.tok_emb(tokens[:, : T - 1])
        for a, emb in enumerate(self.pos_emb):
            x = x + emb(getattr(self, f"coord{a}")[: T - 1])
        x = torch.cat([self.start.view(1, 1, C).expand(B, 1, C).to(x.dtype), x], dim=1)
        for block, attend in zip(self.h, self.attention):
            if self.checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, attend, use_reentrant=False)
            else:
                x = block(x, attend)
        logits = self.w_out(self.ln_f(x))
        if self.keep_logits:
            self.last_logits = logits
        wide = torch.promote_types(logits.dtype, torch.float32)  # bf16 -> fp32, fp64 stays
        return F.cross_entropy(logits.to(wide).reshape(-1, 256), tokens.reshape(-1))

    def layer_pattern(self, i):
        layers = parse_model_pattern(self.cfg["pattern"])
        return layers[i % len(layers)]

    def use_eager(self, T, device):
        """Dense boolean masks of each layer's pattern and plain softmax attention."""
        masks = {}
        for i in range(self.cfg["n_layer"]):
            p = self.layer_pattern(i)
            if p not in masks:
                mask_mod, _ = layer_mask_mod(p)
                masks[p] = dense_mask(mask_mod, self.cfg["n_head"], T, device)

        def eager(mask):
            def attend(q, k, v):
                s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
                s = s.masked_fill(~mask, float("-inf"))
                return torch.matmul(torch.softmax(s, dim=-1), v)
            return attend
        self.attention = [eager(masks[self.layer_pattern(i)])
                          for i in range(self.cfg["n_layer"])]

    def use_flex(self, T, device, compile_kernel):
        """FlexAttention with one block mask (128 x 128) per distinct layer pattern;
        compile_kernel: torch.compile flex_attention on its own (when the model is not)."""
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        if compile_kernel:
            flex_attention = torch.compile(flex_attention, dynamic=False)
        masks = {}
        for i in range(self.cfg["n_layer"]):
            p = self.layer_pattern(i)
            if p not in masks:
                mask_mod, per_head = layer_mask_mod(p)
                masks[p] = create_block_mask(mask_mod, B=None,
                                             H=self.cfg["n_head"] if per_head else None,
                                             Q_LEN=T, KV_LEN=T, device=device, BLOCK_SIZE=128)

        def flex(bm):
            return lambda q, k, v: flex_attention(q, k, v, block_mask=bm)
        self.attention = [flex(masks[self.layer_pattern(i)]) for i in range(self.cfg["n_layer"])]


def make_optimizer(model, fused):
    """AdamW as sparsetx's: decoupled weight decay 0.01 on matrices only (2-D tensors: linear
    weights, token, position and output tables), none on biases, gains and the start vector."""
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() != 2]
    groups = [dict(params=decay, weight_decay=0.01), dict(params=rest, weight_decay=0.0)]
    kw = dict(lr=3e-4, betas=(0.9, 0.999), eps=1e-8)
    if fused:
        kw["fused"] = True
    return torch.optim.AdamW(groups, **kw)


# ------------------------------------------------------------------------- timing

def time_torch(args, cfg, device):
    """(median step ms, tokens/s, peak allocated bytes, peak reserved bytes, loss)."""
    cuda = device == "cuda"
    torch.manual_seed(0)
    model = SparseTransformer(cfg).to(device)
    model.train()
    model.checkpoint = args.checkpoint
    T, B = cfg["n_ctx"], args.batch
    if args.attention == "flex":
        model.use_flex(T, device, compile_kernel=args.compile == "attention")
    else:
        model.use_eager(T, device)
    run = model
    if args.compile == "model":
        dynamo_config = __import__("torch._dynamo", fromlist=["config"]).config
        for key in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, key):
                setattr(dynamo_config, key, 64)
        run = torch.compile(model)
    opt = make_optimizer(model, fused=cuda)
    params = [p for p in model.parameters()]
    g = torch.Generator(device="cpu")
    g.manual_seed(1)
    tokens = torch.randint(0, 256, (B, T), generator=g).to(device)
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if args.bf16
                else _null_context())

    def step():
        with autocast:
            loss = run(tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    print(f"torch: {sum(p.numel() for p in params) / 1e6:.1f}M parameters; warming up "
          f"({args.warmup} steps{'' if args.compile == 'none' else ', compiling'})", flush=True)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync(cuda)
    print(f"torch: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, loss = [], None
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        sync(cuda)
        times.append(1e3 * (time.perf_counter() - t0))
    ms = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    reserved = torch.cuda.max_memory_reserved() if cuda else None
    return ms, B * T / (ms / 1e3), peak, reserved, float(loss)


class _null_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def sync(cuda):
    if cuda:
        torch.cuda.synchronize()


def run_bench(args):
    """sparsetx-bench train --csv for the enwik8 preset: a dict of its row, or None."""
    cmd = [args.bench, "train", "--preset", "enwik8", "--device", "cuda", "--precision", "bf16",
           "--steps", str(args.steps), "--batch", str(args.batch), "--csv"]
    if args.bench_args:
        cmd += args.bench_args.split()
    print("$ " + " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.bench_timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"ours failed: {e}")
        return None
    row = parse_train_csv(proc.stdout)
    if proc.returncode != 0 or row is None:
        print(f"ours exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return row


# ------------------------------------------------------------------------- smoke check

def check_against_library(lib_path, cfg):
    """Random weights in sparsetx (CPU, fp64) and in this model (fp64): loss, logits and every
    gradient must agree. Returns True when they do."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import sparsetx_ctypes as stx
    try:
        lib = stx.load(lib_path)
    except (OSError, AttributeError, RuntimeError) as e:  # a binding of another version
        print(f"smoke: cannot load {lib_path} through tests/python/sparsetx_ctypes.py: {e}")
        return False
    c = stx.config(lib, n_layer=cfg["n_layer"], n_embd=cfg["n_embd"], n_head=cfg["n_head"],
                   n_ctx=cfg["n_ctx"], pos_shape=cfg["pos_shape"], pattern=cfg["pattern"],
                   ff_mult=cfg["ff_mult"], qk_ratio=cfg["qk_ratio"], dropout=0.0, block_size=16,
                   precision=stx.PRECISION_FP64, n_threads=1)
    torch.manual_seed(3)
    model = SparseTransformer(dict(cfg, dropout=0.0)).double()
    model.use_eager(cfg["n_ctx"], "cpu")
    model.keep_logits = True
    B, T = 2, cfg["n_ctx"]
    tokens = torch.randint(0, 256, (B, T))
    worst = 0.0
    with stx.Model(lib, c) as m:
        shapes = m.params()
        ours_names = {torch_name(n): n for n in shapes}
        named = dict(model.named_parameters())
        if set(named) != set(ours_names):
            print("smoke: parameter names differ:", sorted(set(named) ^ set(ours_names)))
            return False
        for tname, p in named.items():
            if tuple(p.shape) != tuple(shapes[ours_names[tname]]):
                print(f"smoke: {tname} has shape {tuple(p.shape)}, sparsetx "
                      f"{shapes[ours_names[tname]]}")
                return False
            values = torch.randn(p.shape, dtype=torch.float64) * 0.3
            m.write_param(ours_names[tname], values.reshape(-1).tolist())
            with torch.no_grad():  # what the library holds (it may have rounded on the way in)
                p.copy_(torch.tensor(m.read_param(ours_names[tname]),
                                     dtype=torch.float64).view(p.shape))
        m.set_training(0)
        loss = m.forward(bytes(tokens.reshape(-1).tolist()), B, T)
        m.zero_grad()
        m.backward()
        logits = torch.tensor(m.logits(), dtype=torch.float64).view(B, T, 256)
        model.eval()
        tloss = model(tokens)
        tloss.backward()
        worst = max(worst, abs(loss - float(tloss)) / abs(float(tloss)),
                    rel(logits, model.last_logits.detach()))
        for tname, p in named.items():
            oname = ours_names[tname]
            if oname.endswith("attn.k.b"):
                continue  # exactly zero in exact arithmetic; sparsetx does not accumulate it
            g = torch.tensor(m.read_grad(oname), dtype=torch.float64).view(p.shape)
            worst = max(worst, rel(g, p.grad))
    print(f"smoke: this model and sparsetx (fp64, random weights): loss {loss:.6f} vs "
          f"{float(tloss):.6f}, worst relative error over logits and every gradient "
          f"{worst:.2e} (bound 1e-9)")
    return worst <= 1e-9


def torch_name(ours):
    """sparsetx parameter name -> this module's (h.3.attn.q.w -> h.3.attn.q.weight, ...)."""
    parts = ours.split(".")
    if ours in ("tok_emb", "w_out"):
        return ours + ".weight"
    if parts[0] == "pos_emb":
        return ours + ".weight"
    if ours == "start":
        return ours
    last = parts[-1]
    if parts[-2] == "ff":  # h.L.ff.w1 / b1 / w2 / b2
        layer = "w" + last[1:]
        return ".".join(parts[:-1] + [layer, "weight" if last[0] == "w" else "bias"])
    return ".".join(parts[:-1] + [{"w": "weight", "b": "bias", "g": "weight"}[last]])


def rel(a, b):
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale else (a - b).abs().max().item()


# ------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", help="sparsetx-bench to run first (ours), for the ratio")
    ap.add_argument("--bench-args", default="",
                    help="extra flags for sparsetx-bench train, e.g. '--recompute 0'")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median); ours: mean")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=None, help="default: the preset's 0.4")
    ap.add_argument("--checkpoint", action="store_true",
                    help="activation checkpointing per block (like our recomputation)")
    ap.add_argument("--compile", choices=("model", "attention", "none"), default="model",
                    help="torch.compile the whole model (default; if that fails the script "
                         "falls back to compiling flex_attention alone and says so), only "
                         "flex_attention, or nothing")
    ap.add_argument("--fp32", dest="bf16", action="store_false", help="no bf16 autocast")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, tiny shape, eager masked attention, no compile, fp32")
    ap.add_argument("--lib", help="with --smoke: libsparsetx.so to compare the model with")
    ap.add_argument("--bench-timeout", type=float, default=1800)
    args = ap.parse_args()

    if torch is None:
        print("torch is not importable here: no PyTorch model to time")
        if args.bench and not args.smoke:
            row = run_bench(args)
            if row:
                print(f"ours: {row['step_ms']:.1f} ms a step, {row['tokens_per_s']:.0f} tokens/s,"
                      f" peak {row['peak_bytes'] / 1e9:.2f} GB")
        return 77 if args.smoke else 1

    if args.smoke:
        cfg = dict(SMOKE)
        if args.dropout is not None:
            cfg["dropout"] = args.dropout
        args.compile, args.bf16, args.attention = "none", False, "eager"
        args.steps, args.warmup, args.batch = min(args.steps, 2), min(args.warmup, 1), 2
        ms, tps, _, _, loss = time_torch(args, cfg, "cpu")
        print(f"smoke: {cfg['n_layer']} layers d {cfg['n_embd']} {cfg['pattern']} n "
              f"{cfg['n_ctx']}: step {ms:.1f} ms, {tps:.0f} tokens/s, loss {loss:.4f}")
        ok = math.isfinite(loss) and abs(loss - math.log(256)) < 0.1  # W_out starts at zero
        if args.lib:
            ok = check_against_library(args.lib, cfg) and ok
        print("smoke: " + ("ok" if ok else "FAILED"))
        return 0 if ok else 1

    if not torch.cuda.is_available():
        print("torch sees no CUDA device: the comparison needs the GPU (try --smoke)")
        return 1
    cfg = dict(ENWIK8)
    if args.dropout is not None:
        cfg["dropout"] = args.dropout
    args.attention = "flex"
    ours = run_bench(args) if args.bench else None  # first, before torch holds the GPU
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    try:
        ms, tps, peak, reserved, loss = time_torch(args, cfg, "cuda")
    except Exception as e:
        print(f"torch model failed ({args.compile} compiled): {e!r}"[:1000], flush=True)
        ms = None
        if args.compile == "model":
            args.compile = "attention"
            print("retrying with flex_attention compiled on its own (the rest eager)")
            torch.cuda.empty_cache()
            try:
                ms, tps, peak, reserved, loss = time_torch(args, cfg, "cuda")
            except Exception as e2:
                print(f"torch model failed again: {e2!r}"[:1000])
    print()
    print(f"# enwik8-shape training step: {cfg['n_layer']} layers, d {cfg['n_embd']}, "
          f"{cfg['n_head']} heads, {cfg['pattern']}, n {cfg['n_ctx']}, batch {args.batch}, "
          f"dropout {cfg['dropout']}; forward + backward + clipping + AdamW")
    print()
    print("| implementation | step ms | tokens/s | peak memory GB |")
    print("|---|---|---|---|")
    if ours:
        label = f"recompute {ours.get('recompute', '?')}, block {ours.get('block', '?')}"
        print(f"| sparsetx bf16, {label} | {ours['step_ms']:.1f} | "
              f"{ours['tokens_per_s']:.0f} | {ours['peak_bytes'] / 1e9:.2f} |")
    if ms is not None:
        how = {"model": "compiled", "attention": "flex_attention compiled, rest eager",
               "none": "eager"}[args.compile] + (", bf16 autocast" if args.bf16 else "")
        how += ", checkpointing" if args.checkpoint else ""
        print(f"| PyTorch + FlexAttention ({how}) | {ms:.1f} | {tps:.0f} | "
              f"{peak / 1e9:.2f} (reserved {reserved / 1e9:.2f}) |")
    if ours and ms is not None:
        ratio = ours["tokens_per_s"] / tps
        print(f"\nours / PyTorch tokens/s: {ratio:.2f} (target >= 1.5: "
              f"{'met' if ratio >= 1.5 else 'NOT met'})")
    return 0 if (ms is not None and (ours or not args.bench)) else 1


if __name__ == "__main__":
    sys.exit(main())
