"""Reference tokenisation of the default checkpoint's GGUF vocabulary (SmolLM2-135M-Instruct).

Makes tests/fixtures/smollm2_tokenizer.json:

    {"generator": {...}, "gguf_sha256": "...", "special_token_ids": {...},
     "cases": [{"text", "ids", "transformers_ids", "agree"}]}

"ids" are llama.cpp's and are the reference: the GGUF names its pre-tokeniser
(tokenizer.ggml.pre = "smollm") and llama.cpp implements that one natively:

    llama_cpp.Llama(model_path=..., vocab_only=True).tokenize(text.encode(), add_bos=False, special=True)

"transformers_ids" come from the tokenizer transformers builds out of the same GGUF
(add_special_tokens=False), kept for comparison; a warning lists the cases where the two differ
(it does not fail). They do differ on whitespace runs before a digit: transformers builds a plain
ByteLevel pre-tokeniser and ignores "smollm", which splits every digit off first. The script also
checks that the same vocabulary behind Sequence[Digits(individual_digits=True), ByteLevel] (the
layout of SmolLM2's own tokenizer.json) gives llama.cpp's ids, and records the count in "notes". The cases are tricky strings (digits, emoji with skin tones and ZWJ sequences,
CJK, Arabic, accents, whitespace runs, contractions, code, a URL, the ChatML special tokens, the
empty string) plus the three prompts of smollm2_logits.py.

Needs both llama_cpp and transformers. They live in two different virtual environments here, so the
script re-runs itself: the transformers half runs under the ref venv, the llama.cpp half under the
llamacpp venv (override with HUMANLM_REF_PY / HUMANLM_LLAMACPP_PY). Run from the repository root:

    ~/.cache/humanlm/ref/bin/python scripts/reference/smollm2_tokenizer.py
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import FIXTURES, SMOLLM_DIR, SMOLLM_FILE, generator, sha256_file, write_json  # noqa: E402

OUT = os.path.join(FIXTURES, "smollm2_tokenizer.json")
REF_PY = os.environ.get("HUMANLM_REF_PY", os.path.expanduser("~/.cache/humanlm/ref/bin/python"))
LLAMACPP_PY = os.environ.get(
    "HUMANLM_LLAMACPP_PY", os.path.expanduser("~/.cache/humanlm/llamacpp/bin/python")
)

CASES = [
    # digits: SmolLM splits every digit into its own token
    "12345",
    "3.14159",
    "2026-11-26",
    "1,000,000",
    "Call 555-0199 before 9:45pm or after 10:00.",
    "x2 y10 v3.2.1 0x1F 1e-5",
    # whitespace runs before a digit: the smollm pre-tokeniser splits the digit off first
    "Steps:\n\n1. Mix\n\n2. Bake",
    "total:  42",
    "a\t\t7 and   2026",
    # emoji: plain, skin-tone modifier, ZWJ family, flag, keycap
    "I love it 😀🎉",
    "👍🏽 thumbs up, 👋🏿 wave",
    "family: 👨‍👩‍👧‍👦 and 🧑🏻‍💻 coder",
    "flags 🇫🇷🇯🇵 and keycap 1️⃣",
    # CJK, Arabic, accented Latin, Cyrillic
    "天然酵母パンを焼きました。",
    "你好，世界！",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "Café crème, naïve façade, Straße, Übermäßig, señor, Ångström",
    "Привет, мир!",
    # whitespace
    "   leading spaces",
    "trailing spaces   ",
    "multiple    spaces   between",
    "tab\tseparated\t\tvalues",
    "line one\nline two\r\nline three",
    "\n\n\n",
    " \n \n",
    "\t",
    # contractions and case
    "I'm can't we'll they've",
    "YOU'RE IT'S She'd He'LL",
    "HeLLo WoRLD",
    # code, URL, punctuation
    'fn main() { println!("hi"); }',
    "def f(x):\n    return x ** 2  # square\n",
    "https://example.com/path?q=smol+lm&lang=en#section-2",
    "Wait... what?!? (yes) [no] {maybe} <tag/> -- \"quoted\" 'single'",
    "$7.50 + 20% = €9.00 ± £0.01",
    # ChatML special tokens
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more",
    "<|im_start|><|im_end|><|endoftext|>",
    # edge cases
    "",
    " ",
    "a",
    "Hello",
    " Hello",
]


def prompt_cases():
    import smollm2_logits

    return [text for _, text in smollm2_logits.PROMPTS]


def llamacpp_half(texts):
    """Runs under the llamacpp venv: llama.cpp ids of each text."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=os.path.join(SMOLLM_DIR, SMOLLM_FILE), vocab_only=True, verbose=False
    )
    ids = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
    detok = [llm.detokenize(i, special=True).decode("utf-8", errors="replace") for i in ids]
    return {"ids": ids, "detokenized": detok, "llama_cpp": llama_cpp.__version__}


