"""Reference logits of the default checkpoint (SmolLM2-135M-Instruct, Q4_1 GGUF) from transformers.

Makes tests/fixtures/smollm2_logits.json:

    {"generator": {...}, "gguf_sha256": "...", "probe_seed": int,
     "prompts": [{"name", "text", "input_ids",
                  "rows": [{"position", "max_abs", "logsumexp", "argmax",
                            "top_ids"[64], "top_logits"[64], "probe_ids"[256], "probe_logits"[256]}],
                  "greedy_ids"[32]}]}

transformers dequantises the GGUF to float32 and runs the HF Llama forward pass in float32, so these
are the logits of the dequantised weights (no activation quantisation). A Rust runtime that runs the
quantised matmuls (Q4_1 x Q8_1 as llama.cpp does) will differ from them by a small amount; compare
with a tolerance and compare argmax / top-k sets.

Rows: 8 positions per prompt spread evenly over the prompt (always the first and the last). Each row
holds the top 64 logits and the logits of 256 fixed probe ids (uniform over the vocabulary, numpy
seed PROBE_SEED, sorted), plus the max |logit| and logsumexp over the whole 49152-wide row.

greedy_ids: 32 tokens after the prompt, argmax each step with the KV cache; EOS does not stop it.

input_ids come from the transformers GGUF tokenizer with add_special_tokens=False; the chat special
tokens (<|im_start|>, <|im_end|>) are single ids. That tokenizer ignores the GGUF's "smollm"
pre-tokeniser (digits split off before the byte-level regex) and so differs from llama.cpp on a run
of whitespace before a digit ("\n\n1" -> "\n","\n","1" instead of "\n\n","1"); the prompts avoid
that pattern so their ids are the same from both (smollm2_tokenizer.py checks this).

Run from the repository root (takes about a minute on 2 cores):

    ~/.cache/humanlm/ref/bin/python scripts/reference/smollm2_logits.py
"""

import inspect
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    FIXTURES,
    SMOLLM_DIR,
    SMOLLM_FILE,
    f32,
    f32_list,
    generator,
    sha256_file,
    write_json,
)

OUT = os.path.join(FIXTURES, "smollm2_logits.json")
N_ROWS = 8
TOP_K = 64
N_PROBES = 256
PROBE_SEED = 20261126
N_GREEDY = 32

CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)

PARAGRAPH = (
    "The old lighthouse on Gull Point was built in 1874, rebuilt after the storm of 1921, and "
    "finally automated on March 3, 1986. Its lamp, a 2.5-metre Fresnel lens, could be seen 18 "
    "nautical miles out to sea; on clear nights, keepers claimed they could see it from 22. Today "
    "the tower is a museum: tickets cost $7.50 for adults (children under 12 go free), and about "
    "40,000 people climb its 117 steps every year. \"It's smaller than you'd expect,\" one guide "
    "told me, \"but the view from the top? Unbeatable.\" The gallery closes at 4:30 p.m. "
    "from October to April."
)

