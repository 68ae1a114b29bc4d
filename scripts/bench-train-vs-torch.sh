#!/usr/bin/env bash
# Candle (`lorasweep bench train`) against PyTorch (transformers + PEFT,
# train/tests/reference/bench_step.py) on the same LoRA training step, alternating the two
# implementations so that machine load hits both alike.
#
# Both sides: random f32 weights, LoRA r=8 / alpha 16 on q,k,v,o (dropout 0), random tokens,
# loss = mean next-token cross-entropy over batch*(seq-1) targets with tied lm_head,
# backward, grad-norm clip 1.0, AdamW (lr 1e-3, wd 0.01, eps 1e-8), THREADS threads.
# One untimed warm-up step, then STEPS timed steps; figures are medians over the timed steps.
#
#   scripts/bench-train-vs-torch.sh                 # tiny and 0.5b (4 layers), 2 rounds
#   STEPS=7 ROUNDS=3 SHAPES="tiny" scripts/bench-train-vs-torch.sh
#
# Env: THREADS (2), STEPS (6, must be >= 5), ROUNDS (2), SHAPES ("tiny 0.5b"),
#      LAYERS_05B (4), SEQ (256), BATCH (1), BIN (target/release/lorasweep),
#      BUILD (1: cargo build --release --bin lorasweep first), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-2}
STEPS=${STEPS:-6}
ROUNDS=${ROUNDS:-2}
SHAPES=${SHAPES:-"tiny 0.5b"}
LAYERS_05B=${LAYERS_05B:-4}
SEQ=${SEQ:-256}
BATCH=${BATCH:-1}
BIN=${BIN:-target/release/lorasweep}
BUILD=${BUILD:-1}
PYTHON=${PYTHON:-python3}

if (( STEPS < 5 )); then echo "STEPS must be >= 5 (median over at least 5 timed steps)" >&2; exit 2; fi
if [[ $BUILD == 1 ]]; then cargo build --release --bin lorasweep >&2; fi
"$PYTHON" -c "import torch, transformers, peft" || {
  echo "needs torch, transformers, peft: pip install -r train/tests/reference/requirements.txt" >&2; exit 2; }

export RAYON_NUM_THREADS=$THREADS CANDLE_NUM_THREADS=$THREADS
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

layers_for() { if [[ $1 == 0.5b ]]; then echo "$LAYERS_05B"; else echo ""; fi; }

for round in $(seq 1 "$ROUNDS"); do
  for shape in $SHAPES; do
    layers=$(layers_for "$shape")
    larg=(); [[ -n $layers ]] && larg=(--layers "$layers")
    # Alternate which side goes first from round to round.
    order=(candle torch); (( round % 2 == 0 )) && order=(torch candle)
    for impl in "${order[@]}"; do
      f="$OUT/$shape.$impl.$round.json"
      echo "round $round: $shape $impl (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
      if [[ $impl == candle ]]; then
        "$BIN" bench train --shape "$shape" "${larg[@]}" --seq "$SEQ" --batch "$BATCH" \
          --steps "$STEPS" --dtype f32 --r 8 --targets q_proj,k_proj,v_proj,o_proj --json >"$f"
      else
        "$PYTHON" train/tests/reference/bench_step.py --bench --shape "$shape" "${larg[@]}" \
          --seq "$SEQ" --batch "$BATCH" --threads "$THREADS" --steps "$STEPS" --warmup 1 \
          --dtype f32 --r 8 --lr 1e-3 --clip 1.0 2>/dev/null | tail -n 1 >"$f"
      fi
    done
  done
done

"$PYTHON" - "$OUT" "$THREADS" "$STEPS" <<'PY'
import glob, json, os, statistics, sys
out, threads, steps = sys.argv[1], sys.argv[2], sys.argv[3]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    shape, impl, rnd, _ = os.path.basename(f).rsplit(".", 3)
    d = json.load(open(f))
    if impl == "candle":
        r = dict(step=d["step_s"], fwd=d["forward_s"], bwd=d["backward_s"], opt=d["optimizer_s"],
                 rss=(d["peak_rss_bytes"] or 0) / 2**20, tok=d["tokens_per_step"], layers=d["layers"],
                 params=d["lora_params"], loss0=d["losses"][0])
    else:
        r = dict(step=d["median_step_s"], fwd=d["forward_s"], bwd=d["backward_s"], opt=d["optimizer_s"],
                 rss=d["peak_rss_mib"], tok=d["tokens_per_step"], layers=d["layers"],
                 params=d["lora_params"], loss0=d["losses"][0])
    rows.setdefault((shape, impl), []).append(r)
print(f"threads {threads}, f32, LoRA r=8 q/k/v/o, AdamW + clip 1.0, median of {steps} timed steps "
      f"(1 warm-up excluded) per run; runs alternate candle/torch; load now {open('/proc/loadavg').read().split()[:3]}")
hdr = f"{'shape':<12} {'impl':<7} {'run':>3} {'tok/step':>8} {'LoRA par':>9} {'step s':>8} {'tok/s':>8} {'fwd s':>7} {'bwd s':>7} {'opt s':>7} {'peak RSS':>9} {'loss0':>7}"
print(hdr); print("-" * len(hdr))
shapes = []
for (shape, _impl) in rows:
    if shape not in shapes:
        shapes.append(shape)
for shape in shapes:
    best = {}
    for impl in ("candle", "torch"):
        for i, r in enumerate(rows.get((shape, impl), []), 1):
            name = f"{shape}/{r['layers']}L"
            print(f"{name:<12} {impl:<7} {i:>3} {r['tok']:>8} {r['params']:>9} {r['step']:>8.4f} {r['tok']/r['step']:>8.1f} "
                  f"{r['fwd']:>7.4f} {r['bwd']:>7.4f} {r['opt']:>7.4f} {r['rss']:>6.0f} MiB {r['loss0']:>7.3f}")
        if rows.get((shape, impl)):
            best[impl] = statistics.median([r["step"] for r in rows[(shape, impl)]])
    if len(best) == 2:
        print(f"{'':<12} ratio candle/torch step time (median of runs): {best['candle']/best['torch']:.2f}  "
              f"(tokens/s ratio {best['torch']/best['candle']:.2f}; < 1 means candle slower)")
PY
