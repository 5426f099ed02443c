# NormBench: `make benchmark` installs everything and runs the default benchmark; `make test` installs and tests.
PYTHON ?= python
# The CPU build of torch is installed first when no torch is present (set TORCH_SPEC for another build).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install benchmark gpu-check test lint

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install --quiet -e ".[dev]"

benchmark: install
	$(PYTHON) run_benchmark.py

# The GPU check (benchmarks/gpu_check.py; README "Performance"): installs first, like `benchmark`, but only when a
# requirement is missing, since a GPU machine may have them all and no package index. GPU_CHECK_ARGS: e.g. --tiny.
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --requirements >/dev/null 2>&1 || $(MAKE) install
	$(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

lint:
	$(PYTHON) -m ruff check .

test: install lint
	$(PYTHON) -m pytest
