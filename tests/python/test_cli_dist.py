"""test_cli_dist.py: data-parallel sparsetx-train and sparsetx-launch, what runs on one CPU.

Standard library only. Usage: python3 test_cli_dist.py <libsparsetx.so> <build dir>. Checks:

 - world size 1 through the data-parallel path (WORLD_SIZE=1 RANK=0, and under
   `sparsetx-launch --gpus 1`, on the CPU backend) logs the same losses, bit for bit, and
   writes a checkpoint with the same weights and Adam moments as the same run without it
   (dropout on, clipping on); with --grad-allreduce bf16 it trains (finite losses, the first
   loss equal: it comes before any update);
 - a checkpoint written by the data-parallel run resumes in a plain run exactly where an
   uninterrupted plain run is (the data position and step are global);
 - the environment and flags are checked: WORLD_SIZE=abc, RANK outside the world, RANK without
   WORLD_SIZE, WORLD_SIZE=2 without a rendezvous file, a global batch the world does not
   divide, --dist-rendezvous without the variables: exit 2 with the reason; WORLD_SIZE=2 on the
   CPU: exit 1, "one rank only"; a rendezvous file left by an earlier run is refused;
 - sparsetx-launch: gives every copy RANK, LOCAL_RANK, WORLD_SIZE and STX_DIST_RENDEZVOUS;
   when one copy fails it stops the others at once and exits 1 naming that rank; SIGTERM is
   passed on to every copy; bad usage exits 2.
Exit 0 on success, 1 on failure.
"""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data"))
from read_checkpoint import read_checkpoint  # noqa: E402

SMALL = ["--device", "cpu", "--layers", "2", "--width", "32", "--heads", "2", "--ctx", "64",
         "--block", "16", "--pattern", "local:16+strided:8", "--batch", "4", "--lr", "3e-3",
         "--threads", "1", "--seed", "3", "--dropout", "0.1", "--clip", "0.5", "--plain",
         "--eval-batches", "1", "--log-every", "1"]
FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "STX_DIST_RENDEZVOUS")
           and not k.startswith("OMPI_COMM_WORLD")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd, env, cwd, timeout=120):
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def losses(path):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(path)) if "loss" in r]


