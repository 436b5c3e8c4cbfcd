#!/usr/bin/env bash
# Data-parallel training on MPICH (and on Open MPI where installed): `mpiexec -n 2 ddpm-tool train` against one process with the same global batch
# (same loss curve and, after 5 steps, the same weights within float summation order; also with --grad-accum 2), a 2-rank checkpoint resumed
# on 1 rank, and the messages for an indivisible batch, for a launcher that does not match the MPI library and for
# --distributed nccl without CUDA; a rank that cannot start, SIGTERM to the launcher and a killed rank end the job
# without a hang and leave a checkpoint that loads. When DDPM_CUDA_LIB_DIR names the simulated CUDA device (tests/CudaSim, which
# also builds a simulated libnccl.so.2), the same comparison for --backend cuda over NCCL and over the MPI
# fallback through host memory (libnccl.so.2 left out of the library path); those ranks run under the simulator's
# schedule and checks from the environment (DDPM_CUDA_SIM_SCHEDULE, DDPM_CUDA_SIM_CHECK: .ci/run sets them, with
# NCCL's results arriving at their completion point in stream order). Needs MPICH's mpiexec and
# libmpich.so.12 (Debian: apt-get install --no-install-recommends mpich); without them it says so and exits 0 with
# "skipped". Uses the Release build of ddpm-tool (built here if missing). Prints "N passed, N failed" last.
set -uo pipefail
cd "$(dirname "$0")/.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

# MPICH's launcher by its own name: with Open MPI installed too, plain mpiexec may be Open MPI's.
mpiexec=$(command -v mpiexec.mpich || command -v mpiexec.hydra || true)
if [ -z "$mpiexec" ] || ! ldconfig -p | grep 'libmpich\.so\.12' > /dev/null; then
  echo "MPICH's mpiexec or libmpich.so.12 not installed: MPI tests skipped"
  echo "0 passed, 0 failed, 22 skipped"
  exit 0
fi

tool=Ddpm.Tool/bin/Release/net10.0/ddpm-tool.dll
if [ ! -f "$tool" ]; then
  dotnet build Ddpm.Tool -c Release > /dev/null 2>&1 || { echo "ddpm-tool does not build"; echo "0 passed, 1 failed"; exit 1; }
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0; failed=0; skipped=0
pass() { echo "PASS $1"; passed=$((passed + 1)); }
flunk() { echo "FAIL $1"; failed=$((failed + 1)); }

# One thread per rank, so 2 ranks and 1 rank compute on the same kernels; no sample grids (not what is compared).
common=(train --preset tiny --backend cpu --threads 1 --warmup 2 --lr-schedule constant --sample-every 0 --samples 4 --sample-steps 2
        --checkpoint-every 3 --log-every 1 --seed 3)

# Losses and gradient norms of two loss.csv files agree within a relative tolerance: float summation order differs
# between one mean over 8 images and the mean of two means over 4 (measured over 5 steps: 9.3e-8 relative on cpu,
# 1.6e-7 with --grad-accum 2, 1.4e-7 on the simulated cuda device). Adam with eps 1e-8 turns rounding in gradient
# elements that are zero up to rounding into steps of ~lr, so differences can grow over a run; 1e-4 leaves room for
# that and still fails on a wrong shard or draw (those change the loss at the first step by far more) or a sum in
# place of the average (it doubles the logged gradient norm; clipping and Adam's scale invariance hide it from the
# loss for several steps).
same_losses() {
  awk -F, -v tol=1e-4 'NR == FNR { if (FNR > 1) { a[$1] = $2; g[$1] = $3 } next }
    function rel(x, y) { return (x > y ? x - y : y - x) / (y < 0 ? -y : y) }
    FNR > 1 { n++; r = rel(a[$1], $2); q = rel(g[$1], $3); if (q > r) r = q; if (r > worst) worst = r;
              if (!($1 in a) || r > tol) { bad++; print "  step " $1 ": loss " a[$1] " vs " $2 ", gradient norm " g[$1] " vs " $3 } }
    END { printf "  %d steps, largest relative difference %.3g\n", n, worst; exit (bad > 0 || n == 0) }' "$1" "$2"
}

