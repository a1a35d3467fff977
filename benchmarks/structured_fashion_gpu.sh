#!/usr/bin/env bash
# All rows of benchmarks/structured_fashion.py on one GPU, as parallel processes (each is bound by kernel launches,
# not by the GPU's arithmetic), in the order their inputs need:
#   the dense ResNet-20 (LeNet-5's dense model is cached) ─► SBP and group VD rows of both models in parallel
#   ─► each model's Torch-Pruning row after its SBP row (it prunes to the FLOPs that SBP reached).
# Usage, from the repository root:  DATA_DIR=.data/fashion-mnist bash benchmarks/structured_fashion_gpu.sh
# Logs go to $LOGS (default runs/structured-logs); when $OUT is set (the device tool), the results, the run
# folders' ONNX pairs and the logs are packed into $OUT/structured-{lenet5,resnet20}.tgz, to unpack in the repository root
# and re-time with:  python benchmarks/structured_fashion.py --latency-only runs/structured-lenet5 (and the others)
set -u
PY=${PYTHON:-python3}
B=benchmarks/structured_fashion.py
ARGS=(--device "${DEVICE:-cuda}" ${DATA_DIR:+--data-dir "$DATA_DIR"} ${EXTRA:-})
LOGS=${LOGS:-runs/structured-logs}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }
# what has finished so far, packed into $OUT every 30 s and at the end: a run stopped at its time limit still
# returns the rows it completed
pack() {  # one archive per model (each returned file must stay under 16 MiB)
  local m
  for m in lenet5 resnet20; do
    tar czf "$OUT/structured-$m.tgz.tmp" --ignore-failed-read benchmarks/results/structured-$m-*.json \
      benchmarks/results/structured-kl20/structured-$m-*.json benchmarks/results/$m-dense-*.pt \
      runs/structured-$m*/example.pt runs/structured-$m*/*/row.json runs/structured-$m*/*/original.onnx \
      runs/structured-$m*/*/model.onnx runs/structured-$m*/*/report.json runs/structured-$m*/*/report.md \
      "$LOGS"/$m-*.log 2>/dev/null
    mv "$OUT/structured-$m.tgz.tmp" "$OUT/structured-$m.tgz"
  done
}
if [ -n "${OUT:-}" ]; then
  ( trap 'exit 0' TERM; while sleep 30 && kill -0 $$ 2>/dev/null; do pack; done ) & packer=$!
  trap 'kill "$packer" 2>/dev/null' EXIT
fi

stamp "dense ResNet-20"
$PY $B --model resnet20 --dense-only "${ARGS[@]}" > "$LOGS/resnet20-dense.log" 2>&1 &
dense=$!
$PY $B --model lenet5 --dense-only "${ARGS[@]}" > "$LOGS/lenet5-dense.log" 2>&1
( $PY $B --model lenet5 --method sbp "${ARGS[@]}" && stamp "lenet5 sbp done" &&
  $PY $B --model lenet5 --method torch_pruning "${ARGS[@]}" && stamp "lenet5 torch_pruning done" ) \
  > "$LOGS/lenet5-sbp-torch_pruning.log" 2>&1 &
( $PY $B --model lenet5 --method group_vd "${ARGS[@]}" && stamp "lenet5 group_vd done" ) \
  > "$LOGS/lenet5-group_vd.log" 2>&1 &
# a second SBP row per model at twice the KL weight (more pruning), with its own Torch-Pruning row at its FLOPs,
# into benchmarks/results/structured-kl20/ and runs/structured-<model>-kl20/: the recipes' KL weights are set
# from short trials only; the variants add processes beside the main rows (VARIANTS=0 leaves them out)
variant() {  # model
  local v=(--kl-weight 20 --results-dir benchmarks/results/structured-kl20 --out "runs/structured-$1-kl20")
  $PY $B --model "$1" --method sbp "${v[@]}" "${ARGS[@]}" && stamp "$1 sbp kl20 done" &&
  $PY $B --model "$1" --method torch_pruning "${v[@]}" "${ARGS[@]}" && stamp "$1 torch_pruning kl20 done"
}
[ "${VARIANTS:-1}" = 1 ] && { variant lenet5 > "$LOGS/lenet5-kl20.log" 2>&1 & }
wait $dense || { stamp "dense ResNet-20 failed"; tail -20 "$LOGS/resnet20-dense.log"; }
stamp "dense ResNet-20 ready"
( $PY $B --model resnet20 --method sbp "${ARGS[@]}" && stamp "resnet20 sbp done" &&
  $PY $B --model resnet20 --method torch_pruning "${ARGS[@]}" && stamp "resnet20 torch_pruning done" ) \
  > "$LOGS/resnet20-sbp-torch_pruning.log" 2>&1 &
( $PY $B --model resnet20 --method group_vd "${ARGS[@]}" && stamp "resnet20 group_vd done" ) \
  > "$LOGS/resnet20-group_vd.log" 2>&1 &
[ "${VARIANTS:-1}" = 1 ] && { variant resnet20 > "$LOGS/resnet20-kl20.log" 2>&1 & }
wait $(jobs -p | grep -vx "${packer:-none}")
stamp "all done"
for f in "$LOGS"/*.log; do echo "== $f"; grep -E "^\[|widths .* FLOPs|Error|error" "$f" | tail -8; done
if [ -n "${OUT:-}" ]; then kill "$packer" 2>/dev/null; pack; ls -la "$OUT"; fi
