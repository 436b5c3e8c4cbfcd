#!/usr/bin/env bash
# GPU checks of the cuda backend, for a session whose task has a GPU machine (see the device tool).
# The GPU machine has no .NET, so the programs travel as a self-contained linux-x64 build.
#
#   1. Here (no GPU):   tests/gpu/run.sh build
#      publishes Ddpm.Cuda.Check (every per-op parity check + a device-time bench) and ddpm-tool,
#      self-contained, into .gpu-carry/ (ignored by .gitignore) as one xz tarball (the carry limit is 64 MiB).
#   2. Device call:     run(command="bash tests/gpu/run.sh device", carry=[".gpu-carry"], timeout_s=540)
#      unpacks and runs, logging everything to $OUT/gpu-check.log:
#        - Ddpm.Cuda.Check: CUDA probe, the parity checks with TF32 off, sgemm/conv timings with TF32 off and on;
#        - ddpm-tool parity --backend cuda --against cpu / bench --backend cuda, when the tool has those verbs;
#        - tests/gpu/torch_bench.py: the same sgemm and convolution in PyTorch, for the ratio.
#      Exit status: that of the parity checks (0 all passed, 1 a failure, 2 no CUDA device).
# Copy the results into BENCHMARKS.md by hand, with the date and the device line of the log.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
carry="$repo_root/.gpu-carry"

build() {
  cd "$repo_root"
  rm -rf "$carry" && mkdir -p "$carry"
  local pub; pub="$(mktemp -d)"
  local props=(-c Release -r linux-x64 --self-contained true -p:DebugType=none -p:GenerateDocumentationFile=false)
  dotnet publish tests/Ddpm.Cuda.Check/Ddpm.Cuda.Check.csproj "${props[@]}" -o "$pub/bin"
  dotnet publish Ddpm.Tool/Ddpm.Tool.csproj "${props[@]}" -o "$pub/bin"
  tar -C "$pub" -cJf "$carry/ddpm-gpu.tar.xz" bin
  rm -rf "$pub"
  ls -l "$carry"
  echo "now: run(command=\"bash tests/gpu/run.sh device\", carry=[\".gpu-carry\"], timeout_s=540)"
}

device() {
  local out="${OUT:-$repo_root/.gpu-out}"
  mkdir -p "$out"
  local log="$out/gpu-check.log"
  local work; work="$(mktemp -d)"
  tar -C "$work" -xJf "$carry/ddpm-gpu.tar.xz"
  local bin="$work/bin"
  {
    echo "== $(date -u +%FT%TZ) $(uname -m)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  } 2>&1 | tee "$log"

  set +e
  echo "== Ddpm.Cuda.Check" | tee -a "$log"
  timeout 300 "$bin/Ddpm.Cuda.Check" 2>&1 | tee -a "$log"
  local status=${PIPESTATUS[0]}

  if "$bin/ddpm-tool" --help 2>&1 | grep -q '\bparity\b'; then
    echo "== ddpm-tool parity --backend cuda --against cpu" | tee -a "$log"
    timeout 120 "$bin/ddpm-tool" parity --backend cuda --against cpu --preset small 2>&1 | tee -a "$log"
  else
    echo "== ddpm-tool has no parity verb yet; skipped" | tee -a "$log"
  fi
  if "$bin/ddpm-tool" --help 2>&1 | grep -q '\bbench\b'; then
    for preset in small labml; do
      echo "== ddpm-tool bench --backend cuda --preset $preset" | tee -a "$log"
      timeout 120 "$bin/ddpm-tool" bench --backend cuda --preset "$preset" 2>&1 | tee -a "$log"
    done
  else
    echo "== ddpm-tool has no bench verb yet; skipped" | tee -a "$log"
  fi

  echo "== PyTorch reference (tests/gpu/torch_bench.py)" | tee -a "$log"
  PYTHONUNBUFFERED=1 timeout 120 python3 "$repo_root/tests/gpu/torch_bench.py" 2>&1 | tee -a "$log"
  set -e
  rm -rf "$work"
  return "$status"
}

case "${1:-}" in
  build) build ;;
  device) device ;;
  *) echo "usage: tests/gpu/run.sh build|device (see the comment at the top)" >&2; exit 64 ;;
esac
