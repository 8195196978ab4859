# `make demo` and `make test` each do all the set-up on a fresh machine (venv + install).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Each pytest worker simulates 8 CPU devices (tests/conftest.py); 2 workers for 2 cores.
PYTEST_WORKERS ?= 2

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,oracle]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded dataset; runs/demo is recreated on every call.
demo: $(STAMP)
	rm -rf runs/demo
	$(PY) -m swin_jax.main --config=configs/demo.py --workdir=runs/demo

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=15

# Speed, compile time, memory and MACs of swin_jax beside timm, in one run (slow on 2 cores).
bench: $(STAMP)
	$(PY) -m swin_jax.bench --model swin_tiny_patch4_window7_224,swin_base_patch4_window7_224 --batch 8,32 --vs timm --out experiments/benchmarks.json

clean:
	rm -rf $(VENV) build *.egg-info
