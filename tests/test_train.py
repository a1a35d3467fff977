"""Fine-tuning on tiny synthetic data: the ELBO trains, prunes, checkpoints and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunedrop.convert import to_variational
from prunedrop.data import DataBundle
from prunedrop.errors import PrunedropError, TrainingError
from prunedrop.prune import prune
from prunedrop.recipes import Recipe
from prunedrop.testing import TinyMLP, tiny_classification_data
from prunedrop.train import evaluate, finetune, finetune_masked, kept_fraction, resolve_device


def _bundle(n: int = 192) -> DataBundle:
    x, y = tiny_classification_data(n=n + 64, shape=(1, 4, 4), seed=3)
    return DataBundle(name="tiny", train=TensorDataset(x[:n], y[:n]), val=TensorDataset(x[n:], y[n:]),
                      test=None, input_shape=(1, 4, 4), num_classes=3)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TinyMLP(16, (32, 16), 3)


def test_elbo_training_lowers_the_loss_and_prunes() -> None:
    data = _bundle()
    recipe = Recipe(epochs=12, batch_size=32, lr=3e-3, noise_lr=3e-2, kl_weight=20.0, kl_warmup_epochs=2,
                    lr_schedule="constant")
    model = to_variational(_model(), recipe)
    assert kept_fraction(model) > 0.95
    result = finetune(model, data, recipe, progress=False)
    history = result.history
    assert len(history) == 12
    assert history[-1]["data_loss"] < history[0]["data_loss"]
    assert history[-1]["kept_fraction"] < 0.7 * history[0]["kept_fraction"]
    assert history[0]["beta"] < history[-1]["beta"] == pytest.approx(20.0)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)


def test_masked_finetuning_keeps_pruned_weights_zero_and_learns() -> None:
    data = _bundle()
    recipe = Recipe(epochs=4, batch_size=32, kl_weight=20.0, kl_warmup_epochs=1, noise_lr=5e-2,
                    finetune_epochs=3, finetune_lr=1e-2)
    model = to_variational(_model(), recipe)
    finetune(model, data, recipe, progress=False)
    pruned = prune(model)
    zeros_before = {n: (p == 0) for n, p in pruned.model.named_parameters()}
    before = evaluate(pruned.model, data.loader("train", 64))["loss"]
    finetune_masked(pruned.model, pruned.masks, data, recipe, progress=False)
    params = dict(pruned.model.named_parameters())
    for name, mask in pruned.masks.items():
        assert torch.all(params[name][~mask] == 0)
        assert torch.all(zeros_before[name] | (params[name] != 0) | ~mask)
    assert evaluate(pruned.model, data.loader("train", 64))["loss"] < before


@pytest.mark.parametrize("method", ["sparse_vd", "sbp"])
def test_a_frozen_layer_stays_frozen_through_both_fine_tunings(method: str) -> None:
    data = _bundle()
    recipe = Recipe(method=method, epochs=2, batch_size=32, kl_weight=1.0, kl_warmup_epochs=0, finetune_epochs=2,
                    finetune_lr=1e-2)
    model = _model()
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    for p in first.parameters():
        p.requires_grad_(False)
    names = [n for n, p in model.named_parameters() if not p.requires_grad]
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    model = to_variational(model, recipe)
    finetune(model, data, recipe, progress=False)
    for n in names:  # the variational phase leaves them alone
        assert torch.equal(dict(model.named_parameters())[n], original[n]), n
    pruned = prune(model)
    # sbp's plain layer absorbs the noise's mean into the weight: compare from here on
    thresholded = {n: p.detach().clone() for n, p in pruned.model.named_parameters()}
    finetune_masked(pruned.model, pruned.masks, data, recipe, progress=False)
    params = dict(pruned.model.named_parameters())
    for n in names:
        assert not params[n].requires_grad, n
        assert torch.equal(params[n], thresholded[n]), n
    assert any(not torch.equal(p, thresholded[n]) for n, p in params.items() if n not in names)  # the rest learnt


class _NoGradHead(nn.Module):
    """A frozen layer (converted) behind a trainable one that no gradient reaches (run under torch.no_grad)."""

    def __init__(self) -> None:
        super().__init__()
        self.extract = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = torch.relu(self.extract(x.flatten(1)))
        return self.head(h)


@pytest.mark.parametrize("case", ["all-frozen", "trainable-but-cut-off"])
def test_masked_finetuning_with_nothing_to_train_is_skipped_with_a_line(case: str) -> None:
    """Every parameter frozen (or the only trainable ones out of the gradient's reach): nothing is trained, no
    error, the weights stay as thresholded, and the log says the fine-tuning was skipped."""
    data = _bundle()
    recipe = Recipe(epochs=1, batch_size=32, kl_weight=1.0, kl_warmup_epochs=0, finetune_epochs=2, finetune_lr=1e-2)
    model = _model().requires_grad_(False) if case == "all-frozen" else _NoGradHead()
    model = to_variational(model, recipe)
    finetune(model, data, recipe, progress=False)
    pruned = prune(model)
    before = {n: p.detach().clone() for n, p in pruned.model.named_parameters()}
    lines: list[str] = []
    result = finetune_masked(pruned.model, pruned.masks, data, recipe, progress=False, log=lines.append)
    assert result.history == [] and len(lines) == 1 and "fine-tuning skipped" in lines[0]
    after = dict(pruned.model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before)


def test_a_fully_frozen_model_compresses_end_to_end(tmp_path: Path) -> None:
    from prunedrop.pipeline import compress
    from prunedrop.storage import load_saved_model

    data = _bundle()
    model = _model().requires_grad_(False)
    lines: list[str] = []
    recipe = Recipe(epochs=2, batch_size=32, kl_weight=1.0, kl_warmup_epochs=0, finetune_epochs=2, finetune_lr=1e-2,
                    latency_runs=0, plots=False, mc_samples=0, max_metric_drop=None)
    result = compress(model, data, recipe, tmp_path / "run", progress=False, log=lines.append)
    assert any("fine-tuning skipped" in line for line in lines), lines
    assert (tmp_path / "run" / "model.onnx").is_file()
    assert not any(h.get("phase") == "masked" for h in result.report.get("history", []))
    x = data.example_batch(8)
    with torch.no_grad():
        assert torch.allclose(load_saved_model(tmp_path / "run")(x), result.model(x), atol=1e-6)


@pytest.mark.parametrize("method", ["sparse_vd", "sbp"])
def test_a_partly_frozen_model_keeps_its_frozen_weights_through_the_pipelines_finetuning(
        method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the noise-free fine-tuning as compress runs it (sbp: on the slimmed model), a frozen weight keeps the
    value the threshold left it, while the rest learns."""
    from prunedrop.stages import pruned_finetune

    data = _bundle()
    recipe = Recipe(method=method, epochs=2, batch_size=32, kl_weight=1.0, kl_warmup_epochs=0, finetune_epochs=2,
                    finetune_lr=1e-2)
    model = _model()
    next(m for m in model.modules() if isinstance(m, nn.Linear)).requires_grad_(False)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    model = to_variational(model, recipe)
    finetune(model, data, recipe, progress=False)
    pruned = prune(model)
    seen: dict[str, dict[str, torch.Tensor]] = {}
    real = pruned_finetune.finetune_masked

    def recording(net: nn.Module, *args, **kwargs):
        seen["before"] = {n: p.detach().clone() for n, p in net.named_parameters()}
        return real(net, *args, **kwargs)

    monkeypatch.setattr(pruned_finetune, "finetune_masked", recording)
    tuned = pruned_finetune.finetune_pruned(pruned, data, recipe, torch.device("cpu"), data.example_batch(4), None,
                                            resume=False, progress=False, log=lambda msg: None)
    assert len(tuned.train.history) == 2
    params = dict(tuned.model.named_parameters())
    for n in frozen:
        assert not params[n].requires_grad, n
        assert torch.equal(params[n], seen["before"][n]), n
    assert any(not torch.equal(p, seen["before"][n]) for n, p in params.items() if n not in frozen)  # the rest learnt


def test_masked_finetuning_stopped_by_stop_on_continues_to_the_same_weights(tmp_path: Path) -> None:
    """A probe of the budget after fine-tuning stops once within the budget (``stop_on``); the chosen one is
    continued from that checkpoint and must end exactly where an uninterrupted fine-tuning ends."""
    data = _bundle()
    recipe = Recipe(batch_size=32, finetune_epochs=4, finetune_lr=1e-2, seed=5)
    seen: list[dict] = []

    def after_two(record: dict) -> str | None:
        seen.append(record)
        return "within the budget" if record["epoch"] == 2 else None

    whole = _model(1)
    full = finetune_masked(whole, {}, data, recipe, progress=False)
    stopped_model = _model(1)
    path = tmp_path / "probe.pt"
    stopped = finetune_masked(stopped_model, {}, data, recipe, progress=False, checkpoint_path=path,
                              stop_on=after_two)
    assert [h["epoch"] for h in stopped.history] == [1, 2] and "val_accuracy" in seen[0]
    # resumed with the rule, it stays stopped; without it, it goes on to the end of the same schedule
    again = finetune_masked(_model(1), {}, data, recipe, progress=False, checkpoint_path=path, resume=True,
                            stop_on=after_two)
    assert [h["epoch"] for h in again.history] == [1, 2]
    continued_model = _model(1)
    continued = finetune_masked(continued_model, {}, data, recipe, progress=False, checkpoint_path=path,
                                resume=True)
    assert [h["epoch"] for h in continued.history] == [1, 2, 3, 4]
    assert continued.history[-1]["val_accuracy"] == pytest.approx(full.history[-1]["val_accuracy"])
    for a, b in zip(continued_model.parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the rule is never asked about the last epoch
    ruled = finetune_masked(_model(1), {}, data, recipe.replace(finetune_epochs=1), progress=False,
                            stop_on=lambda record: pytest.fail("asked after the last epoch"))
    assert len(ruled.history) == 1


def _run(recipe: Recipe, path: Path | None, *, resume: bool = False, stop_after: int | None = None,
         seed: int | None = None):
    torch.manual_seed(recipe.seed)
    model = to_variational(_model(), recipe)
    data = _bundle()
    if stop_after is not None:
        # a data view that raises KeyboardInterrupt after stop_after batches, like a Ctrl-C would
        original = data.loader
        count = {"n": 0}

        def loader(split, batch_size, **kw):
            inner = original(split, batch_size, **kw)
            if split != "train" or not kw.get("shuffle") or kw.get("seed") != (recipe.seed if seed is None else seed):
                return inner  # the training loop's batches only (``seed``: the autopilot probe's), not the checks

            class Interrupting:
                def __len__(self):
                    return len(inner)

                def __iter__(self):
                    for batch in inner:
                        count["n"] += 1
                        if count["n"] > stop_after:
                            import os
                            import signal

                            os.kill(os.getpid(), signal.SIGINT)
                        yield batch

            return Interrupting()

        data.loader = loader  # type: ignore[method-assign]
    result = finetune(model, data, recipe, checkpoint_path=path, resume=resume, progress=False)
    return model, result


def test_interrupt_then_resume_gives_exactly_the_same_weights(tmp_path: Path) -> None:
    recipe = Recipe(epochs=3, batch_size=32, kl_warmup_epochs=1, seed=5)
    straight, straight_result = _run(recipe, tmp_path / "a.pt")
    from prunedrop.train import TrainingInterrupted

    ckpt = tmp_path / "b.pt"
    with pytest.raises(TrainingInterrupted, match="--resume"):
        _run(recipe, ckpt, stop_after=8)  # 6 batches per epoch: stops in the middle of epoch 2
    assert ckpt.exists()
    resumed, resumed_result = _run(recipe, ckpt, resume=True)
    assert resumed_result.resumed_from == (1, 3)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in straight_result.history] == [h["loss"] for h in resumed_result.history]


def test_interrupt_without_a_checkpoint_path_does_not_claim_a_checkpoint(tmp_path: Path) -> None:
    from prunedrop.train import TrainingInterrupted

    recipe = Recipe(epochs=3, batch_size=32, kl_warmup_epochs=1, seed=5, kl_weight=1.0)  # fixed β: no probe
    with pytest.raises(TrainingInterrupted, match="no checkpoint was written") as caught:
        _run(recipe, None, stop_after=8)
    assert "--resume" not in str(caught.value)


def test_interrupt_during_the_autopilots_probe_says_to_run_again(tmp_path: Path) -> None:
    from prunedrop.train import TrainingInterrupted

    recipe = Recipe(epochs=3, batch_size=32, seed=5)  # automatic: the probe trains a copy before the first step
    assert recipe.automatic
    ckpt = tmp_path / "c.pt"
    with pytest.raises(TrainingInterrupted, match="probe.*run the same command again"):
        _run(recipe, ckpt, stop_after=2, seed=recipe.seed + 1)  # the probe's batches
    assert not ckpt.exists()


def test_nan_loss_stops_with_advice() -> None:
    recipe = Recipe(epochs=1, batch_size=32, kl_warmup_epochs=0)
    model = to_variational(_model(), recipe)
    with torch.no_grad():
        model.net[1].weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="loss became nan.*lower the learning rate"):
        finetune(model, _bundle(), recipe, progress=False)


