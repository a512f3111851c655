"""test_cli_train.py: sparsetx-train and sparsetx-eval end to end, as a user runs them.

Standard library only. Usage: python3 test_cli_train.py <libsparsetx.so> <build dir>; the
tools are <build dir>/cli/sparsetx-train and sparsetx-eval (a missing tool is a failure,
not a skip). Every check runs in a fresh temporary directory on a generated English text:

 - a short run exits 0, writes its checkpoint and a JSON-lines log with the documented keys;
 - exact resume: a run killed with SIGKILL at a random moment after its step-4 checkpoint
   and resumed from its last checkpoint logs the same losses, bit for bit, as the same run
   left alone (dropout on, so the dropout counter and the data generator state must come
   back too);
 - SIGINT finishes the step, saves a checkpoint that resumes, and exits 0; a second SIGINT
   exits at once with 130;
 - sparsetx-eval scores exactly the bytes of the test split (90/5/5), also with
   --min-context, and its per-byte log-softmax agrees with the library's mean loss;
 - bad input exits 1 with one line on stderr, bad usage exits 2, --help exits 0.
Exit 0 on success, 1 on failure.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

import cli_checks
from cli_checks import report

LOG_KEYS = ("step", "loss", "bpb", "val_bpb", "lr", "tokens_per_s", "elapsed_s")
# Every run uses the CPU backend, whatever the build: it is deterministic, which exact resume
# needs. The brief's small model: about a millisecond a step.
SMALL = ["--device", "cpu", "--layers", "1", "--width", "16", "--heads", "2", "--ctx", "32",
         "--block", "16", "--pattern", "local:8+strided:8", "--batch", "2", "--lr", "3e-3",
         "--threads", "1", "--seed", "3"]
# A slower model (tens of milliseconds a step) for the kill and signal tests, so that a
# signal lands in the middle of the run; with dropout, so the dropout counter matters.
SLOW = ["--device", "cpu", "--layers", "2", "--width", "32", "--heads", "2", "--ctx", "128",
        "--block", "16", "--pattern", "local:16+strided:16", "--batch", "4", "--lr", "3e-3",
        "--threads", "1", "--seed", "5", "--dropout", "0.1", "--eval-batches", "1"]
# Slower still (a few hundred milliseconds a step), for the second Ctrl-C.
SLOWER = ["--device", "cpu", "--layers", "2", "--width", "64", "--heads", "2", "--ctx", "256",
          "--block", "32", "--batch", "8", "--threads", "1"]


def make_text(n, seed):
    """n bytes of varied English-like text: sentences from a vocabulary, with punctuation."""
    rng = random.Random(seed)
    words = ("the of and to in is was that for on as with by at from his her an which it be "
             "this are have not were had but one all their there been when who more time "
             "people year way day man thing woman life child world school state family "
             "student group country problem hand part place case week company system program "
             "question work government number night point home water room mother area money "
             "story fact month lot right study book eye job word business issue side kind "
             "head house service friend father power hour game line end member law car city "
             "community name president team minute idea kid body information back parent face "
             "others level office door health person art war history party result change "
             "morning reason research girl guy moment air teacher force education").split()
    out = []
    size = 0
    while size < n:
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "?", "!"])
        if rng.random() < 0.15:
            sentence += "\n"
        out.append(sentence)
        size += len(sentence) + 1
    return " ".join(out).encode()[:n]


def split_sizes(n):
    """(train, valid, test) bytes of the library's 90/5/5 split of an n-byte stream."""
    valid = n // 100 * 5 + n % 100 * 5 // 100
    return n - 2 * valid, valid, valid


