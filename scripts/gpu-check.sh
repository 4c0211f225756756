#!/usr/bin/env bash
# The prepared GPU check, for the device tool's machines (NVIDIA GPU, no .NET, no internet).
#
#   scripts/gpu-check.sh prepare      # here: self-contained publish, golden files, Vulkan loader debs
#   device run, carry ["publish", ".gl"], command: "bash scripts/gpu-check.sh run"
#
# `run` unpacks the Vulkan loader, runs the GPU conformance check (the f16-arithmetic and
# cooperative-matrix linears and Muon's fp16 Newton-Schulz against their CPU twins, whole Vulkan
# forward and single-step decoding against every golden file), the Vulkan matmul (fp32, f16
# arithmetic, cooperative matrix) and forward benchmark, the engine API's GPU decode (GPU time per
# token beside wall time), the training benchmark, and cuBLAS fp32 (tf32 off) and fp16 through
# PyTorch on the same shapes with the ratios ours/cuBLAS, and copies everything it printed to
# $OUT/gpu-check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
pub=publish/gpu-check

case "${1:-}" in
prepare)
  set -e
  dotnet publish bench/Palm.Bench -c Release -r linux-x64 --self-contained \
    -p:PublishSingleFile=true -p:EnableCompressionInSingleFile=true -p:IncludeNativeLibrariesForSelfExtract=true \
    -o "$pub" -v q -nologo
  rm -f "$pub"/*.pdb "$pub"/*.xml
  mkdir -p "$pub/golden"
  cp ../shared/golden/*.msgpack tests/golden-edge/*.msgpack "$pub/golden/"
  # The PyTorch peer travels in the (ignored) publish folder: the device machine lacks ../shared.
  cp ../shared/bench/torch_palm_bench.py "$pub/"
  if [[ -n "${PALM_GOLDEN_DIR:-}" ]]; then cp "$PALM_GOLDEN_DIR"/*.msgpack "$pub/golden/"; fi
  # --git-path: in a worktree .git is a file, and the exclude file lives in the main repository.
  exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
  grep -qx '/.gl/' "$exclude" 2>/dev/null || echo /.gl/ >> "$exclude"
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update -qq
  (cd .gl && apt-get $o download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  du -sh "$pub" .gl
  echo "prepared: now call the device tool with carry [\"publish\", \".gl\"] and command \"bash scripts/gpu-check.sh run\""
  ;;
run)
  log="${OUT:-/tmp}/gpu-check.log"
  tsv="${OUT:-/tmp}/vulkan-matmul.tsv"
  {
    for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
    # The NVIDIA ICD manifest: the device tool's usual place, else wherever the driver put it.
    icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    [[ -f $icd ]] || icd=$(find /usr /etc /opt /lib /run -name 'nvidia_icd*.json' 2>/dev/null | head -1)
    echo "vulkan ICD manifest: ${icd:-none found}"; [[ -n $icd ]] && cat "$icd"
    [[ -n $icd ]] && export VK_DRIVER_FILES=$icd
    ldconfig -p | grep -E 'libvulkan|libGLX_nvidia|libnvidia-glvkspirv' | head -5
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
    export PALM_GOLDEN_DIR="$PWD/$pub/golden" PALM_VK_CACHE_DIR=/tmp/palm-vk-cache
    # PALM_VK_COOPMAT=1: enable VK_NV_cooperative_matrix (off in a default context) to test and time linear_coopmat.
    echo "== conformance"; PALM_VK_COOPMAT=1 timeout 180 "$pub/Palm.Bench" gpu-check
    # PALM_BENCH_COOP_TILES: linear_coopmat's layouts (SMxSNxFMxFNxBKxSTAGESxAHEAD) timed beside the
    # one the wrapper picks, from 512³ up: the tuning data for Linear.ChooseCoopMatTile.
    coop_tiles=2x2x4x4x32x2x1,2x2x4x4x32x2x2,2x2x4x4x32x1x1,2x2x4x4x64x1x1,2x2x4x4x64x1x2,2x2x4x4x16x2x2
    coop_tiles+=,2x4x4x2x32x2x1,2x4x4x2x32x2x2,4x2x2x4x32x2x2,2x4x4x2x64x1x2,2x4x4x4x16x2x1,2x4x4x4x16x2x2
    coop_tiles+=,4x2x4x4x16x2x2,4x4x2x2x32x2x2,2x2x2x4x32x2x2,2x2x2x2x32x2x2
    echo "== vulkan benchmark"; PALM_VK_COOPMAT=1 PALM_BENCH_COOP_TILES=$coop_tiles timeout 240 "$pub/Palm.Bench" gpu --sizes 256,512,1024,4096 --reps 5 --matmul-tsv "$tsv"
    echo "== cuBLAS through PyTorch, same shapes, and ours / cuBLAS"
    PALM_MATMUL_TSV="$tsv" PYTHONUNBUFFERED=1 timeout 150 python3 - <<'PY'
import csv, os, time, torch
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
print("torch", torch.__version__, torch.cuda.get_device_name(0),
      "| fp16 reduced-precision reduction allowed:", torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction)
shapes = [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (4096, 4096, 4096), (1, 1536, 256), (1, 4096, 256)]
cublas = {}
for dtype in (torch.float32, torch.float16):
    name = str(dtype).split('.')[-1]
    for (m, n, k) in shapes:
        a = torch.randn(m, k, device="cuda", dtype=dtype); w = torch.randn(n, k, device="cuda", dtype=dtype)
        for _ in range(3): a @ w.T
        torch.cuda.synchronize(); reps = max(3, int(2e10 / (2 * m * n * k)))
        t = time.perf_counter()
        for _ in range(reps): a @ w.T
        torch.cuda.synchronize(); s = (time.perf_counter() - t) / reps
        cublas[(name, m, n, k)] = 2 * m * n * k / s / 1e9
        print(f"| cuBLAS {name} | {m} x {n} x {k} | {cublas[(name, m, n, k)]:.1f} GFLOP/s | {s*1e3:.3f} ms |")
# The Vulkan rows written by `gpu --matmul-tsv` above (kernels: f32, half, coopmat; err = max
# |y - twin| / sum|x*w| over sampled outputs): the issue's targets are fp32 >= 50% of cuBLAS fp32
# and the f16 kernels >= 50% of cuBLAS fp16.
ours = {}
try:
    with open(os.environ["PALM_MATMUL_TSV"]) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            ours[(r["kernel"], int(r["m"]), int(r["n"]), int(r["k"]))] = (float(r["gflops"]), r["err"])
except OSError as e:
    print("no Vulkan matmul rows:", e)
def cell(kernel, shape, ref):
    if (kernel,) + shape not in ours: return "-", "-"
    g, err = ours[(kernel,) + shape]
    return f"{g:.1f} (err {err})", f"{g / ref:.0%}"
print("| M x N x K | ours fp32 | cuBLAS fp32 | fp32 ratio | ours f16 arithmetic | ratio | ours coopmat | ratio | cuBLAS fp16 |")
print("|---|---|---|---|---|---|---|---|---|")
for shape in shapes:
    f32, h = cublas[("float32",) + shape], cublas[("float16",) + shape]
    o32, r32 = cell("f32", shape, f32); oh, rh = cell("half", shape, h); oc, rc = cell("coopmat", shape, h)
    print(f"| {' x '.join(map(str, shape))} | {o32} | {f32:.1f} | {r32} | {oh} | {rh} | {oc} | {rc} | {h:.1f} |")
PY
    echo "== vulkan training step"; timeout 180 "$pub/Palm.Bench" gpu-train --config tiny --reps 5; timeout 180 "$pub/Palm.Bench" gpu-train --config small --reps 5
    echo "== PyTorch CUDA training step, same model (the peer's Palm and Muon on the GPU)"
    PYTHONUNBUFFERED=1 PYTHONPATH="$pub" timeout 150 python3 - <<'PY'
import time, torch, statistics
import torch_palm_bench as tp
torch.backends.cuda.matmul.allow_tf32 = False
for name in ("tiny", "small"):
    preset = tp.PRESETS[name]; c, batch = preset["config"], preset["batch"]
    torch.manual_seed(0)
    model = tp.Palm(c).cuda()
    # The peer keeps its RoPE tables as plain tensors (not buffers): build and move them too.
    model.rope_tables(c["block_size"]); model.cos, model.sin = model.cos.cuda(), model.sin.cuda()
    muon, adamw = tp.make_optimizers(model)
    params = list(model.parameters())
    data = torch.randint(c["vocab_size"], (batch, c["block_size"] + 1), device="cuda")
    def step():
        _, loss, _ = model(data[:, :-1], data[:, 1:])
        muon.zero_grad(set_to_none=True); adamw.zero_grad(set_to_none=True)
        loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); muon.step(); adamw.step()
    for _ in range(3): step()
    ts = []
    for _ in range(10):
        torch.cuda.synchronize(); t = time.perf_counter(); step(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
    s = statistics.median(ts)
    print(f"| pytorch-cuda train `{name}` {batch}x{c['block_size']} | {batch * c['block_size'] / s:.0f} tokens/s | {s * 1e3:.1f} ms |")
PY
    echo "== engine API on the GPU: load, TTFT, decode 1 and 32 sessions, GPU vs wall ms/token"
    timeout 180 "$pub/Palm.Bench" api --backend vulkan --no-peer --tokens 128 --sessions 32
    echo "== per-kernel profile of one small forward"; PALM_VK_PROFILE=1 timeout 180 "$pub/Palm.Bench" gpu --sizes 256 --reps 1
  } 2>&1 | tee "$log"
  ;;
*)
  echo "usage: scripts/gpu-check.sh prepare|run" >&2; exit 2 ;;
esac
