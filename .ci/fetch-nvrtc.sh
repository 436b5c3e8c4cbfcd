#!/usr/bin/env bash
# Fetches NVRTC 11.8 from Debian bookworm's non-free section (packages libnvrtc11.2 and
# libnvrtc-builtins11.8) into .ci-cache/nvrtc, so CI can compile every CUDA kernel without a GPU or a
# CUDA toolkit. Uses a private apt state (its own sources.list, lists and cache under a temp dir), so the
# machine's apt configuration is neither read for sources nor changed, and no root is needed.
#
# The Debian mirror is the one this machine's apt configuration names (or DDPM_APT_MIRROR); no host is
# written here.
#
# Usage: .ci/fetch-nvrtc.sh            prints the library folder on its last line
#        DDPM_APT_MIRROR=<mirror URL ending in /debian> .ci/fetch-nvrtc.sh   to use another mirror
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo_root/.ci-cache/nvrtc"
libdir="$dest/usr/lib/x86_64-linux-gnu"

if [[ -e "$libdir/libnvrtc.so.11.2" ]] && ls "$libdir"/libnvrtc-builtins.so.11.8* >/dev/null 2>&1; then
  echo "$libdir"
  exit 0
fi

# The mirror this machine's apt already uses: the first URI of a Debian archive (ending in /debian).
mirror="${DDPM_APT_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  mirror="$(grep -hoE '^(URIs:|deb) +[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
    /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | head -n1 || true)"
fi
if [[ -z "$mirror" ]]; then
  echo "fetch-nvrtc: no Debian archive found in the apt configuration (/etc/apt/sources.list*); set DDPM_APT_MIRROR" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/etc/sources.list.d" "$work/etc/preferences.d"
echo "deb $mirror bookworm main contrib non-free non-free-firmware" > "$work/etc/sources.list"

apt_opts=(
  -o "Dir::Etc::SourceList=$work/etc/sources.list"
  -o "Dir::Etc::SourceParts=$work/etc/sources.list.d"
  -o "Dir::Etc::PreferencesParts=$work/etc/preferences.d"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "Debug::NoLocking=1"
  -o "APT::Architecture=amd64"
  -o "APT::Sandbox::User=$(id -un)"
)

apt-get "${apt_opts[@]}" -qq update >&2
(cd "$work" && apt-get "${apt_opts[@]}" -qq download libnvrtc11.2 libnvrtc-builtins11.8 >&2)

mkdir -p "$dest"
for deb in "$work"/*.deb; do
  echo "unpacking $(basename "$deb")" >&2
  dpkg -x "$deb" "$dest"
done

if [[ ! -e "$libdir/libnvrtc.so.11.2" ]]; then
  echo "fetch-nvrtc: libnvrtc.so.11.2 not found under $libdir after unpacking" >&2
  exit 1
fi
echo "$libdir"
