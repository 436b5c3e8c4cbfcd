#!/bin/bash
# The gradient all-reduce of 2 local ranks on MPICH and on Open MPI, side by side: within each round the two
# launchers alternate, each timing `bench --mode allreduce` (median of 7 all-reduces of the preset's gradient).
#
#   tests/Ddpm.Benchmarks/allreduce_mpich_openmpi.sh ROUNDS LOG [PRESET...]     (presets: small labml by default)
#
# Needs mpiexec.mpich (apt-get install mpich) and mpirun.openmpi (apt-get install openmpi-bin) and the Release
# build of ddpm-tool. One line per run in LOG: "round R launcher PRESET" and bench's JSON (median_s, algbw_gb_per_s);
# BENCHMARKS.md quotes the medians over the rounds.
set -euo pipefail
rounds=${1:?rounds}; log=${2:?log file}; shift 2
presets=("$@"); [ ${#presets[@]} -gt 0 ] || presets=(small labml)
repo=$(cd "$(dirname "$0")/../.." && pwd)
tool=$repo/Ddpm.Tool/bin/Release/net10.0/ddpm-tool.dll
[ -f "$tool" ] || dotnet build "$repo/Ddpm.Tool" -c Release > /dev/null
ompi=(mpirun.openmpi --oversubscribe -n 2); [ "$(id -u)" = 0 ] && ompi+=(--allow-run-as-root)
: > "$log"
for r in $(seq 1 "$rounds"); do
  for preset in "${presets[@]}"; do
    for launcher in mpich openmpi; do
      if [ $launcher = mpich ]; then run=(mpiexec.mpich -n 2); else run=("${ompi[@]}"); fi
      line=$("${run[@]}" dotnet "$tool" bench --mode allreduce --preset "$preset" --threads 1 --steps 7 --json 2>/dev/null \
             | grep -a -o '{"mode":"allreduce".*}')
      echo "round $r $launcher $preset $line" | tee -a "$log"
    done
  done
done
