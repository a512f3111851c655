"""test_crash_safety.py: sparsetx-train survives SIGKILL at any moment, and refuses to save
where it cannot, without ever leaving a bad checkpoint in place of a good one.

Standard library only. Usage: python3 test_crash_safety.py <libsparsetx.so> <build dir>; the
tool is <build dir>/cli/sparsetx-train (missing: a failure, not a skip). Everything runs in
a fresh temporary directory on a generated text, with a tiny model on the CPU backend
(deterministic), dropout 0.1, a checkpoint at every step (--save-every 1):

 1. reference: one uninterrupted run of N steps (60, or more on a fast machine: about a
    second's worth, at most 1000); its final checkpoint and its log;
 2. kill loop: the same run, killed with SIGKILL after a random delay (a seeded
    random.Random, log-uniform from 2 ms to a quarter of the reference run's duration, at
    most 300 ms), then resumed with nothing but `--resume CKPT` and killed
    again, until a run completes. After every kill the checkpoint at the --save path (once
    the first save has been made) must verify with data/read_checkpoint.py (magic, version,
    every CRC, every section), must load in the library (ctypes), and must never go back to
    an earlier step; a leftover CKPT.tmp (a kill in the middle of a save) may exist and must
    not disturb the next resume (once, a copy of such a state is also resumed to the end on
    its own). The chain must survive at least MIN_KILLS kills (else it starts over with
    shorter delays). At the end the checkpoint's step, optimizer state and every tensor
    (parameters and Adam moments) are byte-identical to the reference's, and every logged
    loss, learning rate and gradient norm of the chain (re-run steps included) equals the
    reference's for that step;
 3. disk full (RLIMIT_FSIZE smaller than a checkpoint, SIGXFSZ ignored, so writes fail with
    EFBIG): a fresh run exits 1 with one line naming the path and leaves no file; a resume
    of a good checkpoint that cannot save exits 1 and leaves the good checkpoint
    byte-identical and loadable, and no CKPT.tmp;
 4. unwritable places: a --save path under a regular file (ENOTDIR; root ignores
    permissions, so this is the unwritable directory a root test can make) and one under a
    directory that does not exist: exit 1 before training, one line naming the path; a
    --save path that is an existing directory: exit 1 naming it, the directory untouched.

Prints "kills survived: K, resumes: R, final weights identical: yes|no". Set STX_TEST_SEED
to replay the delays of a run. Exit 0 on success, 1 on failure.
"""

import importlib.util
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cli_checks  # noqa: E402
import sparsetx_ctypes as stx  # noqa: E402
from cli_checks import report  # noqa: E402
from test_cli_train import make_text  # noqa: E402


