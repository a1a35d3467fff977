"""The ``prunedrop`` command line: click commands that map names to library functions, nothing else.

torch is imported inside the commands so that ``--help`` answers at once.
"""

from __future__ import annotations

import errno
import math
import os
import sys
from pathlib import Path
from typing import Any, get_args

import click

from . import __version__
from .recipe_fields import NONE, AtLeast, base_type, choices
from .recipes import Quantize, cli_overrides

DATA_HELP = (
    "Data spec: 'digits' (scikit-learn's bundled 8x8 digits, no files needed), 'fashion-mnist' or 'mnist' "
    "(IDX files from --data-dir or Debian's dataset-fashion-mnist package), 'idx:DIR', 'npz:FILE' "
    "(arrays x_train, y_train, optional x_val, y_val, x_test, y_test; float y with loss: mse for regression), "
    "'imagefolder:DIR' (one sub-folder of "
    "images per class, optionally under train/, val/, test/; recipe keys image_size, image_channels, normalize), "
    "'csv:FILE' (a header row, numeric columns; labels in the recipe's label_column, default 'label'; loss: mse "
    "for real-valued targets), 'hf:PATH' (a Hugging Face datasets save_to_disk folder or parquet files; "
    "pip install 'prunedrop[hf]'), or 'python:module:function' (your function returns datasets or loaders)."
)

ARCH_KWARGS_HELP = (
    "Keyword arguments for --arch as a JSON object, e.g. '{\"num_classes\": 10}' (parsed as JSON; nothing is "
    "evaluated). Recorded in run.json, so `export` and --resume rebuild the same model."
)


# errno values of OSError that are about a path the user gave or the machine's state, not about prunedrop
_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM,
                errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENXIO, errno.ENODEV}


def recipe_overrides(command: Any) -> Any:
    """One option per recipe key that declares a command-line override (``cli=`` in
    :mod:`prunedrop.recipe_groups`), in the recipe's order: a choice for a key with choices, a flag for a true/false
    key, a range for a key whose check is a lower bound (``--epochs`` ≥ 0, ``--lr`` > 0). Each option's value
    arrives under the key's own name; one not given is None, which ``Recipe.replace`` skips."""
    for name, spec, hint, checks in reversed(cli_overrides()):
        kind: dict[str, Any] = {}
        base, allowed = base_type(hint), choices(hint)
        bound = next((c for c in checks if isinstance(c, AtLeast)), None)
        if allowed is not None:
            kind["type"] = click.Choice(list(allowed))
        elif base is bool:
            kind.update(is_flag=True, default=None)
        elif base is int:
            kind["type"] = int if bound is None else click.IntRange(min=int(bound.low) + bound.open)
        elif base is float:
            kind["type"] = float if bound is None else click.FloatRange(min=bound.low, min_open=bound.open)
        if spec.none:
            kind["type"] = _OrNone(kind.get("type", str))
        command = click.option(spec.flag, name, metavar=spec.metavar, help=spec.help, **kind)(command)
    return command


class _OrNone(click.ParamType):
    """A recipe override that also takes ``none`` (:attr:`prunedrop.recipe_fields.Cli.none`): the key set to null."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = f"{getattr(inner, 'name', 'value')} or none"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is NONE or (isinstance(value, str) and value.strip().lower() == "none"):
            return NONE
        return click.types.convert_type(self.inner).convert(value, param, ctx)


def with_overrides(recipe: Any, overrides: dict[str, Any]) -> Any:
    """``recipe`` with the command line's overrides: an option not given (None) leaves its key, ``none`` sets it to
    null (validated as a recipe that says null)."""
    recipe = recipe.replace(**{k: v for k, v in overrides.items() if v is not NONE})
    nulled = [k for k, v in overrides.items() if v is NONE]
    return recipe.nulled(*nulled)


class _Commands(click.Group):
    """The command group; an OSError about a path (a name too long for the file system, a loop of links, no
    permission) that no stage turned into a PrunedropError is still one line, not a traceback. A SystemExit that
    the user's code raised while prunedrop ran it (a forward, a Dataset, a factory calling sys.exit()) is one line
    naming where (:func:`prunedrop.errors.exit_error`), not a silent exit with that code's status; KeyboardInterrupt
    is left alone (click's "Aborted!")."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SystemExit as e:
            distributed = sys.modules.get("prunedrop.distributed")
            if distributed is not None and isinstance(e, distributed.Terminated):
                raise  # prunedrop's own: SIGTERM during a distributed run, leaving with status 143
            from .errors import exit_error

            raise exit_error(e) from None
        except OSError as e:
            if e.errno not in _PATH_ERRNOS:
                raise
            from .errors import PrunedropError

            where = str(e.filename) if e.filename is not None else "a path"
            where = where if len(where) <= 120 else where[:117] + "..."
            raise PrunedropError(f"{where}: {e.strerror or e}; check the path and its permissions") from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="prunedrop")
