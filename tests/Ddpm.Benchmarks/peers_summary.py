#!/usr/bin/env python3
"""Medians, ratios and peak memory from a peers_side_by_side.sh log: python3 peers_summary.py LOG [DDPM_NAME]."""
import collections
import statistics
import sys

log = sys.argv[1]
ours = sys.argv[2] if len(sys.argv) > 2 else "ddpm"
times = collections.defaultdict(list)
rss = collections.defaultdict(list)
rounds = collections.defaultdict(dict)
for line in open(log):
    if line.startswith("#") or not line.strip():
        continue
    kind, rnd, prog, sec, kb = line.split()[:5]
    times[kind, prog].append(float(sec))
    rss[kind, prog].append(int(kb))
    rounds[kind, int(rnd)][prog] = float(sec)
batch = {"small-train64": 64, "small-train32": 32, "small-sample64": 64, "small-train8": 8, "small-sample8": 8,
         "labml-train16": 16, "labml-sample16": 16}
for kind in batch:
    progs = [p for (k, p) in times if k == kind]
    if not progs:
        continue
    print(f"{kind}:")
    for p in progs:
        t = times[kind, p]
        med = statistics.median(t)
        print(f"  {p:9s} median {med:.4f} s = {batch[kind] / med:7.2f} images/s  (rounds {', '.join(f'{x:.3f}' for x in t)})  peak {max(rss[kind, p]) / 1e6:.2f} GB")
    for p in progs:
        if p == ours:
            continue
        per_round = [r[p] / r[ours] for (k, _), r in rounds.items() if k == kind and p in r and ours in r]
        if per_round:
            print(f"  {ours} / {p}: median of per-round ratios {statistics.median(per_round):.2f} (rounds {', '.join(f'{x:.2f}' for x in per_round)})")
# Batch 8 against batch 64, per image, round by round (a small batch's per-op overheads).
for mode in ("train", "sample"):
    for p in sorted({p for (k, p) in times if k == f"small-{mode}8"}):
        r8 = {r: v[p] for (k, r), v in rounds.items() if k == f"small-{mode}8" and p in v}
        r64 = {r: v[p] for (k, r), v in rounds.items() if k == f"small-{mode}64" and p in v}
        per_round = [(8 / r8[r]) / (64 / r64[r]) for r in sorted(r8) if r in r64]
        if per_round:
            print(f"{p} {mode}: batch 8 images/s / batch 64 images/s, median of per-round ratios {statistics.median(per_round):.2f} "
                  f"(rounds {', '.join(f'{x:.2f}' for x in per_round)})")
