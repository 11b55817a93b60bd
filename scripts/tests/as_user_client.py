#!/usr/bin/env python3
"""Ask `humanlm serve --as-user` for the simulated user's next turn with the official OpenAI
Python client, as a tau-bench-style harness would: the conversation from the assistant's side,
once streamed and once not.

Run by tests/it/converse.rs against a live server:

    python scripts/tests/as_user_client.py --base-url URL --model NAME --request FILE

FILE holds {"messages": [...], "seed": S}. Prints one JSON object: the non-streamed reply's
content, finish reason and usage, and the streamed reply's joined content and finish reason.
"""

import argparse
import json

import openai


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--request", required=True)
    a = ap.parse_args()
    with open(a.request) as f:
        req = json.load(f)
    client = openai.OpenAI(base_url=a.base_url, api_key="unused", max_retries=0, timeout=120)
    whole = client.chat.completions.create(
        model=a.model, messages=req["messages"], seed=req["seed"]
    )
    parts, finish = [], None
    for chunk in client.chat.completions.create(
        model=a.model, messages=req["messages"], seed=req["seed"], stream=True
    ):
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    print(
        json.dumps(
            {
                "content": whole.choices[0].message.content,
                "role": whole.choices[0].message.role,
                "finish_reason": whole.choices[0].finish_reason,
                "usage": whole.usage.model_dump(),
                "streamed": "".join(parts),
                "streamed_finish_reason": finish,
            }
        )
    )


if __name__ == "__main__":
    main()