# The model.* tensors of a checkpoint (safetensors: u64 header size, JSON header, float32 data), one float per
# line after its element index in the data section.
model_floats() {
  local f=$1 n
  n=$(od -A n -t u8 -N 8 "$f" | tr -d ' ')
  head -c $((8 + n)) "$f" | tail -c "$n" \
    | grep -oE '"model\.[^"]*":\{"dtype":"F32","shape":\[[0-9,]*\],"data_offsets":\[[0-9]+,[0-9]+\]' \
    | sed -E 's/.*\[([0-9]+),([0-9]+)\]$/\1 \2/' > "$f.ranges"
  od -A n -t f4 -v -w4 -j $((8 + n)) "$f" \
    | awk 'NR == FNR { for (i = $1 / 4; i < $2 / 4; i++) keep[i] = 1; next } (FNR - 1) in keep { print FNR - 1, $1 }' "$f.ranges" -
}

# The weights (not the EMA copy) of two checkpoints agree within 1e-4 absolute. Measured after 5 steps, 1 rank x 8
# images against 2 ranks x 4: 6.3e-6 at most on cpu (8.9e-6 with --grad-accum 2), 1.7e-6 on the simulated cuda device
# (NCCL and MPI alike). The steps are Adam's, about lr = 1e-3 per element per step, so a wrong shard or a missing
# all-reduce moves weights by far more than 1e-4; rounding in the gradient's summation order moves them by far less.
# (Adam is blind to the gradient's scale: a sum in place of the average is for same_losses to catch.)
same_weights() {
  [ -f "$1" ] && [ -f "$2" ] || return 1
  paste -d' ' <(model_floats "$1") <(model_floats "$2") | awk -v atol=1e-4 '
    { n++; if ($1 != $3) { bad++; next } d = $2 - $4; if (d < 0) d = -d; if (d > worst) worst = d; if (d > atol) bad++ }
    END { printf "  %d weights, largest absolute difference %.3g\n", n, worst; exit (bad > 0 || n == 0) }'
}

# The latest checkpoint of run folder $1 (the highest step number), or nothing.
latest() { ls "$1"/checkpoint-*.safetensors 2> /dev/null | tail -n 1; }

# runs_agree A B: the runs in $work/A and $work/B logged the same losses and gradient norms and saved the same weights.
runs_agree() {
  [ -f "$work/$1/loss.csv" ] && [ -f "$work/$2/loss.csv" ] && same_losses "$work/$1/loss.csv" "$work/$2/loss.csv" \
    && same_weights "$(latest "$work/$1")" "$(latest "$work/$2")"
}

# 1. 2 ranks x 4 images against 1 rank x 8 images.
dotnet "$tool" "${common[@]}" --steps 5 --batch 8 --distributed none --out "$work/one" > "$work/one.log" 2>&1 \
  || { cat "$work/one.log"; flunk "1-rank run"; }
"$mpiexec" -n 2 dotnet "$tool" "${common[@]}" --steps 5 --batch 8 --out "$work/two" > "$work/two.log" 2>&1 \
  || { cat "$work/two.log"; flunk "2-rank run"; }
if runs_agree one two; then
  pass "2 ranks with batch 8 give 1 rank's losses, gradient norms and, after 5 steps, weights"
else
  flunk "2 ranks with batch 8 give 1 rank's losses, gradient norms and, after 5 steps, weights"
fi
# 1b. Gradient accumulation on 2 ranks (each rank's 4 images as 2 micro-batches of 2) against 1 rank x 8 images.
"$mpiexec" -n 2 dotnet "$tool" "${common[@]}" --steps 5 --batch 8 --grad-accum 2 --out "$work/accum" > "$work/accum.log" 2>&1 \
  || { cat "$work/accum.log"; flunk "2-rank run with --grad-accum 2"; }
