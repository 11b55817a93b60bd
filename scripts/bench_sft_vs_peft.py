"""LoRA SFT training speed: humanlm's differentiable decoder against PyTorch + PEFT, same machine.

Both sides train LoRA factors (rank 8, alpha 16, on every projection: q, k, v, o, gate, up, down)
on the default model's shapes (SmolLM2-135M, float32 — training dequantizes the GGUF), one
sequence of --seq random tokens per step, next-token cross-entropy on every position, backward,
and an AdamW step. Each side runs one untimed warm-up step and --steps timed steps; the median
step time gives tokens/s, and the ratio (humanlm / PyTorch) is printed and written as JSON.

humanlm side: `humanlm gpu-check --device cpu --dtype f32` on a random-weight model with
SmolLM2-135M's config (the same shapes and FLOPs as the real weights). PyTorch side: the real
model loaded by transformers from the GGUF, PEFT LoRA, torch.optim.AdamW.

Run from the repository root with the reference venv (scripts/reference/venv.sh):
    ~/.cache/humanlm/ref/bin/python scripts/bench_sft_vs_peft.py [--batch 1] [--seq 256] [--steps 3] [--threads 2]
Not part of the tests: timings depend on the machine and its load.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "reference"))
from _common import REPO_ROOT, SMOLLM_DIR, SMOLLM_FILE, generator, write_json  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_side(batch, seq, steps, threads, rank):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(SMOLLM_DIR, gguf_file=SMOLLM_FILE, dtype=torch.float32)
    config = model.config
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i > 0:
            times.append(time.perf_counter() - t0)
    return config, statistics.median(times), times


def humanlm_side(config, batch, seq, steps, threads, rank, binary):
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = os.path.join(tmp, "config.json")
        config.to_json_file(cfg_path)
        cmd = [
            binary, "gpu-check", "--device", "cpu", "--dtype", "f32", "--no-default-model",
            "--parity-shape", cfg_path, "--shapes", cfg_path, "--batches", "1", "--prompt", "8",
            "--decode", "2", "--repeats", "1", "--train-batch", f"{batch}x{seq}", "--train-steps", str(steps),
            "--rank", str(rank),
        ]
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode not in (0, 1):
            sys.exit(f"humanlm gpu-check failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
        report = json.loads(out.stdout)
    train = next(iter(report["throughput"].values()))["train"]
    return train, " ".join(cmd[1:]).replace(cfg_path, "<SmolLM2-135M config.json>")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1, help="sequences a step")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--binary", default=os.path.join(REPO_ROOT, "target", "release", "humanlm"))
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "benches", "results", "cpu-lora-sft-vs-peft.json"))
    a = ap.parse_args()

    config, torch_step, torch_times = peft_side(a.batch, a.seq, a.steps, a.threads, a.rank)
    torch_tps = a.batch * a.seq / torch_step
    ours, command = humanlm_side(config, a.batch, a.seq, a.steps, a.threads, a.rank, a.binary)
    ours_tps = a.batch * a.seq / ours["median_step_seconds"]
    ratio = ours_tps / torch_tps
    result = {
        "what": "LoRA SFT step (rank %d, alpha %d, all projections), batch %d x %d tokens, float32, SmolLM2-135M shapes"
        % (a.rank, 2 * a.rank, a.batch, a.seq),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": a.threads,
            "cores": os.cpu_count(),
            # Other work on the machine slows both sides; recorded so a number can be judged.
            "load_average_1m_at_end": os.getloadavg()[0],
        },
        "humanlm": {"tokens_per_s": ours_tps, "detail": ours, "command": command},
        "pytorch_peft": {"tokens_per_s": torch_tps, "step_s_median": torch_step, "step_s": torch_times},
        "ratio_humanlm_over_pytorch": ratio,
        "generator": generator(__file__, ["torch", "transformers", "peft"]),
    }
    write_json(a.out, result, indent=2)
    print(f"humanlm {ours_tps:.0f} tok/s, PyTorch+PEFT {torch_tps:.0f} tok/s: {ratio:.2f}x  ({os.path.relpath(a.out)})")


if __name__ == "__main__":
    main()
