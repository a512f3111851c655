"""test_cli_faults.py: sparsetx-train skips steps whose loss or gradient norm is not finite.

Standard library only. Usage: python3 test_cli_faults.py <libsparsetx.so> <build dir>; the
tool is <build dir>/cli/sparsetx-train. NaN is put in through the trainer's test hooks:
STX_TEST_INJECT_NAN=LIST (a NaN in a gradient after the backward of those attempts) and
STX_TEST_INJECT_NAN_WEIGHT=LIST (a NaN in a weight before the forward). Checks, each in a
fresh temporary directory on a generated text:

 - one bad step (attempt 4): the run exits 0, logs exactly one skipped record at step 4
   ("skipped": true, "reason": "gradient norm nan"), still completes every step, reports
   "skipped steps: 1", the steps before it match a clean run bit for bit, and its checkpoint
   records the count;
 - a run of bad steps from attempt 5 with --max-bad-steps 3 --save-every 2: exit 1 with one
   line on stderr naming K, the step and the last good checkpoint (step 4); 3 skipped
   records; the checkpoint on disk loads at step 4, and resuming it without the fault gives
   the clean run's losses exactly;
 - a NaN weight (loss nan on every later step): exit 1 after K, the last checkpoint's
   weights are all finite;
 - Ctrl-C during bad steps: with bad gradients the (unchanged) model is saved as usual;
   with a non-finite loss nothing is saved and the last good checkpoint stays;
 - --max-bad-steps 0 is a usage error (2), --help lists the option.
Exit 0 on success, 1 on failure.
"""

import math
import os
import signal
import subprocess
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import cli_checks  # noqa: E402
import sparsetx_ctypes as stx  # noqa: E402
from cli_checks import report  # noqa: E402
from test_cli_train import SMALL, make_text, read_log  # noqa: E402


