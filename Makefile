PYTHON ?= python3

.PHONY: install test lint

install:
	$(PYTHON) -m pip install -e '.[test]'

test:
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check omnid client tests
