"""compare_decode.py: sampling speed of sparsetx against the PyTorch decoder, in one command.

Usage (on the GPU machine, from the project root):
  python3 tests/perf/compare_decode.py ./build-gpu/cli/sparsetx-bench PEER_SCRIPT

Runs, one after the other in this process's lifetime:
  1. `sparsetx-bench decode` on the paper's enwik8 shape (30 layers, d 512, 8 heads,
     fixed:128:32:4, n_ctx 12,288): stx_sample over every position at batch 1 and 64, and
     per-position decoder / naive timings;
  2. the same on the strided model (local:256,strided:256, n_ctx 65,536): per-position
     timings at 1,000 and 60,000 (no full run, no naive sampler: one naive byte there is a
     forward over 60,000 positions);
  3. PEER_SCRIPT (../shared/peers/decode_bench.py: batch-1 PyTorch decoding of the enwik8 shape
     with a dense bf16 key/value cache, eager and as a CUDA graph).
Then prints the batch-1 ratios. Standard library only; the peer needs torch and a GPU.
"""

import re
import subprocess
import sys


def run(cmd):
    print("$ " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(p.stdout, flush=True)
    if p.returncode != 0:
        print("(exit %d)" % p.returncode)
    return p.stdout


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    bench, peer = sys.argv[1], sys.argv[2]
    ours = run([bench, "decode", "--device", "cuda", "--precision", "bf16"])
    run([bench, "decode", "--device", "cuda", "--precision", "bf16", "--ctx", "65536",
         "--pattern", "local:256,strided:256", "--block", "64", "--full", "0", "--naive", "0",
         "--positions", "1000,60000", "--steps", "100"])
    theirs = run([sys.executable, peer])
    full = {int(b): float(r) for b, r in re.findall(r"^\| (\d+) \| [^|]+\| [^|]+\| [^|]+\| (\d+) \|",
                                                     ours, re.M)}
    graph = re.search(r"cuda graph: ([\d,]+) bytes/s at ~1k, ([\d,]+) at ~12k", theirs)
    eager = re.search(r"eager: ([\d,]+) bytes/s at ~1k, ([\d,]+) at ~12k", theirs)
    print("| sampler (enwik8 shape, batch 1) | bytes/s | ours / it |\n|---|---|---|")
    if 1 in full:
        print("| sparsetx stx_sample, positions 0 .. 12,287 | %.0f | 1.0 |" % full[1])
    for name, m in (("PyTorch CUDA graph", graph), ("PyTorch eager", eager)):
        if m and 1 in full:
            for where, v in zip(("~1k", "~12k"), m.groups()):
                v = float(v.replace(",", ""))
                print("| %s at %s | %.0f | %.1fx |" % (name, where, v, full[1] / v))
    if 64 in full:
        print("\nbatch 64: %.0f bytes/s (stx_sample, positions 0 .. 12,287)" % full[64])
    return 0


if __name__ == "__main__":
    sys.exit(main())
