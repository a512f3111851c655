"""What the tests of the command-line tools share: a checker that prints every check and
collects the failures, and the report that ends their main()."""

import os
import sys


class Checker:
    """Checks against the tools, run in workdir; a test's own Checker adds its runners."""

    def __init__(self, workdir):
        self.dir = workdir
        self.failures = []

    def check(self, ok, what):
        print(("ok      " if ok else "FAILED  ") + what)
        sys.stdout.flush()
        if not ok:
            self.failures.append(what)
        return ok

    def path(self, name):
        return os.path.join(self.dir, name)


def report(failures):
    """Prints the failed checks, or that all passed; returns the exit status."""
    if failures:
        print("%d check(s) failed:" % len(failures))
        for f in failures:
            print("  " + f)
        return 1
    print("all checks passed")
    return 0
