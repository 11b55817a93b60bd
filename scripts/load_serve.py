"""Load test of `humanlm serve`: many clients on loopback for a while, some hanging up.

Starts `humanlm serve` on the default checkpoint (or uses --url), then runs --clients threads for
--seconds. Each client loops: a chat request with the official `openai` client, streamed every
other time, a short random question, max_tokens 16; one client in four hangs up during its
stream after the first token. It reports requests completed, tokens/s, p50/p99 latency and
time to first token (streamed requests), and every error by kind. The only errors expected are
503s (the server's --max-requests bound; the client retries nothing) and the hang-ups' own.

Not in CI (it takes a minute and two cores). Run from the repository root after `make build`:

    .venv-test/bin/python scripts/load_serve.py --clients 32 --seconds 60
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MODEL = "smollm2-135m-instruct"
QUESTIONS = ["What is the capital of France?", "Name a colour.", "Say hello.", "Count to three.",
             "What is two plus two?", "Name a fruit.", "What day comes after Monday?"]


def start_server(args):
    cmd = [os.path.join(REPO_ROOT, "target/release/humanlm"), "serve", "--checkpoint", MODEL, "--port", "0",
           "--max-requests", str(args.max_requests)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "HUMANLM_CHECKPOINTS": os.path.join(REPO_ROOT, "checkpoints")})
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        sys.exit(f"load_serve: unexpected first line {line!r}")
    return proc, line.split("listening on ", 1)[1] + "/v1", " ".join(cmd)


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def client(i, url, deadline, out, lock):
    import openai

    c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
    rng = random.Random(i)
    n = 0
    while time.time() < deadline:
        n += 1
        stream = n % 2 == 0
        hang_up = stream and i % 4 == 0
        msgs = [{"role": "user", "content": rng.choice(QUESTIONS)}]
        t0 = time.perf_counter()
        rec = {"stream": stream, "hang_up": hang_up}
        try:
            if stream:
                s = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, stream=True,
                                              stream_options={"include_usage": True})
                tokens = 0
                for chunk in s:
                    if chunk.choices and chunk.choices[0].delta.content and "ttft" not in rec:
                        rec["ttft"] = time.perf_counter() - t0
                        if hang_up:
                            s.close()
                            break
                    if chunk.usage:
                        tokens = chunk.usage.completion_tokens
                rec["tokens"] = tokens
            else:
                r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16)
                rec["tokens"] = r.usage.completion_tokens
            rec["latency"] = time.perf_counter() - t0
        except openai.APIStatusError as e:
            rec["error"] = f"HTTP {e.status_code}"
            time.sleep(0.2)
        except Exception as e:  # noqa: BLE001
            rec["error"] = type(e).__name__
        with lock:
            out.append(rec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=64)
    ap.add_argument("--url", help="an already running server's /v1 URL")
    args = ap.parse_args()
    proc, cmd = (None, None)
    if args.url:
        url = args.url
    else:
        proc, url, cmd = start_server(args)
    out, lock = [], threading.Lock()
    deadline = time.time() + args.seconds
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i, url, deadline, out, lock)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    alive = proc is None or proc.poll() is None
    if proc:
        proc.terminate()
        proc.wait(timeout=30)
    done = [r for r in out if "error" not in r]
    errors = {}
    for r in out:
        if "error" in r:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    lat = [r["latency"] for r in done if not r["hang_up"]]
    ttft = [r["ttft"] for r in done if "ttft" in r]
    report = {
        "command": " ".join([sys.executable] + sys.argv), "server": cmd, "clients": args.clients,
        "seconds": wall, "requests": len(out), "completed": len(done),
        "hung_up": sum(1 for r in done if r["hang_up"]),
        "tokens_per_s": sum(r.get("tokens", 0) for r in done) / wall,
        "latency_p50_s": percentile(lat, 50), "latency_p99_s": percentile(lat, 99),
        "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
        "errors": errors, "server_alive_at_end": alive,
        "mean_latency_s": statistics.mean(lat) if lat else None,
    }
    print(json.dumps(report, indent=1))
    unexpected = {k: v for k, v in errors.items() if k != "HTTP 503"}
    return 1 if unexpected or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