def _import_by_path(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rc = _import_by_path("read_checkpoint",
                     os.path.join(os.path.dirname(os.path.dirname(HERE)), "data",
                                  "read_checkpoint.py"))

# The run's length: CALIBRATION steps first; when that takes less than TARGET_S seconds (a
# fast machine: a step and its checkpoint take about a millisecond), the reference is run
# again with more steps (at most MAX_STEPS) so that delays of a few hundred milliseconds
# still land in the middle of the run.
CALIBRATION = 60
TARGET_S = 1.0
MAX_STEPS = 1000
MIN_KILLS = 15
# The brief's tiny model, on the CPU backend (deterministic, which exact resume needs),
# with dropout so that the dropout counter must come back on every resume too.
MODEL = ["--device", "cpu", "--layers", "1", "--width", "16", "--heads", "2", "--ctx", "32",
         "--block", "16", "--pattern", "local:8+strided:8", "--batch", "2", "--threads", "1",
         "--seed", "7", "--dropout", "0.1", "--lr", "3e-3"]


def run_args(n_steps):
    return ["--steps", str(n_steps), "--save-every", "1", "--log-every", "1", "--eval-every",
            "10", "--eval-batches", "1"]


LOG_FIELDS = ("loss", "lr", "grad_norm", "val_bpb")
FSIZE_LIMIT = 4096  # bytes; a checkpoint of the tiny model is ~150 KB


def read_log(path):
    """The records of a JSON-lines log. Every line must be complete JSON: a kill must never
    leave a torn line that a resumed run then appends to."""
    with open(path, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        raise ValueError("%s ends in a partial line: %r" % (path, data[-80:]))
    records = []
    for number, line in enumerate(data.split(b"\n")[:-1], 1):
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            raise ValueError("%s line %d is not JSON (%s): %r" % (path, number, exc, line[:120]))
    return records


def limit_file_size():
    """preexec_fn of the disk-full runs: writes past FSIZE_LIMIT bytes fail with EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


class Checker(cli_checks.Checker):
    def __init__(self, lib, train, workdir, keep_dir):
        super().__init__(workdir)
        self.lib, self.train, self.keep_dir = lib, train, keep_dir

    def run(self, args, preexec_fn=None, timeout=120):
        r = subprocess.run([self.train] + args, cwd=self.dir, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout, preexec_fn=preexec_fn)
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def verify(self, path):
        """(checkpoint dict, None) when path verifies in the reader and loads in the library
        at the same step; (None, why) otherwise."""
        try:
            ck = rc.read_checkpoint(path)
        except (OSError, rc.CheckpointError, ValueError) as exc:
            return None, "read_checkpoint.py: %s" % exc
        try:
            model = stx.Model.load(self.lib, path)
        except stx.SparsetxError as exc:
            return None, "stx_model_load: %s" % exc
        try:
            step = model.step_count
        finally:
            model.close()
        if step != ck["optimizer"]["step"]:
            return None, "the library loads step %d, the reader %d" % (step,
                                                                      ck["optimizer"]["step"])
        return ck, None


def state_bytes(ck):
    """Everything of a checkpoint that training determines, as comparable bytes and values:
    config, optimizer state (step, dropout counter), parameters and Adam moments."""
    tensors = {}
    for group, table in (("param", ck["tensors"]), ("m", ck["moments"]["m"]),
                         ("v", ck["moments"]["v"])):
        for name, (shape, values) in table.items():
            tensors[(group, name)] = (shape, values.tobytes())
    return ck["config"], ck["optimizer"], tensors


def compare_states(ref, got):
    """A list of differences between two checkpoints' training state (empty: identical)."""
    diffs = []
    rcfg, ropt, rt = state_bytes(ref)
    gcfg, gopt, gt = state_bytes(got)
    if rcfg != gcfg:
        diffs.append("config %s != %s" % (gcfg, rcfg))
    for key in ropt:
        same = ropt[key] == gopt.get(key) or (isinstance(ropt[key], float) and
                                              math.isnan(ropt[key]) and math.isnan(gopt[key]))
        if not same:
            diffs.append("optimizer %s: %r != %r" % (key, gopt.get(key), ropt[key]))
    if sorted(rt) != sorted(gt):
        diffs.append("tensor sets differ: %s" % sorted(set(rt) ^ set(gt)))
    for key in sorted(set(rt) & set(gt)):
        if rt[key] != gt[key]:
            diffs.append("tensor %s (%s) differs" % key[::-1])
    return diffs


def compare_logs(ref_records, records, what, n_steps):
    """Differences between a log and the reference's, step by step (every record of a step,
    re-run steps included, must carry the reference's values bit for bit)."""
    ref = {r["step"]: r for r in ref_records}
    diffs = []
    steps = sorted({r["step"] for r in records})
    if steps != list(range(1, n_steps + 1)):
        diffs.append("%s logs steps %s, expected 1..%d" % (what, steps[:20], n_steps))
    for r in records:
        want = ref.get(r["step"])
        if want is None:
            continue
        for key in LOG_FIELDS:
            if r.get(key) != want.get(key):
                diffs.append("%s step %d: %s %r, the reference logged %r" %
                             (what, r["step"], key, r.get(key), want.get(key)))
    return diffs


# ------------------------------------------------------------------------ 1. reference

def reference_run(c, n_steps):
    start = time.time()
    code, out, err = c.run(["text.txt"] + MODEL + run_args(n_steps) +
                           ["--save", "ref.ckpt", "--log", "ref.jsonl"])
    duration = time.time() - start
    if not c.check(code == 0, "reference run of %d steps with --save-every 1 exits 0 (%d: %s)"
                   % (n_steps, code, err.strip())):
        return None
    c.check(not os.path.exists(c.path("ref.ckpt.tmp")), "the reference run leaves no .tmp")
    ck, why = c.verify(c.path("ref.ckpt"))
    if not c.check(ck is not None, "the reference checkpoint verifies and loads (%s)" % why):
        return None
    c.check(ck["optimizer"]["step"] == n_steps and ck["moments"]["m"],
            "the reference checkpoint is at step %d with Adam moments" % n_steps)
    records = read_log(c.path("ref.jsonl"))
    c.check(sorted(r["step"] for r in records) == list(range(1, n_steps + 1)),
            "the reference logs every step once")
    print("reference run: %d steps in %.2f s" % (n_steps, duration))
    return ck, records, duration, n_steps


# ------------------------------------------------------------------------ 2. kill loop

class Chain:
    """One chain of runs: fresh, then killed and resumed until a run completes."""

    def __init__(self, c, n_steps, rng, lo, hi, side_done):
        self.c, self.n, self.rng, self.lo, self.hi = c, n_steps, rng, lo, hi
        self.kills = self.resumes = self.mid_save = self.before_first = self.fresh_starts = 0
        self.side_done = side_done
        self.errors = []
        self.completed = self.stalled = False

    def fail(self, what):
        self.errors.append(what)
        return False

    def delay(self):
        return math.exp(self.rng.uniform(math.log(self.lo), math.log(self.hi)))

    def run(self, deadline, max_kills):
        c = self.c
        ckpt, tmp, log = c.path("chain.ckpt"), c.path("chain.ckpt.tmp"), c.path("chain.jsonl")
        for p in (ckpt, tmp, log):
            if os.path.exists(p):
                os.remove(p)
        fresh = (["text.txt"] + MODEL + run_args(self.n) +
                 ["--save", "chain.ckpt", "--log", "chain.jsonl"])
        resume = ["--resume", "chain.ckpt"]
        saved_step = 0  # the step of the last checkpoint seen on disk
        while True:
            if time.time() > deadline:
                return self.fail("the chain did not complete in time (%d kills, checkpoint at "
                                 "step %d)" % (self.kills, saved_step))
            if self.kills >= max_kills:
                self.stalled = True  # not a failure: the delays are too short here
                return False
            have = os.path.exists(ckpt)
            if have:
                self.resumes += 1
            else:
                self.fresh_starts += 1
            wait = self.delay()
            with open(c.path("chain.err"), "wb") as err:
                p = subprocess.Popen([c.train] + (resume if have else fresh), cwd=c.dir,
                                     stdout=subprocess.DEVNULL, stderr=err)
                try:
                    code = p.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    code = p.wait()
            if code != -signal.SIGKILL:
                with open(c.path("chain.err"), "rb") as f:
                    message = f.read().decode(errors="replace").strip()
                if code != 0:
                    return self.fail("a %s run exited %d after %.3f s: %s" %
                                     ("resumed" if have else "fresh", code, wait, message))
                self.completed = True
                break
            self.kills += 1
            left_tmp = os.path.exists(tmp)
            self.mid_save += left_tmp
            if not os.path.exists(ckpt):
                if saved_step > 0:
                    return self.fail("kill %d: the checkpoint of step %d is gone" %
                                     (self.kills, saved_step))
                self.before_first += 1
                continue
            ck, why = c.verify(ckpt)
            if ck is None:
                # Kept outside the temporary directory, for a look after the test.
                keep = os.path.join(c.keep_dir, "test_crash_safety_bad_kill_%d.ckpt" %
                                    self.kills)
                shutil.copyfile(ckpt, keep)
                return self.fail("kill %d (after %.3f s%s): the checkpoint does not load: %s "
                                 "(kept as %s)" % (self.kills, wait,
                                                   ", .tmp left" if left_tmp else "", why, keep))
            step = ck["optimizer"]["step"]
            if step < saved_step or step > self.n:
                return self.fail("kill %d: the checkpoint went from step %d to %d" %
                                 (self.kills, saved_step, step))
            saved_step = step
            if left_tmp and not self.side_done and step < self.n:
                self.side_done = True
                self.resume_beside(ckpt, tmp)
        return True

    def resume_beside(self, ckpt, tmp):
        """A copy of a state with a leftover .tmp, resumed to the end on its own."""
        c = self.c
        shutil.copyfile(ckpt, c.path("side.ckpt"))
        shutil.copyfile(tmp, c.path("side.ckpt.tmp"))
        tmp_size = os.path.getsize(tmp)
        code, _, err = c.run(["--resume", "side.ckpt", "--log", "side.jsonl"])
        self.side = (code, err.strip(), tmp_size)


def kill_loop(c, ref, rng):
    ref_ck, ref_records, ref_time, n_steps = ref
    # Delays log-uniform from 2 ms to a quarter of the reference run (which includes the
    # process start), at most 300 ms: kills while the tool starts or loads its checkpoint,
    # inside a step or a checkpoint write (a save every step), and a few much later.
    lo, hi = 0.002, min(0.3, max(0.03, ref_time * 0.25))
    deadline = time.time() + 45.0
    side_done = False
    total_kills = attempts = 0
    chain = None
    while time.time() < deadline:
        attempts += 1
        chain = Chain(c, n_steps, rng, lo, hi, side_done)
        chain.run(deadline, max_kills=400)
        total_kills += chain.kills
        side_done = chain.side_done
        print("chain %d: delays %.0f-%.0f ms: %d kills (%d inside a checkpoint write, %d "
              "before the first save), %d resumes, %s" %
              (attempts, lo * 1e3, hi * 1e3, chain.kills, chain.mid_save, chain.before_first,
               chain.resumes, "completed" if chain.completed else "stopped"))
        if hasattr(chain, "side"):
            code, err, tmp_size = chain.side
            if c.check(code == 0, "a resume beside a leftover %d-byte chain.ckpt.tmp completes "
                       "(%d: %s)" % (tmp_size, code, err)):
                ck, why = c.verify(c.path("side.ckpt"))
                c.check(ck is not None and not compare_states(ref_ck, ck),
                        "... and ends with the reference's weights (%s)" %
                        (why or "; ".join(compare_states(ref_ck, ck)[:3]) or "identical"))
                c.check(not os.path.exists(c.path("side.ckpt.tmp")),
                        "... and its .tmp is gone (replaced by its own saves, then renamed)")
            del chain.side
        if chain.stalled:
            hi = min(hi * 2, 1.0)  # hardly any progress: longer delays (a slow machine)
            continue
        if chain.errors:
            for e in chain.errors:
                c.check(False, e)
            return chain, False
        if chain.kills >= MIN_KILLS:
            break
        hi = max(lo * 4, hi / 2)  # completed too soon: shorter delays, from scratch
    else:
        c.check(False, "no chain of at least %d kills completed in time" % MIN_KILLS)
        return chain, False
    c.check(chain.kills >= MIN_KILLS, "the completed chain survived %d kills (at least %d), "
            "%d of them inside a checkpoint write (%d kills in %d chain(s) in all)" %
            (chain.kills, MIN_KILLS, chain.mid_save, total_kills, attempts))
    c.check(not os.path.exists(c.path("chain.ckpt.tmp")),
            "the completed run leaves no chain.ckpt.tmp behind")
    ck, why = c.verify(c.path("chain.ckpt"))
    if not c.check(ck is not None, "the final checkpoint of the chain verifies and loads (%s)"
                   % why):
        return chain, False
    diffs = compare_states(ref_ck, ck)
    identical = not diffs
    c.check(identical, "final step, optimizer state, weights and Adam moments are "
            "byte-identical to the uninterrupted run's%s" %
            ("" if identical else ": " + "; ".join(diffs[:5])))
    try:
        records = read_log(c.path("chain.jsonl"))
    except ValueError as exc:
        c.check(False, "the chain's log is whole JSON lines: %s" % exc)
        return chain, identical
    reruns = len(records) - len({r["step"] for r in records})
    log_diffs = compare_logs(ref_records, records, "the chain", n_steps)
    c.check(not log_diffs, "every logged loss, lr, grad norm and val_bpb of the chain (%d "
            "records, %d of re-run steps) equals the reference's%s" %
            (len(records), reruns, "" if not log_diffs else ": " + "; ".join(log_diffs[:5])))
    return chain, identical


# ------------------------------------------------------------------------ 3. disk full

def one_line(err):
    lines = [l for l in err.splitlines() if l.strip()]
    return lines[0] if len(lines) == 1 else None


def disk_full(c):
    # A fresh run that cannot write its checkpoint.
    target = c.path("full.ckpt")
    code, out, err = c.run(["text.txt"] + MODEL + ["--steps", "3", "--save", target],
                           preexec_fn=limit_file_size)
    line = one_line(err)
    print("disk full, fresh run: exit %d, stderr: %s" % (code, err.strip()))
    c.check(code == 1 and line is not None and target in line,
            "disk full (RLIMIT_FSIZE %d): a fresh run exits 1 with one line naming %s" %
            (FSIZE_LIMIT, target))
    c.check(not os.path.exists(target) and not os.path.exists(target + ".tmp"),
            "disk full: neither the checkpoint nor its .tmp exists afterwards")

    # A good checkpoint, then a resume that cannot save: the good one must stay as it was.
    good = c.path("good.ckpt")
    code, _, err = c.run(["text.txt"] + MODEL + ["--steps", "3", "--save", good])
    if not c.check(code == 0, "a short run saves good.ckpt (%d: %s)" % (code, err.strip())):
        return
    with open(good, "rb") as f:
        before = f.read()
    code, out, err = c.run(["--resume", good, "--steps", "6"], preexec_fn=limit_file_size)
    line = one_line(err)
    print("disk full, resume: exit %d, stderr: %s" % (code, err.strip()))
    c.check(code == 1 and line is not None and good in line,
            "disk full: a resume that cannot save exits 1 with one line naming %s" % good)
    c.check("final validation" not in out or code != 0,
            "disk full: no success is reported after the failed save")
    with open(good, "rb") as f:
        after = f.read()
    c.check(after == before, "disk full: good.ckpt is byte-identical afterwards (%d bytes)" %
            len(after))
    ck, why = c.verify(good)
    c.check(ck is not None and ck["optimizer"]["step"] == 3,
            "disk full: good.ckpt still verifies and loads at step 3 (%s)" % why)
    c.check(not os.path.exists(good + ".tmp"), "disk full: no good.ckpt.tmp is left behind")
    # The same failure at a periodic save in the middle of a run.
    code, out, err = c.run(["--resume", good, "--steps", "6", "--save-every", "1"],
                           preexec_fn=limit_file_size)
    c.check(code == 1 and good in err and "step 5/" not in out,
            "disk full: a failed periodic save stops the run at once with exit 1 (%d)" % code)
    with open(good, "rb") as f:
        c.check(f.read() == before, "disk full: good.ckpt still unchanged")
    code, _, err = c.run(["--resume", good, "--steps", "6"])
    c.check(code == 0 and c.verify(good)[0] is not None and
            c.verify(good)[0]["optimizer"]["step"] == 6,
            "with room again the same resume completes and saves step 6 (%d: %s)" %
            (code, err.strip()))


# ------------------------------------------------------------------------ 4. unwritable

def unwritable(c):
    with open(c.path("afile"), "wb") as f:
        f.write(b"a regular file\n")
    cases = [
        (c.path("afile/ckpt"), c.path("afile"), "a --save path under a regular file (ENOTDIR)"),
        (c.path("nodir/ckpt"), c.path("nodir"), "a --save path in a directory that does not "
         "exist"),
    ]
    for target, parent, what in cases:
        code, out, err = c.run(["text.txt"] + MODEL + ["--steps", "3", "--save", target])
        line = one_line(err)
        print("%s: exit %d, stderr: %s" % (what, code, err.strip()))
        c.check(code == 1 and line is not None and parent in line,
                "%s: exit 1 with one line naming it" % what)
        c.check("training:" not in out and "step 1/" not in out,
                "%s: fails before training (stdout: %r)" % (what, out.strip()[-120:]))
        c.check(not os.path.exists(target) and not os.path.exists(target + ".tmp"),
                "%s: nothing is written" % what)
    with open(c.path("afile"), "rb") as f:
        c.check(f.read() == b"a regular file\n", "afile is untouched")

    # A --save path that is a directory: the rename cannot replace it.
    target = c.path("adir")
    os.mkdir(target)
    code, out, err = c.run(["text.txt"] + MODEL + ["--steps", "3", "--save", target])
    line = one_line(err)
    print("a --save path that is a directory: exit %d, stderr: %s%s" %
          (code, err.strip(), "" if "training:" in out else " (before training)"))
    c.check(code == 1 and line is not None and target in line,
            "a --save path that is a directory: exit 1 with one line naming it")
    c.check(os.path.isdir(target) and not os.listdir(target) and
            not os.path.exists(target + ".tmp"),
            "a --save path that is a directory: the directory is untouched, no .tmp left")


# ------------------------------------------------------------------------ main

def main():
    if len(sys.argv) != 3:
        print("usage: test_crash_safety.py <libsparsetx.so> <build dir>")
        return 2
    build = os.path.abspath(sys.argv[2])
    train = os.path.join(build, "cli", "sparsetx-train")
    if not os.access(train, os.X_OK):
        print("FAILED  tool not built: %s" % train)
        return 1
    try:
        lib = stx.load(sys.argv[1])
    except (OSError, RuntimeError) as exc:
        print("FAILED  cannot load the library %s: %s" % (sys.argv[1], exc))
        return 1
    seed = int(os.environ.get("STX_TEST_SEED", time.time_ns() % 1000000))
    print("seed %d (STX_TEST_SEED=%d replays the delays)" % (seed, seed))
    rng = random.Random(seed)
    start = time.time()
    kills = resumes = 0
    identical = False
    with tempfile.TemporaryDirectory(prefix="stx_crash_") as workdir:
        with open(os.path.join(workdir, "text.txt"), "wb") as f:
            f.write(make_text(7777, 11))
        c = Checker(lib, train, workdir, build)
        ref = reference_run(c, CALIBRATION)
        if ref is not None and ref[2] < TARGET_S:
            n_steps = min(MAX_STEPS, int(CALIBRATION * TARGET_S / max(ref[2], 0.05)))
            if n_steps > CALIBRATION:
                ref = reference_run(c, n_steps)
        if ref is not None:
            chain, identical = kill_loop(c, ref, rng)
            if chain is not None:
                kills, resumes = chain.kills, chain.resumes
        disk_full(c)
        unwritable(c)
    print("%.1f s" % (time.time() - start))
    print("kills survived: %d, resumes: %d, final weights identical: %s" %
          (kills, resumes, "yes" if identical else "no"))
    return report(c.failures)


if __name__ == "__main__":
    sys.exit(main())
