"""Speed comparison: humanlm against llama.cpp (llama-cpp-python) on the same GGUF, same threads.

For each engine it measures
  prefill    -- tokens/s to evaluate a prompt of exactly --prompt-tokens tokens from an empty cache;
  decode b1  -- tokens/s for greedy decoding of exactly --new-tokens tokens at batch 1 after that
                prompt (argmax of the logits each step, EOS ignored);
and prints a table with the ratios humanlm / llama.cpp, then one JSON line with everything
(versions, threads, CPU model, command lines, per-repeat timings).

humanlm is measured by its own `bench` subcommand:

    <humanlm> bench --checkpoint <dir of the GGUF> --prompt-tokens N --new-tokens M --threads T --json

whose stdout is one JSON object ({"prefill_tok_s", "decode_tok_s_b1", "decode_tok_s_b4",
"peak_rss_mb", ...}); it runs --repeats times and each numeric field is the median over them. llama.cpp is measured here through llama_cpp.Llama(n_threads=T,
n_threads_batch=T, n_ctx=2048, n_batch=512): the prompt is a long repeated English text tokenised
and cut to exactly N ids; prefill times llm.eval(ids) after llm.reset(); decode evaluates one token
at a time and takes the argmax itself. Each figure is the median over --repeats runs (after one
untimed warm-up). It needs only llama-cpp-python (and numpy, which it brings), not torch.

Exit status: 0 on success, 2 when the humanlm binary is missing or fails (build it first:
`cargo build --release`), 1 on other errors. --skip-humanlm measures llama.cpp alone.

Run from the repository root:

    ~/.cache/humanlm/llamacpp/bin/python scripts/bench_vs_llamacpp.py
    ~/.cache/humanlm/llamacpp/bin/python scripts/bench_vs_llamacpp.py --threads 2 --repeats 5
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from importlib import metadata

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEFAULT_GGUF = os.path.join(
    REPO_ROOT, "checkpoints", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"
)

# Source text for the benchmark prompt; repeated until it is long enough, then cut to N ids.
PROMPT_TEXT = (
    "The simulated user opened the chat window and typed a question about the train timetable. "
    "The assistant answered politely, listing three departures in the morning and two in the "
    "evening, and asked whether the user needed a return ticket as well. The user hesitated, "
    "scrolled back through the answer, and then wrote that the evening trains were too late, "
    "because the museum closes at five and the last bus from the station leaves at half past six. "
    "After a short pause the assistant suggested an earlier connection with a change at the "
    "junction, which would leave enough time for lunch, a walk along the river, and the museum. "
)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def version_of(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def median(xs):
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------------------- humanlm


def run_humanlm(args):
    binary = args.humanlm
    if not os.path.isabs(binary):
        binary = os.path.join(REPO_ROOT, binary) if not os.path.exists(binary) else os.path.abspath(binary)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        print(f"bench_vs_llamacpp: humanlm binary not found at {binary}; "
              "build it first (cargo build --release) or pass --humanlm PATH", file=sys.stderr)
        sys.exit(2)
    cmd = [
        binary, "bench",
        "--checkpoint", os.path.dirname(os.path.abspath(args.checkpoint_file)),
        "--prompt-tokens", str(args.prompt_tokens),
        "--new-tokens", str(args.new_tokens),
        "--threads", str(args.threads),
        "--json",
    ]
    print(f"humanlm: {shlex.join(cmd)}  (x{args.repeats})", file=sys.stderr)
    runs, walls = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        runs.append(run_humanlm_once(cmd))
        walls.append(time.perf_counter() - t0)
    # Median of every numeric field over the runs; other fields from the first run.
    result = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            result[key] = median(vals)
    return {"command": shlex.join(cmd), "wall_s": walls, "result": result, "runs": runs}


def run_humanlm_once(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        print(f"bench_vs_llamacpp: humanlm bench exited with status {proc.returncode}", file=sys.stderr)
        sys.exit(2)
    for line in reversed(proc.stdout.strip().splitlines()):  # the JSON object is the last line
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                pass
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(proc.stdout[-4000:])
        print("bench_vs_llamacpp: humanlm bench did not print a JSON object", file=sys.stderr)
        sys.exit(2)


# -------------------------------------------------------------------------------------- llama.cpp


def prompt_ids(llm, n):
    text = PROMPT_TEXT
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    while len(ids) < n:
        text += PROMPT_TEXT
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    return ids[:n]


def run_llamacpp(args):
    import numpy as np
    import llama_cpp

    n_ctx = 2048
    if args.prompt_tokens + args.new_tokens > n_ctx:
        raise SystemExit(f"--prompt-tokens + --new-tokens must fit in n_ctx={n_ctx}")
    kwargs = dict(
        model_path=args.checkpoint_file,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=n_ctx,
        n_batch=512,
        verbose=False,
    )
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(**kwargs)
    load_s = time.perf_counter() - t0
    ids = prompt_ids(llm, args.prompt_tokens)
    assert len(ids) == args.prompt_tokens

    n_vocab = llm.n_vocab()

    def last_logits():
        # Llama.eval fills llm.scores only with logits_all=True (which would make llama.cpp compute
        # every prompt row); read the last position's row straight from the context instead.
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    def one_run():
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        prefill_s = time.perf_counter() - t
        nxt = int(np.argmax(last_logits()))
        generated = [nxt]
        t = time.perf_counter()
        for _ in range(args.new_tokens):
            llm.eval([nxt])  # evaluates the token just chosen, giving logits for the next one
            nxt = int(np.argmax(last_logits()))
            generated.append(nxt)
        decode_s = time.perf_counter() - t
        return prefill_s, decode_s, generated[: args.new_tokens]

    one_run()  # warm-up: page in the weights, settle the thread pool
    prefill, decode, tokens = [], [], None
    for _ in range(args.repeats):
        p, d, tokens = one_run()
        prefill.append(args.prompt_tokens / p)
        decode.append(args.new_tokens / d)
    return {
        "constructor": "llama_cpp.Llama(" + ", ".join(
            f"{k}={os.path.relpath(v, REPO_ROOT) if k == 'model_path' else v!r}" for k, v in kwargs.items()
        ) + ")",
        "load_s": load_s,
        "prefill_tok_s": median(prefill),
        "decode_tok_s_b1": median(decode),
        "prefill_tok_s_runs": prefill,
        "decode_tok_s_b1_runs": decode,
        "greedy_head": tokens[:16],
        "greedy_text_head": llm.detokenize(tokens[:16]).decode("utf-8", errors="replace"),
        "peak_rss_mb": peak_rss_mb(),
        "llama_cpp": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip(),
    }


def peak_rss_mb():
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------------------ main


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint-file", default=DEFAULT_GGUF, help="GGUF file (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--humanlm", default="target/release/humanlm", help="humanlm binary (default: %(default)s)")
    ap.add_argument("--skip-humanlm", action="store_true", help="measure llama.cpp only")
    args = ap.parse_args()
    args.checkpoint_file = os.path.abspath(args.checkpoint_file)
    if not os.path.isfile(args.checkpoint_file):
        print(f"bench_vs_llamacpp: no such GGUF file: {args.checkpoint_file}", file=sys.stderr)
        return 1
    if args.repeats < 1 or args.prompt_tokens < 1 or args.new_tokens < 1:
        print("bench_vs_llamacpp: --repeats, --prompt-tokens and --new-tokens must be >= 1", file=sys.stderr)
        return 1

    load_before = load_average()
    if load_before is not None and load_before > 0.5 * (os.cpu_count() or 1):
        print(f"bench_vs_llamacpp: WARNING: 1-minute load average is {load_before:.2f} on "
              f"{os.cpu_count()} CPUs; other work will skew the timings", file=sys.stderr)
    hl = None if args.skip_humanlm else run_humanlm(args)  # first, so a missing binary fails fast
    print(f"llama.cpp: {args.prompt_tokens} prompt tokens, {args.new_tokens} new tokens, "
          f"{args.threads} threads, {args.repeats} repeats", file=sys.stderr)
    lc = run_llamacpp(args)

    hr = hl["result"] if hl else {}
    rows = [
        ("prefill tok/s", hr.get("prefill_tok_s"), lc["prefill_tok_s"]),
        ("decode b1 tok/s", hr.get("decode_tok_s_b1"), lc["decode_tok_s_b1"]),
        ("decode b4 tok/s", hr.get("decode_tok_s_b4"), None),
        ("peak RSS MB", hr.get("peak_rss_mb"), lc["peak_rss_mb"]),
    ]
    ratios = {}
    print()
    print(f"{os.path.basename(args.checkpoint_file)}  threads={args.threads}  "
          f"prompt={args.prompt_tokens}  new={args.new_tokens}  repeats={args.repeats}")
    print(f"CPU: {cpu_model()}  (load average before/after: {fmt(load_before, 2)}/{fmt(load_average(), 2)})")
    print(f"{'':18}{'humanlm':>12}{'llama.cpp':>12}{'ratio':>10}")
    for name, h, l in rows:
        r = h / l if (h is not None and l) else None
        if name.startswith(("prefill", "decode b1")):
            ratios[name.split(" tok/s")[0].replace(" ", "_")] = r
        print(f"{name:18}{fmt(h):>12}{fmt(l):>12}{fmt(r, 2):>10}")
    print("(ratio = humanlm / llama.cpp; above 1 means humanlm is faster, for RSS larger)")

    record = {
        "checkpoint_file": os.path.relpath(args.checkpoint_file, REPO_ROOT),
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "load_average_1m": {"before": load_before, "after": load_average()},
        "python": platform.python_version(),
        "llama_cpp_python": version_of("llama_cpp_python") or lc["llama_cpp"],
        "numpy": version_of("numpy"),
        "command": shlex.join([sys.executable] + sys.argv),
        "humanlm": hl,
        "llama_cpp": lc,
        "ratios": ratios,
    }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