if runs_agree one accum && grep -q "each as 2 micro-batches of 2" "$work/accum.log"; then
  pass "2 ranks with --grad-accum 2 give 1 rank's losses, gradient norms and weights"
else
  flunk "2 ranks with --grad-accum 2 give 1 rank's losses, gradient norms and weights"
fi
# Rank 0 alone writes: one header line of output, one copy of each file.
if grep -q "2 ranks" "$work/two.log" && [ "$(grep -c '^ddpm-tool train' "$work/two.log")" = 1 ]; then
  pass "only rank 0 writes the console"
else
  cat "$work/two.log"; flunk "only rank 0 writes the console"
fi

# 2. The 2-rank checkpoint of step 3 resumed on 1 rank continues the 1-rank loss curve.
mkdir -p "$work/resume"
"$mpiexec" -n 2 dotnet "$tool" "${common[@]}" --batch 8 --steps 3 --out "$work/half" > "$work/half.log" 2>&1 \
  && dotnet "$tool" train --resume --steps 5 --threads 1 --sample-every 0 --samples 4 \
       --sample-steps 2 --log-every 1 --out "$work/half" > "$work/resume.log" 2>&1
if [ -f "$work/half/loss.csv" ] && same_losses "$work/one/loss.csv" "$work/half/loss.csv"; then
  pass "a 2-rank checkpoint resumes on 1 rank with the same losses"
else
  cat "$work/half.log" "$work/resume.log"; flunk "a 2-rank checkpoint resumes on 1 rank with the same losses"
fi

# 2b. Gradients averaged in small buckets during the backward pass (MPI_Iallreduce) train the same weights, bit for
# bit, as one all-reduce after it: every element is summed once over the same 2 ranks.
"$mpiexec" -n 2 dotnet "$tool" "${common[@]}" --batch 8 --steps 3 --bucket-mb 0 --out "$work/flat" > "$work/flat.log" 2>&1
"$mpiexec" -n 2 dotnet "$tool" "${common[@]}" --batch 8 --steps 3 --bucket-mb 0.05 --out "$work/buckets" > "$work/buckets.log" 2>&1
if [ -n "$(latest "$work/flat")" ] && cmp -s "$(latest "$work/flat")" "$(latest "$work/buckets")"; then
  pass "gradient buckets train the weights of one all-reduce bit for bit"
else
  cat "$work/flat.log" "$work/buckets.log"; flunk "gradient buckets train the weights of one all-reduce bit for bit"
fi

# 3. The messages: an indivisible batch, and a launcher the MPI library does not belong to.
out=$("$mpiexec" -n 2 dotnet "$tool" "${common[@]}" --steps 5 --batch 5 --out "$work/odd" 2>&1); rc=$?
if [ $rc -ne 0 ] && echo "$out" | grep -q -- "--batch 5 (the global batch) does not divide over 2 ranks; use a multiple of 2."; then
  pass "an indivisible batch is refused with its sizes"
else
  echo "$out"; flunk "an indivisible batch is refused with its sizes (exit $rc)"
fi
# A Slurm step of 2 tasks without --mpi=pmi2: MPICH's library starts alone and sees 1 rank.
out=$(SLURM_STEP_NUM_TASKS=2 SLURM_PROCID=0 dotnet "$tool" "${common[@]}" --steps 5 --batch 8 --out "$work/mismatch" 2>&1); rc=$?
if [ $rc -ne 0 ] && echo "$out" | grep -q "The launcher (Slurm) started 2 ranks but MPI (libmpich.so.12) sees 1"; then
  pass "a launcher/library mismatch is refused"
else
  echo "$out"; flunk "a launcher/library mismatch is refused (exit $rc)"
fi

out=$("$mpiexec" -n 2 dotnet "$tool" "${common[@]}" --steps 5 --batch 8 --distributed nccl --out "$work/nccl-cpu" 2>&1); rc=$?
if [ $rc -eq 2 ] && [ "$(echo "$out" | grep -c -- "--distributed nccl needs --backend cuda (got --backend cpu)")" = 1 ]; then
  pass "--distributed nccl with --backend cpu is one usage error"
