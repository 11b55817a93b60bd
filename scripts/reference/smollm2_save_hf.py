"""Save the default model as a Hugging Face folder with transformers' save_pretrained.

transformers loads the GGUF (dequantised to float32) and writes config.json, model.safetensors,
the tokenizer files and generation_config.json: a real HF checkpoint written by another tool. It
is ~540 MB, so it is not committed; `tests/reference_logits.rs` checks it against
tests/fixtures/smollm2_logits.json when HUMANLM_SMOLLM2_HF points at it.

Run from the repository root:
    ~/.cache/humanlm/ref/bin/python scripts/reference/smollm2_save_hf.py ~/.cache/humanlm/smollm2-hf
    HUMANLM_SMOLLM2_HF=~/.cache/humanlm/smollm2-hf cargo test --release --test reference_logits
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from _common import SMOLLM_DIR, SMOLLM_FILE


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: smollm2_save_hf.py OUT_DIR")
    out = sys.argv[1]
    torch.set_num_threads(2)
    loaded = AutoModelForCausalLM.from_pretrained(SMOLLM_DIR, gguf_file=SMOLLM_FILE, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(SMOLLM_DIR, gguf_file=SMOLLM_FILE)
    # transformers refuses to serialise a model it marked as GGUF-quantised; the same weights in
    # a model built from the same config save normally.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
