# The two set-up commands of the README: `make run` and `make test`.
.PHONY: run test deps fetch build bench

fetch:
	./scripts/fetch-checkpoints.sh

build:
	cargo build --release

# Starts the workbench on the embedded default checkpoint.
run: fetch build
	./target/release/humanlm

# What the tests need beyond cargo (checkpoints, the test venv, tmux, cargo-nextest), installed
# only when missing; scripts/deps.sh says what it installs.
deps:
	./scripts/deps.sh

# Every test, formatting and lints. Tests run in the release profile: they drive the real default
# model, and one optimised build serves `make run`, the tests and the benchmarks. nextest runs each
# test in its own process with its time, the 60 s budget and the test groups of
# .config/nextest.toml (tests/README.md); the log ends with the ten slowest tests.
test: deps
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings
	cargo nextest run --release --profile ci; status=$$?; ./scripts/slowest-tests.py; exit $$status

# Speed against llama.cpp (needs the llama-cpp-python venv; see README, "Speed").
bench: build
	$(LLAMACPP_PYTHON) scripts/bench_vs_llamacpp.py
LLAMACPP_PYTHON ?= $(HOME)/.cache/humanlm/llamacpp/bin/python
