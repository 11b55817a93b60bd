"""llama.cpp's own Q8_0 and Q4_0 of the default model, for the quantize-on-load tests.

`llama_model_quantize` (what `llama-quantize` runs) re-quantizes the default GGUF (Q4_1) to Q8_0
and Q4_0 with `pure` (every matrix the one type, as `humanlm --quantize` does) and
`allow_requantize` (it dequantizes Q4_1 to f32 first, as `humanlm export --dtype f32` does). For
each type this records:

  blocks: the SHA-256 of the quantized bytes of a few matrices (those llama.cpp stores in HF row
          order: the embedding, attn_v, attn_output, ffn_gate, ffn_up, ffn_down of the first and
          last layers; q/k rows are permuted in a GGUF), so the test can check that quantizing
          the exported f32 folder gives llama.cpp's bytes;
  greedy: for three chat prompts, llama.cpp's greedy continuation (24 tokens, EOS ignored) with
          each step's top-2 margin, so the test can teacher-force the same tokens through
          `--quantize` and compare argmaxes wherever llama.cpp's choice is clear.

Writes tests/fixtures/quantize/llamacpp_requantized.json. Run from the repository root with the
benchmark venv (llama-cpp-python, gguf, numpy; see scripts/bench_quantize_load.py):

    ~/.cache/humanlm/llamacpp/bin/python scripts/reference/llamacpp_requantized.py
"""

import hashlib
import json
import os
import tempfile
from importlib import metadata

import numpy as np

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GGUF = os.path.join(REPO_ROOT, "checkpoints", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(REPO_ROOT, "tests", "fixtures", "quantize", "llamacpp_requantized.json")
STEPS = 24

PROMPTS = [
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nMy landlord kept my whole deposit for a scratch on the floor. What should I do?"
    "<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite two sentences about the sea.<|im_end|>\n<|im_start|>assistant\nThe sea",
]

# GGUF names of the matrices hashed (rows in the same order as the HF tensor).
HASHED = ["token_embd.weight"] + [
    f"blk.{i}.{m}.weight" for i in (0, 29) for m in ("attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
]


def quantize(kind, out_path):
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}[kind]
    params.pure = True
    params.allow_requantize = True
    params.nthread = 2
    if llama_cpp.llama_model_quantize(GGUF.encode(), out_path.encode(), params) != 0:
        raise SystemExit(f"llama_model_quantize {kind} failed")


def block_hashes(path):
    from gguf import GGUFReader

    r = GGUFReader(path)
    out = {}
    for t in r.tensors:
        if t.name in HASHED:
            out[t.name] = {"type": t.tensor_type.name, "sha256": hashlib.sha256(bytes(t.data)).hexdigest()}
    assert len(out) == len(HASHED), sorted(out)
    return out


def greedy(path):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_threads=2, n_threads_batch=2, n_ctx=1024, n_batch=512,
                          logits_all=True, verbose=False)
    runs = []
    for text in PROMPTS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        tokens, margins = [], []
        for step in range(STEPS):
            row = np.asarray(llm.scores[len(ids) + step - 1], dtype=np.float64)
            top2 = np.argsort(row)[-2:]
            nxt = int(top2[1])
            tokens.append(nxt)
            margins.append(round(float(row[top2[1]] - row[top2[0]]), 4))
            llm.eval([nxt])
        runs.append({"text": text, "input_ids": ids, "greedy": tokens, "margins": margins})
    return runs


def main():
    import llama_cpp

    out = {
        "generator": {
            "script": "scripts/reference/llamacpp_requantized.py",
            "llama_cpp_python": metadata.version("llama_cpp_python"),
            "gguf": metadata.version("gguf"),
            "source": os.path.relpath(GGUF, REPO_ROOT),
            "params": "llama_model_quantize: pure, allow_requantize",
        },
        "steps": STEPS,
        "types": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("q8_0", "q4_0"):
            path = os.path.join(tmp, f"{kind}.gguf")
            quantize(kind, path)
            out["types"][kind] = {"blocks": block_hashes(path), "prompts": greedy(path)}
    del llama_cpp
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT, REPO_ROOT)}")


if __name__ == "__main__":
    main()
