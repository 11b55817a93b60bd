#!/usr/bin/env bash
# What runs on the GPU machine (from the root of the copied tree; nothing is built there).
#
#   scripts/gpu/run.sh stage            unpack the bundle parts that came with this call
#   scripts/gpu/run.sh                  unpack, then run `humanlm gpu-check` on cuda at the real
#                                       sizes (bf16; Qwen3-0.6B and 8B; prompt 512; batches 1
#                                       and 8; 128 decoded tokens; training 4 x 512)
#                                       then the PyTorch anchor (scripts/gpu/anchors_torch.py) and
#                                       the workbench on cuda (eval, 20 GRPO steps), wall-timed
#   scripts/gpu/run.sh GPU-CHECK ARGS   gpu-check alone with these arguments instead of those
#                                       sizes (e.g. --device cpu --shapes tiny-qwen3 ... for a dry run)
#
# The bundle (scripts/gpu/build.sh) travels in two calls, because a call carries at most 64 MiB:
#   call 1: carry gpu-bundle/a (first slice of the default GGUF), command `scripts/gpu/run.sh stage`
#   call 2: carry gpu-bundle/b (the binary, the rest of the GGUF), command `scripts/gpu/run.sh`
# Parts are kept in $HUMANLM_GPU_DIR (default /tmp/humanlm-gpu), outside the tree, so they
# survive between calls while the machine stays warm. If part a was lost (the machine went back
# between the calls), the default-model parity check is skipped and the summary says so; every
# other check still runs.
#
# Writes $OUT/gpu-check.json, $OUT/anchors-torch.json, $OUT/workbench.jsonl (with each pass's
# output beside it), (rewritten after every stage, so a run cut short keeps what it
# measured), $OUT/gpu-check.log (progress and errors) and $OUT/nvidia-smi.txt; without $OUT,
# the same files go to ./gpu-check-out/.
set -uo pipefail
cd "$(dirname "$0")/../.."
STAGE="${HUMANLM_GPU_DIR:-/tmp/humanlm-gpu}"
DEST="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$STAGE" "$DEST"
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/lib64:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# 1. Take the parts this call carried, each checked against its manifest.
for part in gpu-bundle/a gpu-bundle/b; do
  [ -f "$part/manifest.sha256" ] || continue
  if ! (cd "$part" && sha256sum -c --quiet manifest.sha256); then
    echo "run.sh: $part: checksum mismatch (rebuild with scripts/gpu/build.sh)" >&2; exit 2
  fi
  for f in "$part"/*; do
    case "$(basename "$f")" in manifest.sha256) ;; *) cp "$f" "$STAGE/" ;; esac
  done
  echo "run.sh: staged $part: $(cd "$part" && ls | grep -v manifest | tr '\n' ' ')"
done
if [ -f "$STAGE/humanlm.xz" ] && [ ! -x "$STAGE/humanlm" ]; then
  if command -v xz >/dev/null; then xz -dc "$STAGE/humanlm.xz" > "$STAGE/humanlm.tmp"
  else python3 -c 'import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' "$STAGE/humanlm.xz" "$STAGE/humanlm.tmp"
  fi && chmod +x "$STAGE/humanlm.tmp" && mv "$STAGE/humanlm.tmp" "$STAGE/humanlm"
fi
if [ -f "$STAGE/model.gguf.part1" ] && [ -f "$STAGE/model.gguf.part2" ] && [ ! -f "$STAGE/model.gguf" ]; then
  cat "$STAGE/model.gguf.part1" "$STAGE/model.gguf.part2" > "$STAGE/model.gguf.tmp"
  if (cd "$STAGE" && sed 's/model.gguf$/model.gguf.tmp/' model.sha256 | sha256sum -c --quiet); then
    mv "$STAGE/model.gguf.tmp" "$STAGE/model.gguf"
  else
    echo "run.sh: the reassembled checkpoint does not match its checksum; skipping it" >&2
    rm -f "$STAGE/model.gguf.tmp"
  fi
fi
if [ "${1:-}" = stage ]; then
  ls -l "$STAGE"; exit 0
fi

# 2. The check.
[ -x "$STAGE/humanlm" ] || { echo "run.sh: $STAGE/humanlm: missing (carry gpu-bundle/b)" >&2; exit 2; }
SMI="$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -1)"
nvidia-smi > "$DEST/nvidia-smi.txt" 2>&1 || true
if [ -f "$STAGE/model.gguf" ]; then
  MODEL=(--checkpoint "$STAGE/model.gguf")
  NOTE="default checkpoint reassembled from parts a and b"
else
  MODEL=(--no-default-model)
  NOTE="default checkpoint not on this machine (part a was not staged before this call)"
fi
SIZES=(--device cuda --dtype bf16 --shapes qwen3-0.6b,qwen3-8b --prompt 512 --batches 1,8
       --decode 128 --train-batch 4x512)
[ $# -gt 0 ] && SIZES=("$@")
set -x
timeout "${CHECK_TIMEOUT:-240}" "$STAGE/humanlm" gpu-check "${SIZES[@]}" "${MODEL[@]}" --out "$DEST/gpu-check.json" \
  --meta "nvidia_smi=$SMI" --meta "host_cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
  --meta "bundle=$NOTE" --meta "runner=scripts/gpu/run.sh $*" \
  > /dev/null 2> >(tee "$DEST/gpu-check.log" >&2)
rc=$?
set +x
# The summary on stdout is the same as the file; print a digest of it instead.
python3 - "$DEST/gpu-check.json" <<'PY' || true
import json, sys
d = json.load(open(sys.argv[1]))
print("card:", d.get("card"), "| candle", d.get("candle_version"), "| dtype", d.get("dtype"))
for k, p in d.get("parity", {}).items():
    print(f"parity {k}:", p.get("skipped") or p.get("error") or
          f"pass={p.get('pass')} rel={p.get('rel_diff'):.4f} top1 {p.get('top1_agree')}/{p.get('positions')}")
for shape, t in d.get("throughput", {}).items():
    inf = t.get("inference", {})
    parts = [f"{kind} b{r['batch']} {r['tok_per_s']:.0f}" for kind in ("prefill", "decode") for r in inf.get(kind, [])]
    tr = t.get("train", {})
    parts.append(f"train {tr['tok_per_s']:.0f}" if "tok_per_s" in tr else f"train: {tr.get('error')}")
    print(f"{shape}:", t.get("error") or inf.get("error") or ", ".join(parts), "tok/s")
for x in d.get("targets", []):
    print("target", x["shape"], x["metric"], ">=", x["target_tok_per_s"], "measured", x["measured_tok_per_s"], "met", x["met"])
PY
echo "run.sh: gpu-check exited with $rc; summary in $DEST/gpu-check.json"
# A dry run with explicit sizes stops here; the real run goes on to the anchors and a pass of
# the workbench itself.
[ $# -gt 0 ] && exit $rc

# 3. The PyTorch anchor on the same card and shapes (transformers eager + PEFT, installed there).
timeout "${ANCHOR_TIMEOUT:-150}" env PYTHONUNBUFFERED=1 python3 scripts/gpu/anchors_torch.py \
  --out "$DEST/anchors-torch.json" 2> >(tee "$DEST/anchors-torch.log" >&2)
echo "run.sh: PyTorch anchor exited with $?"

# 4. The workbench on the GPU: an eval over the shipped scenarios (one reply each, ROUGE-L, which
#    needs no embedding model on this machine) and 20 GRPO steps, each timed by the wall clock;
#    the same commands on the CPU are timed by scripts/gpu/workbench-cpu.sh.
if [ -f "$STAGE/model.gguf" ]; then
  wall() { local name=$1 lim=$2; shift 2; local t0; t0=$(date +%s.%N)
    timeout "$lim" "$@" > "$DEST/$name.out" 2> "$DEST/$name.log"; local r=$?
    echo "{\"name\": \"$name\", \"rc\": $r, \"seconds\": $(python3 -c "print(round($(date +%s.%N) - $t0, 2))")}" >> "$DEST/workbench.jsonl"
    echo "run.sh: $name exited with $r"; }
  wall eval-cuda 70 "$STAGE/humanlm" eval --checkpoint "$STAGE/model.gguf" --scenarios scenarios \
    --mode response --judge prompts/judges/rouge-l.toml --device cuda --out "$DEST/eval-cuda" --json
  wall grpo-cuda 80 "$STAGE/humanlm" train grpo --checkpoint "$STAGE/model.gguf" --scenarios scenarios \
    --out "$DEST/grpo-cuda" --steps 20 --batch 2 --reward contains:human:32 --max-new-tokens 32 --device cuda
  rm -f "$DEST"/grpo-cuda/*.safetensors "$DEST"/grpo-cuda/checkpoint-*/*.safetensors
fi
exit $rc
