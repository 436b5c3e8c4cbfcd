#!/bin/sh
# Ours and PyTorch's figures in one run, alternating, so both see the same machine state.
# Usage: tests/Ddpm.Benchmarks/pytorch/side_by_side.sh [threads] [rounds]
set -e
threads=${1:-2}
rounds=${2:-3}
root=$(cd "$(dirname "$0")/../../.." && pwd)
dotnet build "$root/tests/Ddpm.Benchmarks" -c Release -v q >/dev/null
for r in $(seq 1 "$rounds"); do
  echo "## round $r"
  dotnet "$root/tests/Ddpm.Benchmarks/bin/Release/net10.0/Ddpm.Benchmarks.dll" --threads "$threads"
  OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads \
    /usr/bin/python3 "$root/tests/Ddpm.Benchmarks/pytorch/bench_torch.py" --threads "$threads"
done
