# Developer entry points. Each target creates .venv when it is absent; only Python >= 3.10 and pip are needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test export clean docs wheel

$(BIN)/nbdev_export: settings.ini setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

venv: $(BIN)/nbdev_export

## The main job: the small-scale reproduction of the paper (see README).
demo: venv
	$(BIN)/at_demo --output_dir runs/demo

## Everything CI checks: library and notebooks in step and clean, every notebook, pytest.
test: venv
	PATH=$(abspath $(BIN)):$$PATH bash .ci/test

export: venv
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean

docs: venv
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m attention_transfer.site

wheel: venv
	$(BIN)/pip wheel --no-deps -w dist .
