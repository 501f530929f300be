# `make test` and `make demo` create .venv on first use and install requirements.txt into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := runs/demo
# The demo's miniature of the article: 20 labels, 200 val, 400 test, the rest unlabeled, 32 px, and
# the CPU recipe (README) for both models: same network, augmentation, optimizer and 2.5 minutes.
DEMO_TRAIN := --data $(DEMO)/data --image-size 32 --device cpu --arch cnn --translate 4 --lr 1e-3 \
	--steps-per-epoch 50 --epochs 1000 --max-minutes 2.5

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
	$(PY) prepare_data.py --synthetic 600 --out $(DEMO)/data --n-labeled 20 --n-val 200 --n-test 400
	$(PY) train_supervised.py $(DEMO_TRAIN) --out $(DEMO)/supervised --optimizer adam
	$(PY) train_ssgan.py $(DEMO_TRAIN) --out $(DEMO)/ssgan --batch-size 64 --lr-g 3e-4 \
		--g-loss feature-matching --consistency-weight 10
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
