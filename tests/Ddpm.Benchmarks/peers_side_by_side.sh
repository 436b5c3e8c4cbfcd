#!/bin/bash
# Every CPU figure of BENCHMARKS.md's UNet table, side by side: Ddpm builds alternating with LibTorch 2.10 and
# ONNX Runtime 1.31 (the peers in tests/peers/) within each round, 2 threads each.
#
#   tests/Ddpm.Benchmarks/peers_side_by_side.sh ROUNDS LOG [DDPM_PUBLISH_DIR...]
#
# With no publish dir it publishes this checkout to $PEERS_CACHE/ddpm. The peers are built outside the repository
# (central package management does not apply to them) in $PEERS_CACHE (default ~/.cache/ddpm-peers); the ONNX
# models are the first build's own export of the presets (ddpm-tool export --format onnx, random weights, fixed batch).
# One line per run: kind round program median_s peak_rss_kb (peak RSS from /usr/bin/time, the same for every program).
# KINDS="small-sample64 ..." runs some of the figures only (also small-train8 and small-sample8, Ddpm alone: batch 8
# against batch 64). PEERS=none runs the Ddpm builds alone (A/B of builds). DDPM_ENV="VAR=value ..." is set for the
# Ddpm runs only: DDPM_ENV=DOTNET_EnableAVX512=0 runs Ddpm's AVX2 code on an AVX-512 host (the peers keep theirs).
set -euo pipefail
rounds=${1:?rounds}; log=${2:?log file}; shift 2
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${PEERS_CACHE:-$HOME/.cache/ddpm-peers}
mkdir -p "$cache"
builds=("$@")
if [ ${#builds[@]} -eq 0 ]; then
  dotnet publish "$repo/Ddpm.Tool" -c Release -o "$cache/ddpm" > /dev/null
  builds=("$cache/ddpm")
fi
exporter=$(cd "${builds[0]}" && pwd)/ddpm-tool.dll
P=$cache/libtorch/bin/Release/net10.0/linux-x64/peer
ORT=$cache/onnxruntime/artifacts/bin/OrtPeer/release_linux-x64/ortpeer
MODELS=$cache/onnxruntime/models-ddpm
if [ "${PEERS:-}" != none ] && [ ! -x "$P" ]; then
  rm -rf "$cache/libtorch" && cp -r "$repo/tests/peers/libtorch" "$cache/libtorch"
  (cd "$cache/libtorch" && dotnet build -c Release > build.log)
fi
if [ "${PEERS:-}" != none ] && { [ ! -x "$ORT" ] || [ ! -f "$MODELS/labml_b16.onnx" ]; }; then
  rm -rf "$cache/onnxruntime" && cp -r "$repo/tests/peers/onnxruntime" "$cache/onnxruntime"
  (cd "$cache/onnxruntime" && dotnet build -c Release --artifacts-path artifacts > build.log \
    && dotnet "$exporter" export --preset small --batch 64 --out "$MODELS/small_b64.onnx" \
    && dotnet "$exporter" export --preset labml --batch 16 --out "$MODELS/labml_b16.onnx")
fi
SMALL="--image-size 32 --channels 1 --n-channels 32 --ch-mults 1,2,2 --attn 0,0,1"
LABML="--image-size 32 --channels 3 --n-channels 64 --ch-mults 1,2,2,4 --attn 0,0,0,1"
out=$(mktemp)
median() { python3 -c 'import json,sys
for l in sys.stdin:
    l=l.strip()
    if l.startswith("RESULT "): l=l[7:]
    if l.startswith("{"): print(json.loads(l)["median_s"])'; }
run() { # kind round name command...
  local kind=$1 i=$2 name=$3; shift 3
  local rss; rss=$( { /usr/bin/time -f "RSSKB %M" "$@" 2>&1 1>&3 | grep RSSKB; } 3>"$out" )
  echo "$kind $i $name $(median < "$out") ${rss#RSSKB }" | tee -a "$log"
}
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $rounds rounds, Ddpm env: ${DDPM_ENV:-none}, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log"
# Rounds outside, figures inside: every figure of a round is taken in the same minutes (batch 8 beside batch 64).
for i in $(seq "$rounds"); do
  for kind in ${KINDS:-small-train64 small-train32 small-sample64 labml-sample16 labml-train16}; do
    for b in "${builds[@]}"; do
      name=$(basename "$b")
      d="env ${DDPM_ENV:-} dotnet"
      case $kind in
        small-train64) run $kind $i $name $d $b/ddpm-tool.dll bench --preset small --mode train --batch 64 --threads 2 --steps 5 --warmup 2 --json;;
        small-train32) run $kind $i $name $d $b/ddpm-tool.dll bench --preset small --mode train --batch 32 --threads 2 --steps 7 --warmup 2 --json;;
        small-sample64) run $kind $i $name $d $b/ddpm-tool.dll bench --preset small --mode sample --batch 64 --threads 2 --steps 10 --warmup 2 --json;;
        small-train8) run $kind $i $name $d $b/ddpm-tool.dll bench --preset small --mode train --batch 8 --threads 2 --steps 21 --warmup 3 --json;;
        small-sample8) run $kind $i $name $d $b/ddpm-tool.dll bench --preset small --mode sample --batch 8 --threads 2 --steps 41 --warmup 5 --json;;
        labml-sample16) run $kind $i $name $d $b/ddpm-tool.dll bench --preset labml --mode sample --batch 16 --threads 2 --steps 5 --warmup 1 --json;;
        labml-train16) run $kind $i $name $d $b/ddpm-tool.dll bench --preset labml --mode train --batch 16 --threads 2 --steps 3 --warmup 1 --json;;
      esac
    done
    [ "${PEERS:-}" = none ] && continue
    case $kind in
      small-train64) run $kind $i libtorch $P bench-train $SMALL --batch 64 --steps 5 --threads 2;;
      small-train32) run $kind $i libtorch $P bench-train $SMALL --batch 32 --steps 7 --threads 2;;
      small-sample64) run $kind $i ort $ORT $MODELS/small_b64.onnx --batch 64 --steps 10 --channels 1 --threads 2
                      run $kind $i libtorch $P bench-sample $SMALL --batch 64 --steps 10 --threads 2;;
      labml-sample16) run $kind $i ort $ORT $MODELS/labml_b16.onnx --batch 16 --steps 5 --channels 3 --threads 2
                      run $kind $i libtorch $P bench-sample $LABML --batch 16 --steps 5 --threads 2;;
      labml-train16) run $kind $i libtorch $P bench-train $LABML --batch 16 --steps 3 --threads 2;;
    esac
  done
done
rm -f "$out"
