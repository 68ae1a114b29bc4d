#!/usr/bin/env python3
"""Reference for the candle trainer: fixtures + goldens with transformers + PEFT (f32, CPU).

Run from the repository root:  python3 train/tests/reference/make_goldens.py
See README.md next to this file for every output and every field of goldens.json.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_data import format_example, generate_rows  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
FIX = REPO / "train/tests/fixtures"
MODEL_DIR = FIX / "tiny-qwen2"
DATA_DIR = FIX / "tiny-data"
SHARDED_DIR = FIX / "tiny-data-sharded/data"
ADAPTER_DIR = FIX / "parity-adapter"
QWEN_TOK_DIR = FIX / "qwen2.5-tokenizer"
GOLDENS = REPO / "train/tests/reference/goldens.json"

# Qwen2.5's pre-tokenizer split regex (from its tokenizer.json).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN = "<|im_end|>"

DATA_SEED = 20250
N_TRAIN, N_TEST = 130, 17
TOKENIZER_VOCAB = 512

SETTINGS = dict(
    max_length=64, pack_chunk=1000, micro_batch=2, grad_accum=2, epochs=1, shuffle=False,
    lr=2e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01, max_grad_norm=1.0,
    warmup_ratio=0.1, eval_every=8, r=8, alpha=16, dropout=0.0,
    targets=["q_proj", "k_proj", "v_proj", "o_proj"],
)
MODEL_SEED = 1234
ADAPTER_SEED = 4321


def rel(p):
    return str(Path(p).resolve().relative_to(REPO))


# ---------------------------------------------------------------- data
def write_data(train, test):
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    (DATA_DIR / "data").mkdir(exist_ok=True)
    schema = pa.schema([
        ("prompt", pa.string()),
        ("prompt_id", pa.string()),
        # the hub's field order inside the struct is (content, role)
        ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("category", pa.string()),
    ])
    for split, rows in (("train", train), ("test", test)):
        with open(DATA_DIR / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        table = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table, DATA_DIR / "data" / f"{split}-00000-of-00001.parquet", compression="snappy")
    # The same rows as other writers lay them out: train in 2 shards, legacy list naming
    # (`list.item` rather than `list.element`), small row groups, no dictionary pages.
    SHARDED_DIR.mkdir(parents=True, exist_ok=True)
    half = len(train) // 2
    for name, rows in (("train-00000-of-00002", train[:half]), ("train-00001-of-00002", train[half:]),
                       ("test-00000-of-00001", test)):
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), SHARDED_DIR / f"{name}.parquet",
                       compression="snappy", use_compliant_nested_type=False, row_group_size=24,
                       use_dictionary=False)


# ---------------------------------------------------------------- tokenizer
def build_tokenizer(texts):
    tok = Tokenizer(models.BPE(byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.post_processor = None
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB, min_frequency=2, show_progress=False,
        special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def write_tokenizer(tok):
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    tok.save(str(MODEL_DIR / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    (MODEL_DIR / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


# ---------------------------------------------------------------- pipeline (ml-spec §1.3)
def tokenize_rows(rows, hf_tok, eos_id):
    out = []
    for row in rows:
        text = format_example(row["messages"])
        ids = hf_tok(text, truncation=False, add_special_tokens=False)["input_ids"]
        out.append(list(ids) + [eos_id])
    return out


def pack(examples, max_length, chunk):
    """HF `group_texts` under `datasets.map(batched=True, batch_size=chunk)`."""
    blocks = []
    for start in range(0, len(examples), chunk):
        concat = [t for ex in examples[start:start + chunk] for t in ex]
        total = (len(concat) // max_length) * max_length
        blocks += [concat[i:i + max_length] for i in range(0, total, max_length)]
    return blocks


# ---------------------------------------------------------------- model
def build_model(vocab_size):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(MODEL_SEED)
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=True,
        rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=128,
        bos_token_id=0, eos_token_id=2, pad_token_id=0,
    )
    config._attn_implementation = "eager"
    model = Qwen2ForCausalLM(config).to(torch.float32)
    gen = torch.Generator().manual_seed(MODEL_SEED + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_proj.bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "embeddings not tied"
    return model


def save_model(model):
    try:
        model.save_pretrained(MODEL_DIR, safe_serialization=True)
    except TypeError:  # transformers >= 5 always writes safetensors
        model.save_pretrained(MODEL_DIR)
    # transformers 5 writes `rope_parameters` and `sliding_window: null`; real Qwen2.5 configs (and
    # candle's qwen2::Config) have a top-level `rope_theta` and an integer `sliding_window`.
    cfg_path = MODEL_DIR / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["rope_theta"] = model.config.rope_parameters["rope_theta"] if hasattr(model.config, "rope_parameters") \
        else model.config.rope_theta
    cfg["sliding_window"] = cfg["max_position_embeddings"]
    cfg["torch_dtype"] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    from safetensors import safe_open

    with safe_open(str(MODEL_DIR / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert "lm_head.weight" not in keys, "tied lm_head must not be saved"
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys), "weights must be f32"


def batches(blocks, size):
    return [torch.tensor(blocks[i:i + size], dtype=torch.long) for i in range(0, len(blocks), size)]


@torch.no_grad()
def evaluate(model, eval_batches):
    model.eval()
    total, count = 0.0, 0
    for b in eval_batches:
        loss = model(input_ids=b, labels=b).loss.item()
        n = b.shape[0] * (b.shape[1] - 1)
        total += loss * n
        count += n
    model.train()
    return total / count


def peft_name(param_name):
    return param_name.replace(".default", "")


def lora_params(model):
    return [(peft_name(n), p) for n, p in model.named_parameters() if "lora_" in n]


def tolist(t):
    return t.detach().to(torch.float64).tolist()


# ---------------------------------------------------------------- real tokenizer cases
def real_tokenizer_cases(texts):
    tok = Tokenizer.from_file(str(QWEN_TOK_DIR / "tokenizer.json"))
    cfg = json.loads((QWEN_TOK_DIR / "tokenizer_config.json").read_text())
    eos_id = tok.token_to_id(cfg["eos_token"])
    cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in texts]
    try:  # the study tokenizes through transformers; check it agrees with the raw tokenizer
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(QWEN_TOK_DIR))
        for c in cases:
            got = hf(c["text"], truncation=False, add_special_tokens=False)["input_ids"]
            assert got == c["ids"], f"AutoTokenizer disagrees on {c['text']!r}"
        assert hf.eos_token_id == eos_id
        checked = "transformers.AutoTokenizer agrees"
    except Exception as e:  # noqa: BLE001 (recorded in the goldens, not fatal)
        checked = f"AutoTokenizer check skipped: {e}"
    return {"eos_id": eos_id, "autotokenizer_check": checked, "cases": cases}


EDGE_TEXTS = [
    "Hello, world! 12345 + 67 = 12412.",
    "  leading and trailing  spaces \n\n\n\ttabs\there  ",
    "Ünïcödé café naïve — “quotes” 日本語のテキスト 😀👍",
    "decomposed e\u0301 and composed \u00e9 (NFC)",
    "User: hi<|im_end|>\n\nAssistant: <|im_start|>literal special tokens<|endoftext|>",
    "def f(x):\n    return x ** 2  # comment\n",
    "I'm sure they're fine, it's John's and we'll see; I'VE DONE it",
]


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    import peft
    import tokenizers
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    s = dict(SETTINGS)
    train_rows, test_rows = generate_rows(DATA_SEED, N_TRAIN, N_TEST)
    write_data(train_rows, test_rows)

    corpus = [format_example(r["messages"]) for r in train_rows + test_rows]
    write_tokenizer(build_tokenizer(corpus))
    hf_tok = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    eos_id = hf_tok.convert_tokens_to_ids(EOS_TOKEN)
    assert eos_id == hf_tok.eos_token_id == 2, (eos_id, hf_tok.eos_token_id)
    vocab_size = len(hf_tok)
    s.update(eos_id=eos_id, vocab_size=vocab_size, eval_batch=s["micro_batch"])

    # pipeline
    train_ex = tokenize_rows(train_rows, hf_tok, eos_id)
    eval_ex = tokenize_rows(test_rows, hf_tok, eos_id)
    L = s["max_length"]
    train_blocks = pack(train_ex, L, s["pack_chunk"])
    eval_blocks = pack(eval_ex, L, s["pack_chunk"])
    packing = {
        "n_train_examples": len(train_ex), "n_eval_examples": len(eval_ex),
        "train": train_blocks, "eval": eval_blocks,
        "small_chunk": {"chunk": 7, "train": pack(train_ex, L, 7), "eval": pack(eval_ex, L, 7)},
    }
    mb, ga = s["micro_batch"], s["grad_accum"]
    train_batches = batches(train_blocks, mb)
    eval_batches = batches(eval_blocks, s["eval_batch"])
    n_micro = len(train_batches)
    T = n_micro * s["epochs"] // ga
    warmup = int(s["warmup_ratio"] * T)
    s.update(n_train_micro_batches=n_micro, total_steps=T, warmup_steps=warmup)
    print(f"tokens train={sum(map(len, train_ex))} eval={sum(map(len, eval_ex))}; "
          f"blocks train={len(train_blocks)} eval={len(eval_blocks)}; micro={n_micro} T={T}")
    assert T >= 20, f"need at least 20 optimizer steps, got {T}"
    assert len(train_blocks) % mb != 0 and n_micro % ga != 0, "want a short last micro-batch and a trailing unstepped one"
    assert len(eval_blocks) % s["eval_batch"] != 0, "want a short last eval batch (tests the token weighting)"

    # base model
    model = build_model(vocab_size)
    save_model(model)
    base_eval = evaluate(model, eval_batches)
    model.eval()
    with torch.no_grad():
        block_losses = [model(input_ids=b[None], labels=b[None]).loss.item()
                        for b in torch.tensor(eval_blocks, dtype=torch.long)]
        logits = model(input_ids=torch.tensor(eval_blocks[:1], dtype=torch.long)).logits[0]
    positions = [0, 1, L - 1]
    base_logits = {"block": 0, "positions": positions, "rows": [tolist(logits[p]) for p in positions]}
    print(f"base eval loss {base_eval:.6f} (ln V = {math.log(vocab_size):.4f})")

    # fixed initial adapter
    cfg = LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=s["dropout"],
                     target_modules=s["targets"], bias="none", task_type="CAUSAL_LM",
                     init_lora_weights=True)
    pm = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(ADAPTER_SEED)
    with torch.no_grad():
        for name, p in lora_params(pm):
            if ".lora_A." in name:
                bound = 1.0 / math.sqrt(p.shape[1])
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    for mod in pm.modules():  # the study sets the scale explicitly (= alpha / r here)
        if hasattr(mod, "scaling") and isinstance(mod.scaling, dict) and "default" in mod.scaling:
            mod.scaling["default"] = s["alpha"] / s["r"]
    s["scaling"] = s["alpha"] / s["r"]
    pm.save_pretrained(str(ADAPTER_DIR))
    (ADAPTER_DIR / "README.md").unlink(missing_ok=True)  # PEFT's generated model card
    acfg_path = ADAPTER_DIR / "adapter_config.json"  # PEFT writes target_modules from a set: fix the order
    acfg = json.loads(acfg_path.read_text())
    acfg["target_modules"] = sorted(acfg["target_modules"])
    acfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
    initial = {n: tolist(p) for n, p in lora_params(pm)}

    # gradients of the first micro-batch (unscaled loss)
    pm.train()
    pm.zero_grad(set_to_none=True)
    loss0 = pm(input_ids=train_batches[0], labels=train_batches[0]).loss
    loss0.backward()
    grads = {n: tolist(p.grad) for n, p in lora_params(pm)}
    assert all(np.abs(np.array(g)).max() > 0 for g in grads.values()), "a LoRA gradient is zero"
    first = {"blocks": list(range(mb)), "loss": loss0.item(), "grads": grads}
    pm.zero_grad(set_to_none=True)

    # the training run (compare_lora_init.py::train_with_init, unshuffled, dropout 0)
    params = [p for _, p in lora_params(pm)]
    opt = torch.optim.AdamW(params, lr=s["lr"], betas=tuple(s["betas"]), eps=s["eps"],
                            weight_decay=s["weight_decay"])
    sched = get_linear_schedule_with_warmup(opt, warmup, T)
    curve = {"train": [], "eval": [], "lr": [], "grad_norm": []}
    step, pending = 0, []
    for _epoch in range(s["epochs"]):
        for i, batch in enumerate(train_batches):
            if i % s["eval_every"] == 0:
                curve["eval"].append([i, evaluate(pm, eval_batches)])
            pm.train()
            loss = pm(input_ids=batch, labels=batch).loss
            (loss / ga).backward()
            pending.append(loss.item())
            if (i + 1) % ga == 0:
                norm = torch.nn.utils.clip_grad_norm_(params, s["max_grad_norm"])
                step += 1
                curve["lr"].append([step, sched.get_last_lr()[0]])
                curve["grad_norm"].append([step, norm.item()])
                opt.step()
                sched.step()
                opt.zero_grad()
                curve["train"].append([step, sum(pending) / len(pending)])
                pending = []
        opt.zero_grad()  # trailing micro-batches never step
        pending = []
        curve["eval"].append([n_micro, evaluate(pm, eval_batches)])
    final = {n: tolist(p) for n, p in lora_params(pm)}
    print("train", [round(l, 4) for _, l in curve["train"]])
    print("eval", [(i, round(l, 4)) for i, l in curve["eval"]])

    qwen_texts = [format_example(r["messages"]) for r in train_rows[:6]] + \
                 [format_example(test_rows[0]["messages"])] + EDGE_TEXTS

    goldens = {
        "generator": "train/tests/reference/make_goldens.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "tokenizers": tokenizers.__version__,
                     "pyarrow": pa.__version__, "python": sys.version.split()[0]},
        "paths": {"model_dir": rel(MODEL_DIR), "data_dir": rel(DATA_DIR),
                  "adapter_dir": rel(ADAPTER_DIR), "qwen_tokenizer_dir": rel(QWEN_TOK_DIR)},
        "data_seed": DATA_SEED,
        "settings": s,
        "packing": packing,
        "base_eval_loss": base_eval,
        "base_block_losses": block_losses,
        "base_logits": base_logits,
        "initial_adapter": initial,
        "first_micro_batch": first,
        "curve": curve,
        "final_adapter": final,
        "real_tokenizer": real_tokenizer_cases(qwen_texts),
    }
    GOLDENS.write_text(json.dumps(goldens, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {rel(GOLDENS)} ({GOLDENS.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    os.chdir(REPO)
    main()