class Checker(cli_checks.Checker):
    def __init__(self, lib, train, workdir):
        super().__init__(workdir)
        self.lib, self.train = lib, train

    def run(self, args, inject=None, inject_weight=None, timeout=120):
        env = dict(os.environ)
        env.pop("STX_TEST_INJECT_NAN", None)
        env.pop("STX_TEST_INJECT_NAN_WEIGHT", None)
        if inject is not None:
            env["STX_TEST_INJECT_NAN"] = inject
        if inject_weight is not None:
            env["STX_TEST_INJECT_NAN_WEIGHT"] = inject_weight
        r = subprocess.run([self.train] + args, cwd=self.dir, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def checkpoint(self, name):
        """(step, app_state dict, model) of a checkpoint; the model must be closed."""
        m = stx.Model.load(self.lib, self.path(name))
        app = self.lib.stx_model_app_state(m.handle).decode()
        state = dict(line.split("=", 1) for line in app.splitlines() if "=" in line)
        return m.step_count, state, m


def good(records):
    return [r for r in records if not r.get("skipped")]


def skipped(records):
    return [r for r in records if r.get("skipped") is True]


def test_one_bad_step(c):
    args = ["text.txt"] + SMALL + ["--steps", "10", "--log-every", "1"]
    rc, out, err = c.run(args + ["--log", "clean.jsonl"])
    if not c.check(rc == 0, "clean run exits 0 (%d: %s)" % (rc, err.strip())):
        return
    clean = {r["step"]: r["loss"] for r in read_log(c.path("clean.jsonl"))}
    c.check("skipped steps: 0" in out, "a clean run reports 0 skipped steps")

    rc, out, err = c.run(args + ["--log", "one.jsonl", "--save", "one.ckpt"], inject="4")
    if not c.check(rc == 0, "STX_TEST_INJECT_NAN=4: exits 0 (%d: %s)" % (rc, err.strip())):
        return
    records = read_log(c.path("one.jsonl"))
    bad = skipped(records)
    c.check(len(bad) == 1 and bad[0]["step"] == 4, "exactly one skipped record, at step 4: %s"
            % [(r["step"], r.get("reason")) for r in bad])
    if bad:
        c.check(bad[0].get("reason") == "gradient norm nan" and bad[0]["grad_norm"] is None and
                bad[0].get("skipped_steps") == 1, "the record says why: %s" % bad[0])
    c.check([r["step"] for r in good(records)] == list(range(1, 11)),
            "every step 1..10 still completes")
    c.check(all(math.isfinite(r["loss"]) for r in good(records)), "every good loss is finite")
    c.check("step 4/10 | skipped: gradient norm nan" in out, "a plain line reports the skip")
    c.check("skipped steps: 1 " in out, "the summary reports 1 skipped step")
    c.check("final validation:" in out and "checkpoint: one.ckpt" in out,
            "the run ends normally")
    losses = {r["step"]: r["loss"] for r in good(records)}
    c.check(all(losses[s] == clean[s] for s in (1, 2, 3)),
            "steps 1-3 match the clean run bit for bit")
    c.check(losses[4] != clean[4], "step 4 was taken on the next batch (its loss differs)")
    step, state, m = c.checkpoint("one.ckpt")
    m.close()
    c.check(step == 10 and state.get("skipped_steps") == "1",
            "the checkpoint is at step 10 and records skipped_steps=1 (%d, %s)" %
            (step, state.get("skipped_steps")))


def test_stop_after_k(c):
    args = ["text.txt"] + SMALL + ["--steps", "12", "--log-every", "1", "--save-every", "2"]
    rc, _, err = c.run(args + ["--log", "ref.jsonl", "--save", "ref.ckpt"])
    if not c.check(rc == 0, "clean 12-step run exits 0 (%d: %s)" % (rc, err.strip())):
        return
    clean = {r["step"]: r["loss"] for r in read_log(c.path("ref.jsonl"))}

    rc, out, err = c.run(args + ["--log", "bad.jsonl", "--save", "bad.ckpt",
                                 "--max-bad-steps", "3"], inject="5-1000")
    lines = err.strip().splitlines()
    c.check(rc == 1, "STX_TEST_INJECT_NAN=5-1000 --max-bad-steps 3: exits 1 (got %d)" % rc)
    want = ("sparsetx-train: 3 consecutive steps had non-finite loss or gradients; stopped at "
            "step 4; the last good checkpoint is bad.ckpt (step 4)")
    c.check(lines == [want], "one line on stderr naming K, the step and the checkpoint: %r"
            % lines)
    records = read_log(c.path("bad.jsonl"))
    bad = skipped(records)
    c.check(len(bad) == 3 and all(r["step"] == 5 for r in bad) and
            [r["bad_in_row"] for r in bad] == [1, 2, 3],
            "3 skipped records, all trying step 5: %s" %
            [(r["step"], r.get("bad_in_row")) for r in bad])
    c.check([r["step"] for r in good(records)] == [1, 2, 3, 4], "steps 1-4 completed")
    c.check("final validation" not in out, "no final evaluation after the stop")
    c.check(not os.path.exists(c.path("bad.ckpt.tmp")), "no temporary checkpoint is left")
    try:
        step, state, m = c.checkpoint("bad.ckpt")
    except stx.SparsetxError as exc:
        c.check(False, "the last good checkpoint loads (%s)" % exc)
        return
    m.close()
    c.check(step == 4 and state.get("step") == "4" and state.get("skipped_steps") == "0",
            "the checkpoint on disk is the step-4 save (step %d, app_state step=%s)" %
            (step, state.get("step")))
    # The checkpoint is intact and usable: resumed without the fault, the run continues
    # exactly as the clean run did.
    rc, out, err = c.run(["--resume", "bad.ckpt"])
    c.check(rc == 0 and "resumed: bad.ckpt at step 4" in out,
            "the last good checkpoint resumes (%d: %s)" % (rc, err.strip()))
    resumed = {r["step"]: r["loss"] for r in good(read_log(c.path("bad.jsonl")))}
    c.check(all(resumed.get(s) == clean[s] for s in range(5, 13)),
            "resumed losses for steps 5..12 equal the clean run's exactly")
    # The count is the checkpoint's: the skips after it went with the stopped process.
    c.check("skipped steps: 0 " in out, "the resumed run counts from the checkpoint (0)")


def test_nan_weight(c):
    args = ["text.txt"] + SMALL + ["--steps", "12", "--log-every", "1", "--save-every", "1",
                                   "--save", "w.ckpt", "--log", "w.jsonl", "--max-bad-steps",
                                   "2"]
    rc, out, err = c.run(args, inject_weight="3")
    lines = err.strip().splitlines()
    c.check(rc == 1 and len(lines) == 1 and "2 consecutive steps" in lines[0] and
            "w.ckpt (step 2)" in lines[0],
            "a NaN weight: exit 1 after 2 bad steps, naming w.ckpt at step 2 (%d: %r)" %
            (rc, lines))
    bad = skipped(read_log(c.path("w.jsonl")))
    c.check(len(bad) == 2 and all(r.get("reason") == "loss nan" and r["loss"] is None
                                  for r in bad),
            "the skipped records say \"loss nan\": %s" % [r.get("reason") for r in bad])
    try:
        step, _, m = c.checkpoint("w.ckpt")
    except stx.SparsetxError as exc:
        c.check(False, "the last good checkpoint loads (%s)" % exc)
        return
    finite = all(math.isfinite(v) for name in m.params() for v in m.read_param(name))
    m.close()
    c.check(step == 2 and finite, "the checkpoint is the step-2 save with finite weights")


def interrupt_while_bad(c, name, **inject):
    """A run that goes bad from attempt 3 and never stops by itself; SIGINT once a skipped
    record is logged. (rc, stdout)."""
    env = dict(os.environ)
    for key, value in (("STX_TEST_INJECT_NAN", inject.get("grad")),
                       ("STX_TEST_INJECT_NAN_WEIGHT", inject.get("weight"))):
        env.pop(key, None)
        if value:
            env[key] = value
    p = subprocess.Popen([c.train, "text.txt"] + SMALL +
                         ["--steps", "100", "--log-every", "1", "--save-every", "1", "--save",
                          name + ".ckpt", "--log", name + ".jsonl", "--max-bad-steps",
                          "1000000000"], cwd=c.dir, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        if skipped(read_log(c.path(name + ".jsonl"))):
            break
        time.sleep(0.002)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    return p.returncode, out.decode(errors="replace")


def test_interrupt_while_bad(c):
    # Bad gradients: the model is as after step 2, so Ctrl-C saves it as usual.
    rc, out = interrupt_while_bad(c, "ig", grad="3-1000000000")
    c.check(rc == 0 and "interrupted after step 2: checkpoint saved to ig.ckpt" in out,
            "Ctrl-C during bad gradient steps saves the unchanged model (%d)" % rc)
    step, state, m = c.checkpoint("ig.ckpt")
    m.close()
    c.check(step == 2 and int(state.get("skipped_steps", "0")) >= 1,
            "that checkpoint is at step 2 and counts the skips (%s)" %
            state.get("skipped_steps"))
    # A NaN weight: the model in memory is broken; Ctrl-C must not save it over the good one.
    rc, out = interrupt_while_bad(c, "iw", weight="3")
    c.check(rc == 0 and "interrupted after step 2: not saved" in out,
            "Ctrl-C with a non-finite loss does not save (%d: %s)" %
            (rc, out.strip().splitlines()[-2:]))
    step, _, m = c.checkpoint("iw.ckpt")
    finite = all(math.isfinite(v) for name in m.params() for v in m.read_param(name))
    m.close()
    c.check(step == 2 and finite, "the step-2 checkpoint stays, with finite weights")


def test_usage(c):
    rc, _, err = c.run(["text.txt", "--max-bad-steps", "0"])
    c.check(rc == 2 and "--max-bad-steps" in err, "--max-bad-steps 0: exit 2 (got %d)" % rc)
    rc, out, _ = c.run(["--help"])
    c.check(rc == 0 and "--max-bad-steps" in out, "--help lists --max-bad-steps")
    rc, _, err = c.run(["text.txt"] + SMALL + ["--steps", "2"], inject="x")
    c.check(rc == 1 and "STX_TEST_INJECT_NAN" in err, "a malformed hook list: exit 1")


def main():
    if len(sys.argv) != 3:
        print("usage: test_cli_faults.py <libsparsetx.so> <build dir>")
        return 2
    lib = stx.load(sys.argv[1])
    train = os.path.join(os.path.abspath(sys.argv[2]), "cli", "sparsetx-train")
    if not os.access(train, os.X_OK):
        print("FAILED  tool not built: %s" % train)
        return 1
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="stx_cli_faults_") as workdir:
        with open(os.path.join(workdir, "text.txt"), "wb") as f:
            f.write(make_text(7777, 11))
        c = Checker(lib, train, workdir)
        test_one_bad_step(c)
        test_stop_after_k(c)
        test_nan_weight(c)
        test_interrupt_while_bad(c)
        test_usage(c)
    print("%.1f s" % (time.time() - start))
    return report(c.failures)


if __name__ == "__main__":
    sys.exit(main())