else
  echo "$out"; flunk "--distributed nccl with --backend cpu is one usage error (exit $rc)"
fi

# 3b. A rank that cannot start (its --data is missing; MPMD launch) names itself, and the job ends at once.
out=$(timeout 120 "$mpiexec" -n 1 dotnet "$tool" "${common[@]}" --steps 5 --batch 8 --out "$work/alone" \
      : -n 1 dotnet "$tool" "${common[@]}" --steps 5 --batch 8 --out "$work/alone" --data "$work/missing" 2>&1); rc=$?
if [ $rc -eq 1 ] && [ "$(echo "$out" | grep -c "^ddpm-tool: rank 1 of 2: $work/missing: no such file or folder.")" = 1 ] \
   && [ "$(echo "$out" | grep -c "^ddpm-tool:")" = 1 ]; then
  pass "a rank that cannot start names itself in one line and ends the job"
else
  echo "$out"; flunk "a rank that cannot start names itself in one line and ends the job (exit $rc)"
fi

# The lines of loss.csv in folder $1 (0 before it exists).
rows() { [ -f "$1/loss.csv" ] && wc -l < "$1/loss.csv" || echo 0; }
# Waits up to 120 s for folder $1 to log $2 steps; 0 when it did.
await_rows() { local i; for i in $(seq 1 240); do [ "$(rows "$1")" -gt "$2" ] && return 0; sleep 0.5; done; return 1; }
# The common options with --checkpoint-every $1, one per line.
checkpoint_every() {
  local a=("${common[@]}") i
  for i in "${!a[@]}"; do [ "${a[$i]}" = --checkpoint-every ] && a[i + 1]=$1; done
  printf '%s\n' "${a[@]}"
}
# The exit code of background launcher $1, given 60 s to end; one that hangs is killed with its ranks (named by
# their --out folder $2) and counts as code 124.
launcher_code() {
  if timeout 60 tail --pid="$1" -f /dev/null; then wait "$1"; return $?; fi
  pkill -KILL -f -- "--out $2" ; kill -KILL "$1" 2> /dev/null; wait "$1"; return 124
}

# 3c. SIGTERM to the launcher (a scheduler's time limit; Ctrl-C alike) stops every rank after the same step and
# saves one checkpoint that loads, with one notice. Every rank exits with 130; what mpiexec returns is Hydra's
# choice after it forwarded a signal (130 or 0 from run to run here), so both are accepted.
mapfile -t args < <(checkpoint_every 100000)
"$mpiexec" -n 2 dotnet "$tool" "${args[@]}" --steps 100000 --batch 8 --out "$work/term" > "$work/term.log" 2>&1 &
launcher=$!
await_rows "$work/term" 3; kill -TERM $launcher
launcher_code $launcher "$work/term"; rc=$?
step=$(sed -n 's/^interrupted at step \([0-9,]*\); checkpoint saved.*/\1/p' "$work/term.log" | tr -d ,)
if { [ $rc -eq 130 ] || [ $rc -eq 0 ]; } && [ -n "$step" ] && [ "$(grep -c "SIGTERM: stopping after the current step" "$work/term.log")" = 1 ] \
   && dotnet "$tool" info --checkpoint "$work/term" 2>&1 | grep -q "^  step      $step;"; then
  pass "SIGTERM to mpiexec saves one checkpoint of the step every rank stopped after (mpiexec's exit $rc)"
else
  cat "$work/term.log"; flunk "SIGTERM to mpiexec saves one checkpoint of the step every rank stopped after (exit $rc)"
fi