def test_nan_loss_names_a_checkpoint_only_where_one_was_written(tmp_path: Path) -> None:
    recipe = Recipe(epochs=1, batch_size=32, kl_warmup_epochs=0)
    model = to_variational(_model(), recipe)
    with torch.no_grad():
        model.net[1].weight[0, 0] = float("nan")
    ckpt = tmp_path / "checkpoint-variational.pt"
    with pytest.raises(TrainingError) as caught:  # at the first batch: no checkpoint yet
        finetune(model, _bundle(), recipe, progress=False, checkpoint_path=ckpt)
    assert "checkpoint" not in str(caught.value) and not ckpt.exists()
    ckpt.write_bytes(b"an earlier epoch's")
    with pytest.raises(TrainingError, match="the last good checkpoint is checkpoint-variational.pt"):
        finetune(model, _bundle(), recipe, progress=False, checkpoint_path=ckpt)


def test_finetune_needs_a_variational_model() -> None:
    with pytest.raises(PrunedropError, match="no variational layer"):
        finetune(_model(), _bundle(), Recipe(epochs=1, kl_warmup_epochs=0), progress=False)


def test_evaluate_mse_is_the_mean_over_every_target_value() -> None:
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(10, 3), torch.randn(10, 2)
    with torch.no_grad():
        expected = float(((model(x) - y) ** 2).mean())
    result = evaluate(model, [(x[:4], y[:4]), (x[4:], y[4:])], loss="mse")
    assert result["mse"] == pytest.approx(expected, rel=1e-6) and result["loss"] == pytest.approx(expected, rel=1e-6)


