#!/usr/bin/env bash
# From a folder of images to a fitted curve (issue 21), as one prepared script for a lent GPU:
#
#   1. images: $IMAGES (an ImageFolder or WebDataset shards of your own), else N shape scenes
#      made here as PNGs with a metadata.jsonl (bench/prepare_speed.make_source);
#   2. ecdit-scale data prepare  -> $OUT/prepared (pixels, or $VAE's latents; the bundled
#      MiniLM, or $TEXT_ENCODER); a rerun resumes;
#   3. ecdit-scale sweep --data $OUT/prepared  -> $OUT/sweep/runs.csv (2 sizes x dense / ec8);
#   4. ecdit-scale fit and report on that table.
#
#   OUT=dir [IMAGES=src] [VAE=folder] [TEXT_ENCODER=folder] bash bench/gpu_data_walkthrough.sh
#   OUT=dir bash bench/gpu_data_walkthrough.sh --cpu      the same stages, tiny, on this CPU
#
# The GPU machine is offline: carry the wheels the training install needs beyond torch
# (deepspeed, diffusers, safetensors, braceexpand) in .whl/, as bench/gpu_session.sh does, and
# any VAE or text encoder as a local folder. Stage 3 places each launch on a GPU of its own
# (sweep --parallel; with one GPU the launches share it). Every stage has its own timeout.
# Budget on a GPU: <= 600 s (prepare ~1 min for 4,096 images, sweep <= 420 s, fit/report ~20 s).
set -u
OUT="${OUT:?set OUT to the folder for the results}"
MODE="${1:-gpu}"
mkdir -p "$OUT"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
exec > >(tee -a "$OUT/walkthrough.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
t0=$(date +%s)
stage() { echo "=== $(( $(date +%s) - t0 )) s: $*"; }

if [ "$MODE" = "--cpu" ]; then
  DEVICE=cpu; PY="${PYTHON:-python}"
  ITEMS=${ITEMS:-128}; RES=${RES:-16}; SIZES=nano,micro; STEPS=10; BUDGETS=0.5,1; SEEDS=0
  MB=4; PAR=1; SWEEP_TIMEOUT=300; WORKERS=1
else
  DEVICE=cuda; PY=python3
  if ls .whl/*.whl >/dev/null 2>&1; then
    stage "training install from .whl"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$ROOT"
  fi
  ITEMS=${ITEMS:-4096}; RES=${RES:-32}; SIZES=nano,micro,tiny,mini; STEPS=400
  BUDGETS=0.25,0.5,1; SEEDS=0,1; MB=32; PAR=4; SWEEP_TIMEOUT=420; WORKERS=8
fi
# with a VAE, images are RES pixels and the model sees RES/8 latents: ask for RES=256
[ -n "${VAE:-}" ] && [ "$MODE" != "--cpu" ] && RES=${RES_VAE:-256}
export PYTHON="$PY"

stage "versions"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
"$PY" -c "import sys, torch, safetensors, braceexpand; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" || exit 1

SRC="${IMAGES:-}"
if [ -z "$SRC" ]; then
  stage "images: $ITEMS shape scenes as an ImageFolder"
  SRC="$OUT/images"
  if [ ! -f "$SRC/metadata.jsonl" ]; then
    rm -rf "$SRC"
    "$PY" -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; import prepare_speed as p; p.make_source(Path('$SRC'), $ITEMS, distinct=False)" || exit 1
  fi
fi

stage "data prepare $SRC -> $OUT/prepared (resolution $RES${VAE:+, VAE $VAE})"
PREP_ARGS=(--out "$OUT/prepared" --resolution "$RES" --device "$DEVICE" --workers "$WORKERS")
[ -n "${VAE:-}" ] && PREP_ARGS+=(--vae "$VAE")
[ -n "${TEXT_ENCODER:-}" ] && PREP_ARGS+=(--text-encoder "$TEXT_ENCODER")
timeout 300 "$PY" -m ecdit_scale data prepare "$SRC" "${PREP_ARGS[@]}" || { echo "prepare failed: $?"; exit 1; }

stage "sweep --data $OUT/prepared: sizes $SIZES, dense and ec8"
timeout "$SWEEP_TIMEOUT" "$PY" -m ecdit_scale sweep --data "$OUT/prepared" --sizes "$SIZES" \
  --variants dense,ec8 --steps "$STEPS" --budgets "$BUDGETS" --seeds "$SEEDS" \
  --micro-batch "$MB" --holdout 64 --parallel "$PAR" --device "$DEVICE" --out "$OUT/sweep" \
  || echo "sweep exited $? (a rerun resumes it)"

stage "fit and report"
timeout 120 "$PY" -m ecdit_scale fit "$OUT/sweep/runs.csv" --out "$OUT/fit.yaml" \
  || echo "fit exited $?"
timeout 120 "$PY" -m ecdit_scale report "$OUT/sweep/runs.csv" --fit "$OUT/fit.yaml" --out "$OUT/report" \
  || echo "report exited $?"
stage "done"
