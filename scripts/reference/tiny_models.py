"""Tiny random HF checkpoints (llama, qwen2, qwen3, and a LoRA adapter on qwen3) with reference outputs.

Makes tests/fixtures/tiny/<name>/ for name in llama, qwen2, qwen3, qwen3-lora:

  llama/       config.json, generation_config.json, model.safetensors (untied lm_head)
  qwen2/       the same, tied embeddings, SHARDED: model-0000N-of-0000M.safetensors +
               model.safetensors.index.json; q/k/v projections carry biases
  qwen3/       tied embeddings, head_dim 32 != hidden/heads (16), q_norm/k_norm
  qwen3-lora/  adapter_config.json (base_model_name_or_path "../qwen3"), adapter_model.safetensors:
               a PEFT LoRA adapter (r 4, alpha 8) on every attention and MLP projection

Every model folder (not the adapter) holds tokenizer.json, a tiny byte-level BPE (about 320 ids;
<|endoftext|> 0, <|im_start|> 1, <|im_end|> 2) trained here with the tokenizers library, and
tokenizer_config.json with a ChatML chat_template, eos_token <|im_end|> and bos_token null.
generation_config.json has eos_token_id = the id of <|im_end|>.

The weights are random (torch.manual_seed), in float32. Initialisation is scaled up
(initializer_range 0.2) and the RMSNorm weights and the biases are perturbed away from 1 and 0, so
logits are far from zero, greedy tokens vary, and a loader that drops a norm or a bias shows up.
config.json also gets a top-level "rope_theta" (transformers 5 writes only "rope_parameters"), and
qwen2's gets an integer "sliding_window" (unused, use_sliding_window is false) as hub Qwen2 configs
have.

Each folder (the adapter too) gets reference.json:

    {"generator": {...}, "texts": [2 strings], "input_ids": [[12 ids], [20 ids]],
     "logits": [[[vocab floats] per position] per sequence], "greedy_ids": [[16 ids] per sequence]}

logits are the full rows for every position, each sequence run on its own (batch 1); greedy_ids are
16 tokens from a manual greedy loop (full forward each step, argmax, EOS does not stop it). For
qwen3-lora they are the outputs of qwen3 + the adapter (PeftModel), loaded back from disk.

Run from the repository root (a few seconds):

    ~/.cache/humanlm/ref/bin/python scripts/reference/tiny_models.py
"""

import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import FIXTURES, f32_list, generator, rel, write_json  # noqa: E402

OUT_DIR = os.path.join(FIXTURES, "tiny")
SEED = 1234
VOCAB_SIZE = 320
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
N_GREEDY = 16
SEQ_LENS = (12, 20)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Training text for the tiny tokenizer (written for this project; a few hundred words).
CORPUS = """\
The workbench simulates people who talk to an assistant. A simulated user has a name, a mood, a
goal and a way of writing: some type in short bursts, some write long careful paragraphs, some
make typos and never fix them. The assistant answers, the user reads the answer and decides what to
say next. When the goal is reached, or when the user gives up, the conversation ends.

Hello there! Can you help me plan a trip? I want to see the mountains in the spring, but I do not
like crowds. What would you suggest? I have about ten days and a small budget.

Sure, I can help with that. The mountains are quiet in early spring, before the summer visitors
arrive. You could stay in a small village, walk in the valleys, and take the train between towns.
Trains are cheap if you book them early, and most villages have a bakery and a market.

That sounds lovely. How cold is it at night? Should I bring a warm coat, or is a light jacket
enough? I get cold easily, and I would rather carry too much than too little.

Nights can be cold, so bring a warm layer, a hat and good shoes. Days are often mild and sunny.
If it rains, the paths get muddy, so boots with a strong grip are a good idea.

Thanks! One more question: is it easy to find food if I do not eat meat? My friend is coming with
me and she is vegetarian, and we both love to cook when we can.

Yes. Most places serve soups, bread, cheese, pasta and salads, and markets sell fresh vegetables
and fruit. If your room has a kitchen, you can cook your own dinner with what you find there.

The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore. A stitch in
time saves nine. Numbers like 1, 2, 3, 10, 42 and 2026 show up in dates and prices: 3.50, 12.00,
the 7th of May. Questions end with a question mark? Lists use commas, and code uses brackets:
fn main() { let x = 1; } or def f(x): return x + 1.

user: hi, quick question about my order
assistant: Of course. What is the order number?
user: its 4471, it was supposed to arrive yesterday and it didnt
assistant: I am sorry about that. Let me check where it is. It left the warehouse two days ago
and should arrive today or tomorrow.
user: ok thanks, that is fine i guess
"""

