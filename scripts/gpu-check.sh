#!/usr/bin/env bash
# One prepared GPU check for a session that is lent a GPU (an H200 with no network and no Rust
# toolchain): does the CUDA `lorasweep` start, how fast is a LoRA training step at the study's
# shape and micro-batch against PyTorch + PEFT on the same GPU, and does a killed worker resume
# exactly on the GPU. Everything goes under $OUT (default ./gpu-out), at most 8 files (the
# device tool brings back no more): env.txt, candle.log, torch.log, gpumem.log, resume.log,
# summary.txt, results.tsv. The default timeouts add up to under 8 minutes (460 s) at worst.
#
# Steps (each one is skipped or reported as failed without stopping the others):
#   1. nvidia-smi, `lorasweep --version`, the shared libraries the binary needs.
#   2. `lorasweep bench train --shape $SHAPE --dtype $DTYPE --device cuda:0 --batch 4 --seq 1024`
#      (the study's micro-batch; batch 1 if that fails): tokens/s, step split, peak GPU memory
#      (the bench knows only RSS, so nvidia-smi is sampled every 200 ms: peak minus the idle
#      reading before the run, so it includes the CUDA context and whatever the allocator keeps) and MFU.
#   3. The same step in PyTorch + PEFT (train/tests/reference/bench_step.py --device cuda, bf16
#      autocast, SDPA attention), with torch.cuda.max_memory_allocated. Needs torch, transformers
#      and peft in $PYTHON; checked first, and skipped with a note when missing.
#   4. Exact resume on the GPU, with the CLI alone (no local stop/resume flag exists, so the
#      daemon path as cli/tests/e2e/resume.rs does it): a coordinator on loopback, one job on the
#      tiny fixture with checkpoint_every = 10; worker 1 (--device cuda:0) is SIGKILLed after two
#      checkpoints, worker 2 resumes it after the 2 s lease; then the same sweep runs again
#      fault-free and the two stored curves (`lorasweep curve --json`, exact f64) must be equal.
#      (`lorasweep demo` has no --device flag: its workers train on the CPU, so it is no GPU check.)
#   5. One summary table (summary.txt, also printed).
#
# MFU. LoRA trains no base weight, so the 6·N rule overcounts: per token,
#   forward             2·N_lin            every frozen matmul (q,k,v,o, gate, up, down; lm_head)
#   backward, dX        2·N_lin            the gradient still flows through every frozen matmul
#   backward, dW        0                  frozen base: no weight gradient
#   attention           4·L·s·h forward + 8·L·s·h backward (QKᵀ and PV, full s×s as the PaLM
#                       convention counts it; causal masking makes half of it useless)
#   LoRA                6·N_lora           forward, dX and dW of the r-wide A and B
#   FLOPs/token = 4·N_lin + 12·L·s·h + 6·N_lora,  N_lin = L·(2h² + 2h·kv + 3h·I) + V·h
# (h hidden, kv = kv_heads·head_dim, I MLP width, V vocab, L layers, s sequence length;
# norms, softmax, RoPE, elementwise and the embedding lookup not counted).
# MFU = FLOPs/token · tokens/s / (PEAK_TFLOPS · 10¹²), PEAK_TFLOPS = 790 (H200 bf16, dense).
# At 1.5b, s = 1024: 6.72 GFLOP/token, so 100 % would be about 118k tokens/s.
#
# With the device tool (a session that is lent a GPU):
#   1. here: scripts/build-cuda.sh (≈25 min cold on 2 cores; it holds the cores, so agree on
#      when with whoever else builds). It leaves target/cuda-dist/{lorasweep,lib/}.
#   2. here: the tree that travels must stay under 64 MiB, and lib/ is over 500 MB (libcublasLt
#      alone is 517 MB), so carry the binary only: stripped, the CUDA `lorasweep` is 87 MB (measured
#      2026-11-29), gzip -9 25 MB, so carry it gzipped (the script unpacks a BIN ending in .gz). The H200 image's PyTorch
#      (cu130, per the device tool's KINDS.md) comes with CUDA 13 wheels of cudart, cuBLAS and
#      cuRAND; the script looks for the libraries the binary lacks under site-packages/nvidia/*/lib
#      and the driver's folders (not yet tried there: env.txt shows what ldd resolved):
#        echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu
#        strip -o .gpu/lorasweep target/cuda-dist/lorasweep && gzip -9 .gpu/lorasweep
#   3. device run, carry [".gpu"], timeout_s 540:
#        BIN=.gpu/lorasweep.gz bash scripts/gpu-check.sh
#      (the tool sets $OUT; the 8 files come back). Give the machine back afterwards.
# On this machine (no GPU), every step's plumbing runs with
#   BIN=target/release/lorasweep DEVICE=cpu SHAPE=tiny DTYPE=f32 SEQ=64 bash scripts/gpu-check.sh
#
# Env: BIN (target/cuda-dist/lorasweep), LIBDIR (dirname BIN/lib), OUT (./gpu-out), DEVICE (cuda
# or cpu), SHAPE (1.5b), DTYPE (bf16), BATCH (4), SEQ (1024), STEPS (6 timed, after 1 warm-up),
# PEAK_TFLOPS (790), PYTHON (python3), RESUME_EPOCHS (10), timeouts in seconds: T_CANDLE (120),
# T_CANDLE1 (60, the batch-1 retry), T_TORCH (120), T_TORCH1 (60), T_RESUME (100).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

