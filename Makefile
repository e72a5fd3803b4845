# `make run` starts the portal on its embedded default; `make test` installs
# what the tests need and runs the whole suite.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint system-packages bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/flask --app portal init
	$(BIN)/flask --app portal serve --host 127.0.0.1 --port 5000

system-packages:
	bash tests/system-packages.sh

test: $(STAMP) system-packages
	$(BIN)/ruff check portal tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check portal tests bench
	$(BIN)/ruff format --check portal tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
