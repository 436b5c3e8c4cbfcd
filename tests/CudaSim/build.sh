#!/usr/bin/env bash
# Builds the CUDA simulator (a test harness, not a backend): libcuda.so.1, libcublas.so.12, libcudnn.so.9 and
# libnccl.so.2 in the output folder (default <repo>/.ci-cache/cuda-sim), with the kernels of Ddpm.Backends.Cuda/Kernels
# and the simulator's test kernels (selftest_kernels.cu, planted_kernels.cu) compiled for the host twice (plain, and
# instrumented for the checks), then builds and runs the self-tests (the NCCL one with two forked ranks).
# Use: DDPM_CUDA_LIB_DIR=<output folder>. Prints the output folder on its last line; exits non-zero with a
# message on any failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/.ci-cache/cuda-sim}

die() { echo "cuda-sim build: $*" >&2; exit 1; }

CXX=${CXX:-g++}
command -v "$CXX" >/dev/null 2>&1 || die "no C++ compiler ($CXX) found; install g++ (12 or newer)"
kernels=$repo/Ddpm.Backends.Cuda/Kernels
[ -d "$kernels" ] || die "kernel folder $kernels is missing"
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)
# Generated sources go to gen.new and replace those in gen only where they changed, so objects whose inputs
# did not change are kept (a rebuild compiles only what changed).
final_gen=$out/gen
gen=$out/gen.new
obj=$out/obj
rm -rf "$gen"
mkdir -p "$gen/kernels" "$obj" "$final_gen"

# CUDA's __shared__ declarations become per-block storage (see cuda_sim_kernel.h):
#   extern __shared__ T name[];   ->  DDPMSIM_SHARED_DYNAMIC(T, name);
#   __shared__ T name[A][B];      ->  DDPMSIM_SHARED_STATIC(T, name, [A][B]);
rewrite_shared() {
  sed -E \
    -e 's/extern[[:space:]]+__shared__[[:space:]]+(.*[^[:space:]])[[:space:]]+([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*\[[[:space:]]*\][[:space:]]*;/DDPMSIM_SHARED_DYNAMIC(\1, \2);/' \
    -e 's/__shared__[[:space:]]+(.*[^[:space:]])[[:space:]]+([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*((\[[^]]*\])*)[[:space:]]*;/DDPMSIM_SHARED_STATIC(\1, \2, \3);/' \
    "$1" > "$2" || die "cannot rewrite $1"
  local left
  left=$(sed -e 's://.*$::' "$2" | grep -n '__shared__' | head -n 1 || true)
  [ -z "$left" ] || die "$1: a __shared__ declaration the simulator cannot rewrite (write 'T name[N];' or 'extern __shared__ T name[];' on one line): line $left"
}

# extern "C" __global__ void NAME( ... ), possibly across lines: the kernels the registry gets.
kernel_names() {
  tr '\n' ' ' < "$1" | grep -oE 'extern[[:space:]]+"C"[[:space:]]+__global__[[:space:]]+void[[:space:]]+[A-Za-z_][A-Za-z0-9_]*[[:space:]]*\(' \
    | sed -E 's/.*void[[:space:]]+([A-Za-z_][A-Za-z0-9_]*).*/\1/' || true
}

# One wrapper per source: the source itself, then a registration per kernel, so each launcher is built from
# the kernel's real signature.
wrap_sources() { # dest-folder prefix files...
  local dest=$1 prefix=$2; shift 2
  local f base names
  for f in "$@"; do
    base=$(basename "$f")
    names=$(kernel_names "$f")
    {
      # The instrumented build gives its kernels other symbols (registered under the same names).
      echo "#if DDPMSIM_INSTRUMENTED"
      for n in $names; do echo "#define $n ddpmsim_instrumented_$n"; done
      echo "#endif"
      echo "#include \"$base\""
      for n in $names; do echo "DDPMSIM_REGISTER_KERNEL($n)"; done
    } > "$dest/${prefix}${base%.cu}.cpp"
    for n in $names; do echo "$n $base"; done >> "$dest/kernels.txt"
  done
  if [ -f "$dest/kernels.txt" ]; then
    dup=$(cut -d' ' -f1 "$dest/kernels.txt" | sort | uniq -d | head -n 1)
    [ -z "$dup" ] || die "kernel $dup is defined in more than one source ($(grep "^$dup " "$dest/kernels.txt" | cut -d' ' -f2 | tr '\n' ' '))"
  fi
}

