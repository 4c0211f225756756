#!/usr/bin/env bash
# Publishes the C ABI as a native shared library with NativeAOT (out/native/libpalm.so, plus
# include/palm.h), builds samples/c-embed with gcc against it, streams one completion from the
# built-in model on lavapipe, and runs the ABI tests (bad input, two threads, cancellation, state)
# on the CPU and on lavapipe. Needs what scripts/setup.sh installs, and gcc.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

for tool in gcc make; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-native: $tool is required (Debian: build-essential)" >&2; exit 1; }
done

start=$SECONDS
# PalmNativeAot turns on PublishAot and NativeLib=Shared in that project only (see its .csproj).
dotnet publish native/Palm.Native.Interop -c Release -r linux-x64 -p:PalmNativeAot=true -o out/native -nologo -v:q
echo "build-native: out/native/libpalm.so ($(stat -c %s out/native/libpalm.so) bytes) published in $((SECONDS - start)) s"

make -C samples/c-embed --no-print-directory -s header all

model=models/palm-kjv.palm
# The sample on lavapipe: PALM_BACKEND_VULKAN takes the software device that Auto would pass over.
samples/c-embed/c-embed --backend vulkan --seed 1 --max-tokens 40 "$model" "And God said"
# The library must compute the same model id as .NET (states are bound to it); Palm.Tests pins the file too.
export PALM_EXPECT_MODEL_ID=$(cat samples/c-embed/palm-kjv.id)
samples/c-embed/palm-abi-test "$model" cpu
samples/c-embed/palm-abi-test "$model" vulkan
echo "build-native: ok in $((SECONDS - start)) s"
