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

## The main job, until at_demo lands: pre-train a teacher without labels, distill its attention into a student, evaluate.
demo: export OMP_NUM_THREADS ?= 1
demo: venv
	$(BIN)/at_pretrain --model vit_nano_patch4_32 --data digits --epochs 100 --output_dir runs/demo/mae
	$(BIN)/at_train --model vit_nano_patch4_32 --mode distill --finetune runs/demo/mae/encoder.pth --data digits \
	    --epochs 30 --warmup_epochs 2 --blr 2e-2 --mixup 0 --cutmix 0 --output_dir runs/demo/distill
	$(BIN)/at_eval runs/demo/distill/model.pth

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