SENTENCES = (
    "The user wants to eat.",
    # what the chat template makes of [{"role": "user", "content": "Hello there!"}] + generation prompt
    "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\n",
)


def train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def tokenizer_config():
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 256,
    }


def input_ids(tok):
    seqs = []
    for text, n in zip(SENTENCES, SEQ_LENS):
        ids = tok.encode(text).ids
        assert len(ids) == n, f"{text!r} tokenises to {len(ids)} ids, want {n}: adjust SENTENCES"
        seqs.append(ids)
    return seqs


def perturb(model, seed):
    """Move norm weights off 1 and biases off 0 so that loading them wrongly changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def build(kind, vocab, eos_id, pad_id):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    if kind == "llama":
        cfg = LlamaConfig(**common, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
        cls = LlamaForCausalLM
    elif kind == "qwen2":
        cfg = Qwen2Config(**common, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                          use_sliding_window=False)
        cls = Qwen2ForCausalLM
    elif kind == "qwen3":
        cfg = Qwen3Config(**common, head_dim=32, rope_theta=1000000.0, rms_norm_eps=1e-6,
                          tie_word_embeddings=True, use_sliding_window=False)
        cls = Qwen3ForCausalLM
    else:
        raise ValueError(kind)
    # A different seed per architecture, fixed, so each model is reproducible on its own.
    seed = SEED + {"llama": 0, "qwen2": 1, "qwen3": 2}[kind]
    torch.manual_seed(seed)
    model = cls(cfg).to(torch.float32).eval()
    perturb(model, seed)
    return model, cfg


def rope_theta_of(cfg):
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" in rp:
        return rp["rope_theta"]
    return cfg.rope_theta


def add_legacy_config_keys(folder, cfg):
    """Older readers (and most hub checkpoints) carry rope_theta at the top level of config.json."""
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        conf = json.load(f)
    conf.setdefault("rope_theta", rope_theta_of(cfg))
    if conf.get("model_type") == "qwen2" and conf.get("sliding_window") is None:
        # Qwen2/2.5 checkpoints on the hub carry an integer here even with use_sliding_window
        # false; transformers 5 writes null. The value is unused while use_sliding_window is false.
        conf["sliding_window"] = conf["max_position_embeddings"]
    with open(path, "w") as f:
        json.dump(conf, f, indent=2, sort_keys=True)
        f.write("\n")


@torch.no_grad()
def reference(model, seqs):
    logits, greedy = [], []
    for ids in seqs:
        out = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
        logits.append([f32_list(row.numpy()) for row in out])
        cur, new = list(ids), []
        for _ in range(N_GREEDY):
            nxt = int(model(input_ids=torch.tensor([cur]), use_cache=False).logits[0, -1].argmax())
            new.append(nxt)
            cur.append(nxt)
        greedy.append(new)
    return logits, greedy


def save_model(kind, model, cfg, tok, folder, eos_id, pad_id):
    from transformers import GenerationConfig

    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    kwargs = {"max_shard_size": "100KB"} if kind == "qwen2" else {}
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    GenerationConfig(bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id).save_pretrained(folder)
    add_legacy_config_keys(folder, cfg)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(), f, indent=2)
        f.write("\n")
    # transformers 5 may also write chat_template.jinja; keep the template in one place only.
    jinja = os.path.join(folder, "chat_template.jinja")
    if os.path.exists(jinja):
        os.remove(jinja)


def check_reload(folder, model, seqs):
    """The saved folder must load back (weights, tokenizer, chat template) to the same outputs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    again = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        for ids in seqs:
            a = model(input_ids=torch.tensor([ids])).logits
            b = again(input_ids=torch.tensor([ids])).logits
            assert torch.equal(a, b), f"{folder}: reloaded model differs"
    hf_tok = AutoTokenizer.from_pretrained(folder)
    chat = hf_tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", repr(chat)
    assert hf_tok.eos_token == "<|im_end|>" and hf_tok.bos_token is None


