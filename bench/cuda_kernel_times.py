#!/usr/bin/env python3
"""Per-kernel GPU time of an exo decode step, from Nsight Compute's CSV.

On the GPU machine (ncu replays each kernel of ~one decode step; clocks left as found):

  ncu --clock-control none --launch-skip 2000 --launch-count 400 --csv \\
      --metrics gpu__time_duration.sum exo bench MODEL --device cuda -p 0 -n 16 -r 1 > ncu.csv
  python3 cuda_kernel_times.py ncu.csv [WEIGHT_BYTES LAYERS]

Prints, per kernel name, launches, total and mean microseconds and share of the time; with the
model's weight bytes and layer count, also the mat-vec time per token (tokens counted by the
one attention launch per layer of a decode step) and the bandwidth it reaches.
"""
import csv
import sys
from collections import defaultdict


def main():
    rows = []
    with open(sys.argv[1], newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") == "gpu__time_duration.sum":
            ns = float(r["Metric Value"].replace(",", ""))
            unit = r.get("Metric Unit", "ns")
            ns *= {"ns": 1, "nsecond": 1, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6}.get(unit, 1)
            rows.append((r["Kernel Name"].split("(")[0], ns))
    per = defaultdict(lambda: [0, 0.0])
    for name, ns in rows:
        per[name][0] += 1
        per[name][1] += ns
    total = sum(v[1] for v in per.values())
    print(f"{len(rows)} kernels, {total / 1e3:.0f} us in all")
    print("| kernel | launches | total us | mean us | share |")
    print("|---|---:|---:|---:|---:|")
    for name, (n, ns) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        print(f"| {name} | {n} | {ns / 1e3:.0f} | {ns / n / 1e3:.2f} | {100 * ns / total:.1f}% |")
    if len(sys.argv) > 3 and rows:
        mv = sum(ns for name, ns in rows if name.startswith("mv_"))
        steps = sum(1 for name, _ in rows if name == "attn_decode") / int(sys.argv[3]) or 1
        print(f"mat-vec kernels: {mv / steps / 1e3:.0f} us per token; {float(sys.argv[2]) / (mv / steps) :.0f} GB/s over the weights")


if __name__ == "__main__":
    main()
