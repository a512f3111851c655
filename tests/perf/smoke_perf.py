"""smoke_perf.py: the benchmark instruments run end to end at tiny sizes on the CPU, so that
they cannot rot between GPU runs. Not a timing test: only exit codes, the shape of the output
and the numbers' consistency are checked.

Usage: python3 smoke_perf.py <libsparsetx.so> <build dir>   (CTest: python_perf_smoke)

  - sparsetx-bench attention --csv: parsed as compare_attention.py parses it; exact pair
    counts (dense = heads * n(n+1)/2), a head list [a;b] taken as one pattern;
  - sparsetx-bench long: a row per n, the n*sqrt(n) fit and slopes printed;
  - sparsetx-bench depth: the growth of peak memory with depth against the predicted weights,
    gradients, Adam moments and residual stream (on the CPU the library counts exactly those);
  - sparsetx-bench train --csv: parsed as torch_enwik8_step.py parses it;
  - bad usage exits 2, bad values 1;
  - with torch (Debian's python3-torch): compare_attention.py --dry-run (ours on the CPU
    against eager masked attention; the peers' mask pair counts must equal the library's) and
    torch_enwik8_step.py --smoke (the PyTorch model equals sparsetx's in fp64, to 1e-9).
Exit 0 when everything holds, 1 otherwise.
"""

import importlib.util
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from perf_common import parse_bench_csv, parse_train_csv  # noqa: E402

failures = []


def check(what, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + what + ("" if ok else f": {detail}"))
    if not ok:
        failures.append(what)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def main():
    lib, build = sys.argv[1], sys.argv[2]
    bench = os.path.join(build, "cli", "sparsetx-bench")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    py = sys.executable
    # the two torch scripts start first and run beside the C checks (torch's import is slow)
    torch_ok = importlib.util.find_spec("torch") is not None
    procs = {}
    if torch_ok:
        procs["compare_attention.py --dry-run"] = subprocess.Popen(
            [py, os.path.join(HERE, "compare_attention.py"), bench, "--dry-run", "--configs",
             "2x16", "--n", "96", "--tokens", "192",
             "--patterns", "dense;local:{l};strided:{l};fixed:{l}:{c};[local:8;fixed:16:4:2]"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        procs["torch_enwik8_step.py --smoke"] = subprocess.Popen(
            [py, os.path.join(HERE, "torch_enwik8_step.py"), "--smoke", "--lib", lib],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    else:
        print("skip the torch scripts: torch is not importable (apt-get install python3-torch)")

    heads, n = 2, 64
    r = run([bench, "attention", "--device", "cpu", "--precision", "fp32", "--csv", "--n",
             str(n), "--tokens", str(2 * n), "--heads", str(heads), "--dim", "16", "--runs", "1",
             "--patterns", "dense;[local:8;strided:8];fixed:16:4:2"], env=env)
    rows = parse_bench_csv(r.stdout)
    check("attention --csv exits 0", r.returncode == 0, r.stderr)
    check("attention --csv has 3 rows, the head list as one pattern",
          [x["pattern"] for x in rows] == ["dense", "[local:8;strided:8]", "fixed:16:4:2"],
          r.stdout)
    if rows:
        check("attention --csv: dense pairs = heads * n(n+1)/2",
              rows[0]["pairs"] == heads * n * (n + 1) / 2 == rows[0]["dense_pairs"], rows[0])
        check("attention --csv: batch = tokens / n, positive times",
              all(x["batch"] == 2 and x["fwdbwd_ms"] > 0 for x in rows), rows)

    r = run([bench, "long", "--device", "cpu", "--n", "256,1024", "--width", "16", "--heads",
             "2", "--layers", "2", "--runs", "1"], env=env)
    check("long exits 0", r.returncode == 0, r.stderr + r.stdout)
    check("long: a row for each n with L = sqrt(n)",
          re.search(r"^\| 256 \| 16 \|", r.stdout, re.M) is not None
          and re.search(r"^\| 1024 \| 32 \|", r.stdout, re.M) is not None, r.stdout)
    check("long: the n*sqrt(n) fit and the slopes",
          "n*sqrt(n) fit" in r.stdout and "log-log slopes" in r.stdout, r.stdout)

    r = run([bench, "depth", "--device", "cpu", "--layers", "2,4", "--width", "16", "--heads",
             "2", "--ctx", "48", "--batch", "2", "--pattern", "local:8,strided:8"], env=env)
    check("depth exits 0", r.returncode == 0, r.stderr + r.stdout)
    m = re.search(r"measured / predicted ([0-9.]+)", r.stdout)
    check("depth: growth against the prediction (within 2x on the CPU)",
          m is not None and 0.5 <= float(m.group(1)) <= 2.0, r.stdout)

    r = run([bench, "train", "--device", "cpu", "--preset", "tiny", "--layers", "1", "--width",
             "16", "--heads", "2", "--ctx", "32", "--pattern", "local:8", "--steps", "1",
             "--csv"], env=env)
    row = parse_train_csv(r.stdout)
    check("train --csv exits 0 and parses", r.returncode == 0 and row is not None,
          r.stderr + r.stdout)
    if row:
        check("train --csv: tokens/s and peak memory", row["tokens_per_s"] > 0
              and row["peak_bytes"] > 0 and row["pattern"] == "local:8", row)

    r = run([bench, "decode", "--device", "cpu", "--preset", "tiny", "--layers", "1", "--width",
             "32", "--heads", "2", "--ctx", "512", "--pattern", "local:32,strided:32", "--batch",
             "1,2", "--steps", "4", "--positions", "0,300"])
    check("decode exits 0", r.returncode == 0, r.stderr + r.stdout)
    full = [l for l in r.stdout.splitlines() if l.startswith(("| 1 |", "| 2 |"))]
    per_pos = [l for l in r.stdout.splitlines() if l.startswith(("| 0 |", "| 300 |"))]
    check("decode: stx_sample over every position for batch 1 and 2",
          len(full) == 2 and all("0 .. 511" in l for l in full), r.stdout)
    check("decode: decoder and naive times at positions 0 and 300", len(per_pos) == 2 and
          all(l.rstrip().endswith("x |") for l in per_pos), r.stdout)
    check("decode --batch 0 exits 1", run([bench, "decode", "--device", "cpu", "--batch", "0"])
          .returncode == 1)
    check("long --n abc exits 1", run([bench, "long", "--n", "abc", "--device", "cpu"])
          .returncode == 1)
    check("depth --runs 0 exits 2", run([bench, "depth", "--runs", "0"]).returncode == 2)
    check("bench without a command exits 2", run([bench]).returncode == 2)

    for name, p in procs.items():
        out, _ = p.communicate(timeout=120)
        check(f"{name} exits 0", p.returncode == 0, out[-2000:])
        if name.startswith("compare"):
            check("compare_attention: one table and the targets",
                  "| pattern | n |" in out and "| target |" in out, out[-2000:])
            check("compare_attention: the peers' masks allow exactly our pairs",
                  "pairs differ" not in out and out.count("| eager ") >= 5, out[-3000:])
        else:
            check("torch_enwik8_step --smoke: the model equals sparsetx's",
                  "smoke: ok" in out, out[-2000:])
    print("FAILED: " + ", ".join(failures) if failures else "all perf smoke checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
