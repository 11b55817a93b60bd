"""Fixture for `humanlm export --merge`: what transformers makes of the folder we export.

`humanlm export --merge` folds the committed adapter `tests/fixtures/peft/ours` into the default
model (SmolLM2-135M-Instruct, a llama GGUF whose q/k rows the export must un-permute) and writes a
Hugging Face folder. This script exports it, loads it with transformers (float32), and records:

- `merged`: the merged folder's logits at sampled positions of a fixed id sequence (top 16,
  64 probe ids, logsumexp);
- `peft`: the same positions computed independently of the export, by transformers loading the
  GGUF with `peft` applying the adapter live; the script refuses to write the fixture unless the
  two agree (max |Δlogit| over every position and id is stored as `max_gap_merged_vs_peft`);
- `tokens`: the exported tokenizer.json as transformers encodes the strings of
  tests/fixtures/smollm2_tokenizer.json (whose `ids` are llama.cpp's), and whether it decodes
  them back;
- `chat`: a conversation rendered by transformers' apply_chat_template from the exported
  tokenizer_config.json.

tests/export.rs exports again and checks our runtime against all of it.

Run from the repository root after `cargo build --release`, with the reference venv:
    ~/.cache/humanlm/ref/bin/python scripts/reference/export_merge.py
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from _common import FIXTURES, REPO_ROOT, SMOLLM_DIR, SMOLLM_FILE, f32_list, generator, write_json

ADAPTER = os.path.join(FIXTURES, "peft", "ours")
OUT = os.path.join(FIXTURES, "export", "merge_reference.json")
# The ids of the PEFT interop fixture: a short ChatML conversation.
IDS = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 28, 1717, 359, 253, 1848, 30, 2, 198, 1, 4093, 198, 504, 8360, 314, 4470, 3575, 30]
POSITIONS = [0, 5, 13, 20, len(IDS) - 1]
PROBES = np.sort(np.random.default_rng(1).choice(49152, size=64, replace=False)).astype(int).tolist()
CHAT = [
    {"role": "system", "content": "You are HUMAN, a regular at the gym."},
    {"role": "user", "content": "Is it rude to rest on a machine between sets?"},
    {"role": "assistant", "content": "It depends on how busy it is."},
    {"role": "user", "content": "It was packed, 6 pm on a Monday."},
]


def logits(model):
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0]


def rows(out):
    """Per sampled position: top 16 ids and logits, the probe ids' logits, logsumexp."""
    rows = {}
    for p in POSITIONS:
        row = out[p]
        top = torch.topk(row, 16)
        rows[str(p)] = {
            "top_ids": top.indices.tolist(),
            "top_logits": f32_list(top.values.numpy()),
            "probe_logits": f32_list(row[PROBES].numpy()),
            "logsumexp": float(torch.logsumexp(row.double(), 0)),
        }
    return rows


def main():
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        merged_dir = os.path.join(tmp, "merged")
        subprocess.run(
            [os.path.join(REPO_ROOT, "target/release/humanlm"), "export", "--merge", "--checkpoint", ADAPTER,
             "--out", merged_dir, "--dtype", "f32"],
            check=True, cwd=REPO_ROOT,
        )
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
        merged_logits = logits(merged)
        tok = AutoTokenizer.from_pretrained(merged_dir)
        cases = json.load(open(os.path.join(FIXTURES, "smollm2_tokenizer.json")))["cases"]
        tokens = []
        for c in cases:
            ids = tok.encode(c["text"], add_special_tokens=False)
            tokens.append({"text": c["text"], "ids": ids, "decodes_back": tok.decode(ids) == c["text"]})
        chat = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
        with_special = tok("Hello")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(SMOLLM_DIR, gguf_file=SMOLLM_FILE, dtype=torch.float32).eval()
    peft_logits = logits(PeftModel.from_pretrained(base, ADAPTER).eval())
    gap = float((merged_logits - peft_logits).abs().max())
    print(f"max |merged - peft| over all logits: {gap:.3g}", file=sys.stderr)
    assert gap < 2e-3, f"the merged export disagrees with peft: {gap}"
    write_json(OUT, {
        "generator": generator(__file__, ["torch", "transformers", "peft", "tokenizers"]),
        "adapter": "tests/fixtures/peft/ours",
        "ids": IDS,
        "probe_ids": PROBES,
        "max_gap_merged_vs_peft": gap,
        "merged": rows(merged_logits),
        "peft": rows(peft_logits),
        "tokens": tokens,
        "encode_hello_with_special_tokens": with_special,
        "chat_messages": CHAT,
        "chat": chat,
    })


if __name__ == "__main__":
    main()
