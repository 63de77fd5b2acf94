#!/usr/bin/env bash
# One GPU lease, one prepared script (shared/GPU.md): the device profile (issue 9), the trainer's
# throughput table through the launch path (issues 8, 9), and one-GPU runs of a cut-down
# ecdit-xl-8e plan under each recompute policy, `bash launch.sh` as written (issue 10).
#
#   OUT=dir bash bench/gpu_session.sh          on the GPU machine (carry .whl, bench/.throughput_data)
#   OUT=dir bash bench/gpu_session.sh --cpu    the same stages with tiny settings on this CPU
#   PLANS=none OUT=dir bash bench/gpu_session.sh   one plan run instead of four (~150 s less)
#
# Every stage has its own timeout and the stages after a failed one still run. What comes back:
# session.log, profile.yaml, sdpa_head_dims.json, gemm_precisions.json,
# train_throughput_<device>.json, plan_runs.tgz, throughput_runs.tgz (run folders without
# checkpoints) and validation.csv (every run against the profile, term by term). Budget on a GPU: <= 600 s (about 520; plan runs start until
# LAST_PLAN_AT=470 s, validate gets what is left of 585 s).
set -u
OUT="${OUT:?set OUT to the folder for the results}"
MODE="${1:-gpu}"
mkdir -p "$OUT"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
exec > >(tee -a "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1
t0=$(date +%s)
stage() { echo "=== $(( $(date +%s) - t0 )) s: $*"; }

if [ "$MODE" = "--cpu" ]; then
  DEVICE=cpu; PY="${PYTHON:-python}"
  TT_ARGS=(--cpu --budget-s 120)
  PLAN_MODEL=(--override depth=2); MB=2; STEPS=4; PLAN_TIMEOUT=120; PROFILE_ARGS=(--quick)
else
  DEVICE=cuda; PY=python3
  stage "deepspeed from .whl"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$ROOT"
  TT_ARGS=(--budget-s 180)  # 60 s of it went to the profile's engine settings (2026-12-06)
  # one trainer-probe launch: a GPU launch costs ~20-30 s of the lease and the card's speed does
  # not drift as this 2-core VM's does (the three launches a CPU profile makes since 2026-12-08)
  PLAN_MODEL=(--override depth=8); MB=32; STEPS=20; PLAN_TIMEOUT=80
  PROFILE_ARGS=(--trainer-launches 1)
fi
export PYTHON="$PY"  # launch.sh runs this Python

stage "versions"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
"$PY" -c "import sys, torch, deepspeed; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__)" || exit 1

stage "profile"
# its DeepSpeed engine probe times four engine settings per ZeRO stage since 2026-12-06 (about
# 2.5x its earlier time on a 2-core CPU; not yet timed on a GPU), and since 2026-12-07 it
# launches the trainer at a tiny size (here once per rank count: PROFILE_ARGS)
timeout 300 "$PY" -m ecdit_scale profile --device "$DEVICE" "${PROFILE_ARGS[@]}" \
  --out "$OUT/profile.yaml" || echo "profile failed: $?"

# the flash kernel's head-dim padding the plan prices (DiT-XL/2's 72 as 96): ~10 s
stage "SDPA at head dims 64, 72, 96, 128"
timeout 40 "$PY" bench/sdpa_head_dims.py --device "$DEVICE" --out "$OUT/sdpa_head_dims.json" \
  || echo "sdpa_head_dims failed: $?"

# each precision's GEMM rate over bf16's against the datasheet ratio the plan prices (issue 19:
# DiT#22's fp32 and TF32 rows miss in opposite directions): ~10 s
stage "GEMMs in bf16, fp16, TF32, fp32"
timeout 40 "$PY" bench/gemm_precisions.py --device "$DEVICE" --out "$OUT/gemm_precisions.json" \
  || echo "gemm_precisions failed: $?"

stage "train_throughput"
timeout 260 "$PY" bench/train_throughput.py --out /tmp/tt "${TT_ARGS[@]}" || echo "train_throughput exited $?"
cp /tmp/tt/train_throughput_*.json "$OUT/" 2>/dev/null
tar czf "$OUT/throughput_runs.tgz" --exclude='checkpoint*' --exclude='*.pt' -C /tmp/tt runs

# the plan as written: ecdit-xl-8e cut to fit one GPU, micro-batch MB, the planner's choice of
# recompute first, then each policy pinned; --limit: the captions cached for 128 latents
LAST_PLAN_AT=${LAST_PLAN_AT:-470}  # seconds: no plan run starts later (the call has 600)
# PLANS="none" (one run, ~45 s on the H200) or PLANS="" leaves room in the lease for the sweep
for policy in ${PLANS-auto none full selective}; do
  dir=/tmp/plans/xl8e-$policy
  if [ "$(( $(date +%s) - t0 ))" -gt "$LAST_PLAN_AT" ]; then
    echo "skipped plan $policy: past ${LAST_PLAN_AT} s"; continue
  fi
  pin=(); [ "$policy" = auto ] || pin=(--recompute "$policy")
  stage "plan $policy"
  rm -rf "$dir"
  "$PY" -m ecdit_scale plan --model ecdit-xl-8e "${PLAN_MODEL[@]}" --gpu h200 --gpus 1 \
    --global-batch "$MB" --micro-batch "$MB" "${pin[@]}" --no-table --out "$dir" | tail -n 12 \
    || { echo "plan $policy failed"; continue; }
  chosen=$(grep -m1 ' recompute:' "$dir/plan.yaml" | awk '{print $2}')
  echo "plan chose recompute=$chosen"
  if [ "$policy" = auto ] && [ "$chosen" = none ]; then continue; fi  # the none run follows
  ECDIT_SCALE_PROFILE_STEP=$((STEPS - 1)) ECDIT_SCALE_CACHE="$ROOT/bench/.throughput_data" timeout "$PLAN_TIMEOUT" bash "$dir/launch.sh" --steps "$STEPS" --limit 128 --holdout 0 \
    --checkpoint-every 1000000 | tail -n 6 || echo "launch.sh ($policy) exited $?"
  "$PY" -m ecdit_scale validate "$dir" "$dir/run" 2>&1 | tail -n 8
  tar czf "$OUT/plan_runs.tgz" --exclude='checkpoint*' --exclude='*.pt' -C /tmp plans
done
# every run against the profile just measured, term by term (the profiled steps' breakdowns)
stage "validate from the profile alone"
left=$(( 585 - ($(date +%s) - t0) )); [ "$left" -gt 120 ] && left=120
if [ -f "$OUT/profile.yaml" ] && [ "$left" -gt 10 ]; then
  timeout "$left" "$PY" -m ecdit_scale validate --profile "$OUT/profile.yaml" /tmp/tt/runs/* \
    /tmp/plans/*/run --csv "$OUT/validation.csv" 2>&1 | tail -n 60 || echo "validate exited $?"
fi
ls -la "$OUT"
stage "done"