BIN=${BIN:-target/cuda-dist/lorasweep}
[[ $BIN == /* ]] || BIN=$root/$BIN
LIBDIR=${LIBDIR:-$(dirname "$BIN")/lib}
# The stripped CUDA binary is 87 MB, over what the device tool carries (64 MiB); gzip -9 makes it
# 25 MB. A BIN ending in .gz is unpacked to a temporary file first.
if [[ $BIN == *.gz ]]; then
  unpacked=$(mktemp -d)/lorasweep
  if gzip -dc "$BIN" >"$unpacked" && chmod +x "$unpacked"; then BIN=$unpacked; fi
fi
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
DEVICE=${DEVICE:-cuda}
SHAPE=${SHAPE:-1.5b}
DTYPE=${DTYPE:-bf16}
BATCH=${BATCH:-4}
SEQ=${SEQ:-1024}
STEPS=${STEPS:-6}
PEAK_TFLOPS=${PEAK_TFLOPS:-790}
PYTHON=${PYTHON:-python3}
RESUME_EPOCHS=${RESUME_EPOCHS:-10}
T_CANDLE=${T_CANDLE:-120}
T_CANDLE1=${T_CANDLE1:-60}
T_TORCH=${T_TORCH:-120}
T_TORCH1=${T_TORCH1:-60}
T_RESUME=${T_RESUME:-100}
case $DEVICE in
  cuda) cdev=cuda:0 tdev=cuda ;;
  cpu) cdev=cpu tdev=cpu ;;
  *) echo "DEVICE must be cuda or cpu, not $DEVICE" >&2; exit 2 ;;
esac

scratch=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$scratch"
}
trap cleanup EXIT
started=$SECONDS
env_txt=$OUT/env.txt results=$OUT/results.tsv gpumem=$OUT/gpumem.log
: >"$env_txt"; : >"$gpumem"
printf 'step\tstatus\tdetail\n' >"$results"
note() { echo "[gpu-check $(( SECONDS - started ))s] $*" >&2; }
result() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$results"; }
# A number field of a JSON document (pretty-printed or one line): `jnum FILE KEY`.
jnum() { grep -oE "\"$2\": *-?[0-9.eE+-]+" "$1" 2>/dev/null | head -1 | sed -E 's/.*: *//'; }
have_smi=0; command -v nvidia-smi >/dev/null && have_smi=1
plus() { if [[ $1 == [0-9]* ]]; then echo "+$1"; else echo "$1"; fi; }

# --- 1. environment -------------------------------------------------------------------------
note "1/4 environment"
{
  echo "date: $(date -u +%FT%TZ)  host: $(uname -srm)  nproc: $(nproc)"
  echo "git: $(git -C "$root" log -1 --format='%h %s' 2>/dev/null || echo 'no git')"
  if (( have_smi )); then
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm --format=csv
  else
    echo "nvidia-smi: not found (no NVIDIA driver on this machine)"
  fi
} >>"$env_txt" 2>&1
# The CUDA libraries the binary loads at start (readelf NEEDED): next to it (build-cuda.sh's
# lib/), or the CUDA 13 wheels that the machine's PyTorch brought.
libpath=""
[[ -d $LIBDIR ]] && libpath=$LIBDIR
missing() { LD_LIBRARY_PATH=$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ldd "$BIN" 2>/dev/null | awk '/not found/ {print $1}'; }
if [[ -x $BIN ]] && [[ -n $(missing) ]]; then
  site=$("$PYTHON" -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
  for so in $(missing); do
    # shellcheck disable=SC2086 # $site is a list of directories
    dir=$(find $site /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda/lib64 \
      /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu -maxdepth 4 -name "$so" -printf '%h\n' 2>/dev/null | head -1)
    [[ -n $dir && :$libpath: != *:$dir:* ]] && libpath=${libpath:+$libpath:}$dir
  done
fi
export LD_LIBRARY_PATH=$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
{
  echo "BIN=$BIN"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$BIN" 2>&1
} >>"$env_txt"
if version=$("$BIN" --version 2>>"$env_txt"); then
  result start ok "$version; LD_LIBRARY_PATH=${libpath:-none}"
else
  if [[ -x $BIN ]]; then why="missing libraries: $(missing | tr '\n' ' ')"; else why="no such executable"; fi
  result start FAIL "$BIN does not start ($why); see env.txt"
  note "the binary does not start; see $env_txt"
fi
torch_ok=0
if tv=$("$PYTHON" - "$tdev" 2>&1 <<'PY'
import sys
import torch, transformers, peft
dev = sys.argv[1]
if dev == "cuda" and not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, peft {peft.__version__}")
PY
); then
  torch_ok=1
fi
echo "python: $("$PYTHON" --version 2>&1); ${tv//$'\n'/ }" >>"$env_txt"

# GPU memory in use now, in MiB (the sampler's baseline).
gpu_used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | head -1; }
# Runs "$@" while sampling nvidia-smi; sets peak_gpu (MiB above the idle reading, or "n/a").
sampled() {
  local label=$1 base sampler rc
  shift
  peak_gpu=n/a
  if (( have_smi )); then
    base=$(gpu_used)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 200 >"$scratch/mem" 2>/dev/null &
    sampler=$!
  fi
  "$@"
  rc=$?
  if (( have_smi )); then
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    local peak
    peak=$(sort -n "$scratch/mem" | tail -1)
    { echo "# $label: idle ${base} MiB before, samples every 200 ms:"; tr '\n' ' ' <"$scratch/mem"; echo; } >>"$gpumem"
    [[ -n $peak && -n $base ]] && peak_gpu=$(( peak - base ))
  fi
  return $rc
}

# Per-token training FLOPs of the shape (formula in the header): `flops_per_token LORA_PARAMS LAYERS`.
flops_per_token() {
  local v h i nh nkv
  case $SHAPE in
    tiny) v=512 h=64 i=128 nh=4 nkv=2 ;;
    0.5b) v=151936 h=896 i=4864 nh=14 nkv=2 ;;
    1.5b) v=151936 h=1536 i=8960 nh=12 nkv=2 ;;
    *) echo 0; return ;;
  esac
  awk -v v=$v -v h=$h -v i=$i -v nh=$nh -v nkv=$nkv -v l="$2" -v s="$SEQ" -v lora="$1" 'BEGIN {
    kv = nkv * h / nh; nlin = l * (2*h*h + 2*h*kv + 3*h*i) + v*h
    printf "%.6e\n", 4*nlin + 12*l*s*h + 6*lora }'
}
mfu() { awk -v f="$1" -v t="$2" -v p="$PEAK_TFLOPS" 'BEGIN { if (f > 0 && t > 0) printf "%.1f%%", 100*f*t/(p*1e12); else print "n/a" }'; }

