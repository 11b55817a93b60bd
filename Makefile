# The two set-up commands of the README: `make run` and `make test`.
.PHONY: run test fetch build bench

fetch:
	./scripts/fetch-checkpoints.sh

build:
	cargo build --release

# Starts the workbench on the embedded default checkpoint.
run: fetch build
	./target/release/humanlm

# Every test, formatting and lints. Tests run in the release profile: they drive the real default
# model, and one optimised build serves `make run`, the tests and the benchmarks.
test: fetch
	./scripts/test-venv.sh >/dev/null
	command -v tmux >/dev/null || ./scripts/install-test-tools.sh
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings
	cargo test --release

# Speed against llama.cpp (needs the llama-cpp-python venv; see README, "Speed").
bench: build
	$(LLAMACPP_PYTHON) scripts/bench_vs_llamacpp.py
LLAMACPP_PYTHON ?= $(HOME)/.cache/humanlm/llamacpp/bin/python