def transformers_half(texts):
    """Runs under the ref venv: transformers GGUF tokenizer ids of each text."""
    from transformers import AutoTokenizer

    from tokenizers import pre_tokenizers

    tok = AutoTokenizer.from_pretrained(SMOLLM_DIR, gguf_file=SMOLLM_FILE)
    special = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
    # The same vocabulary and merges with the pre-tokeniser SmolLM2's own tokenizer.json has
    # (every digit split off, then the byte-level regex): this is what "smollm" means to llama.cpp.
    backend = tok.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    digits_ids = [backend.encode(t, add_special_tokens=False).ids for t in texts]
    return {
        "ids": ids,
        "digits_bytelevel_ids": digits_ids,
        "special_token_ids": special,
        "vocab_size": len(tok),
    }


def run_half(python, half, texts):
    proc = subprocess.run(
        [python, os.path.abspath(__file__), "--half", half],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{half} half failed under {python}")
    return json.loads(proc.stdout)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--half":
        texts = json.loads(sys.stdin.read())
        fn = {"llamacpp": llamacpp_half, "transformers": transformers_half}[sys.argv[2]]
        sys.stdout.write(json.dumps(fn(texts)))
        return

    texts = CASES + prompt_cases()
    ref = run_half(REF_PY, "transformers", texts)
    lcpp = run_half(LLAMACPP_PY, "llamacpp", texts)

    cases, differ = [], []
    for i, text in enumerate(texts):
        ids, hf = lcpp["ids"][i], ref["ids"][i]
        if lcpp["detokenized"][i] != text:
            print(f"note: llama.cpp does not round-trip {text[:40]!r}", file=sys.stderr)
        cases.append({"text": text, "ids": ids, "transformers_ids": hf, "agree": ids == hf})
        if ids != hf:
            differ.append(i)

    n_prompts = len(prompt_cases())
    for i in range(len(texts) - n_prompts, len(texts)):
        if i in differ:
            print(f"WARNING: smollm2_logits.py prompt {i - len(CASES)} tokenises differently "
                  "in llama.cpp and transformers", file=sys.stderr)
    if differ:
        print(f"WARNING: llama.cpp and transformers differ on {len(differ)} case(s):", file=sys.stderr)
        for i in differ:
            c = cases[i]
            print(f"  {c['text'][:60]!r}\n    llama.cpp:    {c['ids'][:24]}\n"
                  f"    transformers: {c['transformers_ids'][:24]}", file=sys.stderr)
    else:
        print("llama.cpp and transformers agree on every case", file=sys.stderr)

    same = [i for i in range(len(texts)) if ref["digits_bytelevel_ids"][i] == lcpp["ids"][i]]
    print(f"tokenizers with Digits(individual_digits=True) + ByteLevel pre-tokeniser matches "
          f"llama.cpp on {len(same)}/{len(texts)} cases", file=sys.stderr)

    gen = generator(__file__, ["transformers", "tokenizers", "gguf"], llama_cpp=lcpp["llama_cpp"],
                    llamacpp_python=LLAMACPP_PY.replace(os.path.expanduser("~"), "~"),
                    ref_python=REF_PY.replace(os.path.expanduser("~"), "~"))
    fixture = {
        "generator": gen,
        "gguf_file": f"checkpoints/smollm2-135m-instruct/{SMOLLM_FILE}",
        "gguf_sha256": sha256_file(os.path.join(SMOLLM_DIR, SMOLLM_FILE)),
        "vocab_size": ref["vocab_size"],
        "special_token_ids": ref["special_token_ids"],
        "reference": "ids = llama.cpp tokenize(add_bos=False, special=True); transformers_ids for comparison",
        "notes": (
            "transformers' GGUF tokenizer uses a plain ByteLevel pre-tokeniser and ignores "
            "tokenizer.ggml.pre=smollm, so it differs from llama.cpp on whitespace runs before a "
            "digit. The same vocab/merges behind Sequence[Digits(individual_digits=True), "
            "ByteLevel(add_prefix_space=False, use_regex=True)] reproduce llama.cpp on "
            f"{len(same)}/{len(texts)} cases."
        ),
        "cases": cases,
    }
    write_json(OUT, fixture, indent=1)


if __name__ == "__main__":
    main()
