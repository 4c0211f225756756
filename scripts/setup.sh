#!/usr/bin/env bash
# Installs what Palm.Native needs on a fresh Debian 12 machine, only when missing.
# Idempotent and quiet when everything is present. Run as root (or with sudo available).
set -euo pipefail

# Vulkan loader, lavapipe (CPU Vulkan driver), validation layer, GLSL compiler; the bundled
# corpus comes from a Debian package so that a machine without internet can train on it.
PKGS=(libvulkan1 mesa-vulkan-drivers vulkan-validationlayers glslc)
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
