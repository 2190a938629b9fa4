# The README's commands, nothing hidden. `make run` and `make test` set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
BENCH := $(VENV)/bin/bench
SUITE ?= suites/mnist.yaml
PYTEST_ARGS ?=

.PHONY: install run smoke test report ui clean

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

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
