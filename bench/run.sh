#!/usr/bin/env bash
# Benchmarks beside their peers (never part of the tests). Installs the PyTorch peer and
# OpenBLAS first so the peer is fair; run alone on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PALM_SETUP_PEERS=1 scripts/setup.sh
dotnet build bench/Palm.Bench -c Release -v q -nologo
dotnet run --project bench/Palm.Bench -c Release --no-build -- model --config small "$@"
# The float32 decode ratio again, each peer run bracketed by ours (the VM drifts by 1.5x in minutes).
dotnet run --project bench/Palm.Bench -c Release --no-build -- model --config small --pairs 7
dotnet run --project bench/Palm.Bench -c Release --no-build -- tokenizer --mb 10 --vocab 8192
