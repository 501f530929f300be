# `make test` and `make demo` create .venv on first use and install requirements.txt into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := runs/demo
# The demo's miniature of the article at 32 px: a synthetic set (tinted ellipses, wide = cat, tall =
# dog), 20 labels, 200 val, 400 test, ~5,000 unlabeled. Both models get the CPU recipe (README):
# same network, augmentation and Adam, and the same budget in steps (never minutes, so a loaded
# machine gives the same numbers). The same CNN on 10x the labels is the reference line. Every
# model is validated, tested and saved as a moving average of its weights (0.99), for 1,500 steps
# (BENCHMARKS.md "make demo" has what fewer steps and the trained weights gave).
DEMO_STEPS := --steps-per-epoch 100 --epochs 15
DEMO_TRAIN := --image-size 32 --device cpu --workers 1 --arch cnn --translate 4 --lr 1e-3 --weight-average 0.99 $(DEMO_STEPS)
DEMO_SPLIT := --n-val 200 --n-test 400 --image-size 32 --workers 1

.PHONY: venv test demo gpu-check clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

# Synthetic data (Kaggle file names, so the real code path runs) -> both trainers -> evaluate.
demo: venv
	rm -rf $(DEMO)
	$(PY) prepare_data.py --synthetic 2800 --out $(DEMO)/data --n-labeled 20 $(DEMO_SPLIT)
	$(PY) prepare_data.py --src $(DEMO)/data-synthetic-src --out $(DEMO)/data-200 --n-labeled 200 $(DEMO_SPLIT)
	$(PY) train_supervised.py $(DEMO_TRAIN) --data $(DEMO)/data --out $(DEMO)/supervised --optimizer adam --batch-size 20
	$(PY) train_supervised.py $(DEMO_TRAIN) --data $(DEMO)/data-200 --out $(DEMO)/supervised-200-labels --optimizer adam \
		--batch-size 20
	$(PY) train_ssgan.py $(DEMO_TRAIN) --data $(DEMO)/data --out $(DEMO)/ssgan --batch-size 32 \
		--labeled-batch-size 16 --lr-g 3e-4 --g-loss feature-matching --g-width 16
	$(PY) evaluate.py $(DEMO)/supervised/best.pt $(DEMO)/ssgan/best.pt $(DEMO)/supervised-200-labels/best.pt \
		--data $(DEMO)/data/test --workers 1 --json $(DEMO)/results.json --report $(DEMO)/report.md
	@echo "demo done: report in $(DEMO)/report.md, numbers in $(DEMO)/results.json"

# Every CUDA path once (DALI GPU decoding, AMP, resume, torchrun, evaluate): one PASS/FAIL/SKIP line
# each. Prints one SKIP line and succeeds on a machine without a GPU. Installs .venv first, like test
# and demo. Flags for gpu_check.py go in ARGS: make gpu-check ARGS="--src train.zip"
ARGS ?=
gpu-check: venv
	$(PY) gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
