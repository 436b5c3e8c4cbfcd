#!/usr/bin/env bash
# The CPU-only reference run users rely on: the fast cpu backend against the scalar cpu-reference oracle on a
# tiny model (forward, backward, training and sampling steps). Fails CI when a tolerance is exceeded.
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet run -c Release --project Ddpm.Tool -- parity --backend cpu --against cpu-reference --preset tiny --threads 2
