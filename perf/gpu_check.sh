#!/usr/bin/env bash
# The GPU check of docs/performance.md, from the repository alone on a fresh GPU machine (one H100 80GB, under 10
# minutes after the installs): a random-weight Qwen2.5-VL-3B twin (built from its published config values, no
# download), 896 px images (1,024 image tokens per view), P = 2 prompts x G = 8 samples, 256 new tokens, responses
# cut at drawn lengths (perf/gpu_check.py --vary-lengths), gradient checkpointing, bf16 weights. For each rollout
# engine (HF generate, then vLLM): shared prompts on and off, micro-batches by rows and by a token budget; one table.
#   bash perf/gpu_check.sh [OUT_DIR]          # default runs/gpu_check; VENV=.venv-gpu, LIMIT=270 s per engine run
# It builds its own virtual environment (VENV) with `pip install torch -e ".[vllm]"` (a package index, or wheels
# in .whl/ for a machine without one) and stops with a message at the first missing piece.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
VENV=${VENV:-.venv-gpu}
LIMIT=${LIMIT:-270}
die() { echo "gpu_check: $*" >&2; exit 1; }

command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this check needs an NVIDIA GPU and its driver"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || die "nvidia-smi sees no GPU"
command -v python3 >/dev/null 2>&1 || die "python3 not found"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python >= 3.11 needed (pyproject.toml)"
[ -f pyproject.toml ] && [ -f perf/gpu_check.py ] || die "run from a checkout of the repository (pyproject.toml, perf/gpu_check.py)"
mkdir -p "$OUT"

# the environment: its own venv, torch (the CUDA build pip picks on Linux) and the project with its vLLM extra
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (install the python3-venv package)"
fi
PY=$VENV/bin/python
pip_install() {
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --find-links .whl "$@"
  else
    "$PY" -m pip install -q "$@"
  fi
}
pip_install --upgrade pip || die "pip cannot install (no package index reachable? put the wheels in .whl/)"
pip_install torch -e ".[vllm]" || die "pip install torch -e '.[vllm]' failed (see above)"
"$PY" - <<'PY' || die "the environment is incomplete (see above)"
import torch, transformers, vllm, vision_opd
assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA device (a CPU build of torch?)"
print(f"{torch.cuda.get_device_name()}: torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, vllm {vllm.__version__}")
PY
"$PY" perf/gpu_check.py --dry-run --cases on:0 on:64 --vary-lengths >"$OUT/dry_run.log" 2>&1 \
  || { tail -20 "$OUT/dry_run.log" >&2; die "the CPU dry run failed (log: $OUT/dry_run.log)"; }

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false VLLM_USE_FLASHINFER_SAMPLER=0
common=(--size 3b --master bf16 --grad-ckpt --prompts 2 --samples 8 --micro-batch 8 --new-tokens 256 --image-side 896
        --steps 2 --vary-lengths --cases on:0 off:0 on:4096)
for engine in hf vllm; do
  echo "== $engine rollouts: ${common[*]}"
  status=0
  timeout "$LIMIT" "$PY" perf/gpu_check.py "${common[@]}" --engine "$engine" --json "$OUT/$engine.json" \
    >"$OUT/$engine.log" 2>&1 || status=$?
  grep -E "step [0-9]+:|Error|error:" "$OUT/$engine.log" | grep -v -i "warn" || true
  [ "$status" -eq 0 ] || { tail -30 "$OUT/$engine.log" >&2; die "the $engine run failed (exit $status; log: $OUT/$engine.log)"; }
  [ -s "$OUT/$engine.json" ] || die "the $engine run wrote no $OUT/$engine.json"
done
"$PY" perf/gpu_check.py --table "$OUT/hf.json" "$OUT/vllm.json" | tee "$OUT/table.md"
