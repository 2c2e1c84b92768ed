# Yijian Hub — developer entry points.
# Needs only python3 (>= 3.11); everything else is installed into .venv.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv assets chromium demo test bench lint format clean

help:
	@echo "make venv    create $(VENV) and install the project with dev extras"
	@echo "make assets  npm ci + copy the browser libraries to hub/web/static/vendor (needs npm)"
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

# Browser libraries (cornerstone, hammer, htmx) from the npm registry, pinned by
# hub/web/package-lock.json, copied to hub/web/static/vendor/ (gitignored). The manifest the
# copy writes is the stamp: npm runs again only when the lock file or the copy script changes.
WEB     := hub/web
ASSETS  := $(WEB)/static/vendor/manifest.json

assets: $(ASSETS)

$(ASSETS): $(WEB)/package-lock.json $(WEB)/package.json $(WEB)/build_assets.mjs
	@if ! { command -v npm && command -v node; } >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian nodejs and npm to build the web assets"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends nodejs npm; } >/dev/null 2>&1 || true; \
	fi
	@command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1 || { \
	  echo "error: npm and node are needed to build the web assets (the DICOM viewer, htmx);" \
	       "install Node.js >= 18 with npm (Debian: apt-get install nodejs npm)" >&2; \
	  exit 1; }
	npm ci --prefix $(WEB) --no-audit --no-fund
	node $(WEB)/build_assets.mjs

# Debian's Chromium (and a CJK font for readable screenshots) for the Playwright browser tests;
# Playwright's own browser download is never used. Without it the browser tests are skipped.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian chromium for the browser tests"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends chromium fonts-wqy-microhei; } >/dev/null 2>&1 \
	  || echo "warning: 'apt-get install chromium' failed (not root?): browser tests are" \
	          "skipped; install it with: sudo apt-get install chromium" >&2; \
	else \
	  echo "warning: /usr/bin/chromium is missing and there is no apt-get: browser tests are" \
	       "skipped" >&2; \
	fi

demo: $(STAMP) $(ASSETS)
	$(VENV)/bin/yijian demo

test: $(STAMP) $(ASSETS) chromium
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
	rm -rf $(WEB)/node_modules $(WEB)/static/vendor test-artifacts
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
