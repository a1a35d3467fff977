#!/bin/bash
# one model: train dense, then the default command and recipes/sbp.yaml
M=$1
export PYTHONPATH=/work/main/benchmarks/results/autopilot-thirtysixth OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
mkdir -p /tmp/s36/u10 && cd /tmp/s36/u10
$PY /work/main/examples/train_dense.py --arch umodels10:$M --data digits -o $M.pt > $M-dense.log 2>&1
( time $PY -m prunedrop compress $M.pt --arch umodels10:$M --data digits -o $M-default --overwrite ) > $M-default.log 2>&1
( time $PY -m prunedrop compress $M.pt --arch umodels10:$M --data digits --recipe /work/main/recipes/sbp.yaml -o $M-sbp --overwrite ) > $M-sbp.log 2>&1
