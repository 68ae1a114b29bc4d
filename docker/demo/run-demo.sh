#!/bin/sh
# The compose `demo` profile: `lorasweep demo`'s sweep, but on the containers' coordinator and
# workers. Writes a tiny generated model and data into the shared cache volume (where every
# worker finds them at the same path), submits the grid, follows it, prints the results table.
#   LORASWEEP_DEMO_INITS  comma-separated inits (default: all five)
#   LORASWEEP_DEMO_LRS    comma-separated learning rates (default: the study's seven)
#   LORASWEEP_DEMO_ROWS   training rows of the generated data (default 320)
set -eu
root=${LORASWEEP_DEMO_DIR:-/cache/demo}
inits=${LORASWEEP_DEMO_INITS:-standard,reversed,ortho-eye,ortho-qr-const,ortho-qr-match}
lrs=${LORASWEEP_DEMO_LRS:-1e-4,2e-4,5e-4,1e-3,2e-3,5e-3,1e-2}
rows=${LORASWEEP_DEMO_ROWS:-320}

quote_list() { printf '%s' "$1" | sed 's/[^,][^,]*/"&"/g; s/,/, /g'; }
lorasweep make-tiny-model "$root/model" >/dev/null
lorasweep make-tiny-data "$root/data" --train "$rows" --test $((rows / 8 > 16 ? rows / 8 : 16)) --seed 7 >/dev/null
cat > /tmp/sweep.toml <<TOML
name = "compose-demo"
[model]
path = "$root/model"
dtype = "f32"
[data]
path = "$root/data"
max_length = 64
[lora]
r = 8
alpha = 16.0
dropout = 0.05
[train]
micro_batch = 4
grad_accum = 2
epochs = 1
eval_every = 8
[grid]
inits = [$(quote_list "$inits")]
lrs = [$(printf '%s' "$lrs" | sed 's/,/, /g')]
seeds = [42]
TOML
sweep=$(lorasweep submit /tmp/sweep.toml)
echo "demo: sweep $sweep submitted to $LORASWEEP_COORDINATOR" >&2
lorasweep watch "$sweep"
lorasweep results "$sweep"
