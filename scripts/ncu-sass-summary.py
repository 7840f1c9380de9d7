#!/usr/bin/env python3
"""Where a kernel's time goes, from an Nsight Compute source export.

Input: the CSV of `ncu -i REPORT.ncu-rep --page source --csv --print-source sass` (one kernel).
Splits the SASS into prologue / hot region / epilogue by execution count (the hot region is every
instruction executed at least `--hot` times as often as the kernel's first instruction, i.e. once
per warp), and prints each part's share of the warp-stall samples and of the executed instructions,
then the instruction mix of the hot region per pass (per loop iteration of one warp, when
`--iters` gives the iteration count). This is how the quantized decode's instruction-cache-bound
prologue and its per-slice instruction mix were found (docs/DESIGN-NOTES.md).

Usage: ncu-sass-summary.py SASS.csv [--hot 5] [--iters N] [--top 20]
"""
import argparse
import csv
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--hot", type=float, default=5.0, help="hot: executed >= HOT x the first instruction")
    ap.add_argument("--iters", type=float, default=0.0, help="loop iterations per warp (for per-iteration counts)")
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    rows = list(csv.reader(open(a.csv, newline="")))
    header_at = next((i for i, r in enumerate(rows) if "Address" in r and "Source" in r), None)
    if header_at is None:
        sys.exit("error: no 'Address'/'Source' header: not an ncu --page source --csv export")
    h = rows[header_at]
    src, smp, exe = h.index("Source"), h.index("Warp Stall Sampling (All Samples)"), h.index("Instructions Executed")
    body = [r for r in rows[header_at + 1:] if len(r) > exe]

    def num(x):
        return float(x.replace(",", "") or 0)

    samples = [num(r[smp]) for r in body]
    execs = [num(r[exe]) for r in body]
    per_warp = execs[0] or 1.0  # the entry instruction runs once per warp
    hot = [i for i, e in enumerate(execs) if e >= a.hot * per_warp]
    if not hot:
        sys.exit("error: no instruction executed %.0fx more than the entry one; lower --hot" % a.hot)
    lo, hi = hot[0], hot[-1] + 1
    ts, te = sum(samples) or 1.0, sum(execs) or 1.0
    print("%d SASS instructions, %d executed; warps: %.0f" % (len(body), sum(1 for e in execs if e), per_warp))
    for name, (x0, x1) in (("prologue", (0, lo)), ("hot", (lo, hi)), ("epilogue", (hi, len(body)))):
        s, e = sum(samples[x0:x1]), sum(execs[x0:x1])
        print("  %-8s [%6d, %6d)  stall samples %5.1f%%  executed %5.1f%%  (%.0f per warp)"
              % (name, x0, x1, 100 * s / ts, 100 * e / te, e / per_warp))
    mix, mix_s = {}, {}
    for i in range(lo, hi):
        if not execs[i]:
            continue
        t = body[i][src].strip()
        op = (t.split()[1] if t.startswith("@") else t.split()[0]).split(".")[0]
        mix[op] = mix.get(op, 0) + execs[i]
        mix_s[op] = mix_s.get(op, 0) + samples[i]
    div = per_warp * (a.iters if a.iters > 0 else 1)
    unit = "per warp-iteration" if a.iters > 0 else "per warp"
    print("hot-region instruction mix (%s), with stall samples:" % unit)
    for op, e in sorted(mix.items(), key=lambda kv: -kv[1])[: a.top]:
        print("  %-10s %8.1f  %5.1f%%  samples %d" % (op, e / div, 100 * e / sum(mix.values()), mix_s[op]))
    print("  total      %8.1f" % (sum(mix.values()) / div))


if __name__ == "__main__":
    main()
