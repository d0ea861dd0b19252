# `make demo` and `make test` work on a fresh clone: each builds .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast test-matrix install

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitc demo

# Two workers on a 2-core machine (the suite alone keeps ~1.1 cores busy), each test file on one of
# them so its module fixtures are made once; tests/conftest.py says how they share the machine.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -m "not matrix" tests

# The 13 lifecycle-matrix cells `make test` leaves out (stage x precision x optimizer, docs/engine.md): ~20 min on 2 cores.
test-matrix: $(STAMP)
	$(PY) -m pytest -n 2 -m matrix tests/test_lifecycle.py

# What a change usually needs, in under 3 minutes here: every test not marked `slow` (over ~5 s of CPU).
# pytest's exit code 5 (no test collected) fails make like any other.
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -m "not slow" tests
