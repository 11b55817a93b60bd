"""Reference sentence embeddings of all-MiniLM-L6-v2, computed by sentence-transformers.

Makes tests/fixtures/minilm_embeddings.json:

    {"generator": {...}, "model_dir": "checkpoints/all-minilm-l6-v2", "model_sha256": "...",
     "max_seq_length": 256, "dim": 384,
     "cases": [{"text", "n_tokens", "truncated", "embedding": [384 floats]}],
     "pairs": [{"a", "b", "cosine"}]}

The model is loaded from the local folder (never the hub) with
`SentenceTransformer(path, device="cpu")` and run with `encode(texts, batch_size=32,
normalize_embeddings=False)`: the model's own modules.json already ends in Normalize, so the
embeddings are unit vectors as sentence-transformers returns them. `n_tokens` counts the
tokenizer's ids after truncation ([CLS] and [SEP] included); `truncated` says whether the text
had more tokens than max_seq_length. The texts are short, long (more than 256 tokens, to exercise
truncation), non-ASCII (CJK, emoji, accents, Arabic, Cyrillic), empty and whitespace-only, and
Reddit/email-style replies; they are encoded in one call so the batch mixes lengths and padding.
Embedding values are rounded to 7 significant digits (cosine error below 1e-6) to keep the file
small. `pairs` holds the cosine of selected pairs of reference embeddings.

Needs the ref venv plus sentence-transformers (`~/.cache/humanlm/ref/bin/pip install
sentence-transformers`). Run from the repository root:

    ~/.cache/humanlm/ref/bin/python scripts/reference/minilm_embeddings.py
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import FIXTURES, REPO_ROOT, generator, rel, sha256_file, write_json  # noqa: E402

MODEL_DIR = os.path.join(REPO_ROOT, "checkpoints", "all-minilm-l6-v2")
OUT = os.path.join(FIXTURES, "minilm_embeddings.json")

LONG_THREAD = (
    "Okay so I've been lurking here for years but I finally have to post. My landlord sent an "
    "email on Friday saying the rent goes up 18% next month, which is way more than the 5% cap "
    "our city passed last spring. I replied politely asking which exemption he thinks applies, "
    "and he answered with a wall of text about property taxes, insurance premiums, the new roof, "
    "and how 'everyone else on the block charges more anyway'. I checked the ordinance twice: "
    "the only exemptions are new construction after 2015 and owner-occupied duplexes, and our "
    "building is a 1962 fourplex he doesn't live in. I don't want to burn the relationship, "
    "because honestly he's been fine about repairs, but I also can't just eat an extra $310 a "
    "month. Do I go to the rent board right away, or send one more email quoting the ordinance "
    "section and giving him a week to correct it? Also, does anyone know if the increase "
    "notice even counts when it was only sent by email and not on paper? Our lease says notices "
    "must be delivered in writing to the unit address, and I'm not sure email counts as writing "
    "under the lease or under state law. Edit: thanks for all the replies, I'm reading every one. "
    "Edit 2: a few people asked, yes I have every message saved and I've screenshotted the "
    "original listing that showed the rent. Edit 3: he just texted asking if I got his email, "
    "and I haven't answered yet because I want to get the wording right before I say anything."
)

LONG_ESSAY = " ".join(
    [
        "The committee reviewed the proposal in detail and raised several concerns about the timeline.",
        "First, the data collection phase assumes that every participating clinic can enroll patients at the same rate,",
        "which the pilot study clearly contradicts: two of the five sites enrolled fewer than half of their targets.",
        "Second, the statistical analysis plan does not say how missing follow-up visits will be handled,",
        "and the power calculation ignores the expected dropout of roughly twenty percent.",
        "Third, the budget lists a single research coordinator for all sites, which seems unrealistic.",
        "The committee nevertheless agreed that the scientific question is important and well motivated,",
        "and that the team has the expertise to carry it out if these issues are addressed.",
    ]
    * 3
)

TEXTS = [
    "",
    "   ",
    "ok",
    "Thanks!",
    "lol same",
    "I completely disagree with this take.",
    "I strongly agree with this point of view.",
    "The cat sat on the mat.",
    "A cat was sitting on a rug.",
    "Quarterly revenue grew 12% year over year, driven by subscriptions.",
    "Honestly? Just quit. Life's too short to stay in a job that makes you miserable.",
    "> you should've told her sooner\n\nMaybe, but I didn't know how she'd react. Still don't tbh.",
    "Hi Maria,\n\nThanks for sending the draft over. I've left a few comments on section 3; "
    "overall it looks great.\n\nBest,\nTom",
    "Re: Meeting moved to Thursday\n\n> Can we do 3pm instead?\n\nWorks for me. See you then.",
    "EDIT: nvm, found it in the FAQ. Mods can delete this.",
    "Café crème, s'il vous plaît — et une crêpe au beurre salé.",
    "Ich würde das nicht so machen, ehrlich gesagt. Überleg es dir noch einmal.",
    "¿Por qué no lo intentas otra vez mañana? Seguro que sale bien.",
    "今日はとても疲れたけど、友達と話して元気になった。",
    "我觉得这个方法不太好，我们应该再讨论一下。",
    "이 영화 정말 재미있었어요! 다시 보고 싶어요.",
    "Привет! Как дела? Давно не виделись.",
    "مرحبا، كيف حالك اليوم؟",
    "This is amazing 😂😂😂 🎉👍🏽",
    "👨‍👩‍👧‍👦❤️🔥",
    "naïve coöperation façade résumé Zürich São Paulo",
    "C'est la vie... ¯\\_(ツ)_/¯",
    "CAPS LOCK IS CRUISE CONTROL FOR COOL!!!",
    "https://example.com/path?query=1&x=y #hashtag @someone",
    "def f(x):\n    return x ** 2  # square it",
    LONG_THREAD,
    LONG_ESSAY,
]

# Pairs whose reference cosine the similarity test checks: near-paraphrases, opposites, a language
# pair, empty against text, and a long (truncated) text against a short one.
PAIRS = [
    (7, 8),
    (5, 6),
    (3, 4),
    (18, 19),
    (0, 2),
    (0, 1),
    (30, 14),
    (31, 9),
    (12, 13),
    (23, 24),
]


def round7(x):
    return float(f"{float(x):.7g}")


def main():
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model = SentenceTransformer(MODEL_DIR, device="cpu")
    model.eval()
    max_len = model.max_seq_length
    tok = model.tokenizer

    emb = model.encode(TEXTS, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
    emb = np.asarray(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5), f"embeddings are not unit vectors: {norms}"

    cases = []
    for text, e in zip(TEXTS, emb):
        full = tok(text, truncation=False)["input_ids"]
        cut = tok(text, truncation=True, max_length=max_len)["input_ids"]
        cases.append(
            {
                "text": text,
                "n_tokens": len(cut),
                "truncated": len(full) > max_len,
                "embedding": [round7(v) for v in e],
            }
        )
    n_trunc = sum(c["truncated"] for c in cases)
    assert n_trunc >= 2, "the long texts should exceed max_seq_length"

    pairs = []
    for a, b in PAIRS:
        cos = float(np.dot(emb[a].astype(np.float64), emb[b].astype(np.float64)))
        pairs.append({"a": a, "b": b, "cosine": round(cos, 9)})

    obj = {
        "generator": generator(
            __file__,
            ["sentence-transformers", "transformers", "tokenizers", "torch", "numpy"],
            device="cpu",
            dtype="float32",
            batch_size=32,
            rounding="embedding values to 7 significant digits",
        ),
        "model_dir": rel(MODEL_DIR),
        "model_sha256": sha256_file(os.path.join(MODEL_DIR, "model.safetensors")),
        "max_seq_length": max_len,
        "dim": int(emb.shape[1]),
        "cases": cases,
        "pairs": pairs,
    }
    write_json(OUT, obj)
    print(f"{len(cases)} texts ({n_trunc} truncated), {len(pairs)} pairs", file=sys.stderr)


if __name__ == "__main__":
    main()