def cli() -> None:
    """Make a trained PyTorch network smaller with variational dropout.

    prunedrop swaps the model's layers for variational versions, fine-tunes them so that every weight
    (sparse_vd) or every neuron/channel (sbp, group_vd) learns its own noise level, prunes what the noise
    made useless, removes pruned units physically, exports the smaller model to ONNX (checked against
    PyTorch with onnxruntime) and reports what was saved.

    You state what you can afford, never β: an accuracy budget (--max-drop, 1 point by default) and/or a
    size or speed target (--target flops=10x); the autopilot chooses β while training.

    \b
    Start with:
      prunedrop compress examples/digits_mlp.pt --arch examples.models:digits_mlp -o out/digits
    """
    if click.get_current_context().invoked_subcommand != "recipes":  # every other command imports torch
        from .safety import check_temp_dir

        check_temp_dir()


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--arch", metavar="MODULE:FACTORY",
              help="Function that builds the model's architecture (called with --arch-kwargs, else no arguments); "
                   "MODEL is then a state dict, loaded safely with weights_only=True. Zoo models by name: "
                   "torchvision.models:resnet18, or timm:NAME (timm.create_model(NAME, pretrained=False)); "
                   "nothing is downloaded.")
@click.option("--arch-kwargs", metavar="JSON", help=ARCH_KWARGS_HELP)
@click.option("--trust-pickle", is_flag=True,
              help="Allow MODEL to be a whole pickled nn.Module. Unpickling runs code stored in the file: use it "
                   "only for files you made or trust. Without it, only tensors are read.")
@click.option("--data", "data_spec", default="digits", show_default=True, metavar="SPEC", help=DATA_HELP)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder holding the IDX files of 'fashion-mnist' / 'mnist'.")
@click.option("--recipe", "recipe_path", type=click.Path(path_type=Path), metavar="FILE",
              help="YAML recipe (see `prunedrop recipes`); without it the built-in defaults are used.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Folder for model.onnx, model.pt, architecture.json, report.json, report.md and checkpoints.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty output folder, replacing its files.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from the checkpoint in the output folder (same command otherwise).")