# 3d. A rank killed mid-run: the launcher ends the job within seconds with a non-zero code, and the last
# checkpoint written (every 2 steps, atomically) loads.
mapfile -t args < <(checkpoint_every 2)
"$mpiexec" -n 2 dotnet "$tool" "${args[@]}" --steps 100000 --batch 8 --out "$work/killed" > "$work/killed.log" 2>&1 &
launcher=$!
await_rows "$work/killed" 5
victim=""
for p in $(pgrep -f -- "--out $work/killed"); do
  tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx PMI_RANK=1 && victim=$p
done
start=$(date +%s)
[ -n "$victim" ] && kill -KILL "$victim"
launcher_code $launcher "$work/killed"; rc=$?
took=$(( $(date +%s) - start ))
if [ -n "$victim" ] && [ $rc -ne 0 ] && [ $took -le 10 ] \
   && dotnet "$tool" info --checkpoint "$work/killed" 2>&1 | grep -q "^  step      [0-9]*;"; then
  pass "a killed rank ends the job within seconds (exit $rc after ${took} s) and the last checkpoint loads"
else
  echo "rank 1: ${victim:-not found}, exit $rc after ${took} s"; cat "$work/killed.log"
  flunk "a killed rank ends the job within seconds and the last checkpoint loads"
fi

# A verb that is not data-parallel runs once, on rank 0, with one warning line.
out=$(timeout 120 "$mpiexec" -n 2 dotnet "$tool" info 2>&1); rc=$?
if [ $rc -eq 0 ] && [ "$(echo "$out" | grep -c '^presets:')" = 1 ] \
   && [ "$(echo "$out" | grep -c '^ddpm-tool: warning: info is not data-parallel; of the 2 ranks .* rank 0 runs it alone.$')" = 1 ]; then
  pass "a verb that is not data-parallel runs once under mpiexec, with one warning"
else
  echo "$out"; flunk "a verb that is not data-parallel runs once under mpiexec, with one warning (exit $rc)"
fi

# bench's data-parallel modes: the all-reduce's time and bandwidth, and its share of a 2-rank training step.
out=$("$mpiexec" -n 2 dotnet "$tool" bench --mode allreduce --preset tiny --threads 1 --steps 2 --json 2>&1 \
      && "$mpiexec" -n 2 dotnet "$tool" bench --mode train --preset tiny --batch 4 --threads 1 --steps 2 --json 2>&1); rc=$?
if [ $rc -eq 0 ] && echo "$out" | grep -q '"mode":"allreduce".*"ranks":2,"collective":"MPI' \
   && echo "$out" | grep -q "data-parallel: 2 ranks over MPI" && [ "$(echo "$out" | grep -c '^bench ')" = 2 ]; then
  pass "bench times the all-reduce and a 2-rank training step, rank 0 reporting"
else
  echo "$out"; flunk "bench times the all-reduce and a 2-rank training step, rank 0 reporting (exit $rc)"
fi

# 3e. Open MPI (libmpi.so.40, its handles the addresses of exported objects) under its own mpirun, when installed:
# 2 ranks give 1 rank's losses and weights, and its non-blocking all-reduce (buckets) the weights of one all-reduce
# bit for bit. Open MPI refuses to run as root without --allow-run-as-root.
ompi=$(command -v mpirun.openmpi || true)
if [ -z "$ompi" ] || ! ldconfig -p | grep 'libmpi\.so\.40' > /dev/null; then
  echo "Open MPI's mpirun.openmpi or libmpi.so.40 not installed: Open MPI tests skipped"
  skipped=$((skipped + 2))
