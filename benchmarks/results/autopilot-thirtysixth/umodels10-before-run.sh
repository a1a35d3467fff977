#!/bin/bash
# recipes/sbp.yaml at 8788372 (a git worktree in $BEFORE), before this session's slim changes, on kws, lerp_gate, crnn
export PYTHONPATH=${BEFORE:-/tmp/before}:/work/main/benchmarks/results/autopilot-thirtysixth OMP_NUM_THREADS=1
cd /tmp/s36/u10

for M in kws lerp_gate crnn; do
  ( time /work/main/.venv/bin/python -m prunedrop compress $M.pt --arch umodels10:$M --data digits --recipe /work/main/recipes/sbp.yaml -o $M-sbp-before --overwrite ) > $M-sbp-before.log 2>&1
done
