"""The ctypes binding declares every function of include/sparsetx.h, and nothing else: the
list of STX_API functions parsed from the header equals the binding's signature table, so
the example for Python users cannot fall behind the header. Standard library only."""
import os
import re
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import sparsetx_ctypes as stx  # noqa: E402


def main():
    header = os.path.join(here, "..", "..", "include", "sparsetx.h")
    text = open(header).read()
    declared = set(re.findall(r"STX_API\s[^;(]*?\b(stx_\w+)\s*\(", text))
    bound = set(stx._SIGNATURES)
    missing, extra = sorted(declared - bound), sorted(bound - declared)
    print("header: %d functions, binding: %d" % (len(declared), len(bound)))
    if missing:
        print("FAIL: not in the binding:", ", ".join(missing))
    if extra:
        print("FAIL: in the binding but not the header:", ", ".join(extra))
    if len(sys.argv) > 1:  # and they all resolve in the library
        lib = stx.load(sys.argv[1])
        print("all %d resolve in %s" % (len(bound), sys.argv[1]))
        del lib
    return 1 if missing or extra or len(declared) < 40 else 0


if __name__ == "__main__":
    sys.exit(main())
