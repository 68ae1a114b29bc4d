#!/usr/bin/env python3
"""Cross-check the Rust generators with transformers + PEFT (manual; cargo test does not run it).

  target/debug/lorasweep make-tiny-model /tmp/tiny/model
  target/debug/lorasweep make-tiny-data /tmp/tiny/data
  python3 train/tests/reference/check_tiny_model.py /tmp/tiny/model /tmp/tiny/data

Loads the Rust-written checkpoint with `Qwen2ForCausalLM.from_pretrained` (strict: every tensor
must be present, tied embeddings) and its tokenizer with `AutoTokenizer`, packs the data exactly as
`make_goldens.py` does, then trains a LoRA (r 8, alpha 16, q/k/v/o, AdamW, the study's schedule)
and prints the eval loss before and after: it must fall, or the data is not learnable.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_goldens import batches, evaluate, pack, tokenize_rows  # noqa: E402


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("data_dir")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Qwen2ForCausalLM, get_linear_schedule_with_warmup

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model, info = Qwen2ForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    eos = tok.eos_token_id
    train = pack(tokenize_rows(read_jsonl(Path(args.data_dir) / "train.jsonl"), tok, eos), args.max_length, 1000)
    test = pack(tokenize_rows(read_jsonl(Path(args.data_dir) / "test.jsonl"), tok, eos), args.max_length, 1000)
    train_b, eval_b = batches(train, args.micro_batch), batches(test, args.micro_batch)
    base = evaluate(model, eval_b)

    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    T = len(train_b) // args.grad_accum
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * T), T)
    pm.train()
    for i, b in enumerate(train_b):
        (pm(input_ids=b, labels=b).loss / args.grad_accum).backward()
        if (i + 1) % args.grad_accum == 0:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
    final = evaluate(pm, eval_b)
    print(json.dumps({"train_blocks": len(train), "eval_blocks": len(test), "steps": T,
                      "base_eval_loss": base, "final_eval_loss": final}))
    assert final < base - 0.1, "LoRA did not lower the eval loss"


if __name__ == "__main__":
    main()
