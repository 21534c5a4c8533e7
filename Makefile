# Developer entry points. Each target creates .venv when it is absent; only Python >= 3.10 and pip are needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test export readme docs wheel

$(BIN)/nbdev_export: settings.ini setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

venv: $(BIN)/nbdev_export

## The main job: the paper's experiment at small scale (MAE teacher; scratch, fine-tune, copy, distill students over two seeds;
## ensembles; table and figures in runs/demo). One OpenMP thread per process: at_demo runs one worker process per core.
demo: export OMP_NUM_THREADS ?= 1
demo: venv
	$(BIN)/at_demo --output_dir runs/demo

## Everything CI checks: library and notebooks in step and clean, every notebook, pytest.
test: venv
	PATH=$(abspath $(BIN)):$$PATH bash .ci/test

## After editing notebooks: library, clean notebooks and README.md in step (what CI's first step checks).
export: venv
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean && $(BIN)/python .ci/readme.py

## README.md from nbs/index.ipynb.
readme: venv
	$(BIN)/python .ci/readme.py

## The docs site in _docs/ (open _docs/index.html): executes the notebooks under a Jupyter kernel, processes them with
## nbdev into _proc/, renders with Quarto where it is installed, else with nbconvert. DOCS_FLAGS=--no-exec skips running.
docs: venv
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python .ci/docsite.py $(DOCS_FLAGS)

## dist/: the sdist, and the wheel built from it (so nothing but the package gets in).
wheel: venv
	$(BIN)/python -m build --no-isolation --outdir dist .
