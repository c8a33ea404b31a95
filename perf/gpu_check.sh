#!/usr/bin/env bash
# The device check of docs/performance.md: real-size Vision-OPD runs on one GPU, random weights (the first three recorded there).
#   bash perf/gpu_check.sh [OUT_DIR]
# Optional: wheels in .whl/ (e.g. the transformers/peft versions CI uses) are installed to /tmp/site first.
set -u
OUT=${1:-${OUT:-runs/gpu_check}}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
common="--steps 3 --new-tokens 256 --image-side 448"
run() { name=$1; shift; echo "== $name: $*"; timeout ${LIMIT:-170} python3 perf/gpu_check.py $common "$@" --json "$OUT/$name.json" 2>&1 \
          | grep -v -i "warn" ; }
run 3b_full_bf16 --size 3b --master bf16 --prompts 8 --samples 4 --micro-batch 8
run 3b_full_bf16_ckpt --size 3b --master bf16 --prompts 8 --samples 4 --micro-batch 8 --grad-ckpt
run 7b_lora64_bf16_ckpt --size 7b --master bf16 --lora 64 --prompts 4 --samples 8 --micro-batch 4 --grad-ckpt
# prompts scored once for their G = 8 responses (train.share_prompts) against every row with its own prompt, side by
# side: 896 px images (1,024 image tokens per view), 256 new tokens; prepared, not yet run on a GPU (docs/performance.md)
LIMIT=420 run 3b_share_prompts_g8 --size 3b --master bf16 --prompts 2 --samples 8 --micro-batch 8 --grad-ckpt --image-side 896 --share both
