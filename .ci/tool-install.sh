#!/usr/bin/env bash
# Installs ddpm-tool the way README.md says (pack, then dotnet tool install from the package) into a temporary
# tool path, and runs it from a folder outside the repository, so the bundled data and classifier it uses must
# come from the package. Exits non-zero when any step fails.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

work="$(mktemp -d "${TMPDIR:-/tmp}/ddpm-tool-install.XXXXXX")"
serve_pid=""
trap '[ -z "$serve_pid" ] || kill "$serve_pid" 2> /dev/null; rm -rf "$work"' EXIT
# A private package folder for the install: a Ddpm.Tool package of the same version cached by an earlier
# install must not stand in for the one just packed.
export NUGET_PACKAGES="$work/packages"

start=$SECONDS
step() { echo "tool-install: [$((SECONDS - start))s] $*"; }

step "dotnet pack Ddpm.Tool -c Release -o $work/nupkg"
dotnet pack "$repo/Ddpm.Tool" -c Release -o "$work/nupkg" --nologo -v quiet

step "dotnet tool install --tool-path $work/tools --add-source $work/nupkg Ddpm.Tool"
dotnet tool install --tool-path "$work/tools" --add-source "$work/nupkg" --ignore-failed-sources Ddpm.Tool
tool="$work/tools/ddpm-tool"

mkdir -p "$work/run"
cd "$work/run"
case "$PWD/" in "$repo"/*) echo "tool-install: the run folder $PWD is inside the repository" >&2; exit 1;; esac

step "ddpm-tool --version"
version="$("$tool" --version)"
echo "$version"
if [ "$(printf '%s\n' "$version" | wc -l)" -ne 1 ] || ! printf '%s' "$version" | grep -Eq '^ddpm-tool [0-9]+\.[0-9]+\.[0-9]+'; then
  echo "tool-install: --version printed more or other than one 'ddpm-tool X.Y.Z' line" >&2
  exit 1
fi

step "ddpm-tool train (2 steps of the tiny preset on the bundled data)"
"$tool" train --preset tiny --steps 2 --batch 4 --samples 4 --sample-steps 2 --out out --threads 2 | tee train.log
grep -q "/tools/.*data/fashion-mnist/train-images-idx3-ubyte.gz" train.log \
  || { echo "tool-install: train did not read the data bundled in the package" >&2; exit 1; }
for f in checkpoint-0000002.safetensors config.json model.safetensors samples.png loss.png loss.csv; do
  [ -s "out/$f" ] || { echo "tool-install: train did not write out/$f" >&2; exit 1; }
done

step "ddpm-tool eval (8 samples against the bundled test images, on the bundled classifier)"
"$tool" eval --checkpoint out --n 8 --steps 2 --batch 8 --threads 2 | tee eval.log
grep -q "^classifier .*/tools/.*models/fashion-classifier.safetensors" eval.log \
  || { echo "tool-install: eval did not use the classifier bundled in the package" >&2; exit 1; }
grep -q "^FID " eval.log || { echo "tool-install: eval printed no FID" >&2; exit 1; }

# The bundled model: a package that carries one samples with no checkpoint; one without says so in one line.
if unzip -l "$work"/nupkg/Ddpm.Tool.*.nupkg | grep -q "models/fashion-ddpm.safetensors"; then
  step "ddpm-tool sample --class Sneaker (the bundled model, no checkpoint)"
  "$tool" sample --class Sneaker --n 2 --steps 2 --threads 2 --out sneakers.png | tee sample.log
  grep -q "/tools/.*models/fashion-ddpm.safetensors" sample.log && [ -s sneakers.png ] \
    || { echo "tool-install: sample did not use the model bundled in the package" >&2; exit 1; }
  "$tool" info | grep -q "^bundled model: .*/tools/.*fashion-ddpm.safetensors: .*FID" \
    || { echo "tool-install: info does not describe the bundled model and its FID" >&2; exit 1; }
else
  step "ddpm-tool sample without --checkpoint (this package carries no bundled model)"
  if "$tool" sample --class Sneaker --n 2 --steps 2 --out sneakers.png 2> sample.err; then
    echo "tool-install: sample ran without a checkpoint or a bundled model" >&2; exit 1
  fi
  grep -q "carries no bundled model" sample.err && [ "$(wc -l < sample.err)" = 1 ] \
    || { cat sample.err; echo "tool-install: sample without a checkpoint did not say it in one line" >&2; exit 1; }
fi

# serve's page is inside the tool: the installed tool serves it (ASP.NET Core comes with the .NET runtime).
step "ddpm-tool serve --run out --port 0 (the page and its API from the package)"
"$tool" serve --run out --port 0 --threads 2 > serve.log 2>&1 &
serve_pid=$!
for _ in $(seq 150); do grep -q "^serving http://" serve.log && break; sleep 0.2; done
port="$(grep -o "^serving http://127.0.0.1:[0-9]*/" serve.log | grep -o "[0-9]*/$" | tr -d /)"
[ -n "$port" ] || { cat serve.log; echo "tool-install: serve did not print the address it serves" >&2; exit 1; }
get() { exec 3<> "/dev/tcp/127.0.0.1/$port"; printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" >&3; cat <&3; exec 3<&-; }
get / | grep -q '<script src="app.js"></script>' || { echo "tool-install: serve did not serve its page" >&2; exit 1; }
get /api/info | grep -q '"file":"checkpoint-0000002.safetensors"' || { echo "tool-install: serve's /api/info does not describe the run's checkpoint" >&2; exit 1; }
kill "$serve_pid"; wait "$serve_pid" || true; serve_pid=""

step "ok"