# --- 2. candle: lorasweep bench train ------------------------------------------------------
note "2/4 candle bench train ($SHAPE, $DTYPE, $cdev, ${BATCH}x$SEQ)"
candle_log=$OUT/candle.log
: >"$candle_log"
candle_row="candle\tFAIL\tsee candle.log"
run_candle() {
  local b=$1 t=$2
  echo "### lorasweep bench train --shape $SHAPE --dtype $DTYPE --device $cdev --batch $b --seq $SEQ --steps $STEPS (timeout ${t}s)" >>"$candle_log"
  timeout "$t" "$BIN" bench train --shape "$SHAPE" --dtype "$DTYPE" --device "$cdev" --batch "$b" --seq "$SEQ" \
    --steps "$STEPS" --json >"$scratch/candle.json" 2>>"$candle_log"
  local rc=$?
  cat "$scratch/candle.json" >>"$candle_log"
  echo "### exit $rc" >>"$candle_log"
  return $rc
}
cbatch=$BATCH
if ! sampled "candle batch $BATCH" run_candle "$BATCH" "$T_CANDLE"; then
  cbatch=1
  note "batch $BATCH failed (see candle.log); retrying at batch 1"
  sampled "candle batch 1" run_candle 1 "$T_CANDLE1" || cbatch=""
