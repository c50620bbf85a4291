PYTHON ?= python3

.PHONY: install test lint typecheck bench soak

install:
	$(PYTHON) -m pip install -e '.[test]'

test:
	$(PYTHON) -m pytest

# ruff and mypy come pinned with the test extra (`make install` or the README's test install).
lint:
	$(PYTHON) -m ruff check omnid client tests bench

# The client ships py.typed, so it is held to --strict; the daemon to typed definitions.
typecheck:
	$(PYTHON) -m mypy --strict client/omnid_client
	$(PYTHON) -m mypy omnid

# Latency, throughput, reaping and scale against baselines measured in the same run.
bench:
	$(PYTHON) -m pip install --quiet -e '.[bench]'
	$(PYTHON) bench/run.py --out bench-results.json

# Mixed load on a real daemon for MINUTES (default 10), sampling its RSS and fds; not part of `test`.
soak:
	$(PYTHON) bench/soak.py --minutes $(or $(MINUTES),10)