def main():
    build = os.path.abspath(sys.argv[2])
    train = os.path.join(build, "cli", "sparsetx-train")
    launch = os.path.join(build, "cli", "sparsetx-launch")
    tmp = tempfile.mkdtemp(prefix="stx_test_cli_dist.")
    rng = random.Random(4)
    with open(os.path.join(tmp, "data.txt"), "w") as f:
        f.write("".join(rng.choice("abcdefghij klmnop\n.,") for _ in range(60000)))
    steps = ["--steps", "6"]

    # ---------------------------------------------- world size 1 == no data parallel
    runs = {
        "plain": ([train, "data.txt"], clean_env()),
        "env": ([train, "data.txt"], clean_env(WORLD_SIZE=1, RANK=0, LOCAL_RANK=0)),
        "ompi": ([train, "data.txt"], clean_env(OMPI_COMM_WORLD_SIZE=1, OMPI_COMM_WORLD_RANK=0)),
        "launch": ([launch, "--gpus", "1", "--", train, "data.txt"], clean_env()),
    }
    ckpt = {}
    for name, (cmd, env) in runs.items():
        p = run(cmd + SMALL + steps + ["--save", name + ".ckpt", "--log", name + ".jsonl"], env,
                tmp)
        check(p.returncode == 0, "%s run exits 0 (%s)" % (name, p.stderr.strip()[-300:]))
        ckpt[name] = read_checkpoint(os.path.join(tmp, name + ".ckpt"))
        if name != "plain":
            check("data parallel: 1 ranks" in p.stdout, "%s run says it is data parallel" % name)
    base = losses(os.path.join(tmp, "plain.jsonl"))
    check(len(base) == 6, "the plain run logs 6 losses")
    for name in ("env", "ompi", "launch"):
        check(losses(os.path.join(tmp, name + ".jsonl")) == base,
              "%s: the same losses, bit for bit, as without data parallel" % name)
        for key in ("tensors", "moments", "optimizer", "config"):
            check(ckpt[name][key] == ckpt["plain"][key],
                  "%s: checkpoint %s identical to the plain run's" % (name, key))
    app = dict(line.split("=", 1) for line in ckpt["env"]["app_state"].splitlines() if "=" in line)
    check(app.get("world_size") == "1" and app.get("batch") == "4",
          "app_state records the global batch and the world size")

    p = run([train, "data.txt"] + SMALL + steps + ["--grad-allreduce", "bf16", "--log", "bf.jsonl",
                                                   "--bucket-layers", "1"],
            clean_env(WORLD_SIZE=1, RANK=0), tmp)
    bf = losses(os.path.join(tmp, "bf.jsonl")) if p.returncode == 0 else []
    check(p.returncode == 0 and len(bf) == 6 and bf[0] == base[0] and
          all(abs(a[1] - b[1]) < 0.05 for a, b in zip(bf, base)),
          "bf16 all-reduce trains: the first loss equal, the others close (%s)" % p.stderr[-200:])

    # ---------------------------------------------- resume across the data-parallel boundary
    p = run([train, "data.txt"] + SMALL + ["--steps", "3", "--save", "half.ckpt"],
            clean_env(WORLD_SIZE=1, RANK=0), tmp)
    check(p.returncode == 0, "a data-parallel run to step 3 (of 6: --steps 6 on resume)")
    p = run([train, "--resume", "half.ckpt", "--steps", "6", "--log", "resumed.jsonl"],
            clean_env(), tmp)
    check(p.returncode == 0, "resumed without data parallel (%s)" % p.stderr[-200:])
    # The uninterrupted reference: 6 steps, with the cosine schedule of 6 steps from the start.
    p = run([train, "data.txt"] + SMALL + ["--steps", "3", "--save", "ref.ckpt"], clean_env(), tmp)
    p = run([train, "--resume", "ref.ckpt", "--steps", "6", "--log", "ref.jsonl"], clean_env(), tmp)
    check(losses(os.path.join(tmp, "resumed.jsonl")) == losses(os.path.join(tmp, "ref.jsonl")),
          "a data-parallel checkpoint resumes exactly as a plain one")

    # ---------------------------------------------- bad environment and flags
    cases = [
        (clean_env(WORLD_SIZE="abc"), [], 2, "WORLD_SIZE='abc'"),
        (clean_env(WORLD_SIZE=2, RANK=2), [], 2, "RANK='2'"),
        (clean_env(RANK=0), [], 2, "RANK is set but WORLD_SIZE is not"),
        (clean_env(WORLD_SIZE=2), [], 2, "RANK is not set"),
        (clean_env(WORLD_SIZE=2, RANK=0), [], 2, "--dist-rendezvous"),
        (clean_env(WORLD_SIZE=3, RANK=0), ["--dist-rendezvous", "rv1"], 2,
         "must be divisible by the world size (3)"),
        (clean_env(), ["--dist-rendezvous", "rv2"], 2, "needs RANK and WORLD_SIZE"),
        (clean_env(WORLD_SIZE=2, RANK=0), ["--dist-rendezvous", "rv3"], 1, "one rank only"),
        (clean_env(WORLD_SIZE=1, RANK=0), ["--grad-allreduce", "fp16"], 2, "fp16"),
        (clean_env(WORLD_SIZE=1, RANK=0), ["--bucket-layers", "0"], 2, "--bucket-layers"),
    ]
    for env, extra, want, needle in cases:
        p = run([train, "data.txt"] + SMALL + ["--steps", "2"] + extra, env, tmp)
        check(p.returncode == want and needle in p.stderr,
              "exit %d with '%s' (got %d: %s)" % (want, needle, p.returncode,
                                                  p.stderr.strip()[-200:]))
    open(os.path.join(tmp, "stale"), "w").write("x" * 257)
    p = run([train, "data.txt"] + SMALL + ["--steps", "2", "--dist-rendezvous", "stale"],
            clean_env(WORLD_SIZE=2, RANK=0), tmp)
    check(p.returncode == 1 and ("already exists" in p.stderr or "one rank only" in p.stderr),
          "rank 0 refuses a rendezvous file left by an earlier run, or the CPU world of 2 "
          "(%s)" % p.stderr.strip()[-200:])
    p = run([train, "data.txt"] + SMALL + ["--steps", "2", "--dist-rendezvous", "stale",
                                           "--dist-timeout", "2"],
            clean_env(WORLD_SIZE=2, RANK=1), tmp)
    check(p.returncode == 1 and "does not hold a communicator id" in p.stderr,
          "rank 1 refuses a file that is not an id (%s)" % p.stderr.strip()[-200:])
    t0 = time.time()
    p = run([train, "data.txt"] + SMALL + ["--steps", "2", "--dist-rendezvous", "absent",
                                           "--dist-timeout", "1"],
            clean_env(WORLD_SIZE=2, RANK=1), tmp)
    check(p.returncode == 1 and "did not appear within 1 s" in p.stderr and time.time() - t0 < 30,
          "rank 1 gives up waiting for rank 0's file after --dist-timeout (%s)" %
          p.stderr.strip()[-200:])

    # ---------------------------------------------- the launcher
    script = ('echo "$RANK $LOCAL_RANK $WORLD_SIZE $STX_DIST_RENDEZVOUS" > env.$RANK; '
              'if [ "$RANK" = 1 ]; then sleep 0.5; exit 3; fi; sleep 60')
    t0 = time.time()
    p = run([launch, "--gpus", "3", "--grace", "5", "--", "sh", "-c", script], clean_env(), tmp)
    took = time.time() - t0
    check(p.returncode == 1 and "rank 1" in p.stderr and "exited with status 3" in p.stderr,
          "a failing copy: exit 1 naming rank 1 (%s)" % p.stderr.strip())
    check(took < 20, "the other copies were stopped at once (%.1f s, they sleep 60)" % took)
    seen = sorted(open(os.path.join(tmp, "env.%d" % r)).read().split()[:3] for r in range(3))
    check(seen == [[str(r), str(r), "3"] for r in range(3)],
          "each copy got RANK, LOCAL_RANK and WORLD_SIZE (%s)" % seen)
    rv = open(os.path.join(tmp, "env.0")).read().split()[3]
    check(rv.endswith("/rendezvous") and not os.path.exists(os.path.dirname(rv)),
          "a rendezvous file in a temporary directory, removed at the end")

    proc = subprocess.Popen([launch, "--gpus", "2", "--", "sh", "-c",
                             'trap "echo got > term.$RANK; exit 0" TERM; '
                             'echo up > up.$RANK; while true; do sleep 0.1; done'],
                            env=clean_env(), cwd=tmp, stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if all(os.path.exists(os.path.join(tmp, "up.%d" % r)) for r in range(2)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = None
    check(rc == 0 and all(os.path.exists(os.path.join(tmp, "term.%d" % r)) for r in range(2)),
          "SIGTERM is passed on to every copy, which stop cleanly (exit %s)" % rc)

    for args, needle in ((["--", "true"], "--gpus"), (["--gpus", "0", "--", "true"], "--gpus"),
                         (["--gpus", "2"], "no COMMAND"), (["--bogus"], "unknown")):
        p = run([launch] + args, clean_env(), tmp)
        check(p.returncode == 2 and needle in p.stderr, "launcher usage %s: exit 2" % args)
    p = run([launch, "--gpus", "1", "--", "/nonexistent/tool"], clean_env(), tmp)
    check(p.returncode == 1 and "rank 0" in p.stderr, "a command that cannot run: exit 1")

    subprocess.run(["rm", "-rf", tmp])
    print("%d failure(s)" % len(FAILURES))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