else
  ompi_run=("$ompi" --oversubscribe -n 2)
  [ "$(id -u)" = 0 ] && ompi_run+=(--allow-run-as-root)
  "${ompi_run[@]}" dotnet "$tool" "${common[@]}" --steps 5 --batch 8 --out "$work/ompi" > "$work/ompi.log" 2>&1 \
    || { cat "$work/ompi.log"; flunk "2-rank run over Open MPI"; }
  if runs_agree one ompi && grep -q "data-parallel: 2 ranks over MPI (Open MPI v" "$work/ompi.log"; then
    pass "Open MPI: 2 ranks with batch 8 give 1 rank's losses, gradient norms and weights"
  else
    cat "$work/ompi.log"; flunk "Open MPI: 2 ranks with batch 8 give 1 rank's losses, gradient norms and weights"
  fi
  "${ompi_run[@]}" dotnet "$tool" "${common[@]}" --batch 8 --steps 3 --bucket-mb 0 --out "$work/ompi-flat" > "$work/ompi-flat.log" 2>&1
  "${ompi_run[@]}" dotnet "$tool" "${common[@]}" --batch 8 --steps 3 --bucket-mb 0.05 --out "$work/ompi-buckets" > "$work/ompi-buckets.log" 2>&1
  if [ -n "$(latest "$work/ompi-flat")" ] && cmp -s "$(latest "$work/ompi-flat")" "$(latest "$work/ompi-buckets")"; then
    pass "Open MPI: gradient buckets (MPI_Iallreduce) train the weights of one all-reduce bit for bit"
  else
    cat "$work/ompi-flat.log" "$work/ompi-buckets.log"; flunk "Open MPI: gradient buckets (MPI_Iallreduce) train the weights of one all-reduce bit for bit"
  fi
fi

# 4. --backend cuda on the simulated device (a CPU test harness, slow: 5 tiny steps per run): 2 ranks over the
# simulated NCCL (also as a release without ncclAvg), and over MPI through host memory when libnccl.so.2 is not
# found, against 1 rank.
sim_nccl=""
IFS=: read -ra cuda_dirs <<< "${DDPM_CUDA_LIB_DIR:-}"
for d in "${cuda_dirs[@]}"; do [ -f "$d/libnccl.so.2" ] && [ -f "$d/libcuda.so.1" ] && sim_nccl=$d; done
if [ -z "$sim_nccl" ]; then
  echo "DDPM_CUDA_LIB_DIR does not name the simulated CUDA device with its libnccl.so.2 (tests/CudaSim/build.sh): CUDA tests skipped"
  skipped=$((skipped + 7))
