"""Write small HUMANUAL-shaped rows for the importer's tests.

The rows are written for this project (no benchmark data is copied). They follow the HUMANUAL row
layout: `prompt` (thread messages with `role`, `content`, `metadata`), `completion`, `post_id`,
`user_id`, `timestamp`, `metadata`, `persona`, `turn_id`. The JSONL file mixes the two encodings
seen in dumps (nested values and JSON strings) and holds rows that must be skipped; the Parquet
file stores `prompt` as a list of structs and `persona` / `metadata` as JSON strings, as the
Hugging Face datasets do.

Run from the repository root with the reference venv (pyarrow installed):
    ~/.cache/humanlm/ref/bin/python scripts/reference/humanual_rows.py
"""

import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq

OUT = pathlib.Path("tests/fixtures/humanual")

# Ten list items, so the recipe's persona filter (at least 10) keeps it; one item padded with
# spaces and one empty, since the importer keeps items as written and drops only empty ones.
PERSONA = {
    "demographics": {"age_group": "25-34", "gender": "female", "location": "Leeds, UK",
                     "occupation": "nurse", "nationality": "NA", "other": ""},
    "interests": ["night shifts", "cycling", "  board games ", "hill walking"],
    "values": ["fairness at work", "keeping promises"],
    "communication": ["short paragraphs", "dry humour"],
    "statistics": ["about 40 comments a month", "", "mostly evenings"],
}

ROWS = [
    {   # nested values
        "prompt": [
            {"role": "user", "content": "AITA for refusing to swap my Christmas shift again?",
             "metadata": {"author": "ward_nurse_k", "title": "AITA for refusing to swap my Christmas shift again?"}},
            {"role": "user", "content": "NTA. Three years in a row is not a swap, it's a pattern.",
             "metadata": {"author": "pattern_spotter"}},
            {"role": "user", "content": "Did you tell your manager it was the third time?",
             "metadata": {"author": "mod_kate"}},
        ],
        "completion": "I did, twice. She said 'team player' like it was a diagnosis.",
        "post_id": "t3_abc123", "user_id": "ward_nurse_k", "timestamp": "2025-12-03T21:14:00Z",
        "metadata": {"subreddit": "AmItheAsshole", "title": "AITA for refusing to swap my Christmas shift again?"},
        "persona": PERSONA, "turn_id": 2,
    },
    {   # JSON strings, non-ASCII, no persona
        "prompt": json.dumps([
            {"role": "user", "content": "Ce livre m'a déçue : la fin arrive trop vite.",
             "metadata": json.dumps({"author": "lectrice_lyon"})},
        ], ensure_ascii=False),
        "completion": "Pas d'accord — la fin rapide, c'est tout l'intérêt. ★★★★",
        "post_id": "B00XYZ", "user_id": "R2_booklover", "timestamp": "2024-05-01",
        "metadata": "{}", "persona": "", "turn_id": 0,
    },
    {   # a chat: unnamed user turns are the person themself; its persona has one list item
        # (communication is a string), so the recipe's filter leaves it out by default
        "prompt": [
            {"role": "user", "content": "write me a haiku about my cat", "metadata": {}},
            {"role": "assistant", "content": "Soft paws on the sill / ...", "metadata": {}},
        ],
        "completion": "nah make it funnier, she knocks cups off tables",
        "post_id": "conv-77", "user_id": "wildchat-u-9", "timestamp": "2024-02-02",
        "metadata": {}, "persona": json.dumps({"interests": ["cats"], "communication": "lowercase\nterse"}),
        "turn_id": 1,
    },
    {   # unusable: empty thread
        "prompt": [], "completion": "orphan reply", "post_id": "p-empty", "user_id": "u1",
        "timestamp": "2024-01-01", "metadata": {}, "persona": "", "turn_id": 0,
    },
    {   # unusable: unknown role
        "prompt": [{"role": "narrator", "content": "Once upon a time", "metadata": {}}],
        "completion": "x", "post_id": "p-role", "user_id": "u2", "timestamp": "2024-01-01",
        "metadata": {}, "persona": "", "turn_id": 0,
    },
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "rows.jsonl", "w", encoding="utf-8") as f:
        for r in ROWS:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    # Parquet: the usable rows in the datasets' encoding.
    usable = [r for r in ROWS[:3]]
    table = pa.table({
        "prompt": [
            [{"role": m["role"], "content": m["content"],
              "metadata": m["metadata"] if isinstance(m["metadata"], str) else json.dumps(m["metadata"])}
             for m in (json.loads(r["prompt"]) if isinstance(r["prompt"], str) else r["prompt"])]
            for r in usable
        ],
        "completion": [r["completion"] for r in usable],
        "post_id": [r["post_id"] for r in usable],
        "user_id": [r["user_id"] for r in usable],
        "timestamp": [r["timestamp"] for r in usable],
        "metadata": [r["metadata"] if isinstance(r["metadata"], str) else json.dumps(r["metadata"]) for r in usable],
        "persona": [r["persona"] if isinstance(r["persona"], str) else json.dumps(r["persona"]) for r in usable],
        "turn_id": pa.array([r["turn_id"] for r in usable], pa.int64()),
    })
    pq.write_table(table, OUT / "rows.parquet", compression="snappy")
    print(f"wrote {OUT}/rows.jsonl ({len(ROWS)} rows) and rows.parquet ({len(usable)} rows)")


if __name__ == "__main__":
    main()