fi
c_tps="" c_step="" c_mem=n/a c_mfu=n/a
if [[ -n $cbatch ]]; then
  j=$scratch/candle.json
  printf -v c_tps '%.0f' "$(jnum "$j" tokens_per_s)"
  printf -v c_step '%.4f' "$(jnum "$j" step_s)"
  c_mem=$peak_gpu
  f=$(flops_per_token "$(jnum "$j" lora_params)" "$(jnum "$j" layers)")
  c_mfu=$(mfu "$f" "$(jnum "$j" tokens_per_s)")
  rss=$(awk -v b="$(jnum "$j" peak_rss_bytes)" 'BEGIN { if (b > 0) printf "%.2f GB", b/1e9; else print "n/a" }')
  printf -v split 'fwd %.4f + bwd %.4f + opt %.4f s' "$(jnum "$j" forward_s)" "$(jnum "$j" backward_s)" \
    "$(jnum "$j" optimizer_s)"
  result candle ok "batch ${cbatch}x$SEQ: $c_tps tok/s, step $c_step s ($split), GPU mem $(plus "$c_mem") MiB, RSS $rss, MFU $c_mfu (FLOPs/token $f)"
else
  result candle FAIL "bench train failed at batch $BATCH and 1: see candle.log"
fi

# --- 3. PyTorch + PEFT --------------------------------------------------------------------
note "3/4 torch + PEFT ($SHAPE, $DTYPE, $tdev)"
torch_log=$OUT/torch.log
echo "${tv:-}" >"$torch_log"
t_tps="" t_step="" t_mem=n/a t_mfu=n/a tbatch=""
run_torch() {
  local b=$1 t=$2
  echo "### bench_step.py --shape $SHAPE --seq $SEQ --batch $b --dtype $DTYPE --device $tdev (timeout ${t}s)" >>"$torch_log"
  timeout "$t" "$PYTHON" train/tests/reference/bench_step.py --bench --shape "$SHAPE" --seq "$SEQ" \
    --batch "$b" --steps "$STEPS" --warmup 1 --dtype "$DTYPE" --device "$tdev" --threads "$(nproc)" \
    --r 8 --lr 1e-3 --clip 1.0 >"$scratch/torch.json" 2>>"$torch_log"
  local rc=$?
  cat "$scratch/torch.json" >>"$torch_log"
  echo "### exit $rc" >>"$torch_log"
  return $rc
}
if (( ! torch_ok )); then
  result torch SKIP "no usable torch + transformers + peft in $PYTHON: ${tv//$'\n'/ }"
else
  tbatch=$BATCH
  if ! sampled "torch batch $BATCH" run_torch "$BATCH" "$T_TORCH"; then
    tbatch=1
    note "torch batch $BATCH failed; retrying at batch 1"
    sampled "torch batch 1" run_torch 1 "$T_TORCH1" || tbatch=""
  fi
  if [[ -n $tbatch ]]; then
    j=$scratch/torch.json
    printf -v t_tps '%.0f' "$(jnum "$j" tokens_per_s)"
    printf -v t_step '%.4f' "$(jnum "$j" median_step_s)"
    alloc=$(jnum "$j" peak_gpu_mib)
    t_mem="$peak_gpu${alloc:+ (allocated ${alloc%.*})}"
    f=$(flops_per_token "$(jnum "$j" lora_params)" "$(jnum "$j" layers)")
    t_mfu=$(mfu "$f" "$(jnum "$j" tokens_per_s)")
    printf -v split 'fwd %.4f + bwd %.4f + opt %.4f s' "$(jnum "$j" forward_s)" "$(jnum "$j" backward_s)" \
      "$(jnum "$j" optimizer_s)"
    result torch ok "batch ${tbatch}x$SEQ: $t_tps tok/s, step $t_step s ($split), GPU mem $(plus "$t_mem") MiB, MFU $t_mfu"
  else
    result torch FAIL "bench_step.py failed at batch $BATCH and 1: see torch.log"
  fi
