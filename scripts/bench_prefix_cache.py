"""Prefix reuse: humanlm's prefix cache against llama.cpp's prompt cache, and against no cache.

Workloads (default checkpoint, --threads threads, both engines in this one script):
  sequential   -- the seven calls of one scenario's humanlm-mode simulation under the `instruct`
                  set, in order (consecutive prompts share the system prompt and the thread);
  interleaved  -- the seven calls of two scenarios alternating (A1 B1 A2 B2 ...), where a
                  single-slot cache (llama.cpp keeps the previous prompt only) cannot help;
  conversation -- a 10-turn chat (ChatML, the default model's template): turn k's prompt is
                  the system prompt and turns 1..k, so it repeats everything before it.
Each prompt is prefilled and one greedy token generated. humanlm runs through `humanlm bench
--prompts FILE --json` (the prompts exactly as `simulate --prompt-only --json` renders them), once
with the cache on and once with `--prefix-cache-mb 0`; llama.cpp through llama_cpp.Llama
(n_ctx 4096, n_batch 512), whose create_completion reuses the longest common prefix with the
previous prompt. Then the end-to-end simulation of the first scenario (`humanlm simulate`, the
set's own decoding), cache on and off. Prints a table and one JSON line (versions, CPU,
commands, every timing).

    make build && ~/.cache/humanlm/llamacpp/bin/python scripts/bench_prefix_cache.py
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.path.join(REPO, "target", "release", "humanlm")
GGUF = os.path.join(REPO, "checkpoints", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")


def run(cmd):
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    return out.stdout, time.perf_counter() - t


def prompts_of(scenario, threads):
    out, _ = run([BIN, "simulate", "--scenario", scenario, "--prompts", "instruct",
                  "--prompt-only", "--json", "--threads", str(threads)])
    return [c["prompt"] for c in json.loads(out)["calls"]]


def ours(prompts, threads, cache_mb):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(prompts, f)
    cmd = [BIN, "--prefix-cache-mb", str(cache_mb), "bench", "--prompts", f.name, "--json",
           "--threads", str(threads)]
    out, _ = run(cmd)
    os.unlink(f.name)
    r = json.loads(out)
    r["command"] = " ".join(cmd[:-1] + [str(threads)])
    return r


def llamacpp(llm, prompts):
    calls = []
    for text in prompts:
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        t = time.perf_counter()
        llm.create_completion(ids, max_tokens=1, temperature=0.0)
        calls.append({"prompt_tokens": len(ids), "seconds": time.perf_counter() - t})
    return {"calls": calls, "seconds": sum(c["seconds"] for c in calls),
            "prompt_tokens": sum(c["prompt_tokens"] for c in calls)}


CONV_SYSTEM = ("You are a patient travel assistant. Answer in two or three sentences, name "
               "concrete places and prices, and ask one follow-up question.")
CONV_TOPICS = ["Lisbon in May with a bad knee", "cheap hotels near the river", "the tram 28",
               "a day trip to Sintra", "fado bars that are not touristy", "getting there from "
               "the airport", "what to eat on a Sunday", "museums with lifts",
               "a rainy afternoon", "the last evening"]


def conversation():
    """The prompt of each turn of a 10-turn chat, rendered with ChatML."""
    turns, prompts = [], []
    for k, topic in enumerate(CONV_TOPICS):
        user = (f"Thanks. Next question, number {k + 1}: what would you suggest for {topic}? "
                "I walk slowly and would rather avoid long stairs or steep streets if I can.")
        turns.append(("user", user))
        text = f"<|im_start|>system\n{CONV_SYSTEM}<|im_end|>\n"
        text += "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in turns)
        prompts.append(text + "<|im_start|>assistant\n")
        reply = (f"For {topic}, start early and take a taxi for the uphill part; it costs about "
                 "eight euros. The flat riverside path is easy on the knees and has benches "
                 "every few hundred metres. Would you like a second option for that?")
        turns.append(("assistant", reply))
    return prompts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scenarios", default="opinion-landlord-deposit-03,politics-voting-age-04")
    ap.add_argument("--skip-simulate", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run `make build` first")
    import llama_cpp

    first, second = a.scenarios.split(",")
    seq = prompts_of(first, a.threads)
    other = prompts_of(second, a.threads)
    inter = [p for pair in zip(seq, other) for p in pair]
    conv = conversation()
    llm = llama_cpp.Llama(model_path=GGUF, n_ctx=4096, n_batch=512, n_threads=a.threads,
                          n_threads_batch=a.threads, verbose=False)
    llm.create_completion("warm up", max_tokens=1)
    result = {"threads": a.threads, "cpu": platform.processor() or platform.machine(),
              "llama_cpp_python": metadata.version("llama-cpp-python"), "workloads": {}}
    for name, ps in [("sequential", seq), ("interleaved", inter), ("conversation", conv)]:
        llm.reset()
        lc = llamacpp(llm, ps)
        on = ours(ps, a.threads, 512)
        off = ours(ps, a.threads, 0)
        result["workloads"][name] = {"humanlm_cache_on": on, "humanlm_cache_off": off,
                                     "llama_cpp": lc}
    if not a.skip_simulate:
        sim = {}
        for mb in (512, 0):
            cmd = [BIN, "--prefix-cache-mb", str(mb), "simulate", "--scenario", first,
                   "--prompts", "instruct", "--json", "--threads", str(a.threads)]
            out, secs = run(cmd)
            v = json.loads(out)
            sim[f"cache_{mb}mb"] = {"seconds": secs, "command": " ".join(cmd),
                                    "prompt_tokens": v["prompt_tokens"]}
        result["simulate"] = sim

    print(f"{'workload':<12} {'prompts':>7} {'tokens':>7} {'ours on':>9} {'ours off':>9} "
          f"{'llama.cpp':>9} {'on/llama':>9} {'computed':>9}")
    for name, w in result["workloads"].items():
        on, off, lc = w["humanlm_cache_on"], w["humanlm_cache_off"], w["llama_cpp"]
        computed = on["prompt_tokens"] - on["cached_tokens"]
        print(f"{name:<12} {len(on['calls']):>7} {on['prompt_tokens']:>7} {on['seconds']:>8.2f}s "
              f"{off['seconds']:>8.2f}s {lc['seconds']:>8.2f}s "
              f"{lc['seconds'] / on['seconds']:>8.2f}x {computed:>9}")
    w = result["workloads"]["conversation"]
    print("conversation, per turn: prompt tokens, computed with the cache, seconds on / off / llama.cpp")
    for k, (on, off, lc) in enumerate(zip(w["humanlm_cache_on"]["calls"],
                                          w["humanlm_cache_off"]["calls"],
                                          w["llama_cpp"]["calls"])):
        print(f"  turn {k + 1:>2} {on['prompt_tokens']:>6} {on['prompt_tokens'] - on['cached_tokens']:>6}"
              f" {on['seconds']:>7.2f} {off['seconds']:>7.2f} {lc['seconds']:>7.2f}")
    if "simulate" in result:
        on, off = result["simulate"]["cache_512mb"], result["simulate"]["cache_0mb"]
        computed = sum(c["computed"] for c in on["prompt_tokens"].values())
        longest = max(c["prompt"] for c in on["prompt_tokens"].values())
        print(f"simulate {first}: {off['seconds']:.1f} s without the cache, {on['seconds']:.1f} s "
              f"with it ({off['seconds'] / on['seconds']:.2f}x); prompt tokens computed "
              f"{computed} = {computed / longest:.2f}x the longest call's prompt")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
