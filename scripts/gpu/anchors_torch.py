#!/usr/bin/env python3
"""The PyTorch anchor, run on the GPU machine in the same call as `humanlm gpu-check`.

PyTorch + transformers in eager mode (no torch.compile; transformers' default attention) and
PEFT, on random-weight Qwen3 models built from the same configs as gpu-check's shapes, in bf16,
by the same protocol:
  prefill   one forward pass over `--prompt` random ids into a fresh cache, median of 3
  decode    `model.generate` (greedy, default dynamic cache) of exactly `--decode` new tokens
            after the prompt; the decode time is generate's time less the prefill median
  train     LoRA r=16, alpha 32, on the seven projections, batch 4 x 512, next-token loss,
            backward, clip 1.0, AdamW; one warm-up step, 3 timed
  memory    torch.cuda.max_memory_allocated per stage

  python3 scripts/gpu/anchors_torch.py --out anchors-torch.json [--shapes qwen3-0.6b,qwen3-8b]

The JSON is rewritten after every stage, so a run cut short keeps what it measured.
"""
import argparse
import json
import statistics
import sys
import time

import torch

# The configs of Qwen/Qwen3-0.6B and Qwen/Qwen3-8B (what src/gpu/random.rs builds).
SHAPES = {
    "qwen3-0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                       intermediate_size=3072, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
                     intermediate_size=12288, tie_word_embeddings=False),
    "tiny-qwen3": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=256, tie_word_embeddings=False, vocab_size=1024,
                       num_key_value_heads=2, head_dim=32),
}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def log(msg):
    print(f"[anchors-torch {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(name, dev):
    from transformers import AutoModelForCausalLM, Qwen3Config
    kw = dict(vocab_size=151936, num_key_value_heads=8, head_dim=128, hidden_act="silu",
              max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
              attention_bias=False)
    kw.update(SHAPES[name])
    cfg = Qwen3Config(**kw)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(dev):
            model = AutoModelForCausalLM.from_config(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.to(dev, torch.bfloat16).eval(), cfg


def sync():
    torch.cuda.synchronize()


def ids(cfg, batch, n, seed, dev):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, n), generator=g).to(dev)


@torch.no_grad()
def inference(model, cfg, a, dev):
    out = {"prefill": [], "decode": []}
    warm = ids(cfg, 1, 64, 1, dev)
    model(warm, use_cache=True, logits_to_keep=1)
    model.generate(warm, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    sync()
    for b in a.batches:
        torch.cuda.reset_peak_memory_stats()
        runs = []
        for r in range(3):
            x = ids(cfg, b, a.prompt, 10 + r, dev)
            sync()
            t = time.perf_counter()
            model(x, use_cache=True, logits_to_keep=1)
            sync()
            runs.append(time.perf_counter() - t)
        p = statistics.median(runs)
        out["prefill"].append({"batch": b, "prompt": a.prompt, "seconds": p, "runs": runs,
                               "tok_per_s": b * a.prompt / p})
        x = ids(cfg, b, a.prompt, 20, dev)
        mask = torch.ones_like(x)
        sync()
        t = time.perf_counter()
        y = model.generate(x, attention_mask=mask, max_new_tokens=a.decode,
                           min_new_tokens=a.decode, do_sample=False, pad_token_id=0)
        sync()
        total = time.perf_counter() - t
        assert y.shape[1] == a.prompt + a.decode, y.shape
        d = total - p
        out["decode"].append({"batch": b, "after_prompt": a.prompt, "steps": a.decode,
                              "generate_seconds": total, "seconds": d,
                              "ms_per_step": d * 1e3 / a.decode,
                              "tok_per_s": b * a.decode / d,
                              "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20})
        log(f"batch {b}: prefill {b * a.prompt / p:.0f} tok/s, decode {b * a.decode / d:.1f} tok/s")
    return out


def train(model, cfg, a, dev):
    from peft import LoraConfig, get_peft_model
    import peft
    batch, seq = a.train_batch
    pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                          target_modules=PROJECTIONS))
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = ids(cfg, batch, seq, 30, dev)
    torch.cuda.reset_peak_memory_stats()

    def step():
        loss = pm(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    losses = [step()]
    times = []
    for _ in range(3):
        sync()
        t = time.perf_counter()
        losses.append(step())
        sync()
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    return {"peft_version": peft.__version__, "rank": 16, "batch": batch, "seq": seq,
            "trainable": sum(p.numel() for p in params), "step_seconds": times,
            "tok_per_s": batch * seq / s, "losses": losses,
            "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="qwen3-0.6b,qwen3-8b")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--train-batch", default="4x512")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    a.batches = [int(x) for x in a.batches.split(",")]
    a.train_batch = tuple(int(x) for x in a.train_batch.split("x"))
    import transformers
    dev = "cuda"
    report = {"torch_version": torch.__version__, "transformers_version": transformers.__version__,
              "card": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
              "command": " ".join(sys.argv), "dtype": "bfloat16",
              "attention": "transformers default (sdpa), eager mode", "throughput": {}}

    def save():
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)

    save()
    for name in a.shapes.split(","):
        entry = report["throughput"].setdefault(name, {})
        t = time.perf_counter()
        try:
            model, cfg = build(name, dev)
            sync()
            entry["build_seconds"] = time.perf_counter() - t
            entry["inference"] = inference(model, cfg, a, dev)
        except Exception as e:  # recorded, and the run goes on
            entry["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
            log(f"{name}: {entry['error']}")
            save()
            continue
        save()
        try:
            if a.train_batch[0] > 0:
                entry["train"] = train(model, cfg, a, dev)
                log(f"{name}: LoRA training {entry['train']['tok_per_s']:.0f} tok/s")
        except Exception as e:
            entry["train"] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
            log(f"{name}: training: {entry['train']['error']}")
        del model
        torch.cuda.empty_cache()
        save()
    save()


if __name__ == "__main__":
    main()
