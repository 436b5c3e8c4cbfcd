#!/usr/bin/env bash
# Data-parallel training on MPICH: `mpiexec -n 2 ddpm-tool train` against one process with the same global batch
# (same loss curve within float summation order), a 2-rank checkpoint resumed on 1 rank, and the messages for an
# indivisible batch and for a launcher that does not match the MPI library. Needs MPICH's mpiexec and
# libmpich.so.12 (Debian: apt-get install --no-install-recommends mpich); without them it says so and exits 0 with
# "skipped". Uses the Release build of ddpm-tool (built here if missing). Prints "N passed, N failed" last.
set -uo pipefail
cd "$(dirname "$0")/.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

if ! command -v mpiexec > /dev/null || ! ldconfig -p | grep 'libmpich\.so\.12' > /dev/null; then
  echo "mpiexec or libmpich.so.12 not installed: MPI tests skipped"
  echo "0 passed, 0 failed, 6 skipped"
  exit 0
fi

tool=Ddpm.Tool/bin/Release/net10.0/ddpm-tool.dll
if [ ! -f "$tool" ]; then
  dotnet build Ddpm.Tool -c Release > /dev/null 2>&1 || { echo "ddpm-tool does not build"; echo "0 passed, 1 failed"; exit 1; }
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0; failed=0
pass() { echo "PASS $1"; passed=$((passed + 1)); }
flunk() { echo "FAIL $1"; failed=$((failed + 1)); }

# One thread per rank, so 2 ranks and 1 rank compute on the same kernels; no sample grids (not what is compared).
common=(train --preset tiny --backend cpu --threads 1 --warmup 2 --lr-schedule constant --sample-every 0 --samples 4 --sample-steps 2
        --checkpoint-every 3 --log-every 1 --seed 3)

# Losses of two loss.csv files agree within a relative tolerance: float summation order differs between one mean
# over 8 images and the mean of two means over 4 (measured here: 1.2e-7 relative at most over 6 steps). Adam with
# eps 1e-8 turns rounding in gradient elements that are zero up to rounding into steps of ~lr, so differences can
# grow over a run; 1e-4 leaves room for that and still fails on a wrong shard, draw or average (those change the
# loss at the first step by far more).
same_losses() {
  awk -F, -v tol=1e-4 'NR == FNR { if (FNR > 1) a[$1] = $2; next }
    FNR > 1 { n++; d = $2 - a[$1]; if (d < 0) d = -d; r = d / ($2 < 0 ? -$2 : $2); if (r > worst) worst = r;
              if (!($1 in a) || r > tol) { bad++; print "  step " $1 ": " a[$1] " vs " $2 } }
    END { printf "  %d steps, largest relative difference %.3g\n", n, worst; exit (bad > 0 || n == 0) }' "$1" "$2"
}

# 1. 2 ranks x 4 images against 1 rank x 8 images.
dotnet "$tool" "${common[@]}" --steps 6 --batch 8 --distributed none --out "$work/one" > "$work/one.log" 2>&1 \
  || { cat "$work/one.log"; flunk "1-rank run"; }
mpiexec -n 2 dotnet "$tool" "${common[@]}" --steps 6 --batch 8 --out "$work/two" > "$work/two.log" 2>&1 \
  || { cat "$work/two.log"; flunk "2-rank run"; }
if [ -f "$work/one/loss.csv" ] && [ -f "$work/two/loss.csv" ] && same_losses "$work/one/loss.csv" "$work/two/loss.csv"; then
  pass "2 ranks with batch 8 give 1 rank's losses"
else
  flunk "2 ranks with batch 8 give 1 rank's losses"
fi
# Rank 0 alone writes: one header line of output, one copy of each file.
if grep -q "2 ranks" "$work/two.log" && [ "$(grep -c '^ddpm-tool train' "$work/two.log")" = 1 ]; then
  pass "only rank 0 writes the console"
else
  cat "$work/two.log"; flunk "only rank 0 writes the console"
fi

# 2. The 2-rank checkpoint of step 3 resumed on 1 rank continues the 1-rank loss curve.
mkdir -p "$work/resume"
mpiexec -n 2 dotnet "$tool" "${common[@]}" --batch 8 --steps 3 --out "$work/half" > "$work/half.log" 2>&1 \
  && dotnet "$tool" train --resume "$work/half/checkpoint.safetensors" --steps 6 --threads 1 --sample-every 0 --samples 4 \
       --sample-steps 2 --log-every 1 --out "$work/half" > "$work/resume.log" 2>&1
if [ -f "$work/half/loss.csv" ] && same_losses "$work/one/loss.csv" "$work/half/loss.csv"; then
  pass "a 2-rank checkpoint resumes on 1 rank with the same losses"
else
  cat "$work/half.log" "$work/resume.log"; flunk "a 2-rank checkpoint resumes on 1 rank with the same losses"
fi

# 2b. Gradients averaged in small buckets during the backward pass (MPI_Iallreduce) train the same weights, bit for
# bit, as one all-reduce after it: every element is summed once over the same 2 ranks.
mpiexec -n 2 dotnet "$tool" "${common[@]}" --batch 8 --steps 3 --bucket-mb 0 --out "$work/flat" > "$work/flat.log" 2>&1
mpiexec -n 2 dotnet "$tool" "${common[@]}" --batch 8 --steps 3 --bucket-mb 0.05 --out "$work/buckets" > "$work/buckets.log" 2>&1
if [ -f "$work/flat/checkpoint.safetensors" ] && cmp -s "$work/flat/checkpoint.safetensors" "$work/buckets/checkpoint.safetensors"; then
  pass "gradient buckets train the weights of one all-reduce bit for bit"
else
  cat "$work/flat.log" "$work/buckets.log"; flunk "gradient buckets train the weights of one all-reduce bit for bit"
fi

# 3. The messages: an indivisible batch, and a launcher the MPI library does not belong to.
out=$(mpiexec -n 2 dotnet "$tool" "${common[@]}" --steps 6 --batch 5 --out "$work/odd" 2>&1); rc=$?
if [ $rc -ne 0 ] && echo "$out" | grep -q -- "--batch 5 (the global batch) does not divide over 2 ranks; use a multiple of 2."; then
  pass "an indivisible batch is refused with its sizes"
else
  echo "$out"; flunk "an indivisible batch is refused with its sizes (exit $rc)"
fi
out=$(OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=0 dotnet "$tool" "${common[@]}" --steps 6 --batch 8 --out "$work/mismatch" 2>&1); rc=$?
if [ $rc -ne 0 ] && echo "$out" | grep -q "started 2 ranks but MPI (libmpich.so.12) sees 1"; then
  pass "a launcher/library mismatch is refused"
else
  echo "$out"; flunk "a launcher/library mismatch is refused (exit $rc)"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
