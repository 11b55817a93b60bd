#!/usr/bin/env bash
# Create or refresh the Python venv the Rust tests use (.venv-test/, git-ignored) and print its
# python. Idempotent: pip runs only when scripts/tests/requirements.txt (or the interpreter)
# changed since the last successful install. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-test
req=scripts/tests/requirements.txt
python=${PYTHON:-python3}
stamp=$venv/.requirements.sha256

want=$( { cat "$req"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)

# A venv whose interpreter no longer runs (moved, or its base Python removed) is rebuilt.
if ! "$venv/bin/python" -c '' 2>/dev/null; then
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
    echo "$want" >"$stamp"
fi
echo "$PWD/$venv/bin/python"
