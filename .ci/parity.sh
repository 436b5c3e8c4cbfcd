#!/usr/bin/env bash
# The backend cross-checks users rely on, through the tool: the fast cpu backend against the scalar
# cpu-reference oracle on a tiny model (forward, backward, training and sampling steps), and, where a CUDA
# driver is found (the simulated device in CI, via DDPM_CUDA_LIB_DIR), cuda against cpu. Fails on any
# tolerance exceeded.
set -euo pipefail
cd "$(dirname "$0")/.."
tool=(dotnet run -c Release --no-build --project Ddpm.Tool --)
"${tool[@]}" parity --backend cpu --against cpu-reference --preset tiny --threads 2
if [ -n "${DDPM_CUDA_LIB_DIR:-}" ]; then
  "${tool[@]}" parity --backend cuda --against cpu --preset tiny --threads 2
fi
