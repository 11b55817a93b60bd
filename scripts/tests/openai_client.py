#!/usr/bin/env python3
"""Drive `humanlm serve` with the official OpenAI Python client, as an evaluation harness would.

Run by tests/serve.rs against a live server:

    python scripts/tests/openai_client.py --base-url http://127.0.0.1:PORT/v1 --model NAME

Every check runs; each failure is printed on one line, and the exit code is 1 if any failed.
"""

import argparse
import sys
import traceback

import openai

failures = []


def check(name, cond, detail=""):
    if not cond:
        failures.append(f"{name}: {detail}")
        print(f"FAIL {name}: {detail}", flush=True)
    else:
        print(f"ok   {name}", flush=True)


def run_case(name, fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - report every failure, keep going
        failures.append(f"{name}: raised {type(e).__name__}: {e}")
        print(f"FAIL {name}: raised {type(e).__name__}: {e}", flush=True)
        traceback.print_exc()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=120)
    model = args.model
    messages = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What colour is the sky on a clear day?"},
    ]
    params = dict(temperature=0, max_tokens=16, seed=1)
    state = {}

    def models():
        ids = [m.id for m in client.models.list().data]
        check("models.list has the checkpoint", ids == [model], f"got {ids}")
        check("models.retrieve", client.models.retrieve(model).id == model)

    def chat():
        r = client.chat.completions.create(model=model, messages=messages, **params)
        state["chat"] = r
        c = r.choices[0]
        check("chat: one choice", len(r.choices) == 1, f"{len(r.choices)} choices")
        check("chat: role", c.message.role == "assistant", c.message.role)
        check("chat: content non-empty", bool(c.message.content and c.message.content.strip()),
              repr(c.message.content))
        u = r.usage
        check("chat: usage adds up", u.total_tokens == u.prompt_tokens + u.completion_tokens, str(u))
        check("chat: completion tokens within max_tokens", 0 < u.completion_tokens <= 16, str(u))
        check("chat: prompt tokens counted", u.prompt_tokens > 10, str(u))
        details = u.prompt_tokens_details
        check("chat: cached prompt tokens reported as OpenAI does",
              details is not None and isinstance(details.cached_tokens, int)
              and 0 <= details.cached_tokens < u.prompt_tokens, str(u))
        check("chat: finish_reason", c.finish_reason in ("stop", "length"), str(c.finish_reason))
        if c.finish_reason == "length":
            check("chat: length means max_tokens reached", u.completion_tokens == 16, str(u))
        check("chat: model echoed", r.model == model, r.model)
        check("chat: object", r.object == "chat.completion", r.object)

    def chat_stream():
        stream = client.chat.completions.create(
            model=model, messages=messages, stream=True,
            stream_options={"include_usage": True}, **params)
        text, role, finish, usage, chunks = "", None, None, None, 0
        for chunk in stream:
            chunks += 1
            if chunk.usage is not None:
                usage = chunk.usage
            for ch in chunk.choices:
                if ch.delta.role:
                    role = role or ch.delta.role
                if ch.delta.content:
                    text += ch.delta.content
                if ch.finish_reason:
                    finish = ch.finish_reason
        full = state.get("chat")
        check("stream: several chunks", chunks > 3, f"{chunks} chunks")
        check("stream: role in the first chunk", role == "assistant", str(role))
        if full is None:
            check("stream: compared with the plain chat", False, "the plain chat failed")
            return
        check("stream: deltas equal the non-streamed text at T=0",
              text == full.choices[0].message.content,
              f"{text!r} != {full.choices[0].message.content!r}")
        check("stream: same finish_reason", finish == full.choices[0].finish_reason,
              f"{finish} != {full.choices[0].finish_reason}")
        check("stream: usage chunk equals the plain usage",
              usage is not None and usage.total_tokens == full.usage.total_tokens
              and usage.completion_tokens == full.usage.completion_tokens,
              f"{usage} vs {full.usage}")

    def chat_n_and_extras():
        r = client.chat.completions.create(
            model=model, messages=messages, temperature=1.0, max_tokens=8, n=2, seed=3,
            stop=["\n\n"], extra_body={"top_k": 40, "repetition_penalty": 1.1, "min_p": 0.05})
        check("n=2: two choices", [c.index for c in r.choices] == [0, 1],
              str([c.index for c in r.choices]))
        check("n=2: usage counts both", r.usage.completion_tokens <= 16, str(r.usage))

    def completion():
        r = client.completions.create(model=model, prompt="The capital of France is",
                                      max_tokens=8, temperature=0)
        t = r.choices[0].text
        check("completion: text non-empty", bool(t.strip()), repr(t))
        check("completion: finish_reason", r.choices[0].finish_reason in ("stop", "length"),
              str(r.choices[0].finish_reason))
        check("completion: usage", r.usage.total_tokens ==
              r.usage.prompt_tokens + r.usage.completion_tokens, str(r.usage))
        streamed = "".join(
            c.choices[0].text for c in client.completions.create(
                model=model, prompt="The capital of France is", max_tokens=8, temperature=0,
                stream=True) if c.choices)
        check("completion stream equals completion", streamed == t, f"{streamed!r} != {t!r}")

    def unknown_model():
        try:
            client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
            check("unknown model raises NotFoundError", False, "no error")
        except openai.NotFoundError as e:
            check("unknown model raises NotFoundError", "no-such-model" in str(e), str(e))

    def bad_params():
        try:
            client.chat.completions.create(model=model, messages=messages, temperature=-1)
            check("temperature < 0 raises BadRequestError", False, "no error")
        except openai.BadRequestError as e:
            check("temperature < 0 raises BadRequestError", "temperature" in str(e), str(e))

    for name, fn in [("models", models), ("chat", chat), ("chat_stream", chat_stream),
                     ("chat_n_and_extras", chat_n_and_extras), ("completion", completion),
                     ("unknown_model", unknown_model), ("bad_params", bad_params)]:
        run_case(name, fn)

    if failures:
        print(f"{len(failures)} check(s) failed:", flush=True)
        for f in failures:
            print(f"  {f}", flush=True)
        sys.exit(1)
    print("all OpenAI client checks passed", flush=True)


if __name__ == "__main__":
    main()
