# make bench: every benchmark side by side (benchmarks/README.md); make test: the test suite.
# Both use the virtual environment of the README's setup; PYTHON=... picks another interpreter,
# BENCH_ARGS=... passes options to benchmarks/run_all.py (--quick, --threads N).
PYTHON ?= .venv/bin/python
BENCH_ARGS ?=

.PHONY: bench bench-markdown bench-quick test python

bench: python
	$(PYTHON) benchmarks/run_all.py $(BENCH_ARGS)

bench-markdown: python
	$(PYTHON) benchmarks/run_all.py --markdown $(BENCH_ARGS)

bench-quick: python
	$(PYTHON) benchmarks/run_all.py --quick $(BENCH_ARGS)

test: python
	$(PYTHON) -m pytest -n 2 -q

python:
	@command -v $(PYTHON) >/dev/null || { \
	  echo "$(PYTHON) not found: set up first, as the README says:"; \
	  echo "  python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[all]'"; \
	  exit 1; } >&2
