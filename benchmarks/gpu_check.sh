#!/usr/bin/env bash
# Every GPU check of the project in one command, for one device session (at most 8 minutes on an
# H100). Prepare with benchmarks/gpu_prepare.sh here, then run this there with .whl and .bench
# carried. Each step has its own time limit, so one that hangs cannot eat the others' time, and
# every log and JSON lands in $OUT (or ./gpu-out) as soon as it is written.
#   GPU_CHECK_STEPS="tests vae t5 caption" picks steps (default: all). The caption step measures the
#   realistic workload (row lengths drawn from real dense captions, rows ending there, the automatic
#   batch and the fixed per-worker cache) and reports padding waste. GPU_CHECK_TINY=1 runs the
#   benchmarks' tiny CPU versions: a dry run of this script on any machine.
#   GPU_CHECK_FAMILIES="qwen2.5-vl llava-next" adds, after the caption step, one caption run per
#   family (its published 7B/8B architecture, random weights: plain generate against the captioner's
#   automatic static-cache batch). Default: none, so the prepared run's time is unchanged; each
#   family adds up to 4 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null && [ -z "${GPU_CHECK_TINY:-}" ]; then  # wheels are cp312
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
[ -d .bench/shared ] && export RECAPTION_SHARED="$PWD/.bench/shared"
STEPS="${GPU_CHECK_STEPS:-tests vae t5 caption}"
TINY="${GPU_CHECK_TINY:+--tiny}"
# The tiny CPU versions run on shared development machines: give them 4x the GPU steps' limits.
SCALE=1; [ -n "${GPU_CHECK_TINY:-}" ] && SCALE=4
step() { echo "=== $1 ($(date +%T))"; }
FAILED=""
failed() { FAILED="$FAILED $1"; echo "!!! $1 failed or timed out"; }  # go on: the others still run

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"; } \
  | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'diffusers', diffusers.__version__)" | tee -a "$OUT/gpu.txt"

if [[ " $STEPS " == *" tests "* ]]; then
  step "pytest -m gpu"
  timeout $((150 * SCALE)) python3 -m pytest -q -m gpu -p no:cacheprovider tests/encoder/test_t5.py \
    tests/encoder/test_vae.py tests/captioner/test_gpu.py 2>&1 | tee "$OUT/pytest_gpu.log" || failed tests
fi
if [[ " $STEPS " == *" vae "* ]]; then
  step "VAE @1024: plain encode b8 against the untried variants and the best so far"
  timeout $((200 * SCALE)) python3 benchmarks/vae_gpu.py $TINY --resolutions 1024 --images 240 --budget-s 150 \
    --variants full-cl-gemm full-cl-gemm-pad full-cl --profile --json "$OUT/vae.json" \
    2>&1 | tee "$OUT/vae.log" || failed vae
fi
if [[ " $STEPS " == *" t5 "* ]]; then
  step "T5-XXL: plain padded b128 against the TextEncoder, dense and raw captions"
  timeout $((170 * SCALE)) python3 benchmarks/t5_gpu.py $TINY --peak-tflops 790 --json "$OUT/t5.json" \
    --profile "$OUT/t5_kernels.txt" 2>&1 | tee "$OUT/t5.log" || failed t5
fi
if [[ " $STEPS " == *" caption "* ]]; then
  step "LLaVA-1.5-7B architecture, real caption lengths: plain generate against the captioner"
  timeout $((240 * SCALE)) python3 benchmarks/caption_gpu.py $TINY --quick --lengths real --json "$OUT/caption.json" \
    2>&1 | tee "$OUT/caption.log" || failed caption
fi
for family in ${GPU_CHECK_FAMILIES:-}; do
  step "$family architecture, real caption lengths: plain generate against the captioner"
  timeout $((240 * SCALE)) python3 benchmarks/caption_gpu.py $TINY --quick --lengths real --family "$family" \
    --variants static-auto:static:0 --budget-s 150 --json "$OUT/caption_$family.json" \
    2>&1 | tee "$OUT/caption_$family.log" || failed "caption-$family"
done
step "done"
if [ -n "$FAILED" ]; then echo "failed steps:$FAILED"; exit 1; fi
