#!/usr/bin/env bash
# The GPU checks and benchmarks, as one run on a lent CUDA machine (no network there):
#   bash bench/device_check.sh [OUT] [STEPS]
# OUT (default $OUT, else ./outputs/device): log.txt (each step's summary) and results.tar.gz (every
# step's log and JSON, re-packed after each step: the device tool returns at most 8 files). STEPS: which steps to run, a
# comma-separated subset of tests,unet,pipeline,vae_chunks,kernels,cli,quantize,compile (default all, in that
# order: correctness first, so a short lease still answers whether the kernels are right; compile last,
# its max-autotune takes minutes). The checkout that travels must stay under the device tool's 64 MiB:
# the shipped models under svd_fast/assets are ~120 MB, so untrack and ignore all but default_model
# (the cli step's model) for the call, and restore the index afterwards. All steps take about 20
# minutes with their limits, more than one call may run (10 minutes) and a lease gives (15): split
# them, e.g. `tests,unet,kernels` then `pipeline,cli,quantize`; `compile` alone, when time is left.
# First run on an H200, 2026-12-04: tests 204 s, unet 65 s, kernels 15 s, pipeline 113 s.
# Wheels of packages the machine lacks (diffusers for the baseline, torchao for int8/fp8) are read
# from .whl/ when present; svd_fast runs from this checkout (svd_fast/kernels is linked to kernels/
# as the installed package maps it). Every step has its own time limit and a failed step does not
# stop the next; each step's summary goes to $OUT/log.txt and the end of stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-outputs/device}}
steps=${2:-tests,unet,pipeline,vae_chunks,kernels,cli,quantize,compile}
work=$(mktemp -d)  # every step's full log and results; packed into $out after each step
mkdir -p "$out"
log="$out/log.txt"
py=${PYTHON:-python3}
say() { echo "$*" | tee -a "$log"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/svd_fast_site .whl/*.whl \
    && export PYTHONPATH=/tmp/svd_fast_site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$py" -c "import svd_fast.kernels" 2>/dev/null; then
  ln -sfn ../kernels svd_fast/kernels  # in-tree import of the package layout setup.py installs
fi
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1

say "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1)"
say "   $("$py" -c 'import torch, triton, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)' 2>&1)"
say "   $("$py" -c 'import diffusers, transformers; print("diffusers", diffusers.__version__, "transformers", transformers.__version__)' 2>&1)"
say "   $("$py" -c 'import torchao; print("torchao", torchao.__version__)' 2>&1 | tail -n 1)"

run_step() {  # name, time limit (s), command...
  local name=$1 limit=$2
  shift 2
  [[ ",$steps," == *",$name,"* ]] || return 0
  say "== $name (limit ${limit}s) from $(date -u +%T)"
  local start=$SECONDS
  timeout -k 10 "$limit" "$@" >"$work/$name.log" 2>&1
  local rc=$?
  say "   rc=$rc after $((SECONDS - start))s"
  tail -n "${TAIL:-12}" "$work/$name.log" | sed 's/^/   | /' | tee -a "$log"
  tar -czf "$out/results.tar.gz.part" -C "$work" . && mv "$out/results.tar.gz.part" "$out/results.tar.gz"
}

shape=(--config svd --frames 14 --height 576 --width 1024)
# The GPU-dependent tests: Triton kernels on the device (the same tests run interpreted on CPU CI),
# CUDA graphs, fp16 auto dtype, int8/fp8 linears. The native kernels are CPU-only and not built here.
# TEST_PATHS narrows them (a re-run of what failed).
read -r -a test_paths <<<"${TEST_PATHS:-tests/kernels tests/accel/test_graphs.py tests/accel/test_dtypes.py tests/test_quantize.py}"
TAIL=25 run_step tests ${TESTS_LIMIT:-240} "$py" -m pytest -q -p no:cacheprovider -n "${WORKERS:-8}" -k "not native" "${test_paths[@]}" \
  --junitxml="$work/tests.xml"
run_step unet 150 "$py" bench/run.py "${shape[@]}" --mode unet --dtype fp16 --baseline-dtypes fp16,bf16 --drop-in \
  --repeat 10 --json "$work/unet.json"
run_step pipeline 240 "$py" bench/run.py "${shape[@]}" --mode pipeline --dtype fp16 --steps 25 --repeat 2 --drop-in \
  --json "$work/pipeline.json"
# The VAE decode lost to diffusers' on the first H200 run (0.86x): its per-frame layers run one frame
# at a time at 576x1024 (32 MiB chunks); the same pipeline with 1 GiB chunks says what that costs.
run_step vae_chunks 200 "$py" bench/run.py "${shape[@]}" --mode pipeline --dtype fp16 --steps 2 --repeat 3 \
  --vae-frame-chunk-mb 1024 --json "$work/pipeline_vae_chunks_1g.json"
run_step kernels 90 "$py" bench/kernels.py --op all --shape svd --impl triton --dtype fp16,bf16 --repeat 20 \
  --json "$work/kernels.json"
# The user's path on the GPU: the CLI on the embedded default model (CUDA graphs on by default).
run_step cli 90 "$py" -m svd_fast.sample --image assets/example.png --out "$work/cli.gif" --seed 0
run_step quantize ${QUANTIZE_LIMIT:-150} "$py" bench/quantize.py "${shape[@]}" --device cuda --variants fp32,bf16,int8,fp8 \
  --repeat 5 --json "$work/quantize.json"
run_step compile 540 "$py" bench/run.py "${shape[@]}" --mode unet --dtype fp16 --compile --repeat 10 \
  --json "$work/unet_compiled.json"
say "== done $(date -u +%T)"
