"""How far llama.cpp's logits are from tests/fixtures/smollm2_logits.json (a yardstick for tolerances).

The fixture holds transformers' float32 logits of the dequantised GGUF. llama.cpp runs the same GGUF
with quantised activations (Q8_1) in its Q4_1 matmuls, as a quantised Rust runtime will, so the gap
printed here is roughly the gap such a runtime should expect against the fixture. For every prompt
it prints: the largest |logit difference| over the probe ids, the largest difference of
log-probabilities (logit - logsumexp) over the probe ids, how many rows share the argmax, the mean
overlap of the top-10 sets, and for how many of the 32 greedy tokens llama.cpp follows the fixture.

Writes nothing. Run from the repository root with the llama.cpp venv (no torch needed):

    ~/.cache/humanlm/llamacpp/bin/python scripts/reference/compare_llamacpp_logits.py
"""

import json
import os

import numpy as np

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURE = os.path.join(REPO_ROOT, "tests", "fixtures", "smollm2_logits.json")


def main():
    import llama_cpp

    with open(FIXTURE, encoding="utf-8") as f:
        fixture = json.load(f)
    llm = llama_cpp.Llama(
        model_path=os.path.join(REPO_ROOT, fixture["gguf_file"]),
        n_threads=2,
        n_threads_batch=2,
        n_ctx=2048,
        n_batch=512,
        logits_all=True,
        verbose=False,
    )
    print(f"llama_cpp {llama_cpp.__version__}; fixture {os.path.relpath(FIXTURE, REPO_ROOT)}")
    for prompt in fixture["prompts"]:
        ids = prompt["input_ids"]
        llm.reset()
        llm.eval(ids)
        d_logit = d_logprob = 0.0
        argmax_same = 0
        top10 = []
        for row in prompt["rows"]:
            got = np.asarray(llm.scores[row["position"]], dtype=np.float64)
            lse = np.log(np.exp(got - got.max()).sum()) + got.max()
            probe = np.asarray(row["probe_logits"])
            got_probe = got[row["probe_ids"]]
            d_logit = max(d_logit, float(np.abs(got_probe - probe).max()))
            d_logprob = max(
                d_logprob, float(np.abs((got_probe - lse) - (probe - row["logsumexp"])).max())
            )
            argmax_same += int(got.argmax()) == row["argmax"]
            top10.append(len(set(np.argsort(-got)[:10].tolist()) & set(row["top_ids"][:10])) / 10)

        greedy, nxt = [], int(np.argmax(llm.scores[len(ids) - 1]))
        for _ in range(len(prompt["greedy_ids"])):
            greedy.append(nxt)
            llm.eval([nxt])
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        follow = next(
            (i for i, (a, b) in enumerate(zip(greedy, prompt["greedy_ids"])) if a != b),
            len(greedy),
        )
        print(
            f"{prompt['name']:12} tokens {len(ids):5}  max|d logit| {d_logit:.3f}  "
            f"max|d logprob| {d_logprob:.3f}  argmax {argmax_same}/{len(prompt['rows'])}  "
            f"top-10 overlap {np.mean(top10):.2f}  greedy prefix {follow}/{len(greedy)}"
        )


if __name__ == "__main__":
    main()
