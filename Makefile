PYTHON ?= python3

.PHONY: install test lint typecheck bench soak mutate

install:
	$(PYTHON) -m pip install -e ./client -e '.[test]'

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
	$(PYTHON) -m pip install --quiet -e ./client -e '.[bench]'
	$(PYTHON) bench/run.py --out bench-results.json

# Mixed load on a real daemon for MINUTES (default 10), sampling its RSS and fds; not part of `test`.
soak:
	$(PYTHON) bench/soak.py --minutes $(or $(MINUTES),10)

# Mutation testing of the core promises (modules and tests: [tool.mutmut] in pyproject.toml);
# fails below a 90% kill rate. Up to half an hour on 2 cores; not part of `test`.
mutate:
	$(PYTHON) -m pip install --quiet -e ./client -e '.[test,mutate]'
	$(PYTHON) bench/mutate.py
