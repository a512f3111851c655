#!/usr/bin/env python3
"""compare_attention.py: our block-sparse attention against PyTorch FlexAttention and SDPA,
in one command on one machine, so that every ratio comes from the same run.

    python3 tests/perf/compare_attention.py ./build-gpu/cli/sparsetx-bench [--long]

What one run does, in this order:
  1. `sparsetx-bench attention --csv` for each (heads x head dim, n): our forward and
     forward+backward medians and the exact number of allowed (q, k) pairs of each pattern
     (from stx_layout_stats, summed over heads), which both sides' useful FLOPs use;
  2. the device copy bandwidth (a 1 GiB device-to-device copy, torch; read + write bytes over
     time) and the bf16 matrix rate (an 8192^3 matmul), the floors' denominators;
  3. the peers on the same shapes: FlexAttention (torch.compile'd flex_attention with a block
     mask of the same pattern, 128 x 128 blocks) and SDPA dense causal, bf16, median of --runs
     calls timed with CUDA events (forward+backward: the forward, then torch.autograd.grad of
     (q, k, v) against a fixed random output gradient, so nothing accumulates into .grad).
It prints one markdown table and then the performance issue's targets, each met or not.

Definitions (the same for both sides):
  - useful FLOPs: 4 * batch * head_dim * pairs forward (pairs summed over heads), 3.5 times
    that forward+backward; TFLOP/s = useful FLOPs / median time.
  - bytes-moved floor of forward+backward: read q, k, v, o, do and write dq, dk, dv, o once in
    bf16 (9 tensors of batch * n * heads * head_dim elements, 2 bytes each) plus the row
    log-sum-exp in fp32 written once and read once (2 * 4 bytes * batch * heads * n); floor
    time = those bytes / the measured copy bandwidth. "ours / floor" = our time / floor time.
  - FLOP floor: useful forward+backward FLOPs / the measured bf16 matmul rate.
  - ratio = peer time / our time (forward+backward): above 1 we are faster.

Our strided pattern runs in the transposed order (lib/layout.h: position r*L + c at slot
c*R + r, R = n / L), where it is causal attention inside chunks of R slots; its peer is the same
computation for Flex ("strided-col": causal inside chunks of R), not Flex on the natural-order
mask (which touches every block). Both have exactly the same number of allowed pairs when L
divides n.

Degrades gracefully: without torch (or without CUDA in torch, or without FlexAttention or
triton) it says so and prints our side (and whatever peers did run); --bandwidth GBPS supplies
a bandwidth measured elsewhere. --dry-run checks the whole pipeline on a CPU: our bench on the
CPU backend at tiny sizes, the peers as eager masked attention in fp32 (any torch >= 1.10),
the copy bandwidth of a host tensor; the numbers mean nothing, the parsing and the table do.
Standard library + torch only.
"""

import argparse
import importlib
import math
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from perf_common import parse_bench_csv, split_patterns  # noqa: E402
from stx_masks import (count_pairs, dense_mask, layer_mask_mod,  # noqa: E402
                       parse_layer_pattern, pattern_kind, strided_col_mask_mod)

torch = None  # imported in load_torch(), so that a machine without torch still runs ours


def load_torch():
    """torch or None, with the reason printed."""
    global torch
    try:
        import torch as t  # noqa: F401
    except ImportError as e:
        print(f"note: torch is not importable ({e}); printing our side only")
        return None
    torch = t
    return t


# ---------------------------------------------------------------------------- our side


