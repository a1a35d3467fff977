#!/usr/bin/env bash
# Set everything up, then compress the shipped example model (LeNet-300-100 trained on the bundled digits).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
set -x
prunedrop compress examples/digits_mlp.pt --arch examples.models:digits_mlp --data digits \
    --recipe recipes/digits-quick.yaml -o out/digits --overwrite
