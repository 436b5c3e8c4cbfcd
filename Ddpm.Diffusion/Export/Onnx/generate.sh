#!/bin/bash
# Regenerates Onnx.g.cs, the protobuf message classes of the ONNX model format, from onnx.proto (ONNX v1.22.0's
# onnx/onnx.proto, Apache-2.0, unchanged) with protoc 3.36.2 from the NuGet package Google.Protobuf.Tools 3.36.2,
# the version of the Google.Protobuf runtime the library references. The classes are internal to Ddpm.Diffusion.
#
#   bash Ddpm.Diffusion/Export/Onnx/generate.sh      (after any restore that brought Google.Protobuf.Tools 3.36.2)
set -euo pipefail
cd "$(dirname "$0")"
packages=${NUGET_PACKAGES:-$HOME/.nuget/packages}
protoc=$packages/google.protobuf.tools/3.36.2/tools/linux_x64/protoc
[ -x "$protoc" ] || { echo "protoc 3.36.2 not found at $protoc: restore a project that references Google.Protobuf.Tools 3.36.2"; exit 1; }
"$protoc" --proto_path=. --csharp_out=. --csharp_opt=file_extension=.g.cs,internal_access onnx.proto