LONG_THREAD = """r/sourdough · Posted by u/crumb_theory · 6h

Title: My starter doubled in 4 hours, but the loaf still came out dense. What am I missing?

I've been baking for about three months now. My starter (her name is Gertrude, don't judge) is fed 1:1:1 twice a day with a 50/50 mix of whole wheat and bread flour. She reliably doubles in 4-5 hours at around 24 °C, so I'm pretty sure she's healthy.

Here's my formula for one loaf:
- 500 g bread flour
- 350 g water (70% hydration)
- 100 g active starter
- 10 g salt

Process: autolyse 45 minutes, add starter and salt, four sets of stretch-and-folds 30 minutes apart, bulk ferment until "roughly doubled" (about 5 hours total), shape, cold retard overnight in the fridge, bake at 250 °C in a Dutch oven, 20 minutes lid on and 25 minutes lid off.

The crust is gorgeous. The crumb is tight and a bit gummy near the bottom. Photos in the comments. Any ideas? I'm starting to think the problem is me, not Gertrude.

---

top comment · u/levain_larry · 5h · 214 points

Honestly, "roughly doubled" is where a lot of people go wrong. Dough in a bowl is really hard to judge by eye because it spreads sideways as well as rising. Get a straight-sided container and put a rubber band at the starting level. For a loaf like yours at 24 °C I'd aim for a 50-75% rise in bulk, not 100%, and then let the cold retard do the rest.

Also, gummy at the bottom often means underbaked or cut too early. Are you waiting at least an hour before slicing? I know it's torture.

> reply · u/crumb_theory · 5h · 88 points
>
> ...I may have cut it after twenty minutes. It smelled SO good. Okay, rubber band and patience. Noted. 😅

> > reply · u/levain_larry · 4h · 61 points
> >
> > We've all done it. The loaf keeps cooking on the rack; the steam redistributes as it cools. Cut it hot and the crumb collapses into that gluey texture. Give it an hour, ideally two.

---

comment · u/brotzeit_bernd · 5h · 97 points

Greetings from München! A few thoughts from someone who grew up eating Roggenbrot and Brötchen every day:
1. Your water temperature matters more than people think. If your kitchen is cool, use water at about 27-28 °C so the final dough temperature lands around 25-26 °C.
2. Whole wheat in the starter is great for flavour, but if your bread flour is weak (less than 12% protein), 70% hydration can feel slack. Try 65% for a few bakes and work your way back up.
3. Über-proofing and under-proofing can both look dense. The poke test helps: flour a finger, press about 1 cm in. If it springs back instantly, wait. If it springs back slowly and leaves a small dent, bake. If it never springs back, you went too far.

Viel Erfolg! Post the next crumb shot.

> reply · u/crumb_theory · 4h · 40 points
>
> Danke! My flour says 11.5% protein on the bag, so that might be part of it. I'll drop to 65% this weekend.

---

comment · u/pâte_fermentée · 4h · 73 points

French baker here (well, hobbyist, but my grand-mère was a boulangère in Lyon, so I claim some authority, haha). Two things:

First, your salt is 2% of flour weight, which is perfect. Don't change that.

Second, the shaping. A tight shape builds surface tension, and surface tension is what lets the loaf spring upward in the oven instead of slumping. If your boule is spreading on the counter before it goes into the banneton, do a second pre-shape after 20 minutes. C'est la vie, some doughs just need more help.

Bon courage, and remember: even a dense loaf makes an excellent pain perdu the next morning.

> reply · u/levain_larry · 3h · 22 points
>
> +1 on the pre-shape. It changed everything for me.

---

comment · u/tokyo_crust · 4h · 58 points

I bake in Tokyo, where summer humidity is brutal, and I had exactly this problem. My notebook is titled 天然酵母パン (natural yeast bread), and the first twenty pages are just dense loaves, lol.

What fixed it for me was measuring the dough temperature with a probe thermometer instead of guessing. Bulk time depends hugely on temperature: at 21 °C my bulk takes almost 8 hours; at 27 °C it's under 4. Once I started writing down the temperature every time, I could finally predict when the dough was ready.

Also check your oven. Mine ran 15 °C cooler than the dial said. A cheap oven thermometer costs less than a bag of good flour.

> reply · u/crumb_theory · 3h · 31 points
>
> Oh no. I have never once checked my oven temperature. Adding that to the list. Also 天然酵母 is a great name for a notebook.

---

UPDATE (edit, 1h ago) · u/crumb_theory

Thank you all so much! Plan for Saturday:
- 65% hydration
- water at 27 °C, aiming for 25 °C dough
- straight-sided container, bulk to +60%
- pre-shape twice
- oven thermometer arriving Friday
- wait a full hour before cutting, no matter how good it smells

Will report back with photos. If it works, Gertrude gets a celebratory feeding of rye. If it doesn't, I'm making pain perdu. Win-win.
"""

PROMPTS = [("chat", CHAT), ("paragraph", PARAGRAPH), ("long_thread", LONG_THREAD)]


