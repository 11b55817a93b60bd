#!/usr/bin/env bash
# System tools the tests drive for real: tmux (the TUI's end-to-end test runs the workbench in a
# real terminal). Installed from Debian's packages when missing.
set -euo pipefail
if command -v tmux >/dev/null; then exit 0; fi
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
echo "installing tmux (apt-get)" >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq tmux >&2
command -v tmux >/dev/null || { echo "scripts/install-test-tools.sh: tmux could not be installed" >&2; exit 1; }
