#!/usr/bin/env bash
# The libraries as a user gets them: packs Ddpm.Tensors, Ddpm.Backends.Cpu, Ddpm.Backends.Cuda and Ddpm.Diffusion
# (metadata, README, XML documentation checked in each package), builds examples/Quickstart outside the repository
# from those packages alone (a private package folder, the packed ones as a local source), and runs it: 100
# training steps on an image folder (one sub-folder per class, made here from the bundled Fashion-MNIST subset as
# BMP files), then 16 samples from the model it trained into a grid. Exits non-zero when any step fails.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
work="$(mktemp -d "${TMPDIR:-/tmp}/ddpm-example.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export NUGET_PACKAGES="$work/packages"
start=$SECONDS
step() { echo "example: [$((SECONDS - start))s] $*"; }

for p in Ddpm.Tensors Ddpm.Backends.Cpu Ddpm.Backends.Cuda Ddpm.Diffusion; do
  step "dotnet pack $p"
  dotnet pack "$repo/$p" -c Release -o "$work/nupkg" --nologo -v quiet
  pkg=$(ls "$work"/nupkg/$p.[0-9]*.nupkg | head -n 1)
  listing=$(unzip -l "$pkg")
  for f in "lib/net10.0/$p.dll" "lib/net10.0/$p.xml" README.md; do
    echo "$listing" | grep -q " $f\$" || { echo "example: $pkg lacks $f" >&2; exit 1; }
  done
  unzip -p "$pkg" "$p.nuspec" | grep -q "<description>.\+</description>" || { echo "example: $pkg has no description" >&2; exit 1; }
done
version=$(ls "$work"/nupkg/Ddpm.Diffusion.[0-9]*.nupkg | sed -E 's/.*Ddpm\.Diffusion\.(.*)\.nupkg/\1/')

# An image folder: 20 images of each of the 10 classes, 28x28 grey as 24-bit BMP.
step "an image folder from the bundled subset"
/usr/bin/python3 - "$repo/data/fashion-mnist" "$work/images" <<'PY'
import gzip, os, struct, sys
src, dst = sys.argv[1], sys.argv[2]
images = gzip.open(os.path.join(src, 'train-images-idx3-ubyte.gz')).read()
labels = gzip.open(os.path.join(src, 'train-labels-idx1-ubyte.gz')).read()
n, rows, cols = struct.unpack('>III', images[4:16])
count = {}
for i in range(n):
    c = labels[8 + i]
    if count.get(c, 0) == 20: continue
    count[c] = count.get(c, 0) + 1
    px = images[16 + i * rows * cols:16 + (i + 1) * rows * cols]
    stride = (cols * 3 + 3) // 4 * 4
    body = b''.join(b''.join(bytes([px[y * cols + x]] * 3) for x in range(cols)).ljust(stride, b'\0') for y in reversed(range(rows)))
    head = b'BM' + struct.pack('<IHHI', 54 + len(body), 0, 0, 54) + struct.pack('<IiiHHIIiiII', 40, cols, rows, 1, 24, 0, len(body), 2835, 2835, 0, 0)
    os.makedirs(os.path.join(dst, f'class{c}'), exist_ok=True)
    open(os.path.join(dst, f'class{c}', f'{i}.bmp'), 'wb').write(head + body)
    if len(count) == 10 and all(v == 20 for v in count.values()): break
PY

cp -r "$repo/examples" "$work/examples"
cat > "$work/examples/nuget.config" <<XML
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <add key="ddpm-packed" value="$work/nupkg" />
  </packageSources>
</configuration>
XML
cd "$work/examples/Quickstart"
case "$PWD/" in "$repo"/*) echo "example: $PWD is inside the repository" >&2; exit 1;; esac
step "dotnet build examples/Quickstart from the packages ($version)"
dotnet build -c Release -p:DdpmVersion="$version" --nologo -v quiet
grep -q '"Ddpm.Diffusion/'"$version"'"' obj/project.assets.json || { echo "example: Ddpm.Diffusion did not come from the packages" >&2; exit 1; }
step "dotnet run: 100 training steps, then 16 samples"
dotnet run -c Release --no-build -p:DdpmVersion="$version" -- "$work/images" "$work/run" | tee "$work/run.log"
grep -q "^trained 100 steps" "$work/run.log" || { echo "example: it did not train 100 steps" >&2; exit 1; }
for f in samples.png "$work/run/model.safetensors" "$work/run/config.json" "$work/run/checkpoint-0000100.safetensors"; do
  [ -s "$f" ] || { echo "example: $f was not written" >&2; exit 1; }
done
step "ok"