shopt -s nullglob
sources=("$kernels"/*.cu)
[ ${#sources[@]} -gt 0 ] || die "no kernel sources in $kernels"
for f in "$kernels"/*.cu "$kernels"/*.cuh "$kernels"/*.h; do rewrite_shared "$f" "$gen/kernels/$(basename "$f")"; done
: > "$gen/kernels.txt"
# The simulator's own test kernels go into libcuda.so.1 too (registered by name like the engine's; a module
# must name them to reach them), so the self-test and the C# tests of the checks launch them alike.
for f in selftest_kernels.cu planted_kernels.cu; do rewrite_shared "$here/$f" "$gen/kernels/$f"; done
wrap_sources "$gen" reg_ "${sources[@]/#$kernels/$gen/kernels}" "$gen/kernels/selftest_kernels.cu" "$gen/kernels/planted_kernels.cu"

# Publish gen.new as gen, touching only files whose content changed.
(cd "$gen" && find . -type f) | while read -r f; do
  mkdir -p "$(dirname "$final_gen/$f")"
  cmp -s "$gen/$f" "$final_gen/$f" || cp "$gen/$f" "$final_gen/$f"
done
(cd "$final_gen" && find . -type f) | while read -r f; do [ -e "$gen/$f" ] || rm -f "$final_gen/$f"; done
rm -rf "$gen"
gen=$final_gen
for o in "$obj"/reg_*.o; do
  w=$(basename "${o%.o}"); w=${w%.i}.cpp
  [ -e "$gen/$w" ] || rm -f "$o"
done

common=(-std=c++17 -O2 -fPIC -ffp-contract=off -fno-strict-overflow -Wall -Wno-unused-function -Wno-unused-variable -Werror=return-type)
kflags=("${common[@]}" -fvisibility=hidden -include "$here/cuda_sim_kernel.h" -x c++)
# The instrumented variant: GCC's address instrumentation in callback mode, with none of its own runtime (no
# shadow, stack or globals instrumentation); the callbacks are renamed to checks.cpp's ddpmsim_asan_*.
iflags=(-DDDPMSIM_INSTRUMENTED=1 -fsanitize=kernel-address -fsanitize-recover=kernel-address
        --param asan-instrumentation-with-call-threshold=0 --param asan-stack=0 --param asan-globals=0)
asan_calls="load1 load2 load4 load8 load16 loadN store1 store2 store4 store8 store16 storeN"
redefine=()
for c in $asan_calls; do redefine+=(--redefine-sym "__asan_${c}_noabort=ddpmsim_asan_${c}"); done
for c in before_dynamic_init after_dynamic_init handle_no_return; do redefine+=(--redefine-sym "__asan_${c}=ddpmsim_asan_${c}"); done

# compile OUTPUT "DEPENDENCIES" COMPILER-ARGUMENTS...: skipped when OUTPUT is newer than every dependency.
compile() {
  local o=$1 deps=$2 d stale=0; shift 2
  [ -e "$o" ] || stale=1
  for d in $deps "${BASH_SOURCE[0]}"; do [ "$d" -nt "$o" ] && stale=1; done
  [ $stale -eq 1 ] || return 0
  "$CXX" "$@" -c -o "$o.tmp" 2> "$o.log" || { cat "$o.log" >&2; rm -f "$o.tmp"; return 1; }
  mv -f "$o.tmp" "$o"
}
# An instrumented kernel object: compiled with the callbacks, which are then renamed; any __asan_ symbol left
# means GCC called something checks.cpp does not provide.
compile_instrumented() { # output wrapper
  local o=$1 w=$2
  compile "$o" "$w $kdeps" "${kflags[@]}" "${iflags[@]}" -I "$gen/kernels" "$w" || return 1
  if [ "$o" -nt "$o.renamed" ] || [ ! -e "$o.renamed" ]; then
    objcopy "${redefine[@]}" "$o" "$o.tmp" && mv -f "$o.tmp" "$o" && touch "$o.renamed" || return 1
    local left
    left=$(nm -u "$o" | awk '{print $2}' | grep '^__asan' || true)
    [ -z "$left" ] || { echo "cuda-sim build: $o calls instrumentation entry points checks.cpp does not define: $left" >&2; return 1; }
  fi
}
kdeps="$here/cuda_sim_kernel.h $(echo "$gen"/kernels/*)"
sim_headers="$here/sim_internal.h $here/sim_api.h $here/cuda_sim_kernel.h"
pids=()
for u in driver memory scheduler checks module graph; do
  compile "$obj/$u.o" "$here/$u.cpp $sim_headers" "${common[@]}" -fvisibility=hidden -I "$here" "$here/$u.cpp" & pids+=($!)
done
compile "$obj/fiber_switch.o" "$here/fiber_switch.S" -fPIC "$here/fiber_switch.S" & pids+=($!)
compile "$obj/cublas.o" "$here/cublas.cpp $here/sim_api.h" "${common[@]}" -fvisibility=hidden -I "$here" "$here/cublas.cpp" & pids+=($!)
for w in "$gen"/reg_*.cpp; do
  b=$(basename "${w%.cpp}")
  compile "$obj/$b.o" "$w $kdeps" "${kflags[@]}" -I "$gen/kernels" "$w" & pids+=($!)
  compile_instrumented "$obj/$b.i.o" "$w" & pids+=($!)
done
compile "$obj/cudnn.o" "$here/cudnn.cpp $here/sim_api.h" "${common[@]}" -fvisibility=hidden -I "$here" "$here/cudnn.cpp" & pids+=($!)
compile "$obj/nccl.o" "$here/nccl.cpp $here/sim_api.h" "${common[@]}" -fvisibility=hidden -I "$here" "$here/nccl.cpp" & pids+=($!)
compile "$obj/nccl_selftest.o" "$here/nccl_selftest.cpp $here/sim_api.h" "${common[@]}" -I "$here" "$here/nccl_selftest.cpp" & pids+=($!)
compile "$obj/selftest.o" "$here/selftest.cpp $here/sim_api.h" "${common[@]}" -I "$here" "$here/selftest.cpp" & pids+=($!)
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=1; done
[ $failed -eq 0 ] || die "compilation failed (messages above)"

"$CXX" -shared -o "$out/libcuda.so.1.tmp" -Wl,-soname,libcuda.so.1 -Wl,--version-script="$here/libcuda.map" \
  -Wl,-z,noexecstack "$obj"/{driver,memory,scheduler,checks,module,graph}.o "$obj/fiber_switch.o" "$obj"/reg_*.o -lpthread \
  || die "linking libcuda.so.1 failed"
mv -f "$out/libcuda.so.1.tmp" "$out/libcuda.so.1"
"$CXX" -shared -o "$out/libcublas.so.12.tmp" -Wl,-soname,libcublas.so.12 -Wl,--version-script="$here/libcublas.map" \
  "$obj/cublas.o" -L"$out" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN' -lpthread \
  || die "linking libcublas.so.12 failed"
mv -f "$out/libcublas.so.12.tmp" "$out/libcublas.so.12"
"$CXX" -shared -o "$out/libcudnn.so.9.tmp" -Wl,-soname,libcudnn.so.9 -Wl,--version-script="$here/libcudnn.map" \
  "$obj/cudnn.o" -L"$out" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN' -lpthread \
  || die "linking libcudnn.so.9 failed"
mv -f "$out/libcudnn.so.9.tmp" "$out/libcudnn.so.9"
"$CXX" -shared -o "$out/libnccl.so.2.tmp" -Wl,-soname,libnccl.so.2 -Wl,--version-script="$here/libnccl.map" \
  "$obj/nccl.o" -L"$out" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN' -lpthread -lrt \
  || die "linking libnccl.so.2 failed"
mv -f "$out/libnccl.so.2.tmp" "$out/libnccl.so.2"
"$CXX" -o "$out/nccl-sim-selftest" "$obj/nccl_selftest.o" -L"$out" -l:libnccl.so.2 -l:libcuda.so.1 -Wl,-rpath,"$out" -lpthread \
  || die "linking the NCCL self-test failed"
"$CXX" -o "$out/cuda-sim-selftest" "$obj/selftest.o" -L"$out" -l:libcublas.so.12 -l:libcuda.so.1 \
  -Wl,-rpath,"$out" -lpthread || die "linking the self-test failed"

# Kernel names stay private to libcuda.so.1: only the driver API and the simulator's own entry points export.
stray=$(nm -D --defined-only "$out/libcuda.so.1" | awk '{print $3}' | grep -vE '^(cu|ddpmsim_)' || true)
[ -z "$stray" ] || die "libcuda.so.1 exports symbols other than cu* and ddpmsim_*: $stray"

# Every entry point the binding declares must exist here: a new [LibraryImport] in Native/*.cs needs a new
# function in the simulator.
native=$repo/Ddpm.Backends.Cuda/Native
check_exports() { # library, binding file, pattern of its declarations
  local lib=$1 file=$2 pattern=$3 missing
  [ -f "$file" ] || die "binding file $file is missing"
  missing=$(grep -oE "$pattern" "$file" | grep -oE '[A-Za-z_0-9]+$' | sort -u \
    | while read -r fn; do nm -D --defined-only "$lib" | awk '{print $3}' | grep -qx "$fn" || echo "$fn"; done)
  [ -z "$missing" ] || die "$(basename "$lib") lacks entry points $(basename "$file") declares: $(echo $missing)"
}
check_exports "$out/libcuda.so.1" "$native/Driver.cs" 'partial CUresult cu[A-Za-z_0-9]+'
check_exports "$out/libcublas.so.12" "$native/Cublas.cs" 'partial int cublas[A-Za-z_0-9]+'
check_exports "$out/libcudnn.so.9" "$native/Cudnn.cs" 'partial (int|nint|nuint|void) cudnn[A-Za-z_0-9]+'
check_exports "$out/libnccl.so.2" "$repo/Ddpm.Backends.Cuda/Nccl/NcclNative.cs" 'partial (int|nint) nccl[A-Za-z_0-9]+'

"$out/cuda-sim-selftest" || die "the self-test failed (see the FAIL lines above)"
"$out/nccl-sim-selftest" || die "the NCCL self-test failed (see the FAIL lines above)"
echo "$out"
