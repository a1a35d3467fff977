"""Replay the threshold search of a finished run (``budget_after_finetune``) with the current bisection code, with
and without the rule that abandons a probe which cannot end within the budget (issue 17's cost).

    python benchmarks/replay_probes.py RUN [RUN ...] -o OUT.json

RUN: an output folder of ``prunedrop compress`` (or of ``benchmarks/sparse_vd_fashion.py``, ``lstm_fashion.py``)
whose search ran without abandoning: its ``report.json`` (the swept points, the sweep's choice, the budget, and
since 0302ed2 each probe's ``curve``) or its probe checkpoints ``checkpoint-masked-t*.pt``, which hold the
validation metric after every epoch a probe trained. The fine-tuning is deterministic on the CPU for a given recipe and seed, so a probe stopped after epoch k
would have read exactly those metrics up to k: the replay runs :func:`prunedrop.stages.bisection.search_after_finetune`
with the pruning, fine-tuning and evaluation replaced by those records, and says which threshold each variant
chooses and how many fine-tuning epochs it trains. It stops with an error where a variant would need an epoch that
the run never trained (a probe the original search stopped early, or never ran): then the replay cannot tell. A
search judged with a confidence (``budget_confidence``) needs per-sample scores, which checkpoints do not keep, and
a target (``target``) caps the thresholds searched by measuring the model, as a search past the grid's edge sweeps it: such runs are
refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from prunedrop.atomic import atomic_write_text
from prunedrop.convert import to_variational
from prunedrop.recipes import Recipe
from prunedrop.runfolder import RunFolder
from prunedrop.stages import bisection
from prunedrop.sweep import SweepPoint, default_thresholds
from prunedrop.testing import ScriptedSearch, TinyMLP


class Left(RuntimeError):
    """The replay needs an epoch the run never trained."""


def _curves(run: Path, name: str, probes: list[dict[str, Any]]) -> dict[float, list[float]]:
    """Each probed threshold's validation metric after every epoch it trained: the longest of the report's
    ``curve`` entries (runs since 0302ed2) and of its checkpoint's history."""
    curves: dict[float, list[float]] = {}
    for probe in probes:
        curve = probe.get("curve") or []
        if len(curve) > len(curves.get(probe["threshold"], [])):
            curves[probe["threshold"]] = list(curve)
    for path in run.glob("checkpoint-masked-t*.pt"):
        saved = torch.load(path, map_location="cpu", weights_only=False)
        threshold = float(path.stem.split("-t", 1)[1])
        curve = [h[f"val_{name}"] for h in saved["history"] if h.get("phase") == "masked"]
        if len(curve) > len(curves.get(threshold, [])):
            curves[threshold] = curve
    return curves


def replay(run: Path, abandon: bool) -> dict[str, Any]:
    report = json.loads((run / "report.json").read_text())
    sweep = report["sweep"]
    saved_recipe = report.get("recipe") or {}
    if saved_recipe.get("budget_confidence") is not None:
        raise SystemExit(f"{run}: judged with a confidence; per-sample scores are not in the checkpoints")
    if saved_recipe.get("target"):
        raise SystemExit(f"{run}: a target capped the thresholds searched (measured on the model); not replayed")
    loss = saved_recipe.get("loss", "cross_entropy")
    name = "accuracy" if loss == "cross_entropy" else "mse"
    curves = _curves(run, name, sweep.get("after_finetune") or [])
    if not curves:
        raise SystemExit(f"{run}: no probe curves (report.json's sweep.after_finetune, checkpoint-masked-t*.pt)")
    epochs = max(len(c) for c in curves.values())
    fields = SweepPoint.__dataclass_fields__
    # the grid the search bisected (the report's points also hold those swept past its edge)
    grid = {round(t, 6) for t in (saved_recipe.get("sweep_thresholds") or default_thresholds())}
    points = [SweepPoint(**{k: v for k, v in p.items() if k in fields}) for p in sweep["points"]
              if round(p["threshold"], 6) in grid]
    chosen = next((p for p in points if p.threshold == sweep.get("chosen_threshold")), None)
    if any(round(probe["threshold"], 6) not in grid for probe in sweep.get("after_finetune") or []):
        raise SystemExit(f"{run}: the search went past the grid (sweeping the model); not replayed")
    def metric(t: float, epoch: int) -> float:
        curve = curves.get(t, [])
        if len(curve) < epoch:
            raise Left(f"threshold {t:g} epoch {epoch} was never trained")
        return curve[epoch - 1]

    scripted = ScriptedSearch(metric, name)
    patched = scripted.replacements()
    if not abandon:
        patched[(bisection, "_hopeless")] = lambda *args: None
    originals = {key: getattr(*key) for key in patched}
    recipe = Recipe(max_metric_drop=sweep["max_metric_drop"], budget_after_finetune=True, finetune_epochs=epochs,
                    loss=loss)
    logs: list[str] = []
    try:
        for (module, attr), value in patched.items():
            setattr(module, attr, value)
        with tempfile.TemporaryDirectory() as tmp:
            found = bisection.search_after_finetune(
                to_variational(TinyMLP(16, (24, 12), 3), recipe), points, chosen, sweep["metric_before"], recipe,
                scripted.data, torch.device("cpu"), RunFolder(Path(tmp)), torch.zeros(2, 1, 4, 4), resume=False,
                progress=False, log=logs.append)
    finally:
        for (module, attr), value in originals.items():
            setattr(module, attr, value)
    return {"threshold": found.best[0] if found.best else None, "epochs_trained": scripted.epochs_trained,
            "epochs_scheduled": epochs * len({p["threshold"] for p in found.probes}),
            "probes": found.probes, "log": logs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    parser.add_argument("-o", "--output", type=Path, help="write the replays as JSON here")
    args = parser.parse_args()
    out = {}
    for run in args.runs:
        rows = {}
        for variant, abandon in (("abandon", True), ("without", False)):
            try:
                rows[variant] = replay(run, abandon)
            except Left as exc:
                rows[variant] = {"error": str(exc)}
        out[str(run)] = rows
        a, w = rows["abandon"], rows["without"]
        print(f"{run}: abandoning: threshold {a.get('threshold')}, {a.get('epochs_trained')} epochs; "
              f"without: threshold {w.get('threshold')}, {w.get('epochs_trained')} epochs"
              + "".join(f" ({k}: {v['error']})" for k, v in rows.items() if "error" in v))
    if args.output:
        atomic_write_text(args.output, json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
