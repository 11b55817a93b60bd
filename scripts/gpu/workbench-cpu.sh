#!/usr/bin/env bash
# The CPU side of run.sh's workbench pass: the same eval and GRPO commands on this machine's
# CPU, wall-timed, appended as JSON lines to benches/results/workbench-cpu.jsonl beside the GPU
# run's (2026-12-04 on 2 AMD EPYC cores: the eval 108 s; the GRPO pass stopped by hand at 400 s
# after 14 of its 20 steps). Needs the release build (cargo build --release) and the default checkpoint.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release/humanlm
GGUF=checkpoints/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
OUTD=$(mktemp -d)
trap 'rm -rf "$OUTD"' EXIT
RES=benches/results/workbench-cpu.jsonl
wall() { local name=$1; shift; local t0; t0=$(date +%s.%N)
  local r=0; "$@" > "$OUTD/$name.out" 2> "$OUTD/$name.log" || r=$?
  echo "{\"name\": \"$name\", \"rc\": $r, \"seconds\": $(python3 -c "print(round($(date +%s.%N) - $t0, 2))"), \"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\", \"threads\": $(nproc)}" | tee -a "$RES"; }
wall eval-cpu "$BIN" eval --checkpoint "$GGUF" --scenarios scenarios --mode response \
  --judge prompts/judges/rouge-l.toml --device cpu --out "$OUTD/eval-cpu" --json
wall grpo-cpu "$BIN" train grpo --checkpoint "$GGUF" --scenarios scenarios \
  --out "$OUTD/grpo-cpu" --steps 20 --batch 2 --reward contains:human:32 --max-new-tokens 32 --device cpu