def make_lora(base_folder, base_model, folder):
    from peft import LoraConfig, PeftModel, get_peft_model

    if os.path.isdir(folder):
        shutil.rmtree(folder)
    torch.manual_seed(SEED + 10)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(base_model, cfg)
    peft_model.save_pretrained(folder, safe_serialization=True)
    peft_model.unload()  # take the LoRA layers back out of the base model object

    path = os.path.join(folder, "adapter_config.json")
    with open(path) as f:
        conf = json.load(f)
    conf["base_model_name_or_path"] = "../qwen3"
    conf["target_modules"] = sorted(conf["target_modules"])  # PEFT writes a set: random order
    with open(path, "w") as f:
        json.dump(conf, f, indent=2, sort_keys=True)
        f.write("\n")
    readme = os.path.join(folder, "README.md")  # PEFT's model-card template; not needed here
    if os.path.exists(readme):
        os.remove(readme)

    # Outputs of base + adapter, both loaded back from disk.
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32).eval()
    return PeftModel.from_pretrained(base, folder).eval()


def folder_size(folder):
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


def main():
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    tok = train_tokenizer()
    vocab = tok.get_vocab_size()
    eos_id, pad_id = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    seqs = input_ids(tok)
    texts = [tok.decode(ids, skip_special_tokens=False) for ids in seqs]
    print(f"tokenizer: {vocab} ids; input lengths {[len(s) for s in seqs]}", file=sys.stderr)

    gen_pkgs = ["torch", "transformers", "tokenizers", "safetensors", "numpy"]
    sizes = {}
    base_logits = {}
    for kind in ("llama", "qwen2", "qwen3"):
        model, cfg = build(kind, vocab, eos_id, pad_id)
        folder = os.path.join(OUT_DIR, kind)
        save_model(kind, model, cfg, tok, folder, eos_id, pad_id)
        check_reload(folder, model, seqs)
        logits, greedy = reference(model, seqs)
        base_logits[kind] = logits
        spread = max(abs(x) for seq in logits for row in seq for x in row)
        print(f"{kind}: max |logit| {spread:.2f}, greedy {greedy}", file=sys.stderr)
        write_json(
            os.path.join(folder, "reference.json"),
            {
                "generator": generator(__file__, gen_pkgs, seed=SEED, model=kind),
                "texts": texts,
                "input_ids": seqs,
                "logits": logits,
                "greedy_ids": greedy,
            },
        )
        sizes[kind] = folder_size(folder)
        if kind == "qwen3":
            qwen3_model = model

    lora_folder = os.path.join(OUT_DIR, "qwen3-lora")
    peft_model = make_lora(os.path.join(OUT_DIR, "qwen3"), qwen3_model, lora_folder)
    logits, greedy = reference(peft_model, seqs)
    delta = max(
        abs(a - b)
        for s1, s2 in zip(logits, base_logits["qwen3"])
        for r1, r2 in zip(s1, s2)
        for a, b in zip(r1, r2)
    )
    print(f"qwen3-lora: max |logit - base logit| {delta:.3f}, greedy {greedy}", file=sys.stderr)
    assert delta > 0.1, "the adapter barely changes the logits"
    write_json(
        os.path.join(lora_folder, "reference.json"),
        {
            "generator": generator(__file__, gen_pkgs + ["peft"], seed=SEED, model="qwen3-lora",
                                   base_model="../qwen3"),
            "texts": texts,
            "input_ids": seqs,
            "logits": logits,
            "greedy_ids": greedy,
        },
    )
    sizes["qwen3-lora"] = folder_size(lora_folder)

    total = 0
    for name, size in sizes.items():
        total += size
        print(f"  {rel(os.path.join(OUT_DIR, name))}: {size / 1024:.1f} KiB", file=sys.stderr)
        for f in sorted(os.listdir(os.path.join(OUT_DIR, name))):
            print(f"      {f}", file=sys.stderr)
    print(f"tiny fixtures total: {total / 1024:.1f} KiB", file=sys.stderr)


if __name__ == "__main__":
    main()
