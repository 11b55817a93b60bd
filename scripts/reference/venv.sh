#!/usr/bin/env bash
# Create or refresh the reference venv (~/.cache/humanlm/ref, outside the repository: torch is
# large) from scripts/reference/requirements.txt, and print its python. pip runs only when the
# requirements changed. Fixture scripts are run with that python (see each script's docstring).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${HUMANLM_REF_VENV:-$HOME/.cache/humanlm/ref}
req=scripts/reference/requirements.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if ! "$venv/bin/python" -c '' 2>/dev/null; then
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv" >&2
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
    echo "$want" >"$stamp"
fi
echo "$venv/bin/python"
