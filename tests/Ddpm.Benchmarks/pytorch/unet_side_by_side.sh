#!/usr/bin/env bash
# The UNet step benchmark, ours and PyTorch's alternately in one run:
#   tests/Ddpm.Benchmarks/pytorch/unet_side_by_side.sh [THREADS=2] [ROUNDS=3]
# For each round and each case (small train b64, small sample b64, labml train b16, labml sample b16) it runs
# `ddpm-tool bench --json` then unet_step.py with the same preset, batch and thread count, and prints the JSON
# lines; compare the medians of the rounds. Needs Debian's python3-torch (see unet_step.py).
set -euo pipefail
threads=${1:-2}
rounds=${2:-3}
root=$(cd "$(dirname "$0")/../../.." && pwd)
here="$root/tests/Ddpm.Benchmarks/pytorch"
dotnet build -c Release "$root/Ddpm.Tool" >/dev/null
tool="$root/Ddpm.Tool/bin/Release/net10.0/ddpm-tool"
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
cases=("small train 64 5" "small sample 64 5" "labml train 16 3" "labml sample 16 3")
for r in $(seq 1 "$rounds"); do
  for c in "${cases[@]}"; do
    read -r preset mode batch steps <<<"$c"
    echo "round $r: ours  $preset $mode b$batch: $("$tool" bench --preset "$preset" --mode "$mode" --batch "$batch" --steps "$steps" --threads "$threads" --json | tail -n 1)"
    echo "round $r: torch $preset $mode b$batch: $(/usr/bin/python3 "$here/unet_step.py" --preset "$preset" --mode "$mode" --batch "$batch" --steps "$steps" --threads "$threads" | tail -n 1)"
  done
done