def row_positions(n_tokens, n_rows=N_ROWS):
    """n_rows positions spread evenly over [0, n_tokens-1], first and last included."""
    if n_tokens <= n_rows:
        return list(range(n_tokens))
    pos = np.linspace(0, n_tokens - 1, n_rows).round().astype(int).tolist()
    assert pos[0] == 0 and pos[-1] == n_tokens - 1 and len(set(pos)) == n_rows
    return pos


def load():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SMOLLM_DIR, gguf_file=SMOLLM_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        SMOLLM_DIR, gguf_file=SMOLLM_FILE, dtype=torch.float32
    )
    model.eval()
    return tok, model


@torch.no_grad()
def greedy(model, input_ids, n_new):
    """Greedy decode with the KV cache: argmax of the last logits each step; EOS does not stop it."""
    # transformers 5 renamed past_key_values (forward argument and output field) to cache.
    params = inspect.signature(model.forward).parameters
    cache_arg = out_cache = "cache" if "cache" in params else "past_key_values"
    out = model(torch.tensor([input_ids]), use_cache=True)
    past = getattr(out, out_cache)
    nxt = int(out.logits[0, -1].argmax())
    ids = [nxt]
    while len(ids) < n_new:
        out = model(torch.tensor([[nxt]]), use_cache=True, **{cache_arg: past})
        past = getattr(out, out_cache)
        nxt = int(out.logits[0, -1].argmax())
        ids.append(nxt)
    return ids


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    gguf_path = os.path.join(SMOLLM_DIR, SMOLLM_FILE)
    tok, model = load()
    vocab = model.config.vocab_size
    special = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    print(f"vocab_size={vocab} special ids={special}", file=sys.stderr)

    rng = np.random.default_rng(PROBE_SEED)
    probe_ids = np.sort(rng.choice(vocab, size=N_PROBES, replace=False)).astype(int).tolist()

    prompts = []
    for name, text in PROMPTS:
        ids = tok(text, add_special_tokens=False).input_ids
        if name == "chat":
            # The special tokens must come out as single ids, never as their characters.
            assert ids.count(special["<|im_start|>"]) == 3, ids
            assert ids.count(special["<|im_end|>"]) == 2, ids
            assert tok.decode(ids) == text
        print(f"{name}: {len(ids)} tokens", file=sys.stderr)

        with torch.no_grad():
            logits = model(torch.tensor([ids]), use_cache=False).logits[0].float()  # [T, vocab]
        rows = []
        for p in row_positions(len(ids)):
            row = logits[p]
            top = torch.topk(row, TOP_K)
            rows.append(
                {
                    "position": p,
                    "max_abs": f32(row.abs().max()),
                    "logsumexp": f32(torch.logsumexp(row.double(), 0)),
                    "argmax": int(row.argmax()),
                    "top_ids": top.indices.tolist(),
                    "top_logits": f32_list(top.values.numpy()),
                    "probe_ids": probe_ids,
                    "probe_logits": f32_list(row[probe_ids].numpy()),
                }
            )
        greedy_ids = greedy(model, ids, N_GREEDY)
        # With the cache and without it the first greedy token is the argmax of the last row.
        assert greedy_ids[0] == rows[-1]["argmax"]
        print(f"  greedy: {tok.decode(greedy_ids)!r}", file=sys.stderr)
        prompts.append(
            {"name": name, "text": text, "input_ids": ids, "rows": rows, "greedy_ids": greedy_ids}
        )

    fixture = {
        "generator": generator(
            __file__,
            ["torch", "transformers", "gguf", "numpy"],
            dtype="float32",
            torch_threads=torch.get_num_threads(),
            tokenizer="transformers GGUF tokenizer, add_special_tokens=False",
        ),
        "gguf_file": f"checkpoints/smollm2-135m-instruct/{SMOLLM_FILE}",
        "gguf_sha256": sha256_file(gguf_path),
        "vocab_size": vocab,
        "special_token_ids": special,
        "probe_seed": PROBE_SEED,
        "prompts": prompts,
    }
    write_json(OUT, fixture)
    if not math.isfinite(sum(r["logsumexp"] for p in prompts for r in p["rows"])):
        raise SystemExit("non-finite logits")


if __name__ == "__main__":
    main()
