PYTHON ?= python3

.PHONY: install test lint soak

install:
	$(PYTHON) -m pip install -e '.[test]'

test:
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check omnid client tests bench

# Mixed load on a real daemon for MINUTES (default 10), sampling its RSS and fds; not part of `test`.
soak:
	$(PYTHON) bench/soak.py --minutes $(or $(MINUTES),10)
