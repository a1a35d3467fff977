"""The stages of :func:`prunedrop.pipeline.compress`, one module each, called in this order (module: function →
result; each result's ``to_dict()`` is its part of report.json):

1. :mod:`.baseline`: :func:`measure_original` → :class:`Baseline` (load: the original measured, original.onnx)
2. :mod:`.conversion`: :func:`convert` → :class:`Converted`
3. :mod:`.variational`: :func:`finetune_variational` → :class:`VariationalFinetune`
4. :mod:`.selection`: :func:`select_threshold` → :class:`Selection` (sweep, budget, and :mod:`.bisection`, the
   bisection after fine-tuning: :func:`search_after_finetune` → :class:`Search`)
5. :mod:`.pruning`: :func:`prune_variational` → :class:`Pruned`
6. :mod:`.pruned_finetune`: :func:`finetune_pruned` → :class:`FinetunedPruned`
7. :mod:`.slimming`: :func:`slim_pruned` → :class:`Slimmed`
8. :mod:`.evaluation`: :func:`evaluate_compressed` → :class:`Evaluation`
9. :mod:`.exporting`: :func:`export_compressed` → :class:`Exported` (export and verify, int8, latency)
10. :mod:`.reporting`: :func:`assemble_report`, :func:`write_run_report` (report.json, report.md, plots)

:mod:`.budget` holds the budget and target judgements several stages state; :mod:`.common` what they share.
Every file name of the run folder is :class:`prunedrop.runfolder.RunFolder`'s.
"""

from __future__ import annotations

from .baseline import Baseline, measure_original
from .bisection import Search, search_after_finetune
from .conversion import Converted, convert, fold
from .evaluation import Evaluation, evaluate_compressed
from .exporting import Exported, export_compressed
from .pruned_finetune import FinetunedPruned, finetune_pruned, with_finetune_rate
from .pruning import Pruned, prune_variational
from .reporting import assemble_report, render_report, write_run_report
from .selection import Selection, select_threshold
from .slimming import Slimmed, slim_pruned
from .variational import VariationalFinetune, finetune_variational

__all__ = [
    "Baseline", "Converted", "Evaluation", "Exported", "FinetunedPruned", "Pruned", "Search", "Selection", "Slimmed",
    "VariationalFinetune", "assemble_report", "convert", "evaluate_compressed", "export_compressed", "finetune_pruned",
    "finetune_variational", "fold", "measure_original", "prune_variational", "render_report", "search_after_finetune",
    "select_threshold", "slim_pruned", "with_finetune_rate", "write_run_report",
]
