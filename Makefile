# `make test` and `make demo` create .venv on first use and install requirements.txt into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := runs/demo
# The demo's miniature of the article: 20 labels, 200 val, 200 test, the rest unlabeled, 32 px.
DEMO_TRAIN := --data $(DEMO)/data --image-size 32 --device cpu

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
	$(PY) prepare_data.py --synthetic 400 --out $(DEMO)/data --n-labeled 20 --n-val 200 --n-test 200
	$(PY) train_supervised.py $(DEMO_TRAIN) --out $(DEMO)/supervised --epochs 40 --optimizer adam --lr 2e-4
	$(PY) train_ssgan.py $(DEMO_TRAIN) --out $(DEMO)/ssgan --epochs 12 --batch-size 32 --lr 2e-4 \
		--g-loss feature-matching
	$(PY) evaluate.py $(DEMO)/supervised/best.pt $(DEMO)/ssgan/best.pt --data $(DEMO)/data/test \
		--json $(DEMO)/results.json --report $(DEMO)/report.md
	@echo "demo done: report in $(DEMO)/report.md, numbers in $(DEMO)/results.json"

# Every CUDA path once (DALI GPU decoding, AMP, resume, torchrun, evaluate): one PASS/FAIL line each.
# Prints one SKIP line and succeeds on a machine without a GPU.
# Uses .venv when it exists, else $(PYTHON) as it is (a GPU box may have torch and DALI installed).
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache
