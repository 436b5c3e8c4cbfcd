#!/usr/bin/env bash
# The GPU checks of the cuda backend, sized for one short slot on a GPU machine (everything under 5 minutes, so
# that a 15-minute slot holds the machine's start and one rerun). The GPU machine has no .NET: the programs
# travel as a self-contained linux-x64 build, gzip-compressed, at most 64 MiB.
#
#   1. Here (no GPU):   bash tests/gpu/run.sh build
#      publishes Ddpm.Cuda.Check and ddpm-tool self-contained into .gpu-carry/ (git-ignored) as one .tar.gz.
#   2. Device call:     run(command="bash tests/gpu/run.sh device", carry=[".gpu-carry"], timeout_s=360)
#      each part has its own time limit (together 290 s) and its own log under $OUT:
#        libraries.log     nvidia-smi, the CUDA libraries found (driver, cuBLAS, cuDNN, NVRTC, NCCL), compute-sanitizer,
#                          PyTorch's versions
#        parity-ops.log    every per-op parity case on cuda against cpu-reference (fp32; cuDNN convolutions where found)
#        parity-im2col.log the convolution cases again with DDPM_CUDNN=0 (im2col + cuBLAS)
#        parity-tf32.log   the convolution cases on a TF32 backend, within the TF32 tolerance
#        golden.log        the PyTorch golden tests on cuda
#        tool-parity.log   ddpm-tool parity --backend cuda --against cpu (forward, backward, training, sampling)
#        nccl.log          NCCL on one rank: set-up, all-reduce of 4 MB / small's / labml's gradient, destroy
#        memcheck.log      compute-sanitizer --tool memcheck over the reduction parity cases (sum-to, sum-of-squares)
#        racecheck.log     compute-sanitizer --tool racecheck over the group-norm parity cases (shared-memory reductions)
#        bench.log         ddpm-tool bench --backend cuda --json: small and labml at batch 64 in fp32, tf32 and bf16
#                          with CUDA Graphs, tf32 without them, and small tf32 on im2col (device counters included)
#        torch.log         the same UNet steps in the machine's PyTorch (eager: fp32, tf32, bf16 autocast), for the ratio
#      Exit status: 0 when every check passed, 1 on a failure, 2 when no CUDA device could be used. A part killed at
#      its limit, a ddpm-tool command that failed (bench's included) or a wrong NCCL result is a failure; a part whose
#      library or tool is missing here (NCCL, compute-sanitizer: exit 2) is reported, not a failure; PyTorch's timings
#      are for comparison only (missing PyTorch is said in torch.log).
#
# The same device part runs on the simulated CUDA device (DDPM_CUDA_LIB_DIR=<sim>:<nvrtc>) to check this
# script itself; its timings are then a CPU harness's, never GPU figures. There (the probe names the device a
# simulator) bench runs every one of its commands on the tiny preset at 8x8, batch 2, one step, and NCCL leaves
# out labml's gradient, so that each part completes within its limit on a CPU.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
carry="$repo_root/.gpu-carry"
archive="$carry/ddpm-gpu.tar.gz"
max_carry_bytes=$((64 * 1024 * 1024))

build() {
  cd "$repo_root"
  rm -rf "$carry" && mkdir -p "$carry"
  local pub; pub="$(mktemp -d)"
  local props=(-c Release -r linux-x64 --self-contained true -p:DebugType=none -p:GenerateDocumentationFile=false)
  dotnet publish tests/Ddpm.Cuda.Check/Ddpm.Cuda.Check.csproj "${props[@]}" -o "$pub/bin" > "$pub/publish.log" 2>&1 ||
    { tail -n 30 "$pub/publish.log"; exit 1; }
  dotnet publish Ddpm.Tool/Ddpm.Tool.csproj "${props[@]}" -o "$pub/bin" >> "$pub/publish.log" 2>&1 ||
    { tail -n 30 "$pub/publish.log"; exit 1; }
  # Left out of the carry: the bundled model and sample data (the checks train and bench on synthetic batches and
  # read the golden fixtures) and the runtime's debugger support (createdump, libmscordaccore, libmscordbi).
  rm -rf "$pub/bin/models" "$pub/bin/data" "$pub/bin/createdump" "$pub/bin/libmscordaccore.so" "$pub/bin/libmscordbi.so"
  tar -C "$pub" -cf - bin | gzip -9 > "$archive"
  rm -rf "$pub"
  local size; size=$(stat -c %s "$archive")
  echo "carry: $archive $((size / 1024 / 1024)) MiB"
  if [ "$size" -gt "$max_carry_bytes" ]; then
    echo "the archive is larger than 64 MiB, the most a GPU machine's run takes along" >&2
    exit 1
  fi
  echo "now: run(command=\"bash tests/gpu/run.sh device\", carry=[\".gpu-carry\"], timeout_s=360)"
}

# part NAME SECONDS COMMAND...: runs one part with its own limit, logging to $out/NAME.log; records its status.
part() {
  local name=$1 limit=$2; shift 2
  local log="$out/$name.log" t0=$SECONDS rc=0
  echo "== $name (limit ${limit}s): $(printf '%s ' "$@" | head -n 1 | cut -c1-160)" | tee "$log"
  # KILL to the whole process group: a SIGTERM would let ddpm-tool finish its current step first, and a part
  # must not outlive its limit.
  timeout -s KILL "$limit" "$@" >> "$log" 2>&1 || rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
  tail -n 4 "$log" | sed 's/^/   /'
  status_of[$name]=$rc
}

