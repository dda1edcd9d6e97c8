# Two commands matter: `make serve` and `make test`. Both run `make setup` first, which is idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.quell-installed
CACHE := .cache
MODEL_DIR := $(CACHE)/models/SmolLM2-135M-Instruct

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup serve test bench lint clean

setup: $(STAMP) $(MODEL_DIR)/config.json

# torch's CPU wheel goes in first so nothing replaces it with a CUDA build; vLLM's CPU wheel pulls CUDA builds of
# torchvision/torchaudio/torchcodec/triton that fail to import beside torch+cpu, so they go out again.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[vllm,dev]'
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton || true
	touch $@

$(MODEL_DIR)/config.json: | $(STAMP)
	$(BIN)/quell model prepare --out $(MODEL_DIR)

serve: setup
	exec $(BIN)/quell serve

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(CACHE)
