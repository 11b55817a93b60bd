"""Quantize on load at real size: a random-weight Qwen3-1.7B-shaped bf16 checkpoint, loaded by
humanlm with --quantize q8_0 / q4_0, against llama.cpp on its own quantization of the same weights.

What it does (files under --work, default ~/.cache/humanlm/qwen3-1.7b-random; made once, reused):

  hf/     an HF folder as the Hub ships Qwen3-1.7B: config.json from Qwen3-1.7B's shapes (28
          layers, hidden 2048, MLP 6144, 16 query / 8 KV heads of 128, vocab 151,936, tied
          embeddings), bf16 weights N(0, 0.02) (norms 1) in two shards
          model-0000{1,2}-of-00002.safetensors + model.safetensors.index.json (3.4 GB), and the
          default model's tokenizer (written by `humanlm export`; its 49,152 ids fit the
          embedding's rows).
  bf16.gguf  the same bf16 bytes as a GGUF (gguf-py, architecture qwen3; norms in f32 as
          llama.cpp's converter writes them; the tokenizer from the default model's GGUF, padded
          with unused tokens to the vocabulary size).
  q8_0.gguf, q4_0.gguf  llama.cpp's `llama_model_quantize` of bf16.gguf with `pure` set (every
          matrix the one type, as --quantize does).

Then for each type, 2 threads, a 512-token prompt and 128 new tokens (greedy, EOS ignored):
  humanlm: `humanlm bench --quick --quantize T --checkpoint hf/` (load time, prefill, decode at
           batch 1), while this script samples the process's anonymous and total resident memory
           every 10 ms (/proc/PID/status RssAnon, VmRSS; the shards' mapped pages count in
           VmRSS only: they are page cache, dropped under pressure);
  llama.cpp: load time, prefill, decode b1 as scripts/bench_vs_llamacpp.py measures them.
It prints a table with the ratios and one JSON line with everything; the memory bound the issue
sets is peak ≤ quantized size + largest tensor in f32 + 10%.

Needs llama-cpp-python, gguf, numpy (the benchmark venv):
    python3 -m venv ~/.cache/humanlm/llamacpp
    ~/.cache/humanlm/llamacpp/bin/pip install llama-cpp-python==0.3.36 gguf==0.19.0 numpy
    make build && ~/.cache/humanlm/llamacpp/bin/python scripts/bench_quantize_load.py
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import bench_vs_llamacpp as peer  # noqa: E402  (same llama.cpp measurement, same helpers)

REPO_ROOT = peer.REPO_ROOT

# Qwen3-1.7B's config.json (shapes and rope), as the Hub has it.
CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def tensor_shapes(c):
    h, hd, inter = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    yield "model.embed_tokens.weight", (c["vocab_size"], h)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (h,)
        yield f"{p}.self_attn.q_proj.weight", (q, h)
        yield f"{p}.self_attn.k_proj.weight", (kv, h)
        yield f"{p}.self_attn.v_proj.weight", (kv, h)
        yield f"{p}.self_attn.o_proj.weight", (h, q)
        yield f"{p}.self_attn.q_norm.weight", (hd,)
        yield f"{p}.self_attn.k_norm.weight", (hd,)
        yield f"{p}.post_attention_layernorm.weight", (h,)
        yield f"{p}.mlp.gate_proj.weight", (inter, h)
        yield f"{p}.mlp.up_proj.weight", (inter, h)
        yield f"{p}.mlp.down_proj.weight", (h, inter)
    yield "model.norm.weight", (h,)


def gguf_name(hf):
    table = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if hf in table:
        return table[hf]
    short = {
        "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    rest = hf[len("model.layers."):]
    n, module = rest.split(".", 1)
    module = module[: -len(".weight")]
    return f"blk.{n}.{short[module]}.weight"


def random_bf16(rng, shape):
    """bf16 bits (uint16) of N(0, 0.02) values, or of ones for a norm, rounded as gguf-py does."""
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    if len(shape) == 1:
        x = np.ones(shape, dtype=np.float32)
    else:
        x = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    return quants.quantize(x, T.BF16).view(np.uint16).reshape(shape)


def write_safetensors(path, tensors):
    header, offset = {}, 0
    for name, bits in tensors:
        header[name] = {"dtype": "BF16", "shape": list(bits.shape), "data_offsets": [offset, offset + bits.nbytes]}
        offset += bits.nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, bits in tensors:
            f.write(bits.astype("<u2").tobytes())
    os.replace(path + ".tmp", path)


def default_tokenizer_fields():
    """Tokenizer metadata of the default model's GGUF, for the random model's GGUF."""
    from gguf import GGUFReader

    r = GGUFReader(peer.DEFAULT_GGUF)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def ints(key):
        f = r.fields[key]
        return [int(f.parts[i][0]) for i in f.data]

    def scalar(key):
        f = r.fields.get(key)
        return None if f is None else f.parts[f.data[0]]

    return {
        "model": bytes(scalar("tokenizer.ggml.model")).decode(),
        "pre": bytes(scalar("tokenizer.ggml.pre")).decode() if scalar("tokenizer.ggml.pre") is not None else None,
        "tokens": strings("tokenizer.ggml.tokens"),
        "types": ints("tokenizer.ggml.token_type"),
        "merges": strings("tokenizer.ggml.merges"),
        "bos": int(scalar("tokenizer.ggml.bos_token_id")[0]),
        "eos": int(scalar("tokenizer.ggml.eos_token_id")[0]),
    }


def make_checkpoint(work, humanlm):
    hf = os.path.join(work, "hf")
    gguf_path = os.path.join(work, "bf16.gguf")
    have_hf = os.path.isfile(os.path.join(hf, "model.safetensors.index.json"))
    if have_hf and os.path.isfile(gguf_path):
        return hf, gguf_path
    # The same seed gives the same tensors, so either file can be made again alone.
    rng = np.random.default_rng(0)
    tensors = [(name, random_bf16(rng, shape)) for name, shape in tensor_shapes(CONFIG)]
    if not have_hf:
        write_hf(hf, tensors, humanlm)
    write_gguf(gguf_path, tensors)
    return hf, gguf_path


def write_hf(hf, tensors, humanlm):
    shutil.rmtree(hf, ignore_errors=True)
    os.makedirs(hf)
    print(f"writing the random checkpoint to {hf} (3.4 GB)", file=sys.stderr)
    # The default model's tokenizer files as an HF folder gives them.
    tok_dir = hf + "-tok"
    subprocess.run([humanlm, "export", "--checkpoint", "smollm2-135m-instruct", "--out", tok_dir, "--dtype", "bf16",
                    "--force"], check=True, capture_output=True, cwd=REPO_ROOT)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(tok_dir, f), os.path.join(hf, f))
    shutil.rmtree(tok_dir)
    with open(os.path.join(hf, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    half = CONFIG["num_hidden_layers"] // 2
    shards = [[], []]
    for name, bits in tensors:
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else (0 if "embed" in name else 99)
        shards[0 if layer < half else 1].append((name, bits))
    weight_map, total = {}, 0
    for i, part in enumerate(shards):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        write_safetensors(os.path.join(hf, fname), part)
        for name, bits in part:
            weight_map[name] = fname
            total += bits.nbytes
    with open(os.path.join(hf, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def write_gguf(gguf_path, tensors):
    import gguf

    for stale in ("q8_0.gguf", "q4_0.gguf"):
        if os.path.exists(os.path.join(os.path.dirname(gguf_path), stale)):
            os.remove(os.path.join(os.path.dirname(gguf_path), stale))
    print(f"writing {gguf_path}", file=sys.stderr)
    c, tok = CONFIG, default_tokenizer_fields()
    w = gguf.GGUFWriter(gguf_path + ".tmp", "qwen3")
    w.add_name("qwen3-1.7b-random")
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    w.add_rope_freq_base(float(c["rope_theta"]))
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    pad = c["vocab_size"] - len(tok["tokens"])
    w.add_tokenizer_model(tok["model"])
    if tok["pre"]:
        w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"] + [f"<unused_{i}>" for i in range(pad)])
    w.add_token_types(tok["types"] + [int(gguf.TokenType.UNUSED)] * pad)
    w.add_token_merges(tok["merges"])
    w.add_bos_token_id(tok["bos"])
    w.add_eos_token_id(tok["eos"])
    for name, bits in tensors:
        if bits.ndim == 1:
            # Norms as llama.cpp's converter writes them: f32 (its CPU kernels multiply by f32
            # only). They are ones, exact in either type.
            w.add_tensor(gguf_name(name), (bits.astype(np.uint32) << 16).view(np.float32))
        else:
            w.add_tensor(gguf_name(name), bits.view(np.uint8).reshape(bits.shape[:-1] + (bits.shape[-1] * 2,)),
                         raw_dtype=gguf.GGMLQuantizationType.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(gguf_path + ".tmp", gguf_path)


def llama_quantize(src, dst, kind, threads):
    import llama_cpp

    if os.path.isfile(dst):
        return 0.0
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}[kind]
    params.pure = True
    params.nthread = threads
    t = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(src.encode(), (dst + ".tmp").encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize {kind} failed ({rc})")
    os.replace(dst + ".tmp", dst)
    return time.perf_counter() - t


def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_humanlm(humanlm, hf, kind, args):
    cmd = [humanlm, "bench", "--quick", "--quantize", kind, "--checkpoint", hf,
           "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
           "--threads", str(args.threads), "--json"]
    print(f"humanlm: {shlex.join(cmd)}", file=sys.stderr)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HUMANLM_CHECKPOINTS": os.path.join(REPO_ROOT, "checkpoints")})
    peak_anon = peak_rss = 0
    while proc.poll() is None:
        peak_anon = max(peak_anon, status_kb(proc.pid, "RssAnon"))
        peak_rss = max(peak_rss, status_kb(proc.pid, "VmRSS"))
        time.sleep(0.01)
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(2)
    report = json.loads(out.strip().splitlines()[-1])
    report["peak_anon_mb"] = peak_anon / 1024
    report["peak_rss_sampled_mb"] = peak_rss / 1024
    return {"command": shlex.join(cmd), "result": report}


def quantized_mb(kind):
    """Bytes of the model as --quantize stores it (every matrix the type, norms f32), in MiB."""
    per = {"q8_0": 34 / 32, "q4_0": 18 / 32}[kind]
    total = 0
    for _, shape in tensor_shapes(CONFIG):
        n = int(np.prod(shape))
        total += n * (per if len(shape) == 2 else 4)
    largest_f32 = max(int(np.prod(s)) for _, s in tensor_shapes(CONFIG)) * 4
    return total / 2**20, largest_f32 / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/humanlm/qwen3-1.7b-random"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--types", default="q8_0,q4_0")
    ap.add_argument("--humanlm", default=os.path.join(REPO_ROOT, "target/release/humanlm"))
    args = ap.parse_args()
    args.repeats = 1
    hf, bf16 = make_checkpoint(args.work, args.humanlm)
    rows, record = [], {"cpu": peer.cpu_model(), "nproc": os.cpu_count(), "threads": args.threads,
                        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                        "python": platform.python_version(),
                        "llama_cpp_python": peer.version_of("llama_cpp_python"),
                        "command": shlex.join([sys.executable] + sys.argv), "types": {}}
    for kind in args.types.split(","):
        gguf_q = os.path.join(args.work, f"{kind}.gguf")
        quant_s = llama_quantize(bf16, gguf_q, kind, args.threads)
        hl = run_humanlm(args.humanlm, hf, kind, args)
        args.checkpoint_file = gguf_q
        lc = peer.run_llamacpp(args)
        size_mb, largest_mb = quantized_mb(kind)
        bound = (size_mb + largest_mb) * 1.1
        h = hl["result"]
        record["types"][kind] = {"humanlm": hl, "llama_cpp": lc, "llama_quantize_s": quant_s,
                                 "quantized_mb": size_mb, "largest_tensor_f32_mb": largest_mb,
                                 "memory_bound_mb": bound}
        rows += [
            (f"{kind} load s", h["load_s"], lc["load_s"]),
            (f"{kind} prefill tok/s", h["prefill_tok_s"], lc["prefill_tok_s"]),
            (f"{kind} decode tok/s", h["decode_tok_s_b1"], lc["decode_tok_s_b1"]),
            (f"{kind} peak anon MB", h["peak_anon_mb"], None),
            (f"{kind} bound MB", bound, None),
        ]
    print(f"\nrandom Qwen3-1.7B-shaped, bf16 safetensors -> quantized on load; threads={args.threads} "
          f"prompt={args.prompt_tokens} new={args.new_tokens}\nCPU: {record['cpu']}")
    print(f"{'':22}{'humanlm':>12}{'llama.cpp':>12}{'ratio':>10}")
    for name, h, l in rows:
        ratio = None
        if h is not None and l:
            ratio = (l / h) if name.endswith("load s") else (h / l)
        print(f"{name:22}{peer.fmt(h):>12}{peer.fmt(l):>12}{peer.fmt(ratio, 2):>10}")
    print("(ratio: above 1 means humanlm is faster; peak anon is humanlm's whole run, load included)")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
