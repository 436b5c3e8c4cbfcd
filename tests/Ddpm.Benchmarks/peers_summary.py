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
batch = {"small-train64": 64, "small-train32": 32, "small-sample64": 64, "labml-train16": 16, "labml-sample16": 16}
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