@recipe_overrides
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or stage messages; only the final table.")
def compress(model: Path, arch: str | None, arch_kwargs: str | None, trust_pickle: bool, data_spec: str,
             data_dir: Path | None, recipe_path: Path | None, output: Path, overwrite: bool, resume: bool,
             quiet: bool, **overrides: Any) -> None:
    """Compress MODEL and write the smaller model, its ONNX export and a report to -o.

    MODEL is a state dict (with --arch) or, with --trust-pickle, a pickled nn.Module, or a Hugging Face
    save_pretrained folder (a classifier; with tokenized hf: data).
    """
    from .data import fit_inputs, load_data
    from .distributed import barrier, cleanup, is_main
    from .distributed import init as init_distributed
    from .pipeline import check_before_files, measure_before_files
    from .pipeline import compress as run_compress
    from .recipes import DEFAULT_CHANGED, KEYS_ADDED, RUN_DECIDES, Recipe, load_recipe
    from .report import format_table
    from .runfolder import (
        RUN_INFO,
        RunFolderLock,
        check_inputs_kept,
        prepare_output_dir,
        read_run_info,
        run_identity,
        run_inputs,
        start_run,
    )
    from .safety import check_finite_weights, check_output_folder
    from .storage import load_model, parse_arch_kwargs
    from .storage.hf_model import HFTextModel, data_recipe
    from .task import fit_task
    from .train import resolve_device

    kwargs = parse_arch_kwargs(arch_kwargs)
    recipe = with_overrides(load_recipe(recipe_path), overrides)  # options not given are None: skipped
    init_distributed(resolve_device(recipe.device))  # joins torchrun's process group when WORLD_SIZE > 1
    check_output_folder(output)
    lock = RunFolderLock(output)  # one compress per folder: held until the command ends, taken at once if it exists
    click.get_current_context().call_on_close(lock.release)
    if is_main():
        lock.acquire_if_exists()
    out_dir = prepare_output_dir(output, overwrite=overwrite, resume=resume) if is_main() else Path(output)
    # no file the run writes (or --overwrite clears) may be one of its inputs: refused before anything is loaded
    check_inputs_kept(out_dir, run_inputs(model, arch=arch, data_spec=data_spec, data_dir=data_dir,
                                          recipe_path=recipe_path))
    barrier()
    if resume:
        previous = read_run_info(out_dir).get("recipe")
        if previous is not None:  # keys left to the run (null) continue with what the interrupted run stored
            # one that this prunedrop cannot read (a newer one's key, a value of the wrong type) says where it is
            Recipe.from_dict(previous, source=f"the recipe recorded in {out_dir}/{RUN_INFO}", saved_run=True)
            previous = {**KEYS_ADDED, **previous}  # a key added since: that run did what the key's old value does
            recipe = recipe.replace(**{k: previous[k] for k in RUN_DECIDES
                                       if getattr(recipe, k) is None and previous.get(k) is not None})
            # a default that changed since the run was started: the run keeps the one it started with
            defaults = Recipe()
            recipe = recipe.replace(**{k: old for k, old in DEFAULT_CHANGED.items()
                                       if previous.get(k) == old and getattr(recipe, k) == getattr(defaults, k)})
            # a key added since the run was started is not in its run.json: it ran as the key's default does
            previous = {**defaults.to_dict(), **previous}
            if previous.get("loss") == "binary_cross_entropy" and recipe.loss == "cross_entropy":
                recipe = recipe.replace(loss="binary_cross_entropy")  # chosen by the run (below), as again now
        if previous is not None and previous != recipe.to_dict():
            changed = sorted(k for k, v in recipe.to_dict().items() if previous.get(k) != v)
            raise click.ClickException(
                f"--resume with a different recipe than the interrupted run (changed: {', '.join(changed)}); "
                "resume with the same settings")
    if resume:
        _check_same_arch_kwargs(out_dir, kwargs)
    net = load_model(model, arch=arch, trust_pickle=trust_pickle, arch_kwargs=kwargs,
                     log=None if quiet or not is_main() else (lambda m: click.echo(m, err=True)))
    check_finite_weights(net, f"model {model}")
    if isinstance(net, HFTextModel) and _default(click.get_current_context(), "data_spec"):  # not the digits
        raise click.UsageError("a Hugging Face model takes token ids: give its tokenized data, --data hf:PATH")
    data = load_data(data_spec, data_dir=data_dir, val_fraction=recipe.val_fraction, seed=recipe.seed,
                     train_limit=recipe.train_limit, recipe=data_recipe(net, recipe),
                     log=None if quiet or not is_main() else (lambda m: click.echo(m, err=True)))
    data, fitted = fit_inputs(net, data)
    if fitted and not quiet and is_main():
        click.echo(fitted, err=True)
    if recipe.class_names is not None and not quiet and is_main():
        if data.class_names:
            shown = ", ".join(f"{i} {n!r}" for i, n in enumerate(data.class_names[:12]))
            click.echo(f"labels that are names, numbered by --class-names: {shown}"
                       f"{', ...' if len(data.class_names) > 12 else ''}", err=True)
        else:
            click.echo("note: --class-names (class_names) is not used: the labels of this data are class indices "
                       "already (an image folder's classes are its sub-folders, in sorted order)", err=True)
    recipe = fit_task(net, data, recipe, log=None if quiet or not is_main() else (lambda m: click.echo(m, err=True)))
    # latency batches, precision, a model with nothing to convert: before any file exists
    check_before_files(net, data, recipe)
    measured = None
    if is_main():
        # the identity reads every sample (an image folder's broken file stops it here), so before the folder exists
        identity = run_identity(model, data)
        # the original measured on every validation and test sample (ignored labels, outputs that are not finite)
        # and exported to ONNX in a temporary folder, checked in onnxruntime: the file is moved in as original.onnx
        measured = measure_before_files(net, data, recipe)
        try:
            lock.acquire()  # every input is checked: the run may now create, clear and write its folder
            start_run(out_dir, {
                "model_path": os.path.abspath(model), "arch": arch, "arch_kwargs": kwargs,
                "trust_pickle": trust_pickle,
                "data": data_spec, "data_dir": None if data_dir is None else os.path.abspath(data_dir),
                "recipe": recipe.to_dict(),
            }, identity, overwrite=overwrite, resume=resume, warn=lambda msg: click.echo(msg, err=True))
        except BaseException:  # another run holds the folder, --resume with other inputs: no temporary folder left
            measured.discard()
            raise
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    result = run_compress(net, data, recipe, out_dir, resume=resume, progress=not quiet, log=log,
                          source={"model": Path(model).name, "arch": arch, "arch_kwargs": kwargs,
                                  "data": data_spec}, measured=measured, checked=True)
    if is_main():
        click.echo(format_table(result.report))
        click.echo(f"\nwrote {', '.join(sorted(result.files))} to {out_dir}")
    cleanup()
    target = result.report.get("target") if is_main() else None
    budget = result.report.get("budget") if is_main() else None
    if budget is not None and not budget["within"]:  # a fixed β ended over the budget (automatic β stops earlier)
        raise OverBudget(budget["line"])
    if recipe.strict and target is not None and not target["reached"]:
        raise TargetMissed(f"{target['line']} (--strict)")