def read_log(path):
    """The complete lines of a JSON-lines log, parsed (a partial last line is left out)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")[:-1]
    return [json.loads(line) for line in lines]


def losses_by_step(records):
    """step -> loss, the last record of each step winning (a resumed run appends)."""
    return {r["step"]: r["loss"] for r in records}


class Checker(cli_checks.Checker):
    def __init__(self, train, evaluate, workdir):
        super().__init__(workdir)
        self.train, self.evaluate = train, evaluate

    def run(self, tool, args, timeout=120):
        return subprocess.run([tool] + args, cwd=self.dir, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout)


def test_short_run(c, n_bytes):
    r = c.run(c.train, ["text.txt"] + SMALL + ["--steps", "12", "--save", "ckpt",
                                                "--save-every", "4", "--log", "log.jsonl",
                                                "--eval-every", "6", "--eval-batches", "0",
                                                "--sample-every", "12", "--sample-len", "20"])
    out = r.stdout.decode(errors="replace")
    if not c.check(r.returncode == 0, "short run exits 0 (got %d: %s)" %
                   (r.returncode, r.stderr.decode(errors="replace").strip())):
        return None
    c.check(os.path.getsize(c.path("ckpt")) > 0, "short run wrote its checkpoint")
    c.check(not os.path.exists(c.path("ckpt.tmp")), "no temporary checkpoint is left behind")
    c.check("final validation:" in out and "checkpoint: ckpt" in out,
            "short run prints the final validation bpb and the checkpoint")
    try:
        records = read_log(c.path("log.jsonl"))
    except ValueError as exc:
        c.check(False, "log.jsonl is JSON lines (%s)" % exc)
        return None
    c.check(len(records) >= 3, "log has records (%d)" % len(records))
    c.check(all(all(k in rec for k in LOG_KEYS) for rec in records),
            "every log record has the keys %s" % ", ".join(LOG_KEYS))
    steps = [rec["step"] for rec in records]
    c.check(steps == sorted(steps) and steps[-1] == 12, "log steps rise to 12: %s" % steps)
    evals = [rec for rec in records if rec["val_bpb"] is not None]
    c.check([rec["step"] for rec in evals] == [6, 12], "evaluations at steps 6 and 12")
    c.check(all(0 < rec["val_bpb"] < 9 for rec in evals), "val_bpb in range")
    c.check(all(rec["loss"] > 0 and abs(rec["bpb"] * 0.6931471805599453 - rec["loss"]) < 1e-9
                for rec in records), "bpb = loss / ln 2")
    c.check(isinstance(records[-1].get("sample"), str) and len(records[-1]["sample"]) == 20
            and "--- sample at step 12 ---" in out, "--sample-every prints and logs a sample")
    m = re.search(r"final validation: ([0-9.]+) bits per byte \(step 12, (\d+) bytes",
                  out)
    if c.check(m is not None, "final validation line is parseable"):
        _, valid, _ = split_sizes(n_bytes)
        c.check(int(m.group(2)) == valid // 32 * 32, "validation covers the whole windows "
                "of the valid split (%s bytes)" % m.group(2))
    return evals[-1]["val_bpb"] if evals else None


def test_eval(c, n_bytes, final_val_bpb):
    train, valid, test = split_sizes(n_bytes)

    def scored(args, what):
        r = c.run(c.evaluate, args + ["--threads", "1", "--device", "cpu"])
        out = r.stdout.decode(errors="replace")
        if not c.check(r.returncode == 0, "%s exits 0 (got %d: %s)" %
                       (what, r.returncode, r.stderr.decode(errors="replace").strip())):
            return None, None
        b = re.search(r"bytes scored: (\d+)", out)
        p = re.search(r"bits per byte: ([0-9.]+)", out)
        if not c.check(b is not None and p is not None, "%s prints bytes and bpb" % what):
            return None, None
        return int(b.group(1)), float(p.group(1))

    n, bpb = scored(["ckpt", "text.txt"], "sparsetx-eval ckpt text.txt")
    if n is not None:
        c.check(n == test, "eval scores the test split: %d bytes (expected %d)" % (n, test))
        c.check(0 < bpb < 8, "eval bpb %.4f is below 8" % bpb)
    n2, bpb2 = scored(["ckpt", "--min-context", "16", "--batch", "3"],
                      "sparsetx-eval --min-context 16 (data from the checkpoint)")
    if n2 is not None:
        c.check(n2 == test, "--min-context 16 scores the same %d bytes (got %d)" % (test, n2))
        c.check(0 < bpb2 < 8, "--min-context bpb %.4f is below 8" % bpb2)
    n3, _ = scored(["ckpt", "text.txt", "--split", "all", "--min-context", "31"],
                   "sparsetx-eval --split all --min-context 31")
    if n3 is not None:
        c.check(n3 == n_bytes, "--split all scores every byte once (%d of %d)" % (n3, n_bytes))
    # The whole windows of the valid split, as the trainer's final evaluation scored them:
    # the per-byte log-softmax here must agree with the library's mean loss there. Without
    # --threads, so the tool rebuilds the model with OpenMP's default thread count and
    # copies the weights over.
    r = c.run(c.evaluate, ["ckpt", "text.txt", "--begin", str(train), "--end",
                           str(train + valid // 32 * 32), "--json", "--device", "cpu"])
    if c.check(r.returncode == 0, "sparsetx-eval --begin/--end --json exits 0"):
        res = json.loads(r.stdout.decode())
        c.check(res["bytes"] == valid // 32 * 32 and res["begin"] == train,
                "--begin/--end scores the range")
        if final_val_bpb is not None:
            c.check(abs(res["bpb"] - final_val_bpb) <= 1e-5 * final_val_bpb,
                    "eval's log-softmax bpb %.9f matches the trainer's %.9f" %
                    (res["bpb"], final_val_bpb))
    r = c.run(c.evaluate, ["ckpt", "text.txt", "--min-context", "32"])
    c.check(r.returncode == 2, "eval --min-context n_ctx is a usage error (got %d)" %
            r.returncode)
    r = c.run(c.evaluate, ["no-such.ckpt", "text.txt"])
    err = r.stderr.decode(errors="replace").strip()
    c.check(r.returncode == 1 and "no-such.ckpt" in err and len(err.splitlines()) == 1,
            "eval of a missing checkpoint exits 1 naming it (%d: %s)" % (r.returncode, err))


def run_killed(c, args, log, kill_after_step, last_step, rng):
    """Start a run, wait until its log reaches kill_after_step, then SIGKILL it after a
    random delay. True when it was killed before logging last_step (a kill during the final
    save, on a loaded machine, leaves nothing to resume and does not count)."""
    p = subprocess.Popen([c.train] + args, cwd=c.dir, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        records = read_log(c.path(log))
        if records and max(r["step"] for r in records) >= kill_after_step:
            break
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.12))
    finished = p.poll() is not None
    if not finished:
        os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stderr.close()
    records = read_log(c.path(log))
    reached = max((r["step"] for r in records), default=0)
    return not finished and reached < last_step


def test_resume(c, rng):
    base = ["text.txt"] + SLOW + ["--steps", "12", "--log-every", "1", "--save-every", "4"]
    r = c.run(c.train, base + ["--save", "full.ckpt", "--log", "full.jsonl"])
    if not c.check(r.returncode == 0, "uninterrupted run exits 0"):
        return
    full = losses_by_step(read_log(c.path("full.jsonl")))
    c.check(sorted(full) == list(range(1, 13)), "uninterrupted run logs steps 1..12")
    for attempt in range(3):
        for name in ("part.ckpt", "part.jsonl"):
            if os.path.exists(c.path(name)):
                os.remove(c.path(name))
        if run_killed(c, base + ["--save", "part.ckpt", "--log", "part.jsonl"], "part.jsonl",
                      5, 12, rng):
            break
        print("note: the run finished (or reached its last step) before the kill, trying again")
    else:
        c.check(False, "a run could be killed with SIGKILL in the middle")
        return
    killed = losses_by_step(read_log(c.path("part.jsonl")))
    print("killed after step %d" % max(killed))
    # Resume with nothing but --resume: settings, data file, log and generator state come
    # back from the checkpoint.
    r = c.run(c.train, ["--resume", "part.ckpt"])
    out = r.stdout.decode(errors="replace")
    if not c.check(r.returncode == 0, "resumed run exits 0 (got %d: %s)" %
                   (r.returncode, r.stderr.decode(errors="replace").strip())):
        return
    m = re.search(r"resumed: part.ckpt at step (\d+)", out)
    if not c.check(m is not None, "resumed run says where it resumed"):
        return
    at = int(m.group(1))
    c.check(at in (4, 8) and at <= max(killed), "resumed at a checkpoint step (%d)" % at)
    resumed = losses_by_step(read_log(c.path("part.jsonl")))
    c.check(sorted(resumed) == list(range(1, 13)), "killed + resumed logs cover steps 1..12")
    same = [s for s in range(at + 1, 13) if resumed.get(s) == full[s]]
    c.check(len(same) == 12 - at, "losses after the resume at step %d equal the "
            "uninterrupted run's exactly (%d of %d steps)" % (at, len(same), 12 - at))
    c.check(all(resumed[s] == full[s] for s in range(1, 13)),
            "every logged loss of killed + resumed equals the uninterrupted run's")


def interrupt(c, sig, name):
    """Start a long run saving to name.ckpt, send sig once step 3 is logged; (rc, out, err)."""
    p = subprocess.Popen([c.train, "text.txt"] + SMALL +
                         ["--steps", "1000000", "--save", name + ".ckpt", "--log",
                          name + ".jsonl", "--log-every", "1"], cwd=c.dir,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        records = read_log(c.path(name + ".jsonl"))
        if records and max(r["step"] for r in records) >= 3:
            break
        time.sleep(0.005)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    return p.returncode, out, err


def test_sigint(c):
    rc, out, err = interrupt(c, signal.SIGTERM, "term")
    c.check(rc == 0 and b"checkpoint saved to term.ckpt" in out and
            os.path.exists(c.path("term.ckpt")), "SIGTERM: checkpoint saved, exit 0 (got %d)" % rc)

    rc, out, err = interrupt(c, signal.SIGINT, "sig")
    out = out.decode(errors="replace")
    c.check(rc == 0, "SIGINT: exit 0 (got %d: %s)" % (rc, err.decode(errors="replace").strip()))
    m = re.search(r"interrupted after step (\d+): checkpoint saved to sig.ckpt", out)
    if not c.check(m is not None, "SIGINT: says where the checkpoint is"):
        return
    step = int(m.group(1))
    c.check(max(r["step"] for r in read_log(c.path("sig.jsonl"))) == step,
            "SIGINT: the interrupted step is logged")
    r = c.run(c.train, ["--resume", "sig.ckpt", "--steps", str(step + 1), "--save",
                        "sig2.ckpt"])
    out = r.stdout.decode(errors="replace")
    c.check(r.returncode == 0 and ("resumed: sig.ckpt at step %d" % step) in out and
            "checkpoint: sig2.ckpt" in out,
            "SIGINT: the checkpoint resumes for one step (%d: %s)" %
            (r.returncode, r.stderr.decode(errors="replace").strip()))
    c.check(read_log(c.path("sig.jsonl"))[-1]["step"] == step + 1,
            "SIGINT: the resumed step is appended to the log")

    # A second SIGINT while the first is being honoured (the step still runs: a few hundred
    # milliseconds with this model) leaves at once with 130. The signals are sent apart,
    # again and again until it exits: two pending SIGINTs would merge into one.
    p = subprocess.Popen([c.train, "text.txt"] + SLOWER +
                         ["--steps", "1000000", "--save", "sig3.ckpt", "--log", "sig3.jsonl",
                          "--log-every", "1"], cwd=c.dir, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None and not read_log(c.path("sig3.jsonl")):
        time.sleep(0.005)
    deadline = time.time() + 60
    while p.poll() is None and time.time() < deadline:
        p.send_signal(signal.SIGINT)
        time.sleep(0.02)
    p.wait(timeout=60)
    c.check(p.returncode == 130, "a second SIGINT exits with 130 (got %d)" % p.returncode)


def test_bad_input(c):
    def one_line(r):
        lines = r.stderr.decode(errors="replace").strip().splitlines()
        return lines[0] if len(lines) == 1 else None

    r = c.run(c.train, ["missing-file.txt", "--steps", "2"])
    line = one_line(r)
    c.check(r.returncode == 1 and line is not None and "missing-file.txt" in line and
            line.startswith("sparsetx-train: "),
            "missing data file: exit 1, one line naming it (%d: %r)" % (r.returncode, line))
    r = c.run(c.train, ["text.txt", "--steps", "abc"])
    c.check(r.returncode == 2 and "--steps" in r.stderr.decode(),
            "--steps abc: exit 2 (got %d)" % r.returncode)
    r = c.run(c.train, ["text.txt", "--no-such-flag"])
    c.check(r.returncode == 2 and "no-such-flag" in r.stderr.decode(),
            "unknown flag: exit 2 (got %d)" % r.returncode)
    r = c.run(c.train, ["text.txt"] + SMALL + ["--steps", "2", "--pattern", "fixed:8:9"])
    line = one_line(r)
    c.check(r.returncode == 1 and line is not None and "pattern" in line,
            "--pattern fixed:8:9: exit 1 with the pattern error (%d: %r)" % (r.returncode, line))
    with open(c.path("empty.txt"), "wb"):
        pass
    r = c.run(c.train, ["empty.txt", "--steps", "2"])
    line = one_line(r)
    c.check(r.returncode == 1 and line is not None and "empty.txt" in line,
            "empty data file: exit 1 (%d: %r)" % (r.returncode, line))
    r = c.run(c.train, ["text.txt"] + SMALL + ["--steps", "2", "--ctx", "100000",
                                                "--block", "16"])
    c.check(r.returncode == 1 and one_line(r) is not None,
            "a window longer than the train split: exit 1 (got %d)" % r.returncode)
    r = c.run(c.train, ["--resume", "ckpt", "--layers", "3"])
    c.check(r.returncode == 2, "--layers with --resume: exit 2 (got %d)" % r.returncode)
    r = c.run(c.train, [])
    c.check(r.returncode == 2, "no DATA: exit 2 (got %d)" % r.returncode)
    r = c.run(c.train, ["--help"])
    out = r.stdout.decode()
    c.check(r.returncode == 0 and "--lr" in out and "--resume" in out and "default" in out,
            "--help: exit 0 listing --lr and --resume with defaults")
    r = c.run(c.evaluate, ["--help"])
    out = r.stdout.decode()
    c.check(r.returncode == 0 and "--min-context" in out and "--split" in out,
            "sparsetx-eval --help: exit 0 listing --min-context and --split")


def main():
    if len(sys.argv) != 3:
        print("usage: test_cli_train.py <libsparsetx.so> <build dir>")
        return 2
    build = os.path.abspath(sys.argv[2])
    train = os.path.join(build, "cli", "sparsetx-train")
    evaluate = os.path.join(build, "cli", "sparsetx-eval")
    missing = [t for t in (train, evaluate) if not os.access(t, os.X_OK)]
    if missing:
        print("FAILED  tools not built: %s" % ", ".join(missing))
        return 1
    rng = random.Random(int(os.environ.get("STX_TEST_SEED", time.time_ns() % 100000)))
    with tempfile.TemporaryDirectory(prefix="stx_cli_train_") as workdir:
        n_bytes = 7777  # not a multiple of 20 nor of the windows
        with open(os.path.join(workdir, "text.txt"), "wb") as f:
            f.write(make_text(n_bytes, 11))
        c = Checker(train, evaluate, workdir)
        start = time.time()
        val = test_short_run(c, n_bytes)
        if os.path.exists(c.path("ckpt")):
            test_eval(c, n_bytes, val)
        test_resume(c, rng)
        test_sigint(c)
        test_bad_input(c)
        print("%.1f s" % (time.time() - start))
    return report(c.failures)


if __name__ == "__main__":
    sys.exit(main())
