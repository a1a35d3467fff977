#!/usr/bin/env bash
# One prepared run for a lent GPU machine: everything in the benchmarks that needs a GPU, in one go.
#
#   bash benchmarks/gpu_check.sh OUT_DIR [ARCHIVE.tgz]       # on the GPU machine (python3 there has torch)
#   SMOKE=1 DEVICE=cpu bash benchmarks/gpu_check.sh /tmp/gc  # the same steps, tiny, on a CPU (to check it)
#
# 1. benchmarks/step_overhead.py on CUDA in fp32 and bf16 (issue 6): first and alone, since its timings need
#    the GPU to themselves;
# 2. then, side by side on the one GPU (each job its own process, its own log and time limit, so that one
#    failure or overrun costs only its own row):
#    - `prunedrop compress --device cuda` of the LeNet-5 benchmark model with recipes/lenet5-fashion.yaml
#      (issue 6: the end-to-end check), its report measured on the GPU machine's CPU;
#    - the GPU-sized benchmark rows listed in JOBS below.
# Every job writes under OUT_DIR; the script ends with OUT_DIR/summary.txt (exit status and wall time per job)
# and, when ARCHIVE is given, packs OUT_DIR without the fine-tuning checkpoints into it (the device tool returns
# at most 8 files, two folders deep: pass OUT_DIR=/tmp/gc and ARCHIVE=$OUT/gpu_check.tgz there).
# Needs Fashion-MNIST where prunedrop finds it (/usr/share/datasets/fashion-mnist or FASHION_DIR) and
# torch-pruning importable.
set -u
OUT=${1:?usage: gpu_check.sh OUT_DIR}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
LIMIT=${JOB_LIMIT_S:-400}        # seconds each side-by-side job may run
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
cd "$(dirname "$0")/.."
start=$(date +%s)

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  $PY -c "import torch, platform; print('torch', torch.__version__, '| cuda', torch.cuda.is_available() and \
torch.cuda.get_device_name(0), '| cpus', __import__('os').cpu_count(), '|', platform.platform())"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

summary() { echo "$1 rc=$2 wall=$3s" | tee -a "$OUT/summary.txt"; }

run_job() {  # name, time limit, command...
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  summary "$name" $? $(( $(date +%s) - t0 ))
}

if [ "$SMOKE" = 1 ]; then
  SO_ARGS=(--models lenet300 --steps 3 --warmup 1 --devices "$DEVICE")
  E2E_ARGS=(--epochs 2 --finetune-epochs 0 --train-limit 500)
else
  SO_ARGS=(--steps 60 --warmup 10 --devices "$DEVICE")
  E2E_ARGS=()
fi

# 1. step overhead, alone on the GPU
run_job step_overhead_fp32 200 $PY benchmarks/step_overhead.py "${SO_ARGS[@]}" --out "$OUT/step_overhead_fp32.json"
run_job step_overhead_bf16 200 $PY benchmarks/step_overhead.py "${SO_ARGS[@]}" --precision bf16 \
  --out "$OUT/step_overhead_bf16.json"

# 2. side by side
run_job compress_lenet5_cuda "$LIMIT" $PY -m prunedrop compress benchmarks/results/lenet5-dense-e10-s0.pt \
  --arch examples.models:lenet5 --data fashion-mnist --recipe recipes/lenet5-fashion.yaml --device "$DEVICE" \
  "${E2E_ARGS[@]}" -o "$OUT/lenet5-cuda" --overwrite --quiet &

# JOBS: the benchmark rows that need a GPU's speed; each line is one background job.
if [ "$SMOKE" = 1 ]; then
  run_job svd_lenet300_long "$LIMIT" $PY benchmarks/sparse_vd_fashion.py --model lenet300 --device "$DEVICE" \
    --skip-magnitude --epochs 1 --kl-warmup-epochs 1 --finetune-epochs 0 --train-limit 500 --run-dir "$OUT/svd-lenet300" \
    -o "$OUT/svd-lenet300.json" &
else
  run_job svd_lenet300_long "$LIMIT" $PY benchmarks/sparse_vd_fashion.py --model lenet300 --device "$DEVICE" \
    --skip-magnitude --kl-weight 1 --epochs 80 --finetune-epochs 10 --run-dir "$OUT/svd-lenet300" \
    -o "$OUT/svd-lenet300.json" &
  run_job svd_lenet5_long "$LIMIT" $PY benchmarks/sparse_vd_fashion.py --model lenet5 --device "$DEVICE" \
    --skip-magnitude --kl-weight 1 --epochs 50 --finetune-epochs 5 --run-dir "$OUT/svd-lenet5" \
    -o "$OUT/svd-lenet5.json" &
  run_job lstm_fashion "$LIMIT" $PY benchmarks/lstm_fashion.py --device "$DEVICE" --run-dir "$OUT/lstm" \
    -o "$OUT/lstm-fashion.json" &
  run_job transformer_fashion "$LIMIT" $PY benchmarks/transformer_fashion.py --device "$DEVICE" \
    --run-dir "$OUT/transformer" -o "$OUT/transformer-fashion.json" &
  # the structured rows (LeNet-5, ResNet-20: SBP, group VD, Torch-Pruning) have their own ordered runner
  run_job structured "$LIMIT" env DEVICE="$DEVICE" VARIANTS=0 LOGS="$OUT/structured-logs" \
    bash benchmarks/structured_fashion_gpu.sh &
fi
wait
echo "total wall $(( $(date +%s) - start ))s" | tee -a "$OUT/summary.txt"
if [ -n "${2:-}" ]; then
  tar czf "$2" --exclude='checkpoint-*.pt' -C "$(dirname "$OUT")" "$(basename "$OUT")" && ls -la "$2"
fi