def _default(ctx: click.Context, name: str) -> bool:
    """The option ``name`` was not given: its value is the default."""
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, None)


class TargetMissed(click.ClickException):
    """``--strict``: the run finished and wrote everything, but missed its target."""

    exit_code = 3


class OverBudget(click.ClickException):
    """A fixed-β run finished and wrote everything, but its model is over the accuracy budget."""

    exit_code = 4


def _check_same_arch_kwargs(out_dir: Path, kwargs: dict[str, Any]) -> None:
    """--resume must rebuild the model the interrupted run built: the same --arch-kwargs."""
    from .runfolder import read_run_info

    previous = read_run_info(out_dir).get("arch_kwargs") or {}
    if previous != kwargs:
        import json

        raise click.ClickException(
            f"--resume with --arch-kwargs {json.dumps(kwargs)} but the interrupted run used {json.dumps(previous)}; "
            "resume with the same settings")


@cli.command(name="export")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--threshold", type=float,
              help="Pruning threshold (log α, or the SNR for sbp); default: the one the run chose (its report.json), "
                   "or the recipe's for a run that did not finish.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Path of the ONNX file to write: a new file, never one the run depends on.")
@click.option("--overwrite", is_flag=True, help="Replace the file at -o if it exists (a regular file only).")
@click.option("--quantize", type=click.Choice(list(get_args(Quantize))), default="none", show_default=True,
              help="Write -o as an int8 ONNX file (onnxruntime QDQ): int8 = every layer onnxruntime can quantize, "
                   "bayes = the layers whose posterior allows 8 bits; kept within the run's accuracy budget, and "
                   "layers whose integer form runs slower on this CPU stay float32.")
