"""Q8_0 and Q4_0 blocks as ggml's reference quantizers write them, for the quantize-on-load test.

gguf-py's `gguf.quants.quantize` mirrors llama.cpp's `quantize_row_q8_0_ref` and
`quantize_row_q4_0_ref` (what `llama-quantize` runs); this writes a few matrices and their blocks
so tests/it/quantize.rs can check that `humanlm --quantize` produces the same bytes.

The rows cover what makes quantizers disagree: ordinary gaussian rows, an all-zero block, values
that land exactly on a rounding half (x / d = k + 0.5), a block whose largest magnitude is negative
(Q4_0 takes the signed value), repeated extremes, tiny and large magnitudes. Each matrix is stored
both as float32 and as bfloat16 (the bf16 bytes are quantized from their own float32 values, as a
bf16 checkpoint's would be).

Writes tests/fixtures/quantize/blocks.json:
  {"generator": {...}, "cases": [{"name", "rows", "cols", "dtype": "f32"|"bf16",
     "data_hex": stored bytes (little-endian, row-major),
     "q8_0_hex": blocks, "q4_0_hex": blocks}]}

Run from the repository root (needs only gguf and numpy):
    python3 -m venv /tmp/gg && /tmp/gg/bin/pip install gguf==0.19.0 numpy
    /tmp/gg/bin/python scripts/reference/quantize_blocks.py
"""

import json
import os
from importlib import metadata

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "quantize", "blocks.json")


def matrices():
    rng = np.random.default_rng(7)
    gauss = rng.standard_normal((6, 128)).astype(np.float32) * 0.02
    edge = np.zeros((4, 64), dtype=np.float32)
    # Row 0: first block all zero, second block with halves: d = 127/127 = 1 for Q8_0, so
    # x = k + 0.5 rounds away from zero.
    edge[0, 32:] = np.array([127.0] + [k + 0.5 for k in range(-15, 16)], dtype=np.float32)
    # Row 1: the largest magnitude is negative (Q4_0's d = max / -8 keeps the sign).
    edge[1, :32] = np.linspace(-3.0, 1.0, 32, dtype=np.float32)
    edge[1, 32:] = -edge[1, :32]
    # Row 2: repeated extremes and exact multiples of the Q4_0 step.
    edge[2, :32] = np.tile(np.array([-8.0, 7.0, -4.0, 0.5], dtype=np.float32), 8)
    edge[2, 32:] = np.tile(np.array([8.0, -8.0, 1.0, -1.0], dtype=np.float32), 8)
    # Row 3: very small and very large magnitudes.
    edge[3, :32] = rng.standard_normal(32).astype(np.float32) * 1e-6
    edge[3, 32:] = rng.standard_normal(32).astype(np.float32) * 3e3
    return [("gaussian", gauss), ("edges", edge)]


def bf16_round(x):
    """float32 -> bfloat16 bits, round to nearest even (what torch and safetensors writers do)."""
    bits = x.view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return bits


def main():
    cases = []
    for name, m in matrices():
        for dtype in ("f32", "bf16"):
            if dtype == "f32":
                data = m.astype("<f4").tobytes()
                vals = m
            else:
                bits = bf16_round(m)
                data = bits.astype("<u2").tobytes()
                vals = (bits.astype(np.uint32) << 16).view(np.float32)
            cases.append({
                "name": f"{name}-{dtype}",
                "rows": int(m.shape[0]),
                "cols": int(m.shape[1]),
                "dtype": dtype,
                "data_hex": data.hex(),
                "q8_0_hex": quants.quantize(vals, T.Q8_0).tobytes().hex(),
                "q4_0_hex": quants.quantize(vals, T.Q4_0).tobytes().hex(),
            })
    out = {
        "generator": {"script": "scripts/reference/quantize_blocks.py", "gguf": metadata.version("gguf"),
                      "numpy": np.__version__},
        "cases": cases,
    }
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