def run_ours(args, heads, dim, n, patterns):
    """Rows of `sparsetx-bench attention --csv` for one (heads, dim, n): a list of dicts with
    numbers converted, or [] (with the error printed) when the bench failed."""
    cmd = [args.bench, "attention", "--csv", "--device", args.device, "--precision",
           args.precision, "--n", str(n), "--tokens", str(args.tokens), "--heads", str(heads),
           "--dim", str(dim), "--block", str(args.block), "--runs", str(args.runs),
           "--patterns", ";".join(patterns)]
    print("$ " + " ".join(shell_quote(c) for c in cmd), flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.bench_timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"  ours failed: {e}")
        return []
    rows = parse_bench_csv(proc.stdout)
    if proc.returncode != 0:
        print(f"  ours exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return rows


def shell_quote(s):
    return s if all(c.isalnum() or c in "-_./:=," for c in s) else "'" + s + "'"


# ------------------------------------------------------------------------ peers


def peer_mask(pattern, n):
    """(name, mask_mod, per_head) of the peer's mask for one of our layer patterns: strided
    alone in our transposed order ("strided-col"), anything else in natural order."""
    if pattern_kind(pattern) == "strided":
        mask_mod, R = strided_col_mask_mod(parse_layer_pattern(pattern)[0][0][1][0], n)
        return f"strided-col (R={R})", mask_mod, False
    mask_mod, per_head = layer_mask_mod(pattern)
    return pattern, mask_mod, per_head


class Timer:
    """Median milliseconds of fn() over `runs` calls after `warmup`, with CUDA events on a GPU
    and the host clock otherwise."""

    def __init__(self, cuda):
        self.cuda = cuda

    def __call__(self, fn, runs, warmup):
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(runs):
            if self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def measure_bandwidth(timer, device, nbytes):
    """Copy bandwidth in GB/s: (read + write) bytes of dst.copy_(src) over its median time."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16 if device == "cuda" else torch.float16,
                      device=device)
    src.fill_(1.0)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src), runs=10, warmup=3)
    del src, dst
    return 2.0 * nbytes / (ms * 1e-3) / 1e9


def measure_matmul(timer, device, size, dtype):
    """Dense matrix rate in TFLOP/s of a size^3 matmul."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    ms = timer(lambda: torch.matmul(a, b), runs=10, warmup=3)
    return 2.0 * size ** 3 / (ms * 1e-3) / 1e12


class Peers:
    """The peer implementations available in this torch, with the reasons for those that are
    not."""

    def __init__(self, args):
        self.args = args
        self.cuda = not args.dry_run and torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.timer = Timer(self.cuda)
        self.flex = None
        self.create_block_mask = None
        self.notes = []
        if args.dry_run:
            self.notes.append("dry run: peers are eager masked attention on the CPU, fp32")
            return
        if not self.cuda:
            self.notes.append("torch has no CUDA device here: no peers")
            return
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            dynamo_config = importlib.import_module("torch._dynamo").config
            for key in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                        "accumulated_cache_size_limit"):
                if hasattr(dynamo_config, key):  # one compile per mask and shape
                    setattr(dynamo_config, key, 256)
            self.flex = torch.compile(flex_attention, dynamic=False)
            self.create_block_mask = create_block_mask
        except Exception as e:  # ImportError, or no triton behind torch.compile
            self.notes.append(f"FlexAttention unavailable: {e!r}"[:300])
        if not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
            self.notes.append("SDPA unavailable (torch < 2.0)")

    @property
    def available(self):
        return self.args.dry_run or self.cuda

    def tensors(self, batch, heads, n, dim):
        g = torch.Generator(device=self.device)
        g.manual_seed(1234)
        shape = (batch, heads, n, dim)
        q, k, v = [torch.randn(shape, device=self.device, dtype=self.dtype, generator=g)
                   .requires_grad_(True) for _ in range(3)]
        do = torch.randn(shape, device=self.device, dtype=self.dtype, generator=g)
        return q, k, v, do

    def time_pair(self, attend, q, k, v, do):
        """(fwd ms, fwd+bwd ms) of attend(q, k, v)."""
        runs, warmup = self.args.peer_runs, self.args.peer_warmup

        def forward():  # with autograd on, as in training (and no extra compilation)
            attend(q, k, v)

        def forward_backward():
            o = attend(q, k, v)
            torch.autograd.grad(o, (q, k, v), do)
        fwd = self.timer(forward, runs, warmup)
        fwdbwd = self.timer(forward_backward, runs, warmup)
        return fwd, fwdbwd

    def block_mask(self, mask_mod, per_head, heads, n):
        kw = dict(B=None, H=heads if per_head else None, Q_LEN=n, KV_LEN=n, device=self.device,
                  BLOCK_SIZE=128)
        try:
            return self.create_block_mask(mask_mod, **kw)
        except torch.cuda.OutOfMemoryError:
            # the eager mask evaluation holds n x n intermediates; the compiled one does not
            torch.cuda.empty_cache()
            return self.create_block_mask(mask_mod, _compile=True, **kw)

    def run(self, pattern, batch, heads, n, dim):
        """A list of (peer name, fwd ms, fwd+bwd ms, pairs or None) for one of our patterns,
        or (peer name, error text)."""
        out = []
        name, mask_mod, per_head = peer_mask(pattern, n)
        q, k, v, do = self.tensors(batch, heads, n, dim)
        if self.args.dry_run:
            mask = dense_mask(mask_mod, heads, n, self.device)
            scale = 1.0 / math.sqrt(dim)

            def eager(q_, k_, v_):
                s = torch.matmul(q_, k_.transpose(-1, -2)) * scale
                s = s.masked_fill(~mask, float("-inf"))
                return torch.matmul(torch.softmax(s, dim=-1), v_)
            pairs = count_pairs(mask_mod, heads, n, self.device)
            out.append((f"eager {name}",) + self.time_pair(eager, q, k, v, do) + (pairs,))
            if pattern_kind(pattern) == "dense":  # stands in for SDPA, to check the targets
                out.append(("SDPA (eager stand-in)",) + self.time_pair(eager, q, k, v, do)
                           + (pairs,))
            return out
        if self.flex is not None:
            try:
                bm = self.block_mask(mask_mod, per_head, heads, n)
                out.append((f"Flex {name}",)
                           + self.time_pair(lambda a, b, c: self.flex(a, b, c, block_mask=bm),
                                            q, k, v, do) + (None,))
                del bm
            except Exception as e:
                out.append((f"Flex {name}", f"failed: {e!r}"[:200]))
        if pattern_kind(pattern) == "dense" and hasattr(torch.nn.functional,
                                                        "scaled_dot_product_attention"):
            try:
                sdpa = torch.nn.functional.scaled_dot_product_attention
                out.append(("SDPA dense causal",)
                           + self.time_pair(lambda a, b, c: sdpa(a, b, c, is_causal=True),
                                            q, k, v, do) + (None,))
            except Exception as e:
                out.append(("SDPA dense causal", f"failed: {e!r}"[:200]))
        del q, k, v, do
        if self.cuda:
            torch.cuda.empty_cache()
        return out


