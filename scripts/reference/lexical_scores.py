"""Reference lexical scores: ROUGE-L F1 (Google's rouge-score) and SQuAD v1.1 token F1.

Makes tests/fixtures/lexical_scores.json:

    {"generator": {...},
     "cases": [{"candidate", "reference", "rouge_l_f1", "token_f1", "repr",
                "rouge_candidate_tokens", "squad_candidate_tokens"}]}

- rouge_l_f1: `rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
  .score(target=reference, prediction=candidate)["rougeL"].fmeasure` (the package's default
  tokenizer: lowercase, non-[a-z0-9] runs become spaces, so non-ASCII text is dropped).
- token_f1: `f1_score(prediction=candidate, ground_truth=reference)` with `normalize_answer`,
  both copied verbatim below from the official SQuAD v1.1 evaluation script
  (evaluate-v1.1.py, https://rajpurkar.github.io/SQuAD-explorer/). v1.1 returns 0 when nothing
  overlaps, including when both sides normalise to nothing.
- repr holds both scores as Python's repr text: exact-bit comparisons should parse it (serde_json
  without its float_roundtrip feature can land one ulp off when reading the numbers).
- The *_tokens fields are the two tokenisations of the candidate, to make a failing case easy to
  read.

Floats are written with repr (17 significant digits), so they read back to the same f64.

Needs the ref venv plus rouge-score (`~/.cache/humanlm/ref/bin/pip install rouge-score`). Run
from the repository root:

    ~/.cache/humanlm/ref/bin/python scripts/reference/lexical_scores.py
"""

import os
import re
import string
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import FIXTURES, generator, write_json  # noqa: E402

OUT = os.path.join(FIXTURES, "lexical_scores.json")


# --- SQuAD v1.1 evaluation script (evaluate-v1.1.py), verbatim ---------------------------------
def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


# ------------------------------------------------------------------------------------------------

LONG_REF = (
    "Honestly I think you should talk to your manager before you quit. Tell them what is "
    "bothering you, give them a couple of weeks to fix it, and start looking quietly in the "
    "meantime. If nothing changes, you leave on good terms and with a reference."
)
LONG_CAND = (
    "I'd talk to the manager first, honestly. Tell them what's bothering you and give them a "
    "few weeks; meanwhile start looking quietly. If nothing changes you can leave on good terms, "
    "and you'll still have the reference."
)

PAIRS = [
    # identical, disjoint, empty
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("alpha beta gamma", "delta epsilon zeta"),
    ("", ""),
    ("something", ""),
    ("", "something"),
    ("   \n\t ", "   "),
    # punctuation-heavy, articles only
    ("!!! ??? ...", "---"),
    ("...well, well, WELL!!!", "Well; well: well?"),
    ("the a an", "The An A"),
    ("a", "a"),
    ("The answer is an apple.", "An apple is the answer"),
    ("U.S.A. vs. the U.K.", "USA versus UK"),
    ("don't won't can't", "dont wont cant"),
    ("e-mail me @ foo_bar@example.com #urgent", "email me at foo bar example com urgent"),
    ("snake_case and kebab-case", "snake case and kebab case"),
    ("the—end of the–line", "end of line"),
    ("a.b a,b the.end", "ab ab theend"),
    # repeated words
    ("the cat cat cat", "cat"),
    ("no no no no no", "no yes no yes no"),
    ("buffalo buffalo Buffalo buffalo buffalo", "Buffalo buffalo buffalo"),
    ("a b a b a b", "b a b a"),
    # word order (ROUGE-L cares, token F1 does not)
    ("one two three four five", "five four three two one"),
    ("I never said she stole my money", "she never said I stole my money"),
    # numbers
    ("It costs $3.50, not 350", "the cost is 3.50 dollars"),
    ("2026-11-26 at 10:00", "10 00 on 2026 11 26"),
    # non-ASCII: accents, CJK, emoji, Cyrillic, special lowercasing
    ("Café crème, s'il vous plaît", "cafe creme sil vous plait"),
    ("Café crème", "café crème"),
    ("naïve résumé", "naive resume"),
    ("我觉得这个方法不太好", "我觉得这个方法不太好"),
    ("我觉得 这个 方法", "我觉得 这个"),
    ("今日はとても疲れた but ok", "今日は ok"),
    ("great job 👍🏽🎉", "great job"),
    ("👍", "👍"),
    ("Привет как дела", "привет как дела"),
    ("İstanbul is big", "i stanbul is big"),
    ("\u212a\u212a kelvin", "kk kelvin"),
    ("ΟΔΟΣ ΟΔΟΣ", "οδος οδος"),
    ("straße STRASSE", "strasse"),
    ("aé the€ an→", "aé €"),
    # unusual whitespace
    ("x\u001cy z", "x y z"),
    ("non\u00a0breaking\u3000space", "non breaking space"),
    ("tabs\tand\nnewlines\r\nhere", "tabs and newlines here"),
    ("zero\u200bwidth", "zero width"),
    # replies
    (LONG_CAND, LONG_REF),
    (
        "> you should've told her sooner\n\nMaybe, but I didn't know how she'd react.",
        "Maybe. I didn't know how she would react, honestly.",
    ),
    (
        "Hi Maria,\n\nThanks for the draft! I left comments on section 3.\n\nBest,\nTom",
        "Thanks Maria, comments are on section 3. Best, Tom",
    ),
    ("lol same", "Same here lol"),
    ("Thanks!", "thanks"),
    ("NTA. Your house, your rules.", "NTA - your house your rules"),
]


def main():
    from rouge_score import rouge_scorer, tokenize

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    cases = []
    for cand, ref in PAIRS:
        rl = scorer.score(target=ref, prediction=cand)["rougeL"].fmeasure
        tf = f1_score(cand, ref)
        cases.append(
            {
                "candidate": cand,
                "reference": ref,
                "rouge_l_f1": float(rl),
                "token_f1": float(tf),
                # The same two numbers as Python's repr text, so a reader that parses floats
                # correctly rounded (Rust's str::parse) can compare bits.
                "repr": {"rouge_l_f1": repr(float(rl)), "token_f1": repr(float(tf))},
                "rouge_candidate_tokens": tokenize.tokenize(cand, None),
                "squad_candidate_tokens": normalize_answer(cand).split(),
            }
        )
    obj = {
        "generator": generator(
            __file__,
            ["rouge-score"],
            rouge="RougeScorer(['rougeL'], use_stemmer=False).score(target=reference, "
            "prediction=candidate)['rougeL'].fmeasure",
            token_f1="SQuAD v1.1 evaluate script f1_score(prediction=candidate, "
            "ground_truth=reference)",
        ),
        "cases": cases,
    }
    write_json(OUT, obj, indent=1)
    print(f"{len(cases)} pairs", file=sys.stderr)


if __name__ == "__main__":
    main()
