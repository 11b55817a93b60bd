"""PEFT interoperability fixtures: an adapter our trainer saved, run by Python `peft`; and an
adapter `peft` saved, for our loader. Both with the logits PyTorch computes.

1. `tests/fixtures/peft/ours/`: `humanlm train sft` (LoRA r=2 on q_proj and v_proj, 3 steps on two
   shipped scenarios) writes a PEFT-layout adapter; peft loads it onto the default model
   (float32, dequantised from the GGUF by transformers) and `ours_reference.json` holds its
   logits at sampled positions of a fixed id sequence (top 32, 256 probe ids, logsumexp).
2. `tests/fixtures/peft/theirs/`: peft builds a LoRA (r=2 on q, k, o and down projections, B randomised
   so the adapter changes the outputs) and `save_pretrained`s it; `theirs_reference.json` holds
   the adapted model's logits on the same ids.

Run from the repository root after `cargo build --release`, with the reference venv:
    ~/.cache/humanlm/ref/bin/python scripts/reference/peft_interop.py
"""

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from _common import FIXTURES, REPO_ROOT, SMOLLM_DIR, SMOLLM_FILE, f32_list, generator, write_json

OUT = os.path.join(FIXTURES, "peft")
IDS = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 28, 1717, 359, 253, 1848, 30, 2, 198, 1, 4093, 198, 504, 8360, 314, 4470, 3575, 30]
POSITIONS = [0, 5, 13, 20, len(IDS) - 1]


def base():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(SMOLLM_DIR, gguf_file=SMOLLM_FILE, dtype=torch.float32).eval()


PROBES = np.sort(np.random.default_rng(0).choice(49152, size=256, replace=False)).astype(int).tolist()


def logits_at(model):
    """Per sampled position: the top 32 logits, 256 fixed probe ids' logits, and logsumexp."""
    with torch.no_grad():
        out = model(torch.tensor([IDS])).logits[0]
    rows = {}
    for p in POSITIONS:
        row = out[p]
        top = torch.topk(row, 32)
        rows[str(p)] = {
            "top_ids": top.indices.tolist(),
            "top_logits": f32_list(top.values.numpy()),
            "probe_logits": f32_list(row[PROBES].numpy()),
            "logsumexp": float(torch.logsumexp(row.double(), 0)),
        }
    return rows


def ours():
    dest = os.path.join(OUT, "ours")
    with tempfile.TemporaryDirectory() as tmp:
        scen = os.path.join(tmp, "scenarios")
        os.makedirs(scen)
        for rel in ["scenarios/opinion/opinion-gym-etiquette-06.toml", "scenarios/chat/chat-monstera-05.toml"]:
            shutil.copy(os.path.join(REPO_ROOT, rel), scen)
        run = os.path.join(tmp, "adapter")
        subprocess.run(
            [os.path.join(REPO_ROOT, "target/release/humanlm"), "train", "sft", "--checkpoint", "smollm2-135m-instruct",
             "--scenarios", scen, "--out", run, "--rank", "2", "--alpha", "4", "--targets", "q_proj,v_proj",
             "--steps", "3", "--lr", "0.01", "--warmup", "1"],
            check=True, cwd=REPO_ROOT,
        )
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        for f in ["adapter_config.json", "adapter_model.safetensors"]:
            shutil.copy(os.path.join(run, f), dest)
    model = PeftModel.from_pretrained(base(), dest).eval()
    return logits_at(model)


def theirs():
    dest = os.path.join(OUT, "theirs")
    cfg = LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "k_proj", "o_proj", "down_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(base(), cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    shutil.rmtree(dest, ignore_errors=True)
    model.save_pretrained(dest)
    # peft also writes a README; the test needs only the adapter.
    for f in os.listdir(dest):
        if f not in ("adapter_config.json", "adapter_model.safetensors"):
            os.remove(os.path.join(dest, f))
    return logits_at(model.eval())


def main():
    torch.set_num_threads(2)
    for name, fn in [("ours", ours), ("theirs", theirs)]:
        logits = fn()
        write_json(os.path.join(OUT, f"{name}_reference.json"), {
            "generator": generator(__file__, ["torch", "transformers", "peft"]),
            "ids": IDS,
            "probe_ids": PROBES,
            "positions": logits,
        })
        print(f"wrote {name}", file=sys.stderr)


if __name__ == "__main__":
    main()
