#!/usr/bin/env python3
"""Time one LoRA training step in PyTorch (transformers + PEFT) for comparison with
`lorasweep bench train`.

Random weights at a Qwen2 shape, LoRA r=8 / alpha 16 on q,k,v,o, torch.optim.AdamW, random
tokens; one step = forward (HF causal-LM loss) + backward + optimizer step + zero_grad.
Prints a human line and a JSON line: median step time over the timed steps (after --warmup
untimed ones), tokens/s at the median, and peak RSS; on CUDA also the peak of
torch.cuda.max_memory_allocated (what PyTorch's allocator handed out, not the whole process's
GPU memory: nvidia-smi adds the CUDA context and the allocator's cache).

  python3 train/tests/reference/bench_step.py --bench --shape tiny
  python3 train/tests/reference/bench_step.py --bench --shape 0.5b --layers 4 --seq 256 --batch 1 --threads 2
  python3 train/tests/reference/bench_step.py --bench --shape 1.5b --seq 1024 --batch 4 --dtype bf16 --device cuda
"""

import argparse
import json
import resource
import statistics
import sys
import time

import torch

SHAPES = {
    # hidden, layers, heads, kv_heads, intermediate, vocab
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512),
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936),
}


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", action="store_true", help="run the benchmark (the only mode)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--layers", type=int, help="override the shape's layer count")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (defaults match lorasweep bench train)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="base weight dtype (LoRA stays f32)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--attn", choices=["eager", "sdpa"], default="sdpa")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW lr (lorasweep bench train uses 1e-3)")
    ap.add_argument("--clip", type=float, default=1.0, help="grad-norm clip before the step (0 = none)")
    args = ap.parse_args()
    if not args.bench:
        ap.error("pass --bench")

    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = dict(SHAPES[args.shape])
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    config = Qwen2Config(**shape, tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6,
                         max_position_embeddings=max(4096, args.seq))
    config._attn_implementation = args.attn
    dtype = torch.float32 if args.dtype == "f32" else torch.bfloat16
    cuda = args.device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            sys.exit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
        # Built on the GPU so that HF's random init of 1.5B parameters does not run on the host's
        # threads first (the weights then differ from a CPU run's; only the timing is compared).
        with torch.device(args.device):
            model = Qwen2ForCausalLM(config).to(dtype)
    else:
        model = Qwen2ForCausalLM(config).to(dtype).to(args.device)
    model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, eps=1e-8)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, shape["vocab_size"], (args.batch, args.seq), generator=gen).to(args.device)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(args.device)

    times, fwd, bwd, opt_s, losses = [], [], [], [], []
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss_val = loss.item()  # the candle bench also reads the loss inside its forward time
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        losses.append(loss_val)
        if i >= args.warmup:
            times.append(t3 - t0)
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            opt_s.append(t3 - t2)
    med = statistics.median(times)
    tokens = args.batch * args.seq
    result = {
        "impl": "torch", "torch": torch.__version__, "shape": args.shape, "layers": shape["num_hidden_layers"],
        "seq": args.seq, "batch": args.batch, "threads": args.threads, "dtype": args.dtype, "attn": args.attn,
        "device": args.device, "lora_params": sum(p.numel() for p in params), "median_step_s": med,
        "forward_s": statistics.median(fwd), "backward_s": statistics.median(bwd),
        "optimizer_s": statistics.median(opt_s), "tokens_per_step": tokens,
        "tokens_per_s": tokens / med, "steps_s": times, "peak_rss_mib": peak_rss_mib(), "losses": losses,
    }
    gpu = ""
    if cuda:
        # Weights, LoRA, AdamW state, activations and the logits: everything the steps held at once.
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated(args.device) / 2**20
        result["gpu"] = torch.cuda.get_device_name(args.device)
        gpu = f", peak GPU {result['peak_gpu_mib']:.0f} MiB allocated"
    print(f"torch {args.shape} (layers {result['layers']}, {args.batch}x{args.seq}, {args.threads} threads, "
          f"{args.dtype}, {args.attn}): median step {med:.3f} s, {tokens / med:.0f} tokens/s, "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB{gpu}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
