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
# NativeAOT fixes the instruction-set level at build time (a build for the portable baseline never
# runs the 256- and 512-bit kernels; one for a higher level will not start on an older CPU), so the library
# is published once per x86-64 level, and out/native/libpalm.so is a small C dispatcher
# (native/dispatch) that loads the best build this CPU runs and forwards every call to it.
# PalmNativeAot turns on PublishAot and NativeLib=Shared in that project only (see its .csproj).
levels=(x86-64-v2 x86-64-v3 x86-64-v4)
rm -rf out/native
for level in "${levels[@]}"; do
  dotnet publish native/Palm.Native.Interop -c Release -r linux-x64 -p:PalmNativeAot=true -p:IlcInstructionSet="$level" \
    -o "out/native/$level" -nologo -v:q
  mv "out/native/$level/libpalm.so" "out/native/libpalm-$level.so"
done
gcc -O2 -g -Wall -Wextra -Werror -std=c11 -fPIC -shared -fvisibility=hidden -Iinclude \
  -Wl,--version-script=native/dispatch/libpalm.map -o out/native/libpalm.so native/dispatch/palm_dispatch.c -ldl -lpthread
echo "build-native: out/native/libpalm.so (dispatcher) and libpalm-{${levels[*]}}.so ($(stat -c %s out/native/libpalm-x86-64-v3.so) bytes each, about) published in $((SECONDS - start)) s"

make -C samples/c-embed --no-print-directory -s header all

model=models/palm-kjv.palm
# The sample on lavapipe: PALM_BACKEND_VULKAN takes the software device that Auto would pass over.
samples/c-embed/c-embed --backend vulkan --seed 1 --max-tokens 40 "$model" "And God said"
# The library must compute the same model id as .NET (states are bound to it); Palm.Tests pins the file too.
export PALM_EXPECT_MODEL_ID=$(cat samples/c-embed/palm-kjv.id)
samples/c-embed/palm-abi-test "$model" cpu
samples/c-embed/palm-abi-test "$model" vulkan
# Every build this CPU runs, forced through the dispatcher, on the CPU backend.
for level in "${levels[@]}"; do
  if [[ $(PALM_CPU_LEVEL=$level samples/c-embed/palm-abi-test "$model" cpu 2>&1 | tee out/native/abi-test-$level.log | tail -1) == *" 0 failed" ]]; then
    echo "build-native: $level build: $(tail -1 out/native/abi-test-$level.log)"
  elif grep -q "above what this CPU runs" out/native/abi-test-$level.log 2>/dev/null; then
    echo "build-native: $level build not tested (this CPU runs less)"
  else
    cat out/native/abi-test-$level.log >&2; echo "build-native: the $level build failed its ABI test" >&2; exit 1
  fi
done
echo "build-native: ok in $((SECONDS - start)) s"
