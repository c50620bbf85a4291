PYTHON ?= python3

.PHONY: install test lint bench

install:
	$(PYTHON) -m pip install -e '.[test]'

test:
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check omnid client tests

# Latency, throughput, reaping and scale against baselines measured in the same run.
bench:
	$(PYTHON) -m pip install --quiet -e '.[bench]'
	$(PYTHON) bench/run.py --out bench-results.json