def export_cmd(run_dir: Path, threshold: float | None, output: Path, overwrite: bool, quantize: str) -> None:
    """Re-threshold a run's variational checkpoint and export it again, without retraining.

    Works on a finished or an interrupted run (after at least one epoch). The noise-free fine-tuning
    after thresholding is not replayed.
    """
    from .data import fit_inputs, load_data
    from .recipes import Recipe
    from .reexport import reexport
    from .runfolder import RUN_INFO, export_protected_files, read_run_info
    from .safety import check_output_file
    from .storage import load_model
    from .storage.hf_model import data_recipe

    if threshold is not None and not math.isfinite(threshold):
        raise click.BadParameter(f"{threshold} is not a finite number", param_hint="--threshold")
    info = read_run_info(run_dir)
    check_output_file(output, overwrite=overwrite, protected=export_protected_files(run_dir, info))
    recipe = Recipe.from_dict(info.get("recipe"), source=f"the recipe recorded in {run_dir}/{RUN_INFO}",
                              saved_run=True)
    net = load_model(info["model_path"], arch=info.get("arch"), trust_pickle=bool(info.get("trust_pickle")),
                     arch_kwargs=info.get("arch_kwargs"))
    data, _ = fit_inputs(net, load_data(info["data"], data_dir=info.get("data_dir"), val_fraction=recipe.val_fraction,
                                        seed=recipe.seed, train_limit=recipe.train_limit,
                                        recipe=data_recipe(net, recipe)))
    r = reexport(net, data, recipe, run_dir, output, threshold=threshold, overwrite=overwrite, quantize=quantize,
                 log=lambda msg: click.echo(msg, err=True))
    click.echo(f"threshold {r.threshold:g}: kept {r.kept_fraction:.2%} of the converted weights, "
               f"{r.params_after:,} of {r.params_before:,} parameters non-zero; "
               f"{r.metric_name} {r.metric:.4g} on validation data")
    if r.quantization is not None:
        from .report.render import int8_stored_text

        int8 = sum(row["precision"] != "float32" for row in r.quantization["layers"])
        click.echo(f"wrote {r.path} ({r.onnx_bytes:,} bytes, {int8} of {len(r.quantization['layers'])} layers integer"
                   f"{int8_stored_text(r.quantization)}), "
                   f"{r.metric_name} {r.quantization['metric']['val']:.4g} on validation data (onnxruntime)")
        return
    click.echo(f"wrote {r.path} ({r.onnx_bytes:,} bytes), onnxruntime max abs diff {r.parity_max_abs_diff:.2e}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--render/--no-render", default=True, show_default=True,
              help="With one run: also rewrite its report.md and the plots that report.json holds the data for.")
def report(run_dirs: tuple[Path, ...], render: bool) -> None:
    """Print a finished run's savings table; with two or more runs, compare them side by side.

    With one RUN_DIR the report is re-rendered from its report.json: the terminal table, report.md and the
    kept-per-layer, sweep and training-curve plots (the log α histograms need the trained model and are
    only drawn by `compress`).
    """
    from .errors import PrunedropError
    from .report import compare_reports, format_table, load_reports

    # one run given twice (run ./run, a link) is shown once, and said so
    by_name = load_reports(run_dirs, log=lambda msg: click.echo(msg, err=True))
    reports = list(by_name.values())
    if render and len(run_dirs) == 1:
        from .runfolder import PLOTS, REPORT_MD, RunFolder, check_inputs_kept, run_inputs_of

        folder = RunFolder(run_dirs[0])
        try:
            info = folder.read_info()
        except PrunedropError:
            info = {}  # a report without its run.json: nothing recorded to protect
        # report.md and the plots are rewritten: never over one of the run's inputs
        check_inputs_kept(folder.path, run_inputs_of(info), option="report",
                          written=[folder.path / REPORT_MD, *(p for p in folder.written_files()
                                                              if p.parent == folder.path / PLOTS)])
    try:  # a hand-edited report.json with a wrong value somewhere: one line, not a traceback
        if len(run_dirs) > 1:
            click.echo(compare_reports(by_name))
            return
        table = format_table(reports[0])  # before anything is rewritten
        if render:
            from .stages import render_report

            render_report(reports[0], run_dirs[0])
    except PrunedropError:
        raise
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError) as e:
        where = ", ".join(str(d) for d in run_dirs)
        raise PrunedropError(f"the report.json of {where} is malformed ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:120]}); restore it or run `prunedrop compress` "
                             "again") from None
    click.echo(table)


#: the most values one example input of ``inspect --input-shape`` may hold (a 4096x4096 RGB image is 50M)
MAX_INSPECT_ELEMENTS = 2**26


@cli.command(name="inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--arch", metavar="MODULE:FACTORY", help="Architecture factory, as for `compress`.")
@click.option("--arch-kwargs", metavar="JSON", help=ARCH_KWARGS_HELP)
@click.option("--trust-pickle", is_flag=True, help="Allow a whole pickled nn.Module (runs code from the file).")
@click.option("--recipe", "recipe_path", type=click.Path(path_type=Path), metavar="FILE",
              help="Recipe whose method and include/exclude globs decide what would be converted.")
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="Data spec whose first input gives the input shape (see `compress --help`).")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), help="Folder of IDX files.")
@click.option("--input-shape", metavar="C,H,W", help="Shape of one input without the batch dimension, "
              "instead of --data (not with it), e.g. 1,28,28.")
