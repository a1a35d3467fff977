#!/usr/bin/env bash
# Set everything up, then compress the shipped example model (LeNet-300-100 trained on the bundled digits) with the
# default settings: sparse VD, the autopilot choosing β within an accuracy budget of 1 point.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
set -x
prunedrop compress examples/digits_mlp.pt --arch examples.models:digits_mlp --data digits -o out/digits --overwrite