fi

# --- 4. exact resume on the device ----------------------------------------------------------
note "4/4 resume check (tiny fixture, $cdev)"
resume_log=$OUT/resume.log
: >"$resume_log"
rlog() { echo "[$(( SECONDS - started ))s] $*" >>"$resume_log"; }
resume_check() {
  local d=$scratch/resume deadline=$(( SECONDS + T_RESUME ))
  mkdir -p "$d"
  "$BIN" coordinator --listen 127.0.0.1:0 --data-dir "$d/coord" --lease-ttl 2s >"$d/coord.out" 2>"$d/coord.log" &
  local coord=$!
  pids+=("$coord")
  local addr=""
  while [[ -z $addr ]] && (( SECONDS < deadline )); do
    addr=$(sed -n 's/^listening on //p' "$d/coord.out" | head -1)
    [[ -z $addr ]] && sleep 0.2
  done
  [[ -n $addr ]] || { rlog "coordinator did not start"; return 1; }
  export LORASWEEP_COORDINATOR=http://$addr
  # cli/tests/e2e/resume.rs's job: f32 tiny model, 10 epochs (220 optimizer steps), a checkpoint
  # every 10 steps, dropout on (its mask stream must resume too).
  cat >"$d/sweep.toml" <<EOF
[model]
path = "$root/train/tests/fixtures/tiny-qwen2"
dtype = "f32"
[data]
path = "$root/train/tests/fixtures/tiny-data"
max_length = 64
shuffle = true
[lora]
r = 4
alpha = 8.0
dropout = 0.1
targets = ["q_proj", "v_proj"]
[train]
micro_batch = 2
grad_accum = 2
epochs = $RESUME_EPOCHS
eval_every = 16
checkpoint_every = 10
divergence_threshold = 100.0
[grid]
inits = ["ortho-qr-const"]
lrs = [5e-3]
seeds = [3]
EOF
  job_of() { "$BIN" jobs "$1" --json 2>>"$resume_log" | grep -oE '"id": *"[^"]+"' | head -1 | sed -E 's/.*"([^"]+)"$/\1/'; }
  state_of() { "$BIN" jobs "$1" --json 2>/dev/null | grep -oE '"state": *"[a-z]+"' | head -1 | sed -E 's/.*"([a-z]+)"$/\1/'; }
  wait_done() {
    local s=""
    while (( SECONDS < deadline )); do
      s=$(state_of "$1")
      case $s in succeeded | failed | diverged | cancelled) echo "$s"; return 0 ;; esac
      sleep 0.5
    done
    echo "timeout (${s:-unknown})"
    return 1
  }
  local a b ja jb n=0 w1 w2
  a=$("$BIN" submit "$d/sweep.toml" 2>>"$resume_log") || { rlog "submit failed"; return 1; }
  ja=$(job_of "$a")
  rlog "sweep A $a, job $ja"
  "$BIN" worker --name doomed --trainer candle --device "$cdev" >"$d/w1.log" 2>&1 &
  w1=$!
  pids+=($w1)
  while (( SECONDS < deadline )); do
    n=$(find "$d/coord/artifacts/$ja" -name 'checkpoint-*' 2>/dev/null | wc -l)
    (( n >= 2 )) && break
    [[ $(state_of "$a") == succeeded ]] && break
    sleep 0.1
  done
  kill -9 "$w1" 2>/dev/null
  wait "$w1" 2>/dev/null
  rlog "worker 1 killed with $n checkpoints stored (job state $(state_of "$a"), $("$BIN" jobs "$a" --json 2>/dev/null | grep -oE '"step": *[0-9]+' | head -1 | tr -d '"'))"
  "$BIN" worker --name rescuer --trainer candle --device "$cdev" >"$d/w2.log" 2>&1 &
  w2=$!
  pids+=($w2)
  local sa sb
  sa=$(wait_done "$a")
  rlog "sweep A: $sa"
  b=$("$BIN" submit "$d/sweep.toml" 2>>"$resume_log")
  jb=$(job_of "$b")
  rlog "sweep B (fault-free rerun) $b, job $jb"
  sb=$(wait_done "$b")
  rlog "sweep B: $sb"
  "$BIN" jobs "$a" --json >>"$resume_log" 2>&1
  "$BIN" jobs "$b" --json >>"$resume_log" 2>&1
  "$BIN" curve "$ja" --json >"$d/a.json" 2>>"$resume_log"
  "$BIN" curve "$jb" --json >"$d/b.json" 2>>"$resume_log"
  kill "$w2" "$coord" 2>/dev/null
  wait "$w2" "$coord" 2>/dev/null
  for f in coord.log w1.log w2.log; do
    echo "----- $f (last 40 lines)" >>"$resume_log"
    tail -n 40 "$d/$f" >>"$resume_log"
  done
  echo "----- curve A"; cat "$d/a.json"; echo; echo "----- curve B"; cat "$d/b.json"; echo
  local resumed=no
  grep -q "resuming from checkpoint" "$d/w2.log" && resumed=yes
  local points
  points=$(grep -oE '\[[0-9]+,' "$d/a.json" | wc -l)
  resume_detail="job A killed after $n checkpoints, resumed by worker 2: $resumed; A $sa, B $sb; $points points"
  [[ $sa == succeeded && $sb == succeeded && -s $d/a.json ]] || return 1
  [[ $resumed == yes ]] || { resume_detail+="; the kill came too late to exercise a resume"; return 2; }
  cmp -s "$d/a.json" "$d/b.json" || { resume_detail+="; curves DIFFER (see resume.log)"; return 3; }
  resume_detail+="; curves bit-identical"
}
resume_detail=""
resume_check >>"$resume_log" 2>&1
case $? in
  0) result resume ok "$resume_detail" ;;
  2) result resume INCONCLUSIVE "$resume_detail (raise RESUME_EPOCHS)" ;;
  *) result resume FAIL "${resume_detail:-did not complete}; see resume.log" ;;
