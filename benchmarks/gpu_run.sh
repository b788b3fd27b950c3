#!/usr/bin/env bash
# The evidence a short GPU loan can give, in one command: within BUDGET seconds (default 480) on one H100/H200,
# the build included, no network. Most valuable first; each phase has its own time limit (fewer seconds if the
# budget has fewer left) and writes its results as soon as they exist, so a run stopped at any point keeps what it
# measured (on INT/TERM it still writes results.md from what results.jsonl holds):
#   build           the extension for this GPU's architecture only (pip install -e ., no index, no build isolation)
#   selftest        python -m fastpggan.selftest: every kernel against ref on this GPU, graph = eager, no host
#                   sync, a first step benchmark, the tune table
#   ops             benchmarks/test_ops.py on CUDA at 32², 256², 1024², forward + backward, fp32 and bf16,
#                   ref/triton/ext against the measured copy bandwidth, one JSON line per case as it is measured
#   ops-compiled    impl=compiled on the same op cases
#   steps           benchmarks/test_train_step.py at 16², 64², 256², 1024²: ref-fp32, ref-bf16-cl, fast-ext,
#                   fast-triton, fast-auto
#   steps-compiled  ref-bf16-cl-compiled and fast-ext-compiled at the same resolutions
#   train           a real training run at 256² on random images for about 2 minutes (stopped with Ctrl-C, which
#                   checkpoints), img/s read from its log.jsonl by benchmarks/train_summary.py
#   static          benchmarks/static_report.py for this GPU's architecture
# The phases' limits are maxima that add up to more than the budget: where the early phases take their all, the
# later ones get what is left. No GPU has run this yet; gpu_run.log gives each phase's seconds, to set them by.
# Files, flat (the device tool brings back at most 8): gpu_run.log, selftest.{json,md}, results.jsonl, results.md,
# train.jsonl, train.md, static.md. The compiled ratios come from a phase a minute after the others', on the same
# machine.
#
# usage: bash benchmarks/gpu_run.sh [--dry-run] [--out DIR] [--budget SECONDS]
#   --dry-run   no GPU needed: checks every phase's selection and command line (collects the pytest cases, parses
#               the CLIs) and prints the plan; the test suite runs it (tests/test_gpu_run.py).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}
BUDGET=480
DRY=0
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    *) echo "gpu_run.sh: unknown argument $1 (usage: bash benchmarks/gpu_run.sh [--dry-run] [--out DIR]" \
            "[--budget SECONDS])" >&2
       exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}   # the device image's python3 holds torch
if [ "$DRY" = 0 ] && ! $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "gpu_run.sh: no CUDA GPU visible to $PY; run it on a GPU machine, or with --dry-run to check the plan" >&2
  exit 2
fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)   # the training run and its data: large, and not results
START=$SECONDS
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
log() { echo "gpu_run: $*" | tee -a "$OUT/gpu_run.log"; }

# phase NAME LIMIT CMD...: run CMD for at most LIMIT seconds (fewer if the budget has fewer left; skipped under
# 15), its output into gpu_run.log, then SIGINT, then SIGKILL 10 s later. Dry run: log the plan only.
phase() {
  local name=$1 limit=$2 left rc t0=$SECONDS
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$DRY" = 1 ]; then
    log "plan: $name (at most ${limit}s): $*"
    return 0
  fi
  if [ "$limit" -lt 15 ]; then
    log "$name: skipped, ${left}s of the budget left"
    return 0
  fi
  log "$name: start (at most ${limit}s)"
  timeout -s INT -k 10 "$limit" "$@" >>"$OUT/gpu_run.log" 2>&1
  rc=$?
  log "$name: exit $rc after $((SECONDS - t0))s (total $((SECONDS - START))s)"
}

report() {   # results.md from whatever results.jsonl holds so far
  if [ "$DRY" = 1 ] || [ ! -s "$OUT/results.jsonl" ]; then return 0; fi
  $PY benchmarks/report.py "$OUT/results.jsonl" --command "bash benchmarks/gpu_run.sh (--results-jsonl)" \
    -o "$OUT/results.md" >>"$OUT/gpu_run.log" 2>&1
}
stopped() {
  log "stopped after $((SECONDS - START))s; writing results.md from what was measured"
  report
  rm -rf "$WORK"
  exit 130
}
trap stopped INT TERM

