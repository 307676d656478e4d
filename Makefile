# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine
# with only Python 3.11: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OPENBLAS_NUM_THREADS := 1

.PHONY: demo test lint unit install redis-server stubs clean bench

$(STAMP): pyproject.toml setup.py $(wildcard protos/recsvc/v1/*.proto)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

stubs: $(STAMP)
	$(PY) setup.py -q build_stubs

demo: $(STAMP)
	$(VENV)/bin/recsvc demo

# Redis is needed by the store and serving tests: install it with apt when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

lint: $(STAMP)
	$(VENV)/bin/ruff check recsvc training serving tests benchmarks
	$(VENV)/bin/mypy recsvc

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: $(STAMP) redis-server lint unit

clean:
	rm -rf $(VENV) build *.egg-info recsvc/v1/*_pb2*.py
