#!/bin/bash
# Images/s and peak memory of a preset's training and sampling steps from batch 1 to 256, 2 threads: the batch
# tables of BENCHMARKS.md.
#
#   tests/Ddpm.Benchmarks/batch_sweep.sh ROUNDS LOG [DDPM_PUBLISH_DIR]
#
# Each round runs every batch size once, training then sampling, one `ddpm-tool bench --json` process per figure
# (its median step time over --steps, after --warmup, and the process's peak working set), so every batch size is
# measured in each round's minutes; the summary prints the medians over the rounds as a Markdown table per preset.
# PRESETS="small compact" (default: small) alternates presets within each batch size.
# With no publish dir it publishes this checkout to a temporary folder. DDPM_ENV="VAR=value ..." is set for every
# run (DDPM_ENV=DOTNET_EnableAVX512=0 runs the AVX2 code on an AVX-512 host). BATCHES="1 8 64" measures some only.
set -euo pipefail
rounds=${1:?rounds}; log=${2:?log file}
repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${3:-}
if [ -z "$build" ]; then
  build=$(mktemp -d)
  dotnet publish "$repo/Ddpm.Tool" -c Release -o "$build" > /dev/null
fi
tool=$(cd "$build" && pwd)/ddpm-tool.dll
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), AVX-512: $(grep -q avx512f /proc/cpuinfo && echo yes || echo no), $rounds rounds, env: ${DDPM_ENV:-none}, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log"
for i in $(seq "$rounds"); do
  for b in ${BATCHES:-1 2 4 8 16 32 64 128 256}; do
    for preset in ${PRESETS:-small}; do
      for mode in train sample; do
        # Enough repetitions that each figure takes a second or more; the big batches take several per step.
        steps=$(( b >= 64 ? 3 : (b >= 8 ? 5 : 9) ))
        json=$(env ${DDPM_ENV:-} dotnet "$tool" bench --preset "$preset" --mode $mode --batch "$b" --threads 2 \
          --steps $steps --warmup 2 --json | tail -n 1)
        fields=$(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j["median_s"], j["images_per_s"], j["peak_memory_bytes"])' "$json")
        echo "$mode $preset $b $i $fields" | tee -a "$log"
      done
    done
  done
done
python3 - "$log" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 7 and p[0] in ("train", "sample"):
        rows.setdefault((p[0], p[1], int(p[2])), []).append((float(p[4]), float(p[5]), int(p[6])))
for preset in dict.fromkeys(k[1] for k in rows):
    batches = sorted({b for _, q, b in rows if q == preset})
    print(f"\n`{preset}`:\n")
    print("| batch | training images/s | training peak memory | sampling images/s | sampling peak memory |")
    print("|---|---|---|---|---|")
    for b in batches:
        cells = []
        for mode in ("train", "sample"):
            r = rows.get((mode, preset, b))
            if not r:
                cells += ["", ""]; continue
            cells += [f"{statistics.median(x[1] for x in r):.1f}", f"{statistics.median(x[2] for x in r) / 1e9:.2f} GB"]
        print(f"| {b} | " + " | ".join(cells) + " |")
EOF