@click.option("--json", "as_json", is_flag=True, help="Print the inspection as JSON.")
def inspect_cmd(model: Path, arch: str | None, arch_kwargs: str | None, trust_pickle: bool,
                recipe_path: Path | None, data_spec: str | None, data_dir: Path | None, input_shape: str | None,
                as_json: bool) -> None:
    """Show what `compress` would touch: the layer tree with parameters and FLOPs per layer, which layers the
    recipe converts and which it leaves alone (and why). Trains nothing, writes nothing."""
    import json

    import torch

    from .inspection import format_inspection, inspect_model
    from .recipe_groups import SORTED
    from .recipes import load_recipe
    from .safety import check_finite_weights
    from .storage import load_model, parse_arch_kwargs
    from .storage.hf_model import HFTextModel, data_recipe
    from .task import output_shape_on

    if input_shape is not None and (data_spec is not None or data_dir is not None):
        from .errors import PrunedropError

        given = "--data" if data_spec is not None else "--data-dir"
        raise PrunedropError(f"--input-shape and {given} are alternatives (the example input is zeros of that shape, "
                             "or the data's first input): give one of them")
    recipe = load_recipe(recipe_path)
    if input_shape is not None:
        try:
            shape = tuple(int(v) for v in input_shape.split(","))
        except ValueError:
            raise click.BadParameter(f"{input_shape!r} is not a comma-separated list of sizes, e.g. 1,28,28",
                                     param_hint="--input-shape") from None
        if not shape or min(shape) < 1:
            raise click.BadParameter("sizes must be positive", param_hint="--input-shape")
        if len(shape) > 8 or math.prod(shape) > MAX_INSPECT_ELEMENTS:
            raise click.BadParameter(f"one input of shape {input_shape} is larger than the "
                                     f"{MAX_INSPECT_ELEMENTS:,} values inspect runs; give the shape of one sample "
                                     "(without the batch size)", param_hint="--input-shape")
        example = torch.zeros(1, *shape)
    else:
        example = None
    net = load_model(model, arch=arch, trust_pickle=trust_pickle, arch_kwargs=parse_arch_kwargs(arch_kwargs),
                     log=lambda m: click.echo(m, err=True))
    check_finite_weights(net, f"model {model}")
    if example is None and data_spec is None and isinstance(net, HFTextModel):  # not the digits' images
        raise click.UsageError("a Hugging Face model takes token ids: give its tokenized data (--data hf:PATH) or "
                               "a sentence length (--input-shape 128)")
    if example is None:
        from .data import fit_inputs, load_data

        # only an input is read: labels that are names need no numbering of the user's here
        named = recipe if recipe.class_names is not None else recipe.replace(class_names=[SORTED])
        data, _ = fit_inputs(net, load_data(data_spec or "digits", data_dir=data_dir, recipe=data_recipe(net, named)))
        example = data.example_batch(1)
    else:
        from .data.assemble import runs_on

        if not runs_on(net, example) and runs_on(net, example.long()):
            example = example.long()  # a model of token ids: zeros as ids
    output_shape_on(net, example)
    d = inspect_model(net, example, recipe)
    click.echo(json.dumps(d, indent=2) if as_json else format_inspection(d))


@cli.command()
@click.option("--keys", is_flag=True, help="Also list every recipe key with its default and meaning.")
def recipes(keys: bool) -> None:
    """List the shipped recipes (and, with --keys, every recipe key)."""
    from .recipes import recipe_sections, shipped_recipes_dir

    folder = shipped_recipes_dir()
    if folder is None:
        click.echo("no recipes/ folder found beside the package (install from a source checkout to get them)")
    else:
        for path in sorted(folder.glob("*.yaml")):
            first = next((ln.lstrip("# ").strip() for ln in path.read_text(encoding="utf-8").splitlines()
                          if ln.startswith("#")), "")
            click.echo(f"{path.relative_to(folder.parent)}  {first}")
    if keys:
        for section, _, section_keys in recipe_sections():
            click.echo(f"\n{'top of the recipe' if section is None else section + ':'}")
            for name, default, doc in section_keys:
                click.echo(f"  {name} (default {default}): {doc}")


def main() -> None:
    cli(prog_name="prunedrop")


if __name__ == "__main__":
    main()
