# Two commands for a fresh machine (see README): `make demo` and `make test`.
# torch is installed first and pinned, so nothing later pulls a multi-GB CUDA build.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: install demo test test-slow clean postgres browser

# The PostgreSQL tests start a throwaway server from Debian's binaries; installed where missing
# (apt-get: root, as in CI). Without them those tests skip and say why.
PG_INITDB := $(wildcard /usr/lib/postgresql/*/bin/initdb)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/recsys quickstart

test: install postgres
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

# The explorer's browser tests (tests/test_ui_browser.py) drive Debian's headless Chromium
# through its chromedriver: installed here when missing (as root, or with sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test: browser
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; }

test-slow: install postgres
	$(VENV)/bin/pytest -m slow

postgres:
ifeq ($(PG_INITDB),)
	$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql
endif

clean:
	rm -rf $(VENV) demo-run .pytest_cache