esac

# --- 5. summary -----------------------------------------------------------------------------
{
  echo "gpu-check: $SHAPE $DTYPE on $DEVICE, micro-batch ${BATCH}x$SEQ, $STEPS timed steps, $(( SECONDS - started )) s"
  if (( have_smi )); then nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1; else echo "no nvidia-smi"; fi
  echo
  printf '%-8s %-6s %10s %10s %14s %8s %8s\n' impl batch "tok/s" "step s" "GPU mem MiB" MFU status
  printf '%-8s %-6s %10s %10s %14s %8s %8s\n' candle "${cbatch:--}" "${c_tps:--}" "${c_step:--}" "${c_mem}" "$c_mfu" \
    "$(awk -F'\t' '$1 == "candle" {print $2}' "$results")"
  printf '%-8s %-6s %10s %10s %14s %8s %8s\n' torch "${tbatch:--}" "${t_tps:--}" "${t_step:--}" "${t_mem%% *}" "$t_mfu" \
    "$(awk -F'\t' '$1 == "torch" {print $2}' "$results")"
  if [[ -n $c_tps && -n $t_tps ]]; then
    awk -v c="$c_tps" -v t="$t_tps" 'BEGIN { printf "candle/torch tokens/s: %.2f (< 1: candle slower)\n", c/t }'
  fi
  echo "MFU: (4·N_lin + 12·L·s·h + 6·N_lora) FLOPs/token × tokens/s ÷ $PEAK_TFLOPS TFLOP/s (see the script header)"
  echo "GPU mem: nvidia-smi peak minus the idle reading before the run (CUDA context and allocator caches included)"
  echo
  column -t -s $'\t' "$results" 2>/dev/null || cat "$results"
} >"$OUT/summary.txt"
cat "$OUT/summary.txt"
