# Yijian Hub — developer entry points.
# Needs only python3 (>= 3.11); everything else is installed into .venv.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv demo test bench lint format clean

help:
	@echo "make venv    create $(VENV) and install the project with dev extras"
	@echo "make demo    run 'yijian demo' (embedded database, API, MLLP listener, worker)"
	@echo "make test    run the test suite (PYTEST_ARGS='-k foo -x' to pass options)"
	@echo "make bench   run every benchmark module under bench/"
	@echo "make lint    ruff check + ruff format --check"
	@echo "make format  ruff format + ruff check --fix"
	@echo "make clean   remove $(VENV), caches and build output"

venv: $(STAMP)

# Reinstalls whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "error: '$(PYTHON)' is missing or older than Python 3.11;" \
	       "install Python >= 3.11 or run e.g. 'make PYTHON=python3.11 $(MAKECMDGOALS)'" >&2; \
	  exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/yijian demo

test: $(STAMP)
	$(VPY) -m pytest $(PYTEST_ARGS)

# Every bench/*.py except __init__.py and private _*.py modules, run as bench.<name>.
bench: $(STAMP)
	@set -e; for f in bench/*.py; do \
	  [ -e "$$f" ] || continue; \
	  name=$$(basename "$$f" .py); \
	  case "$$name" in _*) continue ;; esac; \
	  echo "==> python -m bench.$$name"; \
	  $(VPY) -m bench.$$name; \
	done

lint: $(STAMP)
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .
	$(VPY) -m mypy

format: $(STAMP)
	$(VPY) -m ruff format .
	$(VPY) -m ruff check --fix .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
