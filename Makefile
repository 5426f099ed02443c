# NormBench: `make benchmark` installs everything and runs the default benchmark; `make test` installs and tests.
PYTHON ?= python
# The CPU build of torch is installed first when no torch is present (set TORCH_SPEC for another build).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install benchmark test lint

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install --quiet -e ".[dev]"

benchmark: install
	$(PYTHON) run_benchmark.py

lint:
	$(PYTHON) -m ruff check .

test: install lint
	$(PYTHON) -m pytest
