# `make demo` and `make test` each do all the set-up on a fresh machine (venv + install).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Each pytest worker simulates 8 CPU devices (tests/conftest.py); 2 workers for 2 cores.
PYTEST_WORKERS ?= 2

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,oracle]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m swin_jax.predict --model swin_tiny_patch4_window7_224 --image chelsea

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15

clean:
	rm -rf $(VENV) build *.egg-info
