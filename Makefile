# playledger: `make demo` runs the whole path end to end; `make test` runs lint, types and tests.
# Both create .venv/ at the repo root and install the project into it when needed.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint up tools clean

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "playledger needs Python 3.11, found " + sys.version.split()[0] + " at $(PYTHON) (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

tools:
	@command -v java >/dev/null || { echo "Java 17 is missing: apt-get install openjdk-17-jre-headless (see README)"; exit 1; }
	@command -v gcloud >/dev/null || { echo "The Google Cloud CLI is missing: see README, 'What the machine needs'"; exit 1; }
	@test -d "$$(gcloud info --format='value(installation.sdk_root)')/platform/pubsub-emulator" || { echo "gcloud's Pub/Sub emulator is missing: see README"; exit 1; }

demo: $(INSTALLED) tools
	$(BIN)/playledger demo

up: $(INSTALLED) tools
	$(BIN)/playledger up --data-dir data

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

test: lint tools
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