def test_sample_scores_average_to_the_metric_and_pair_for_the_standard_error() -> None:
    from prunedrop.metrics import paired_standard_error, sample_scores

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    x, y = torch.randn(50, 3), torch.randint(0, 4, (50,))
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    scores = sample_scores(model, batches)
    assert scores.shape == (50,) and set(scores.tolist()) <= {0.0, 100.0}
    assert float(scores.mean()) == pytest.approx(evaluate(model, batches)["accuracy"], abs=1e-9)
    regression, targets = torch.nn.Linear(3, 2), torch.randn(50, 2)
    mse = sample_scores(regression, [(x[:20], targets[:20]), (x[20:], targets[20:])], loss="mse")
    with torch.no_grad():
        per_sample = ((regression(x) - targets) ** 2).mean(dim=1).double()
    torch.testing.assert_close(mse, per_sample)
    assert float(mse.mean()) == pytest.approx(evaluate(regression, [(x, targets)], loss="mse")["mse"], rel=1e-6)
    # labels per position ((N, C, T) outputs, (N, T) labels): the share of the positions right, never over 100%
    logits, labels = torch.randn(12, 4, 5), torch.randint(0, 4, (12, 5))
    right = (logits.argmax(dim=1) == labels).double()
    positions = sample_scores(nn.Identity(), [(logits[:7], labels[:7]), (logits[7:], labels[7:])])
    torch.testing.assert_close(positions, 100.0 * right.mean(dim=1))
    accuracy = evaluate(nn.Identity(), [(logits[:7], labels[:7]), (logits[7:], labels[7:])])["accuracy"]
    assert accuracy == pytest.approx(100.0 * float(right.mean())) and accuracy == pytest.approx(float(positions.mean()))
    # pairing: two models that differ on 3 of 100 samples (one gained, two lost): the change is -1 point and its
    # standard error sd(d)/√n with d ∈ {+100, −100, −100, 0 × 97}
    before = torch.full((100,), 100.0, dtype=torch.float64)
    before[:1] = 0.0
    after = before.clone()
    after[0], after[1], after[2] = 100.0, 0.0, 0.0
    d = (after - before).tolist()
    mean = sum(d) / 100
    expected = (sum((v - mean) ** 2 for v in d) / 99) ** 0.5 / 10
    assert float(after.mean() - before.mean()) == pytest.approx(-1.0)
    assert paired_standard_error(before, after) == pytest.approx(expected)
    assert paired_standard_error(before, before) == 0.0
    assert paired_standard_error(before, after[:50]) is None and paired_standard_error(before[:1], after[:1]) is None


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(PrunedropError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_kl_weights_scale_the_kl_of_matching_layers() -> None:
    data = _bundle()
    plain = Recipe(epochs=1, batch_size=32, kl_warmup_epochs=0, lr_schedule="constant")
    scaled = plain.replace(kl_weights={"net.1": 10.0})
    torch.manual_seed(0)
    a = finetune(to_variational(_model(), plain), data, plain, progress=False).history[0]["kl"]
    model = to_variational(_model(), scaled)
    torch.manual_seed(0)
    b = finetune(model, data, scaled, progress=False).history[0]["kl"]
    first = model.net[1].kl().item()
    assert b > a + 5 * first, "the KL of net.1 counts ten times"


@pytest.mark.parametrize(("finetune_lr", "expected"), [(None, 2e-3 * 0.3), (5e-4, 5e-4)])
def test_masked_finetuning_rate_defaults_to_the_weights_rate(tmp_path: Path, finetune_lr: float | None,
                                                             expected: float) -> None:
    """``finetune_lr: null`` fine-tunes at the gentle share of the weights' ``lr`` where no probe judges the result
    (a direct call); a set value is kept."""
    recipe = Recipe(batch_size=32, finetune_epochs=1, lr=2e-3, finetune_lr=finetune_lr, seed=0)
    path = tmp_path / "masked.pt"
    finetune_masked(_model(1), {}, _bundle(), recipe, progress=False, checkpoint_path=path)
    state = torch.load(path, weights_only=False)
    assert [g["initial_lr"] for g in state["optimizer"]["param_groups"]] == [pytest.approx(expected)]


def test_class_changes_and_the_note_on_a_class_that_fell() -> None:
    from prunedrop.metrics import CLASS_DROP_WARNING, class_changes, class_drop_note

    labels = torch.tensor([0] * 96 + [1] * 4)
    before = torch.full((100,), 100.0, dtype=torch.float64)
    after = before.clone()
    after[96] = 0.0  # one of the four samples of class 1 lost: −25 points there, −1 over all
    rows = class_changes(before, after, labels)
    assert rows == [{"label": 0, "samples": 96, "before": 100.0, "after": 100.0},
                    {"label": 1, "samples": 4, "before": 100.0, "after": 75.0}]
    note = class_drop_note({"val": rows}, -1.0, 1.0)
    assert note is not None and note.startswith("class 1 lost 25 points on validation data (4 samples")
    assert class_drop_note({"val": rows}, -1.0, 13.0) is None  # not twice a budget of 13
    assert class_drop_note({"test": rows}, -1.0, 1.0) is None  # named from validation data only
    small = class_changes(before, after, torch.tensor([0] * 90 + [1] * 10))
    assert small[1]["after"] == 90.0 and CLASS_DROP_WARNING == 10.0
    assert class_drop_note({"val": small}, -1.0, 1.0) is not None
    assert class_drop_note({"val": class_changes(before, before, labels)}, 0.0, 1.0) is None
    assert class_changes(before, after, labels[:50]) == []  # labels that do not match the scores: nothing
    assert class_changes(before, after, torch.zeros(100, 2, dtype=torch.long)) == []


def test_a_checkpoint_that_does_not_fit_says_which_entries_differ() -> None:
    """The error quoted torch's first line alone ("Error(s) in loading state_dict for UNet:"), which names nothing; a
    layer whose noise the checkpoint lacks while it holds its weight was dense in the run that wrote it (a prunedrop
    that converts more layer types than the run's: sbp's transposed convolutions)."""
    from prunedrop.train import state_mismatch

    wanted = {"a.weight": torch.zeros(2, 3), "up.weight": torch.zeros(4, 2), "up.mu": torch.zeros(2),
              "up.log_sigma": torch.zeros(2), "b.bias": torch.zeros(5)}
    saved = {"a.weight": torch.zeros(3, 3), "up.weight": torch.zeros(4, 2), "b.bias": torch.zeros(5),
             "old.weight": torch.zeros(1)}
    text = state_mismatch(wanted, saved)
    assert "it lacks up.mu, up.log_sigma: up converted now, dense in the checkpoint's run" in text
    assert "it has old.weight beyond the model's" in text and "a.weight of another shape" in text
    many = state_mismatch({f"l{i}.mu": torch.zeros(1) for i in range(7)}, {})
    assert many == "it lacks l0.mu, l1.mu, l2.mu, l3.mu (+3 more)"
    assert state_mismatch(saved, saved) == "the entries differ"
