#!/usr/bin/env bash
# The TensorBoard event files of a run (OUT/logs/) read by an independent reader: Debian's protoc compiles the
# event schema (tests/tensorboard/tensorboard_subset.proto, TensorBoard's field numbers) for Python, and
# tests/tensorboard/read_events.py checks the TFRecord framing with its own CRC-32C and parses every record with
# Python's protobuf runtime. A 2-step run resumed to 4 steps must give: the file version first, a scalar loss,
# gradient norm, learning rate and images/s per step equal to loss.csv's, the sample grids as PNG images of their
# files' sizes, the configuration as text equal to config.json, and a restart marker (SessionLog START) just after the resumed step (TensorBoard
# drops what earlier files logged from that step on, and keeps the checkpoint's own). Needs
# protoc and /usr/bin/python3 with python3-protobuf (Debian: apt-get install protobuf-compiler python3-protobuf);
# without them it says so and exits 0 with "skipped". Prints "N passed, N failed" last.
set -uo pipefail
cd "$(dirname "$0")/.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
py=/usr/bin/python3
if ! command -v protoc > /dev/null || ! "$py" -c 'import google.protobuf' 2> /dev/null; then
  echo "protoc or python3-protobuf not installed: TensorBoard event-file checks skipped"
  echo "0 passed, 0 failed, 5 skipped"
  exit 0
fi
tool=Ddpm.Tool/bin/Release/net10.0/ddpm-tool.dll
if [ ! -f "$tool" ]; then
  dotnet build Ddpm.Tool -c Release > /dev/null 2>&1 || { echo "ddpm-tool does not build"; echo "0 passed, 1 failed"; exit 1; }
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0; failed=0
check() { if [ "$2" = ok ]; then echo "PASS $1"; passed=$((passed + 1)); else echo "FAIL $1: $2"; failed=$((failed + 1)); fi; }

run=(train --preset tiny --batch 4 --max-images 32 --diffusion-steps 20 --samples 2 --sample-steps 2 --sample-every 2
     --checkpoint-every 2 --threads 2 --out "$work/run")
dotnet "$tool" "${run[@]}" --steps 2 > "$work/train.log" 2>&1 && dotnet "$tool" "${run[@]}" --resume --steps 4 >> "$work/train.log" 2>&1 \
  || { cat "$work/train.log"; echo "0 passed, 1 failed"; exit 1; }
mkdir -p "$work/gen"
protoc --python_out="$work/gen" -I tests/tensorboard tests/tensorboard/tensorboard_subset.proto \
  || { echo "protoc does not compile the event schema"; echo "0 passed, 1 failed"; exit 1; }
"$py" tests/tensorboard/read_events.py "$work/run/logs" "$work/gen" > "$work/events.json" \
  || { echo "0 passed, 1 failed"; exit 1; }

# Each check prints "ok" or what is wrong.
results=$("$py" - "$work/events.json" "$work/run" <<'PY'
import csv, json, struct, sys
ev = json.load(open(sys.argv[1])); run = sys.argv[2]
def f32(x): return struct.unpack('<f', struct.pack('<f', x))[0]
rows = list(csv.DictReader(open(run + '/loss.csv')))
out = []
out.append('file version' + '\t' + ('ok' if ev['file_version'] == 'brain.Event:2' else repr(ev['file_version'])))
bad = []
# loss.csv holds the loss exactly (round-trip format) and the norm and rate to 6 significant digits.
for tag, col, tol in [('train/loss', 'loss', 1e-7), ('train/grad_norm', 'grad_norm', 1e-5), ('train/lr', 'lr', 1e-5)]:
    got = {s: v for s, v in ev['scalars'].get(tag, [])}
    for r in rows:
        s = int(r['step'])
        if s not in got or abs(got[s] - f32(float(r[col]))) > tol * abs(float(r[col])):
            bad.append(f'{tag} at step {s}: {got.get(s)} vs {r[col]}')
steps = sorted(s for s, _ in ev['scalars'].get('train/images_per_s', []))
if steps != [1, 2, 3, 4]: bad.append(f'images_per_s at steps {steps}')
out.append('scalars per step equal loss.csv' + '\t' + ('ok' if not bad and len(rows) == 4 else '; '.join(bad) or f'{len(rows)} rows'))
def png_size(path):
    b = open(path, 'rb').read(24)
    return struct.unpack('>II', b[16:24])
imgs = {(i['tag'], i['step']): i for i in ev['images']}
# The first run's final grid (step 2) and the resumed run's (step 4): the same layout, one file name.
want = {2: run + '/samples.png', 4: run + '/samples.png'}
bad = []
for step, path in want.items():
    i = imgs.get(('samples', step))
    w, h = png_size(path)
    if i is None or not i['png'] or (i['width'], i['height']) != (w, h) or i['colorspace'] != 1:
        bad.append(f'step {step}: {i} vs {w}x{h}')
out.append('sample grids are PNG images of their files\' sizes' + '\t' + ('ok' if not bad else '; '.join(bad)))
text = ev['texts'].get('config', '').strip().strip('`')
try:
    same = json.loads(text) == json.load(open(run + '/config.json'))
except ValueError as e:
    same = False
out.append('the configuration as text equals config.json' + '\t' + ('ok' if same else text[:200]))
out.append('a restart marker (SessionLog START) just after the resumed step' + '\t' + ('ok' if ev['session_starts'] == [3] and ev['files'] == 2 else f"{ev['session_starts']}, {ev['files']} files"))
print('\n'.join(out))
PY
)
while IFS=$'\t' read -r name result; do check "$name" "$result"; done <<< "$results"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