device() {
  out="${OUT:-$repo_root/.gpu-out}"
  mkdir -p "$out"
  [ -f "$archive" ] || { echo "no $archive: run 'bash tests/gpu/run.sh build' here first and carry .gpu-carry" >&2; exit 2; }
  local work; work="$(mktemp -d)"
  tar -C "$work" -xzf "$archive"
  local bin="$work/bin" py="${PYTHON:-python3}" t0=$SECONDS
  declare -gA status_of=()
  {
    echo "== $(date -u +%FT%TZ) $(uname -m)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: not available"
    echo "== CUDA libraries on the loader's path"
    ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libcublas(Lt)?\.so|libcudnn\.so|libnvrtc|libnccl' || true
    echo "== CUDA libraries in Python wheels and toolkits"
    find /usr/local/cuda*/lib64 /opt/*/.venv/lib/python3*/site-packages/nvidia /usr/local/lib/python3*/dist-packages/nvidia \
      -maxdepth 3 \( -name 'libcublas*.so*' -o -name 'libcudnn.so*' -o -name 'libnvrtc*.so*' -o -name 'libnccl.so*' \) 2>/dev/null | sort | head -n 40 || true
    echo "== DDPM_CUDA_LIB_DIR=${DDPM_CUDA_LIB_DIR:-<unset>}"
    echo "== compute-sanitizer: $(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1 || echo 'not found')"
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())' 2>&1 || true
  } > "$out/libraries.log" 2>&1
  cat "$out/libraries.log"

  part parity-ops 45 "$bin/Ddpm.Cuda.Check" --no-bench
  if [ "${status_of[parity-ops]}" -eq 2 ]; then
    echo "no CUDA device could be used; see $out/parity-ops.log"
    rm -rf "$work"
    return 2
  fi
  # The simulated device rehearses the script: the same commands on tiny work.
  local bench_presets="small labml" bench_size="--batch 64 --steps 5" nccl_quick=""
  if grep -q "CUDA simulator" "$out/parity-ops.log"; then
    bench_presets="tiny" bench_size="--batch 2 --steps 1 --image-size 8" nccl_quick="--quick"
    echo "a simulated CUDA device: bench on tiny at 8x8, batch 2, one step; NCCL without labml's gradient"
  fi
  DDPM_CUDNN=0 part parity-im2col 25 "$bin/Ddpm.Cuda.Check" --no-bench --filter conv
  part parity-tf32 15 "$bin/Ddpm.Cuda.Check" --no-bench --tf32
  part golden 20 "$bin/Ddpm.Cuda.Check" --golden
  part tool-parity 25 "$bin/ddpm-tool" parity --backend cuda --against cpu --preset tiny
  part nccl 15 "$bin/Ddpm.Cuda.Check" --nccl $nccl_quick
  # compute-sanitizer slows kernels 10-100x: a subset of the cases, each tool with its own limit.
  local sanitizer; sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1 || true)
  if [ -n "$sanitizer" ]; then
    part memcheck 35 "$sanitizer" --tool memcheck --error-exitcode 1 "$bin/Ddpm.Cuda.Check" --no-bench --filter sum
    part racecheck 20 "$sanitizer" --tool racecheck --error-exitcode 1 "$bin/Ddpm.Cuda.Check" --no-bench --filter norm
  else
    echo "compute-sanitizer: not found; memcheck and racecheck not run" | tee "$out/memcheck.log" "$out/racecheck.log"
    status_of[memcheck]=2; status_of[racecheck]=2
  fi
  # Every command runs; the part fails if any of them did.
  bench() {
    local b=("$bin/ddpm-tool" bench --backend cuda $size --json) rc=0
    for preset in $presets; do
      for precision in fp32 tf32 bf16; do "${b[@]}" --preset "$preset" --precision "$precision" || rc=1; done
      "${b[@]}" --preset "$preset" --precision tf32 --no-cuda-graphs || rc=1
    done
    DDPM_CUDNN=0 "${b[@]}" --preset "${presets%% *}" --precision tf32 || rc=1
    return $rc; }
  part bench 65 bash -c "$(declare -f bench); bin='$bin' presets='$bench_presets' size='$bench_size' bench"
  torch_steps() { for preset in small labml; do
      for flag in "" --tf32 --bf16; do
        "$py" "$repo_root/tests/Ddpm.Benchmarks/pytorch/unet_step.py" --device cuda --preset "$preset" --batch 64 --steps 5 $flag
      done
    done ; }
  if "$py" -c 'import torch' > /dev/null 2>&1; then
    PYTHONUNBUFFERED=1 part torch 45 bash -c "$(declare -f torch_steps); bin='$bin' py='$py' repo_root='$repo_root' torch_steps"
  else
    echo "PyTorch: not importable by $py; torch not run" | tee "$out/torch.log"
    status_of[torch]=2
  fi

  echo "== all parts took $((SECONDS - t0)) s; exit codes:"
  local failed=0
  for name in parity-ops parity-im2col parity-tf32 golden tool-parity nccl memcheck racecheck bench torch; do
    local rc=${status_of[$name]} note=""
    [ "$rc" -eq 137 ] && note=" (killed at its limit)"
    echo "   $name $rc$note"
    case $name in
      # Ddpm.Cuda.Check's 2 (and the script's, for a missing compute-sanitizer): not available here, reported.
      parity-ops|parity-im2col|parity-tf32|golden|nccl|memcheck|racecheck) [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ] || failed=1 ;;
      # ddpm-tool's 2 is a bad command line.
      tool-parity|bench) [ "$rc" -eq 0 ] || failed=1 ;;
    esac
  done
  rm -rf "$work"
  return "$failed"
}

case "${1:-}" in
  build) build ;;
  device) device ;;
  *) echo "usage: tests/gpu/run.sh build|device (see the comment at the top)" >&2; exit 64 ;;
esac