else
  # fp32: the check is of the data parallelism (TF32, the CUDA default, rounds every product's inputs and moves
  # Adam's near-zero gradient elements by more than the tolerance's rounding margin).
  cuda=("${common[@]/#cpu/cuda}" --precision fp32)
  # The same folders without libnccl.so.2: links to everything else in them.
  no_nccl=()
  for i in "${!cuda_dirs[@]}"; do
    mkdir -p "$work/lib$i"
    for f in "${cuda_dirs[$i]}"/*; do case "$(basename "$f")" in libnccl.so*) ;; *) ln -s "$f" "$work/lib$i/" ;; esac; done
    no_nccl+=("$work/lib$i")
  done
  no_nccl_path=$(IFS=:; echo "${no_nccl[*]}")
  dotnet "$tool" "${cuda[@]}" --steps 5 --batch 8 --distributed none --out "$work/cuda-one" > "$work/cuda-one.log" 2>&1 \
    || { cat "$work/cuda-one.log"; flunk "1-rank cuda run"; }
  "$mpiexec" -n 2 dotnet "$tool" "${cuda[@]}" --steps 5 --batch 8 --distributed nccl --out "$work/cuda-nccl" > "$work/cuda-nccl.log" 2>&1 \
    || { cat "$work/cuda-nccl.log"; flunk "2-rank cuda run over NCCL"; }
  if runs_agree cuda-one cuda-nccl; then
    pass "cuda: 2 ranks over NCCL with batch 8 give 1 rank's losses and weights"
  else
    flunk "cuda: 2 ranks over NCCL with batch 8 give 1 rank's losses and weights"
  fi
  if grep -q "2 ranks over NCCL 2\." "$work/cuda-nccl.log" && ! grep -q "warning" "$work/cuda-nccl.log"; then
    pass "cuda: the header says the ranks talk over NCCL"
  else
    cat "$work/cuda-nccl.log"; flunk "cuda: the header says the ranks talk over NCCL"
  fi
  # Buckets on NCCL's own stream (started during the backward pass, joined by events) against one all-reduce
  # after it: the simulated NCCL sums in rank order, so the weights agree bit for bit.
  "$mpiexec" -n 2 dotnet "$tool" "${cuda[@]}" --steps 3 --batch 8 --distributed nccl --bucket-mb 0 --out "$work/cuda-flat" > "$work/cuda-flat.log" 2>&1
  "$mpiexec" -n 2 dotnet "$tool" "${cuda[@]}" --steps 3 --batch 8 --distributed nccl --bucket-mb 0.05 --out "$work/cuda-buckets" > "$work/cuda-buckets.log" 2>&1
  if [ -n "$(latest "$work/cuda-flat")" ] && cmp -s "$(latest "$work/cuda-flat")" "$(latest "$work/cuda-buckets")"; then
    pass "cuda: NCCL buckets on their own stream train the weights of one all-reduce bit for bit"
  else
    cat "$work/cuda-flat.log" "$work/cuda-buckets.log"; flunk "cuda: NCCL buckets on their own stream train the weights of one all-reduce bit for bit"
  fi
  # NCCL before 2.10 has no ncclAvg: the binding sums and scales by 1/N on the device.
  DDPM_NCCL_SIM_VERSION=2.9.9 "$mpiexec" -n 2 dotnet "$tool" "${cuda[@]}" --steps 5 --batch 8 --out "$work/cuda-old" > "$work/cuda-old.log" 2>&1 \
    || { cat "$work/cuda-old.log"; flunk "2-rank cuda run over NCCL 2.9.9"; }
  if grep -q "2 ranks over NCCL 2.9.9" "$work/cuda-old.log" && runs_agree cuda-one cuda-old; then
    pass "cuda: over NCCL 2.9 (no ncclAvg: sum, then 1/N) 2 ranks give 1 rank's losses and weights"
  else
    cat "$work/cuda-old.log"; flunk "cuda: over NCCL 2.9 (no ncclAvg: sum, then 1/N) 2 ranks give 1 rank's losses and weights"
  fi
  DDPM_CUDA_LIB_DIR=$no_nccl_path "$mpiexec" -n 2 dotnet "$tool" "${cuda[@]}" --steps 5 --batch 8 --out "$work/cuda-mpi" > "$work/cuda-mpi.log" 2>&1 \
    || { cat "$work/cuda-mpi.log"; flunk "2-rank cuda run over MPI"; }
  if runs_agree cuda-one cuda-mpi; then
    pass "cuda without NCCL: 2 ranks over MPI through host memory give 1 rank's losses and weights"
  else
    flunk "cuda without NCCL: 2 ranks over MPI through host memory give 1 rank's losses and weights"
  fi
  if [ "$(grep -c "warning: NCCL not found (.*): CUDA ranks all-reduce through host memory over MPI" "$work/cuda-mpi.log")" = 1 ] \
     && grep -q "2 ranks over MPI" "$work/cuda-mpi.log"; then
    pass "cuda without NCCL: rank 0 warns once and the header says MPI"
  else
    cat "$work/cuda-mpi.log"; flunk "cuda without NCCL: rank 0 warns once and the header says MPI"
  fi
  out=$(DDPM_CUDA_LIB_DIR=$no_nccl_path "$mpiexec" -n 2 dotnet "$tool" "${cuda[@]}" --steps 5 --batch 8 --distributed nccl --out "$work/cuda-no" 2>&1); rc=$?
  if [ $rc -ne 0 ] && [ "$(echo "$out" | grep -c "error: --distributed nccl: libnccl.so.2 was not found")" = 1 ]; then
    pass "cuda: --distributed nccl without libnccl.so.2 is one error line"
  else
    echo "$out"; flunk "cuda: --distributed nccl without libnccl.so.2 is one error line (exit $rc)"
  fi
fi

line="$passed passed, $failed failed"
[ "$skipped" -gt 0 ] && line="$line, $skipped skipped"
echo "$line"
[ "$failed" -eq 0 ]
