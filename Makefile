# Every command a developer or CI needs. `make run` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
CONFIG ?=
SIM_PORT ?= 9000
DEMO_PORT ?= 8080
DEMO_ADMIN_PORT ?= 9464
DEMO_IDP_PORT ?= 9443

# The lock: every dependency pinned with its hashes, compiled from pyproject.toml by `make lock`
# for CPython 3.11 on Linux x86_64. runtime.txt is what the image ships, dev.txt adds the dev
# extra (the same pins), build.txt is the build backend. The installers are pinned here.
LOCK := requirements
PIP_VERSION := 26.3
UV_VERSION := 0.13.8
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-unknown-linux-gnu
# UPGRADE=1 takes the newest release of everything pyproject.toml allows, UPGRADE=NAME of one package.
UPGRADE ?=
LOCK_FLAGS := --quiet --generate-hashes --custom-compile-command "make lock" $(LOCK_TARGET) \
	$(if $(filter 1,$(UPGRADE)),--upgrade,$(if $(UPGRADE),--upgrade-package $(UPGRADE)))

.PHONY: help run test lint types unit system-tools demo bench fuzz soak clean lock

help:
	@echo "make run    - create .venv, install from the lock, start the proxy on its embedded defaults"
	@echo "make test   - install the test needs from the lock, then lint, types and the whole suite"
	@echo "make demo   - the simulator, its identity provider, the proxy minting a demo app's token; curl lines"
	@echo "make bench  - benchmarks that print figures"
	@echo "make lock   - (maintainers) compile requirements/*.txt from pyproject.toml; UPGRADE=1 or UPGRADE=NAME"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==$(PIP_VERSION)

# Dependencies come from the lock only, their hashes checked; the project itself is installed
# editable on top, built by the locked setuptools (no build isolation, so nothing unpinned).
$(VENV)/.installed: $(LOCK)/runtime.txt $(LOCK)/build.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)/build.txt -r $(LOCK)/runtime.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(STAMP): $(LOCK)/dev.txt $(LOCK)/build.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)/build.txt -r $(LOCK)/dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(VENV)/.installed $@

# For maintainers, after a change to the dependencies in pyproject.toml (it needs PyPI). Pins
# already in the files are kept unless UPGRADE says otherwise; dev.txt is resolved first and the
# runtime and build sets are held to its pins, so the tests run on exactly what the image ships.
lock: | $(BIN)/python
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile $(LOCK_FLAGS) pyproject.toml --extra dev -o $(LOCK)/dev.txt
	$(BIN)/uv pip compile $(LOCK_FLAGS) pyproject.toml -c $(LOCK)/dev.txt -o $(LOCK)/runtime.txt
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(BIN)/uv pip compile $(LOCK_FLAGS) - -c $(LOCK)/dev.txt -o $(LOCK)/build.txt

run: $(VENV)/.installed
	$(BIN)/defender-proxy run $(if $(CONFIG),--config $(CONFIG))

# System tools the suite uses for real: promtool (Debian package prometheus), redis-server,
# curl (a client of the HTTPS proxy port) and jemalloc (libjemalloc2, the allocator `run` starts
# on where it is found: proxy/allocator.py).
system-tools:
	@missing=(); \
	command -v promtool >/dev/null || missing+=(prometheus); \
	command -v redis-server >/dev/null || missing+=(redis-server); \
	command -v curl >/dev/null || missing+=(curl); \
	command -v openssl >/dev/null || missing+=(openssl); \
	compgen -G '/usr/lib/*/libjemalloc.so.2' >/dev/null || [ -e /usr/lib/libjemalloc.so.2 ] \
	  || [ -e /usr/lib64/libjemalloc.so.2 ] || missing+=(libjemalloc2); \
	if [ $${#missing[@]} -gt 0 ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $${missing[*]}"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $${missing[@]} >/dev/null; \
	  else \
	    echo "the tests need these Debian packages: $${missing[*]} (apt-get install $${missing[*]})" >&2; exit 1; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check proxy tests bench fuzz
	$(BIN)/ruff format --check proxy tests bench fuzz

types: $(STAMP)
	$(BIN)/mypy

# pytest's own exit code stands: 5 (no tests collected) fails the target like any failure.
unit: $(STAMP) system-tools
	$(BIN)/python -m coverage run -m pytest -q
	$(BIN)/python -m coverage report

test: lint types unit

demo: $(VENV)/.installed
	@bash deploy/demo.sh $(SIM_PORT) $(DEMO_PORT) $(DEMO_ADMIN_PORT) $(DEMO_IDP_PORT)

# Benchmarks use wrk for saturation figures (Debian package wrk) and nginx as the reference
# proxy (Debian package nginx-light; nginx is in /usr/sbin); both installed here when root.
bench: $(STAMP) system-tools
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq wrk >/dev/null; } \
	  || { echo "bench needs wrk: apt-get install wrk" >&2; exit 1; }
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; } \
	  || { echo "bench needs nginx: apt-get install nginx-light" >&2; exit 1; }
	$(BIN)/python -m bench.first
	$(BIN)/python -m bench.waiting
	$(BIN)/python -m bench.quota
	$(BIN)/python -m bench.quota_identities
	$(BIN)/python -m bench.redis_client
	$(BIN)/python -m bench.overhead
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.listen_tls
	$(BIN)/python -m bench.tracing
	$(BIN)/python -m bench.stalled
	$(BIN)/python -m bench.slowloris
	$(BIN)/python -m bench.routing
	$(BIN)/python -m bench.scrub
	$(BIN)/python -m bench.batch
	$(BIN)/python -m bench.links
	$(BIN)/python -m bench.body_keys
	$(BIN)/python -m bench.reload
	$(BIN)/python -m bench.credentials
	$(BIN)/python -m bench.goodput

# Ten minutes of steady mixed load with Redis restarted twice: RSS, fds and proxy-made 5xx.
soak: $(STAMP)
	$(BIN)/python -m bench.soak

# The long fuzz run: the hypothesis properties of tests/unit/test_fuzz.py with the classifier and
# the guard at 100,000 cases each, and the differential framing property of
# tests/functional/test_framing_diff.py at 50,000 (fuzz/run.py prints cases, times and cases/s).
# `make test` runs the same properties at 300 examples each (framing: 200).
fuzz: $(STAMP)
	$(BIN)/python -m fuzz.run

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis

# The container image, with docker when an engine answers, else podman.
# Where the official base cannot be pulled, build on the debootstrapped stand-in:
#   make image PYTHON_IMAGE=localhost/debian-python:bookworm BUILD_ARGS="--pull=never --network host"
IMAGE ?= defender-proxy:dev
PYTHON_IMAGE ?=
BUILD_ARGS ?=

.PHONY: image
image:
	@if docker info >/dev/null 2>&1; then engine=docker; \
	elif command -v podman >/dev/null; then engine=podman; \
	else echo "make image needs docker (with a running engine) or podman" >&2; exit 1; fi; \
	set -x; $$engine build --tag $(IMAGE) $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) $(BUILD_ARGS) .