ARCH=$($PY -c "import torch; c = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0); \
print(f'{c[0]}.{c[1]}')" 2>/dev/null || echo 9.0)
SM=sm_${ARCH/./}
log "out $OUT, budget ${BUDGET}s, arch $ARCH, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', \
torch.cuda.get_device_name() if torch.cuda.is_available() else None)" 2>&1 | tee -a "$OUT/gpu_run.log"

BENCH=(-p no:cacheprovider --long --benchmark-only --benchmark-min-rounds=5 --benchmark-max-time=0.2
       --results-jsonl "$OUT/results.jsonl")
OPS_RES_K="(-32- or -256- or -1024-)"   # a small, a middle and the largest stage; every resolution is --long's
OPS_K="cuda and fwd+bwd and $OPS_RES_K and not compiled"
OPS_COMPILED_K="cuda and fwd+bwd and $OPS_RES_K and compiled"
RES_K="cuda-16- or cuda-64- or cuda-256- or cuda-1024-"
STEPS_K="($RES_K) and (ref-fp32 or ref-bf16-cl] or fast-ext] or fast-triton or fast-auto)"
STEPS_COMPILED_K="($RES_K) and compiled"
TRAIN=(-m fastpggan.train --data "$WORK/random256.npy" --resolution 256 --lod-training-kimg 0.001
       --lod-transition-kimg 0 --kimg 100000 --tick-kimg 1 --snap-ticks 100000 --no-progress --out "$WORK" --name train)

if [ "$DRY" = 1 ]; then
  # every selection must name cases (collected without a GPU: they are there, marked to skip), every CLI must parse
  for k in "$OPS_K" "$OPS_COMPILED_K" "$STEPS_K" "$STEPS_COMPILED_K"; do
    n=$($PY -m pytest benchmarks/ --collect-only -q -p no:cacheprovider --long -k "$k" 2>/dev/null | grep -c "::")
    log "dry run: -k '$k' selects $n cases"
    [ "$n" -gt 0 ] || { log "dry run: that selection is empty"; exit 1; }
  done
  for cli in fastpggan.selftest fastpggan.train; do
    $PY -m "$cli" --help >/dev/null || { log "dry run: $cli --help failed"; exit 1; }
  done
  for script in report static_report train_summary; do
    $PY "benchmarks/$script.py" --help >/dev/null || { log "dry run: $script.py --help failed"; exit 1; }
  done
fi

phase build 120 env TORCH_CUDA_ARCH_LIST="$ARCH" $PY -m pip install -q --no-build-isolation --no-deps --no-index -e .
phase selftest 180 $PY -m fastpggan.selftest --out "$OUT" --force
for f in "$OUT"/fastpggan-selftest-*; do   # named by device and date; flat fixed names travel back
  [ -e "$f" ] && mv "$f" "$OUT/selftest.${f##*.}"
done
phase ops 60 $PY -m pytest benchmarks/test_ops.py -k "$OPS_K" "${BENCH[@]}" --benchmark-max-time=0.1
report
phase ops-compiled 40 $PY -m pytest benchmarks/test_ops.py -k "$OPS_COMPILED_K" "${BENCH[@]}" --benchmark-max-time=0.1
report
phase steps 60 $PY -m pytest benchmarks/test_train_step.py -k "$STEPS_K" "${BENCH[@]}"
report
phase steps-compiled 45 $PY -m pytest benchmarks/test_train_step.py -k "$STEPS_COMPILED_K" "${BENCH[@]}"
report
phase random-data 15 $PY -c "import numpy as np; np.save('$WORK/random256.npy', \
np.random.default_rng(0).integers(0, 256, (512, 3, 256, 256), dtype=np.uint8))"
phase train 130 env FASTPGGAN_NO_COMPILE=1 $PY "${TRAIN[@]}"
if [ "$DRY" = 1 ] || [ -s "$WORK/train/log.jsonl" ]; then
  phase train-summary 15 $PY benchmarks/train_summary.py "$WORK/train/log.jsonl" --res 256 --copy "$OUT/train.jsonl" \
    -o "$OUT/train.md"
fi
phase static 45 $PY benchmarks/static_report.py --arch "$SM" --archs "$SM" -o "$OUT/static.md"
rm -rf "$WORK"
log "done in $((SECONDS - START))s"
