#!/usr/bin/env bash
# The device check of docs/performance.md: real-size Vision-OPD runs on one GPU, random weights (the first three recorded there);
# then prepared, not yet run on a GPU: shared vs per-row prompt scoring, and the 3B step with HF and with vLLM rollouts.
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
# the 3B step with each rollout engine, side by side (vLLM needs `pip install 'vision-opd[vllm]'` or vllm on the machine)
if python3 -c "import vllm" 2>/dev/null; then
  run 3b_ckpt_engine_hf --size 3b --master bf16 --prompts 8 --samples 4 --micro-batch 8 --grad-ckpt --engine hf
  run 3b_ckpt_engine_vllm --size 3b --master bf16 --prompts 8 --samples 4 --micro-batch 8 --grad-ckpt --engine vllm
  python3 - "$OUT" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1]); r = {e: json.loads((d / f"3b_ckpt_engine_{e}.json").read_text()) for e in ("hf", "vllm")}
print("| engine | s/step | rollout s | sync s | response tok/s | peak GiB (trainer) | logprob mismatch max |")
print("|---|---|---|---|---|---|---|")
for e, x in r.items():
    print(f"| {e} | {x['sec_per_step']:.2f} | {x['sec_rollout']:.2f} | {x['sec_sync']:.2f} | {x['response_tokens_per_sec']:.0f} | "
          f"{x['peak_gpu_gib']:.1f} | {x['rollout_logprob_diff_max']:.3g} |")
print(f"step speed-up with vLLM: {r['hf']['sec_per_step'] / r['vllm']['sec_per_step']:.2f}x")
PY
else
  echo "vllm is not installed: skipping the engine comparison (pip install 'vision-opd[vllm]')"
fi
