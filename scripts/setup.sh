#!/usr/bin/env bash
# Installs what Palm.Native needs on a fresh Debian 12 machine, only when missing.
# Idempotent and quiet when everything is present. Run as root (or with sudo available).
set -euo pipefail

# Vulkan loader, lavapipe (CPU Vulkan driver), validation layer, GLSL compiler, SPIR-V validator
# (the tests run spirv-val on every embedded shader, also those lavapipe never compiles); the bundled
# corpus comes from a Debian package so that a machine without internet can train on it.
PKGS=(libvulkan1 mesa-vulkan-drivers vulkan-validationlayers glslc spirv-tools bible-kjv)
# The C ABI (scripts/build-native.sh): NativeAOT links libpalm.so with gcc; the C sample builds with make.
PKGS+=(gcc libc6-dev make)
if [[ "${PALM_SETUP_PEERS:-0}" == "1" ]]; then
  # Benchmark peers only (bench/run.sh): PyTorch with a fair BLAS.
  PKGS+=(python3-torch python3-numpy python3-msgpack libopenblas0-openmp)
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v dotnet >/dev/null 2>&1; then
  echo "setup: the .NET 10 SDK is required (dotnet not found on PATH)" >&2
  exit 1
fi

# The default training corpus: the King James Bible (public domain in most of the world; Crown
# copyright in the UK) from Debian's bible-kjv, as plain text without verse references.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
corpus="$root/data/corpus/kjv.txt"
if [[ ! -s "$corpus" ]]; then
  mkdir -p "$(dirname "$corpus")"
  bible -f "Ge1:1-Re22:21" 2>/dev/null | sed -E 's/^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ //' > "$corpus.tmp"
  if [[ ! -s "$corpus.tmp" ]]; then echo "setup: could not extract the KJV text with 'bible'" >&2; rm -f "$corpus.tmp"; exit 1; fi
  mv "$corpus.tmp" "$corpus"
fi
