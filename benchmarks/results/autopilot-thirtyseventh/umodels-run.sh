#!/bin/bash
# one model of umodels11.py or umodels12.py on digits: train dense (once), then the default command and
# recipes/sbp.yaml (RECIPES="default sbp" unless set)
#   umodels-run.sh MODULE NAME [ROOT [TAG]]   ROOT: the checkout whose prunedrop runs (a git worktree for "before" rows)
# HERE (the folder holding MODULE) and OUT (the run folders) may be set for a later session's models
U=$1; M=$2; ROOT=${3:-/work/main}; TAG=${4:-after}
HERE=${HERE:-/work/main/benchmarks/results/autopilot-thirtyseventh}
OUT=${OUT:-/tmp/s37/u11}
export PYTHONPATH=$ROOT:$HERE OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv/bin/python}
mkdir -p $OUT && cd $OUT
[ -f $M.pt ] || $PY /work/main/examples/train_dense.py --arch $U:$M --data digits -o $M.pt > $M-dense.log 2>&1
for R in ${RECIPES:-default sbp}; do
  if [ $R = default ]; then ARGS=""; else ARGS="--recipe /work/main/recipes/$R.yaml"; fi
  ( time $PY -m prunedrop compress $M.pt --arch $U:$M --data digits $ARGS -o $M-$R-$TAG --overwrite ) > $M-$R-$TAG.log 2>&1
done
