#!/usr/bin/env bash
# The GPU check of issue 10 (section 4): one script, under 8 minutes on one GPU, that runs on CUDA
#   1. benchmarks/embed.py (bare model, loader, whole embed pipeline; small sizes),
#   2. benchmarks/train_step.py (trainer vs bare model; GroupViT-S, bf16),
#   3. a few training steps of the paper config configs/train/cocu_c3.yaml on a generated tiny synthetic
#      world (cocu synth -> cocu curate with random:clip-tiny -> cocu train, bf16, nccl-free single GPU),
# and prints each step's figures (the benchmarks' JSON lines, the run's train_result.json) and a summary.
#
#   scripts/gpu_check.sh [--cpu-dry-run] [WORKDIR]
#
# WORKDIR (default: a new temporary folder) receives the world, the runs and one log per step.
# Without CUDA it stops at once (exit 2); --cpu-dry-run runs the same steps on CPU with tiny sizes, to
# check the plumbing (minutes on 2 cores). The interpreter is $PYTHON, else .venv/bin/python, else python3.
# Exit status: 0 when every step passed, 1 when one failed (the others still run), 2 without CUDA.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=cuda
if [[ "${1:-}" == "--cpu-dry-run" ]]; then
  MODE=cpu
  shift
fi
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="$(command -v python3)"
fi

if [[ "$MODE" == cuda ]] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: CUDA is not available to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'not importable')); run it on a GPU machine, or pass --cpu-dry-run to check the steps on CPU" >&2
  exit 2
fi

WORK="${1:-$(mktemp -d -t cocu-gpu-check.XXXXXX)}"
mkdir -p "$WORK"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"

if [[ "$MODE" == cuda ]]; then
  EMBED_ARGS=(--tiny-samples 2048 --b16-samples 512 --workers 8)
  STEP_ARGS=(--device cuda --precision bf16 --model groupvit-s --batch 64 --steps 12 --warmup 2 --workers 8)
  WORLD_ARGS=(--teacher 256 --pretrain 512 --val 8 --classify 2)
  TRAIN_ARGS=(train.device=cuda train.batch_size=64 train.max_steps=8 data.num_workers=8)
else
  EMBED_ARGS=(--tiny-samples 64 --b16-samples 4 --tiny-batch 32 --b16-batch 4 --workers 1)
  STEP_ARGS=(--device cpu --precision bf16 --model groupvit-tiny --batch 8 --steps 4 --warmup 1 --workers 0)
  WORLD_ARGS=(--teacher 32 --pretrain 32 --val 4 --classify 1)
  TRAIN_ARGS=(train.device=cpu train.batch_size=4 train.max_steps=1 data.num_workers=0)
fi

declare -a SUMMARY=()
FAILED=0

step() {  # step NAME COMMAND...: run, log to WORK/NAME.log, print the tail, record the outcome
  local name="$1"
  shift
  local start=$SECONDS
  echo "== $name: $*"
  if "$@" >"$WORK/$name.log" 2>&1; then
    SUMMARY+=("$name: ok ($((SECONDS - start)) s)")
  else
    SUMMARY+=("$name: FAILED rc=$? ($((SECONDS - start)) s), see $WORK/$name.log")
    FAILED=1
  fi
  tail -n 6 "$WORK/$name.log"
}

if command -v nvidia-smi >/dev/null && [[ "$MODE" == cuda ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")'

if [[ -f benchmarks/embed.py ]]; then
  step embed "$PY" benchmarks/embed.py "${EMBED_ARGS[@]}"
else
  SUMMARY+=("embed: skipped (benchmarks/embed.py is not in this checkout)")
  echo "== embed: skipped, benchmarks/embed.py is not in this checkout"
fi

step train_step "$PY" benchmarks/train_step.py "${STEP_ARGS[@]}"

step world "$PY" -m cocu synth "$WORK/world" "${WORLD_ARGS[@]}" --overwrite
step curate "$PY" -m cocu curate "$WORK/world/pretrain" --encoder random:clip-tiny --vocab "$WORK/world/vocab.txt" \
  --out "$WORK/curation" --device "$MODE" --overwrite
step train_c3 "$PY" -m cocu train configs/train/cocu_c3.yaml "data.train=$WORK/world/pretrain" \
  "data.archive=$WORK/curation" "output=$WORK/c3" resume=null model.tokenizer=null model.bpe_vocab_size=1000 \
  optim.warmup=0 optim.warmup_unit=steps train.log_every=1 train.checkpoint_every=4 "${TRAIN_ARGS[@]}"
if [[ -f "$WORK/c3/train_result.json" ]]; then
  "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); print(json.dumps({k: r[k] for k in ("steps", "finished", "final_loss", "images_per_s", "wall_time_s")}))' "$WORK/c3/train_result.json"
fi

echo "== summary ($MODE, work folder $WORK)"
printf '%s\n' "${SUMMARY[@]}"
for name in embed train_step; do
  if [[ -f "$WORK/$name.log" ]]; then
    echo "$name: $(tail -n 1 "$WORK/$name.log")"
  fi
done
exit "$FAILED"
