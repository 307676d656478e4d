# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine
# with only Python 3.11: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CORE := $(VENV)/.installed-core
STAMP := $(VENV)/.installed-test
SOURCES := pyproject.toml setup.py $(wildcard protos/recsvc/v1/*.proto)
export OPENBLAS_NUM_THREADS := 1

.PHONY: demo test lint unit install redis-server java-runtime stubs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The demo needs the core only; the tests add the test and spark extras.
$(CORE): $(SOURCES) | $(PY)
	$(PY) -m pip install -q -e .
	touch $(CORE)

$(STAMP): $(SOURCES) | $(PY)
	$(PY) -m pip install -q -e '.[test,spark]'
	touch $(CORE) $(STAMP)

install: $(STAMP)

stubs: $(CORE)
	$(PY) setup.py -q build_stubs

demo: $(CORE)
	$(VENV)/bin/recsvc demo

# Redis is needed by the store and serving tests: install it with apt when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# The Spark engine's tests need Java 17 or newer (pyspark 4): install it with apt when missing
# or older. Spark MLlib's ALS also wants a native BLAS (netlib loads libblas.so.3, which
# OpenBLAS provides); without one it falls back to Java BLAS, slower, and the training
# benchmark's Spark comparison would not be fair.
java-runtime:
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1); \
	if [ -z "$$v" ] || [ "$$v" -lt 17 ]; then \
	  echo "installing a Java 17 runtime with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; \
	fi
	@ldconfig -p | grep -q 'libblas\.so\.3 ' || { \
	  echo "installing OpenBLAS (libblas.so.3 for Spark MLlib) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null; }

lint: $(STAMP)
	$(VENV)/bin/ruff check recsvc training serving tests benchmarks
	$(VENV)/bin/mypy recsvc training serving

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: $(STAMP) redis-server java-runtime lint unit

clean:
	rm -rf $(VENV) build *.egg-info recsvc/v1/*_pb2*.py
