#!/bin/bash
# The main job's wall time, builds side by side: `ddpm-tool train` with its defaults (the bundled data, 2 threads,
# every grid, checkpoint and FID measurement the run writes), each build in turn within a round.
#
#   tests/Ddpm.Benchmarks/main_job_side_by_side.sh ROUNDS LOG DDPM_PUBLISH_DIR[:OPTION,VALUE,...]... [-- TRAIN_OPTIONS...]
#
# A publish dir may carry options of its own after a colon, commas between words: /tmp/b:--preset,compact runs
# that build with --preset compact (named b:--preset,compact in the log). TRAIN_OPTIONS go to every run.
# One line per run: round build wall_s final_step last_fid (the run's own 300-sample measurement from metrics.csv);
# the run folders are kept under $KEEP (default: a temporary folder, removed at the end) as KEEP/BUILD-rROUND, so
# their checkpoints can be measured with `ddpm-tool eval` afterwards. The summary prints each build's median wall
# time and the medians of the per-round ratios to the first build. The time is the command's alone: building or
# publishing a build comes before and is not counted.
set -euo pipefail
rounds=${1:?rounds}; log=${2:?log file}; shift 2
builds=(); options=()
while [ $# -gt 0 ]; do
  if [ "$1" = -- ]; then shift; options=("$@"); break; fi
  builds+=("$(cd "${1%%:*}" && pwd)${1#"${1%%:*}"}"); shift
done
[ ${#builds[@]} -gt 0 ] || { echo "give at least one publish dir" >&2; exit 2; }
keep=${KEEP:-}
if [ -z "$keep" ]; then keep=$(mktemp -d); trap 'rm -rf "$keep"' EXIT; fi
mkdir -p "$keep"
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), AVX-512: $(grep -q avx512f /proc/cpuinfo && echo yes || echo no), $rounds rounds, options: ${options[*]:-none}, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log"
for i in $(seq "$rounds"); do
  for entry in "${builds[@]}"; do
    b=${entry%%:*}; own=()
    [ "$b" = "$entry" ] || IFS=, read -r -a own <<< "${entry#*:}"
    name=$(basename "$b")${own[*]:+:$(IFS=,; echo "${own[*]}")}; out="$keep/$(echo "$name" | tr -c 'A-Za-z0-9.\n-' _)-r$i"
    rm -rf "$out"
    start=$(date +%s.%N)
    dotnet "$b/ddpm-tool.dll" train --threads 2 --out "$out" "${own[@]}" "${options[@]}" > "$out.log" 2>&1
    wall=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)")
    last=$(tail -n 1 "$out/metrics.csv" 2>/dev/null | cut -d, -f1,2 | tr , ' ')
    echo "run $i $name $wall ${last:-- -}" | tee -a "$log"
  done
done
first=${builds[0]}; first_own=${first#"${first%%:*}"}
python3 - "$log" "$(basename "${first%%:*}")$first_own" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) >= 4 and p[0] == "run":
        runs.setdefault(int(p[1]), {})[p[2]] = float(p[3])
names = sorted({n for r in runs.values() for n in r})
first = sys.argv[2]
for n in names:
    walls = [r[n] for r in runs.values() if n in r]
    ratios = [r[n] / r[first] for r in runs.values() if n in r and first in r]
    print(f"{n}: median {statistics.median(walls):.1f} s over {len(walls)} runs" +
          (f", {statistics.median(ratios):.3f} of {first}'s time (per-round ratios {', '.join(f'{x:.3f}' for x in ratios)})" if n != first and ratios else ""))
EOF