# ------------------------------------------------------------------------ the table


def fmt(x, spec=".2f"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec)


def floor_bytes(batch, heads, n, dim):
    return 9 * 2 * batch * n * heads * dim + 2 * 4 * batch * heads * n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", help="path to sparsetx-bench")
    ap.add_argument("--configs", default=None,
                    help="heads x head dim list (default 16x64,8x128; dry run 2x16,1x32)")
    ap.add_argument("--n", default=None, help="lengths (default 4096,16384; dry run 128,256)")
    ap.add_argument("--tokens", type=int, default=None,
                    help="batch x n (default 65536; dry run 512)")
    ap.add_argument("--long", action="store_true",
                    help="also n = 65,536 at batch 1, L = 256 (no dense: the peers skip it too)")
    ap.add_argument("--patterns", default=None,
                    help="';'-separated, {l} = stride (128 up to n 16,384, 256 above; dry run "
                         "32), {c} = summary cells (32; dry run 8); default "
                         "'dense;local:{l};strided:{l};fixed:{l}:{c}'")
    ap.add_argument("--block", type=int, default=64, help="our block size (default 64)")
    ap.add_argument("--runs", type=int, default=10, help="our timed runs (median)")
    ap.add_argument("--peer-runs", type=int, default=20, help="peers' timed runs (median)")
    ap.add_argument("--peer-warmup", type=int, default=3)
    ap.add_argument("--device", default=None, help="our backend (default cuda; dry run cpu)")
    ap.add_argument("--precision", default=None, help="ours (default bf16; dry run fp32)")
    ap.add_argument("--bandwidth", type=float, default=None,
                    help="copy bandwidth in GB/s instead of measuring it")
    ap.add_argument("--no-peers", action="store_true", help="ours only")
    ap.add_argument("--bench-timeout", type=float, default=1800)
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU check of the whole script at tiny sizes (numbers meaningless)")
    args = ap.parse_args()
    dry = args.dry_run
    args.configs = args.configs or ("2x16,1x32" if dry else "16x64,8x128")
    args.n = args.n or ("128,256" if dry else "4096,16384")
    args.tokens = args.tokens or (512 if dry else 65536)
    args.device = args.device or ("cpu" if dry else "cuda")
    args.precision = args.precision or ("fp32" if dry else "bf16")
    template = args.patterns or "dense;local:{l};strided:{l};fixed:{l}:{c}"
    if dry:
        args.runs = min(args.runs, 3)
        args.peer_runs = min(args.peer_runs, 3)
        args.peer_warmup = min(args.peer_warmup, 1)

    configs = []
    for item in args.configs.split(","):
        h, d = item.lower().split("x")
        configs.append((int(h), int(d)))
    shapes = []  # (n, batch, patterns)
    for n in (int(x) for x in args.n.split(",")):
        ell = 32 if dry else (128 if n <= 16384 else 256)
        c = 8 if dry else 32
        shapes.append((n, max(1, args.tokens // n),
                       [p.format(l=ell, c=c) for p in split_patterns(template)]))
    if args.long:
        long_patterns = [p.format(l=256, c=32) for p in split_patterns(template)
                         if pattern_kind(p.format(l=256, c=32)) != "dense"]
        shapes.append((65536, 1, long_patterns))

    # 1. ours
    ours = {}  # (heads, dim, n, pattern) -> row
    for heads, dim in configs:
        for n, batch, patterns in shapes:
            tokens_saved = args.tokens
            args.tokens = n * batch
            for r in run_ours(args, heads, dim, n, patterns):
                ours[(heads, dim, n, r["pattern"])] = r
            args.tokens = tokens_saved

    # 2. floors' denominators and 3. peers
    bandwidth, matrix_rate, peers = args.bandwidth, None, None
    device_name = "?"
    if load_torch() is not None:
        print(f"torch {torch.__version__}", flush=True)
        if dry or torch.cuda.is_available():
            timer = Timer(not dry)
            dev = "cpu" if dry else "cuda"
            if not dry:
                device_name = torch.cuda.get_device_name()
            if bandwidth is None:
                bandwidth = measure_bandwidth(timer, dev, (64 << 20) if dry else (1 << 30))
            matrix_rate = measure_matmul(timer, dev, 256 if dry else 8192,
                                         torch.float32 if dry else torch.bfloat16)
        else:
            print("note: torch sees no CUDA device: no peers, no measured bandwidth")
        if not args.no_peers:
            peers = Peers(args)
            for note in peers.notes:
                print("note: " + note)
            if not peers.available:
                peers = None
    peer_rows = {}
    if peers is not None:
        for heads, dim in configs:
            for n, batch, patterns in shapes:
                for p in patterns:
                    try:
                        peer_rows[(heads, dim, n, p)] = peers.run(p, batch, heads, n, dim)
                    except Exception as e:  # one failing peer must not end the comparison
                        peer_rows[(heads, dim, n, p)] = [("peer", f"failed: {e!r}"[:200])]
                    for row in peer_rows[(heads, dim, n, p)]:
                        times = (f"fwd {row[1]:.3f} ms, fwd+bwd {row[2]:.3f} ms"
                                 if len(row) > 2 else row[1])
                        print(f"  peer {row[0]}, {heads}x{dim}, n {n}: {times}", flush=True)

    # the table
    print()
    print(f"# attention: ours ({args.device} {args.precision}, block {args.block}) against "
          f"peers, one run; device: {device_name}")
    print(f"copy bandwidth {fmt(bandwidth, '.0f')} GB/s"
          + (" (given)" if args.bandwidth else " (not measured)" if bandwidth is None else
             " (measured: 64 MiB host copy)" if dry else " (measured: 1 GiB device copy)")
          + f"; matrix rate {fmt(matrix_rate, '.1f')} TFLOP/s "
          + ("(not measured)" if matrix_rate is None else
             "(fp32 matmul 256^3)" if dry else "(bf16 matmul 8192^3)")
          + f"; batch x n = {args.tokens}; ratio = peer time / our time (>1: we are faster)")
    print()
    print("| pattern | n | batch | heads x dim | ours fwd ms | ours fwd+bwd ms | ours TFLOP/s | "
          "peer | peer fwd+bwd ms | peer TFLOP/s | ratio | floor MB | floor ms | ours / floor | "
          "FLOP floor ms |")
    print("|" + "---|" * 15)
    results = []  # for the targets
    for heads, dim in configs:
        for n, batch, patterns in shapes:
            for p in patterns:
                r = ours.get((heads, dim, n, p))
                flops = 4.0 * batch * dim * r["pairs"] * 3.5 if r else None
                fb = floor_bytes(batch, heads, n, dim)
                floor_ms = fb / (bandwidth * 1e9) * 1e3 if bandwidth else None
                flop_floor = flops / (matrix_rate * 1e12) * 1e3 if flops and matrix_rate else None
                ours_tf = r["fwdbwd_tflops"] if r else None
                prow = peer_rows.get((heads, dim, n, p)) or [("—", None)]
                for peer in prow:
                    pname = peer[0]
                    pfb = peer[2] if len(peer) > 2 else None
                    ptf = flops / (pfb * 1e9) if (flops and pfb) else None
                    ratio = pfb / r["fwdbwd_ms"] if (r and pfb) else None
                    if len(peer) == 2 and peer[1]:
                        pname = f"{pname} ({peer[1]})"
                    if len(peer) > 3 and peer[3] is not None and r and peer[3] != r["pairs"]:
                        pname += f" [pairs differ: {peer[3]} vs ours {r['pairs']:.0f}]"
                    print(f"| {p} | {n} | {batch} | {heads}x{dim} | "
                          f"{fmt(r['fwd_ms'] if r else None, '.3f')} | "
                          f"{fmt(r['fwdbwd_ms'] if r else None, '.3f')} | {fmt(ours_tf, '.1f')} | "
                          f"{pname} | {fmt(pfb, '.3f')} | {fmt(ptf, '.1f')} | {fmt(ratio)} | "
                          f"{fb / 1e6:.4g} | {fmt(floor_ms, '.4f')} | "
                          f"{fmt(r['fwdbwd_ms'] / floor_ms if (r and floor_ms) else None)} | "
                          f"{fmt(flop_floor, '.3f')} |")
                    results.append(dict(pattern=p, kind=pattern_kind(p), n=n, heads=heads,
                                        dim=dim, ours=r, peer=pname, peer_ms=pfb, peer_tf=ptf,
                                        ratio=ratio, floor_ms=floor_ms))
    print_targets(results)
    missing = [k for k in ((h, d, n, p) for h, d in configs for n, _, ps in shapes for p in ps)
               if k not in ours]
    return 1 if missing else 0


def print_targets(results):
    """The performance issue's attention targets, from this run's numbers."""
    print()
    print("| target | pattern | n | heads x dim | value | needed | met |")
    print("|---|---|---|---|---|---|---|")

    def line(target, r, value, needed, ok):
        met = "—" if ok is None else ("yes" if ok else "NO")
        print(f"| {target} | {r['pattern']} | {r['n']} | {r['heads']}x{r['dim']} | {value} | "
              f"{needed} | {met} |")
    sdpa = {(r["n"], r["heads"], r["dim"]): r for r in results if r["peer"].startswith("SDPA")}
    floors_done = set()
    for r in results:
        ours, kind = r["ours"], r["kind"]
        if ours is None:
            continue
        if kind == "dense" and r["peer"].startswith("SDPA"):
            line("dense vs SDPA speed", r, fmt(r["ratio"]), ">= 0.9",
                 None if r["ratio"] is None else r["ratio"] >= 0.9)
        if r["peer"].startswith("Flex") or r["peer"].startswith("eager"):
            if kind == "fixed":
                line("fixed vs Flex speed", r, fmt(r["ratio"]), ">= 4",
                     None if r["ratio"] is None else r["ratio"] >= 4)
                s = sdpa.get((r["n"], r["heads"], r["dim"]))
                frac = (ours["fwdbwd_tflops"] / s["peer_tf"]
                        if s and s["peer_tf"] else None)
                line("fixed TFLOP/s / SDPA dense's", r, fmt(frac), ">= 0.5",
                     None if frac is None else frac >= 0.5)
            if kind in ("local", "strided"):
                line(f"{kind} vs Flex speed", r, fmt(r["ratio"]), ">= 2",
                     None if r["ratio"] is None else r["ratio"] >= 2)
        key = (r["pattern"], r["n"], r["heads"], r["dim"])
        if kind in ("local", "strided") and key not in floors_done:
            floors_done.add(key)
            of = ours["fwdbwd_ms"] / r["floor_ms"] if r["floor_ms"] else None
            line(f"{kind} time / bytes floor", r, fmt(of), "<= 2",
                 None if of is None else of <= 2)


if __name__ == "__main__":
    sys.exit(main())
