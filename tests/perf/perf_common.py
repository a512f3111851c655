"""perf_common.py: what the benchmark scripts of this folder share without torch: parsing
sparsetx-bench's CSV output and its ';'-separated pattern lists."""

import csv
import io


def parse_bench_csv(text):
    """The CSV table in the bench's stdout (from its header line on) as a list of dicts."""
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith("pattern,")), None)
    if start is None:
        return []
    rows = []
    for r in csv.DictReader(io.StringIO("\n".join(lines[start:]) + "\n")):
        try:
            for key in ("n", "batch", "heads", "dim", "block", "runs"):
                r[key] = int(r[key])
            for key in ("pairs", "dense_pairs", "fwd_ms", "fwdbwd_ms", "fwd_tflops",
                        "fwdbwd_tflops"):
                r[key] = float(r[key])
        except (KeyError, TypeError, ValueError):
            continue  # a row cut short (the bench died mid-line)
        rows.append(r)
    return rows


def parse_train_csv(text):
    """The row of `sparsetx-bench train --csv` as a dict (numbers converted), or None."""
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith("preset,")), None)
    if start is None:
        return None
    for row in csv.DictReader(io.StringIO("\n".join(lines[start:]) + "\n")):
        try:
            return dict(row, step_ms=float(row["step_ms"]),
                        tokens_per_s=float(row["tokens_per_s"]),
                        peak_bytes=float(row["peak_bytes"]))
        except (KeyError, ValueError):
            return None
    return None


def split_patterns(text):
    """'dense;[local:8;strided:8];fixed:..' -> the patterns: a ';' inside [...] (a list over
    heads) belongs to its pattern, as in sparsetx-bench's --patterns."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += 1 if ch == "[" else -1 if ch == "]" else 0
        if ch == ";" and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [p.strip() for p in out if p.strip()]
