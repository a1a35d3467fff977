"""The bits each layer's posterior asks for, read from a finished run of ``benchmarks/structured_fashion.py``
(issue 21), for ``quantize_speed.py --mode bayes --bits-from`` on a run that was made without ``--quantize``.

    python benchmarks/posterior_bits.py --model resnet20 --run /tmp/r20/run-b30/sbp -o bits.json
    python benchmarks/quantize_speed.py --run /tmp/r20/run-b30/sbp --mode bayes --bits-from bits.json -o OUT.json

The run's variational checkpoint is loaded into the model it was trained from (the cached dense model with its
BatchNorms folded, as ``structured_fashion.py`` folds them, converted by the recipe saved in the checkpoint), and
:func:`prunedrop.quantize.posterior_bits` is applied at the run's threshold (its ``report.json``): exactly what a run
with ``quantize: bayes`` computes at the same point (``--rule outputs``, the default: each unit's step matched on its
output over 256 Fashion-MNIST training samples; ``--rule weights``: the rule before it, from the weights alone). The JSON holds a ``quantization`` section with one row per
layer (``layer``, ``bits_needed``, ``units``, ``median_spread``), the form ``quantize_speed.py`` reads.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import import_object
from benchmarks.structured_fashion import ARCHS, fold_batchnorm
from prunedrop.atomic import atomic_write_text
from prunedrop.convert import to_variational
from prunedrop.data import load_data
from prunedrop.pipeline import VARIATIONAL_CHECKPOINT
from prunedrop.quantize import posterior_bits, rule_inputs
from prunedrop.recipes import Recipe
from prunedrop.storage import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(ARCHS), required=True)
    p.add_argument("--run", type=Path, required=True, help="the run folder (RUN/sbp) with the variational checkpoint")
    p.add_argument("--dense", type=Path, default=None,
                   help="the cached dense state dict (default: benchmarks/results/<model>-dense-e5-s0.pt)")
    p.add_argument("--rule", choices=["outputs", "weights"], default="outputs",
                   help="match each unit's step on its output over training samples (as a run does), or on its "
                        "weights alone (the rule before)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (default: the usual places)")
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args(argv)
    dense_file = args.dense or ROOT / "benchmarks" / "results" / f"{args.model}-dense-e5-s0.pt"
    model = import_object(ARCHS[args.model], what="--model")()
    model.load_state_dict(torch.load(dense_file, map_location="cpu", weights_only=True))
    folded, _ = fold_batchnorm(model.eval())
    state = load_checkpoint(args.run / VARIATIONAL_CHECKPOINT, require=("model",))
    recipe = Recipe.from_dict(state["recipe"], saved_run=True)
    threshold = json.loads((args.run / "report.json").read_text())["threshold"]
    variational = to_variational(folded, recipe, example_input=torch.zeros(2, 1, 28, 28))
    variational.load_state_dict(state["model"])
    inputs = None
    if args.rule == "outputs":
        data = load_data("fashion-mnist", data_dir=args.data_dir, val_fraction=recipe.val_fraction, seed=recipe.seed)
        inputs = rule_inputs(data, recipe.seed)
    bits = posterior_bits(variational.eval(), threshold, inputs=inputs)
    rows = [{"layer": name, "bits_needed": lb.bits if math.isfinite(lb.bits) else None, "units": lb.units,
             "median_spread": lb.median_spread, "precision": lb.precision} for name, lb in bits.items()]
    atomic_write_text(args.output, json.dumps({"run": str(args.run), "threshold": threshold, "rule": args.rule,
                                               "quantization": {"layers": rows}}, indent=1) + "\n")
    for row in rows:
        print(f"{row['layer']:24s} {row['bits_needed']!s:>8.6} bits over {row['units']} units -> {row['precision']}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
