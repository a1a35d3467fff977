"""The autopilot wired into the variational phase (:class:`Pilot`): the controller of :mod:`prunedrop.autopilot`,
the measurements it steers by (the validation drop on the check samples, the kept cost ratio), the KL factors, the
plain-training transient it discounts, the learning-rate back-off and the early stop once it has settled.
:func:`prunedrop.train.finetune` runs it; the maths of the controller lives in :mod:`prunedrop.autopilot`."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from . import autopilot
from .batchnorm import recalibrate_from
from .convert import variational_layers
from .data import DataBundle, first_batches
from .errors import PrunedropError
from .metrics import accumulate, data_loss, kept_fraction, metric_name
from .modes import dense_gradients
from .recipe_groups import is_classification
from .recipes import Recipe


def variational_adam(model: nn.Module, recipe: Recipe, *, weights_lr: float | None = None) -> torch.optim.Adam:
    """The variational phase's optimizer: Adam over the weights (``weights_lr``, the recipe's ``lr`` by default,
    with its weight decay) and, in a second group, the noise parameters at ``noise_lr`` without decay. The phase
    (:func:`prunedrop.train.finetune`) and the autopilot's probe train with the same one."""
    noise = {id(p) for layer in variational_layers(model).values() for p in layer.noise_parameters()}
    return torch.optim.Adam([
        {"params": [p for p in model.parameters() if id(p) not in noise and p.requires_grad],
         "lr": recipe.lr if weights_lr is None else weights_lr, "weight_decay": recipe.weight_decay},
        {"params": [p for p in model.parameters() if id(p) in noise], "lr": recipe.noise_lr or recipe.lr,
         "weight_decay": 0.0}])


class Pilot:
    """The autopilot wired into the variational phase: the controller, its measurements and the KL factors.

    Measurements every ``check_every`` steps: the validation metric of the eval-mode model (exactly the
    thresholded model) on at most :func:`check_samples` validation samples, as a drop from the same samples'
    metric at the start; and, with a target, the kept cost ratio (:class:`prunedrop.autopilot.CostMeter`).
    """

    def __init__(self, model: nn.Module, data: DataBundle, recipe: Recipe, steps_per_epoch: int,
                 device: torch.device, log: Callable[[str], None] | None) -> None:
        self.model, self.data, self.recipe, self.device = model, data, recipe, device
        self.log = log or (lambda msg: None)
        target = autopilot.parse_target(recipe.target) if recipe.target else None
        example = data.example_batch(min(64, recipe.eval_batch_size)).to(device)
        structured = recipe.method != "sparse_vd"
        kind = target.kind if target is not None else ("flops" if structured else "params")
        self.meter = None if target is None else autopilot.CostMeter(
            model, example, target.kind, threshold=autopilot.control_threshold(recipe.method, recipe.threshold))
        # with a target, the factors weigh by the target's kind: the meter has profiled those costs already
        self.factors = autopilot.cost_factors(model, example, kind,
                                              costs=self.meter.costs if self.meter is not None else None)
        ratio = None
        if target is not None:
            dense = self.meter.dense * (4.0 if target.kind == "bytes" else 1.0)  # float32 bytes per parameter
            ratio = target.ratio_for(dense)
            if not ratio > 1.0:
                raise PrunedropError(f"target {target}: the dense model ({dense:,.0f} bytes of parameters) is "
                                     "already within it; nothing to do")
        self.target = target
        self.ceiling: float | None = None
        """The most the target's cost can shrink: every converted weight or unit pruned, the rest of the model (layers
        left dense, a module's own parameters) counted in full; None without a target or where nothing stays dense."""
        if self.meter is not None and self.meter.other > 0:
            self.ceiling = self.meter.dense / self.meter.other
            if ratio is not None and ratio > self.ceiling:
                what = "FLOPs" if self.meter.kind == "flops" else "parameters"
                self.log(f"autopilot: target {target} is beyond reach: what stays dense holds {self.meter.other:,.0f} "
                         f"of the model's {self.meter.dense:,.0f} {what} ({self.meter.other / self.meter.dense:.0%}), "
                         f"so even with every converted {'unit' if structured else 'weight'} pruned it would be at "
                         f"most {self.ceiling:.3g}x smaller; the run goes as far as "
                         + ("the budget lets it" if recipe.max_metric_drop is not None else "it can")
                         + " and reports how close it came")
        if self.meter is not None and self.meter.threshold is not None and self.meter.threshold != recipe.threshold:
            self.log(f"autopilot: target {target}: its cost is measured at {recipe.pruning_rule(self.meter.threshold)} "
                     "while training (the noise at least the weight); the threshold that meets it is chosen after")
        self.controller = autopilot.Autopilot(max_drop=recipe.max_metric_drop, target_ratio=ratio,
                                              check_every=autopilot.check_interval(steps_per_epoch),
                                              decade_steps=autopilot.decade_steps(recipe.noise_lr or recipe.lr))
        self.check_samples = check_samples(self.controller.check_every, recipe.batch_size)
        """Samples a check counts at most (:func:`check_samples`)."""
        self.reference: float | None = None
        self.stopped: str | None = None
        self.lr_scale = 1.0
        self.weights_lr: Callable[[], float] = lambda: float(recipe.lr) * self.lr_scale
        """The weights' learning rate now (the optimizer's, once training is wired up)."""
        self.transient: float | None = None
        """What plain training at the recipe's weights' learning rate costs on the check samples (:meth:`_probe`)."""
        self.probe_steps = 0
        self.recovered = False
        """The probe's transient was over :data:`TRANSIENT_CAP` budgets, and within the budget once the rate annealed
        (:meth:`_probe`): the checks discount all of it."""
        self.probe_lr: float | None = None
        """The weights' learning rate the transient was measured at (the one the variational phase starts at)."""
        self.interrupted = False
        """Stopped (Ctrl-C, SIGTERM) during :meth:`start`'s probe."""
        self.last_backoff: tuple[int, float] | None = None
        """(step, smoothed drop) of the last learning-rate back-off."""
        self.announced_backoffs = 0
        self.checked_samples = 0
        self.checked_train = 0
        self.train_samples = 0
        """Training samples each check counts besides the validation ones (only where validation data alone is too
        coarse for the aim, :meth:`start`)."""
        self.within: tuple[int, float, dict[str, torch.Tensor]] | None = None
        """(step, kept fraction, a CPU copy of the model's state) at the last check whose smoothed drop was within
        the budget: what :meth:`rewind` goes back to (not kept for models over :data:`REWIND_MAX_BYTES` or across
        processes)."""
        self.rewound: tuple[int, int] | None = None
        """(the step the phase ended at, the step it went back to), once :meth:`rewind` has."""
        self.before_restart: tuple[int, float, dict[str, torch.Tensor]] | None = None
        """:attr:`within` as it was when an overfitting back-off started the phase again (:meth:`_start_again`)."""
        self.kl_sum, self.kl_steps = 0.0, 0
        """The training KL summed over the steps since the last check (:meth:`note_kl`)."""
        self.last_loss: float | None = None
        """The data loss of the last :meth:`_val_metric`."""
        self.last_val_metric: float | None = None
        """The metric of the last :meth:`_val_metric` on its validation samples alone, where it counted training
        samples too."""
        self.val_reference: float | None = None
        """The given model's metric on the validation samples alone, where the checks count training samples too:
        what :attr:`autopilot.Check.val_drop` is measured from."""
        self.overfit_backoffs = 0
        """Learning-rate back-offs of :meth:`_overfitting`: the weights' training, not the noise, cost accuracy."""
        self.given: dict[str, torch.Tensor] | None = None
        """A CPU copy of the variational model's state before the first step (:meth:`start`, where
        :attr:`keeps_copies`): what an overfitting back-off starts again from."""
        self.reset_optimizer: Callable[[], None] = lambda: None
        """Clears the optimizer's moments (set by :func:`prunedrop.train.finetune`)."""
        self.restarts: list[int] = []
        """The steps at which the phase started again from :attr:`given` at a lower rate."""

    def _val_metric(self, model: nn.Module | None = None) -> float:
        """The metric on the samples every check uses: the validation samples (at most ``check_samples``), then
        ``train_samples`` training samples in their fixed order; their number goes to ``checked_samples``."""
        self.checked_samples = self.checked_train = 0
        size = self.recipe.eval_batch_size
        target = self.model if model is None else model
        # running statistics lag the weights: measure the model with statistics of its weights of now
        recalibrate_from(target, self.data.loader("train", size), self.device)

        checks = CheckSet(self.data, size, self.train_samples, self.check_samples)
        loss = self.recipe.loss
        # one pass: the validation samples' sums, then the training samples' added to them
        alone = accumulate(target, checks.part(borrowed=False), loss=loss, device=self.device)
        both = accumulate(target, checks.part(borrowed=True), loss=loss, device=self.device, start=alone)
        self.checked_samples, self.checked_train = both.total, both.total - alone.total
        measured = both.result(loss)
        self.last_loss = measured["loss"]
        name = metric_name(loss)
        # the validation samples alone too, where training ones were counted: what the budget's verdict reads
        self.last_val_metric = alone.result(loss)[name] if self.checked_train else None
        return measured[name]

    @property
    def data_scale(self) -> float:
        """What the variational objective multiplies the data loss by: for ``mse``, 1 / the given model's error on the
        check samples (:attr:`reference`), so that the data term reads in the budget's unit (1.01 is 1% more error)
        whatever the targets' unit; 1 for the classification losses (already in nats) and where that error is not a
        positive finite number. β is clipped to [1e-4, 1e4] and starts at 0.1: against a raw mean squared error of
        1e-8 (targets of scale 1e-4) the KL pruned every weight with β at its floor, and against one of 3,000 (the
        diabetes targets) β was still rising when training ended, having pruned little."""
        if self.recipe.loss != "mse":
            return 1.0
        if self.reference is None:  # a target without a budget: measured once, as a budget's reference is
            self.reference = self._val_metric()
        ref = self.reference
        return 1.0 / ref if math.isfinite(ref) and ref > 0 else 1.0

    def _coarse_validation(self) -> None:
        """Validation data too small to resolve the aim (one sample weighs more than the drop the controller aims
        at; for ``mse``, fewer samples than a check counts): the checks while training also count training samples,
        so that β answers to a drop it can see. The
        reference is the given model on the same samples, so the check still measures what the compression costs;
        the budget itself (the threshold, the final verdict) is judged on validation data alone. Not for a
        DataLoader of the user's (its order or augmentation may change between checks)."""
        from torch.utils.data import DataLoader

        c = self.controller
        val_samples = self.checked_samples
        if isinstance(self.data.split("train"), DataLoader):
            return
        wanted = min(self.check_samples - val_samples, self.data.num_train)
        if wanted <= 0:
            return
        self.train_samples = wanted
        self.reference = self._val_metric()
        self.val_reference = self.last_val_metric
        if not is_classification(self.recipe.loss):
            self.log(f"autopilot: the {val_samples} validation samples are fewer than the {self.check_samples} a "
                     f"check counts; its checks also count {self.checked_train} training samples (the given model's "
                     "error on them is the reference); the budget is still judged on validation data")
            return
        self.log(f"autopilot: one of the {val_samples} validation samples weighs {100.0 / max(val_samples, 1):.2g} "
                 f"points, more than the {c.aim:.2g} it aims at while training; its checks also count "
                 f"{self.checked_train} training samples (the given model's metric on them is the "
                 "reference); the budget is still judged on validation data")

    def start(self, interrupted: Callable[[], bool] | None = None) -> None:
        """Before the first step: the metric of the model as it was given, on the samples every check uses, and
        what one of them weighs (a resumed run keeps both from its checkpoint)."""
        c = self.controller
        if self.reference is not None or c.max_drop is None:
            return
        if self.keeps_copies:
            self.given = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.reference = self._val_metric()
        if is_classification(self.recipe.loss):  # an mse drop is continuous: no sample has a weight of its own
            if 100.0 / max(self.checked_samples, 1) > c.aim:
                self._coarse_validation()
            c.resolution = 100.0 / max(self.checked_samples, 1)
            if c.resolution > c.aim:
                # with training samples borrowed, a check sample is not a validation sample (the wine set: 36
                # validation samples and 106 training ones read "one validation sample weighs 0.7 points")
                one = "check sample" if self.train_samples else "validation sample"
                self.log(f"autopilot: one {one} weighs {c.resolution:.2g} points, more than the "
                         f"{c.aim:.2g} it aims at while training: a single lost sample reads as too much, so it will "
                         "compress cautiously (more validation data resolves the budget better)")
        elif self.checked_samples < self.check_samples:
            # mse: no sample has a weight of its own, but the relative error of a few hundred rows moves by several
            # percent between checks, above a 1% budget's aim of 0.5%, and β backed off and rose on that noise (the
            # digits' value as a target, 360 rows: 8.6x at test +20%; with training rows in the checks 4.0x at +6.9%,
            # five other regressions within ±0.25x and their test error within the budget either way)
            self._coarse_validation()
        self._probe(interrupted or (lambda: False))

    def _probe(self, interrupted: Callable[[], bool]) -> None:
        """Measure the transient: what plain training (no KL) at the recipe's weights' learning rate costs before
        anything is compressed. A network that converged at a small final learning rate loses accuracy when
        training resumes at a larger one, and wins it back as the rate anneals (LeNet-300-100 on Fashion-MNIST:
        Adam at 1e-3 loses about a point within 100 steps and ends 0.15 points above the start after a cosine
        decay to zero; ``benchmarks/finetune_transient.py --anneal``). Read as the cost of compressing, that loss
        holds β down for the whole phase. So a copy of the model trains :data:`PROBE_CHECKS` checks' worth of
        steps with β at 0, the mean drop over the last :data:`PROBE_PLATEAU` checks is the transient, and each
        check discounts it in proportion to the weights' learning rate at that moment (none once the rate has
        annealed), up to :data:`TRANSIENT_CAP` budgets, so that a learning rate that wrecks the model still reads
        as over the budget and is backed off. The budget itself is judged after the noise-free fine-tuning, with
        no discount.

        A transient over :data:`TRANSIENT_CAP` budgets may be a rate too large for the network or an ordinary one
        that a small budget makes look large, so the probe then trains as many steps again with every rate annealed
        to zero: where that brings the drop within the budget (:attr:`recovered`), the rate stays and the checks
        discount all of the transient; otherwise the probe is repeated at :data:`PROBE_LR_STEP` × the rate. Two
        LeNet-300-100s on Fashion-MNIST lost 1.71 and 1.11 points at 1e-3 and 0 and 0.06 once annealed; with the rate
        quartered at ``--max-drop 0.5`` one ended at 16.3× fewer weights, with it kept at 23.6× (BENCHMARKS.md)."""
        c, recipe = self.controller, self.recipe
        cap = TRANSIENT_CAP * c.max_drop if c.max_drop is not None else math.inf
        unit = "points" if is_classification(recipe.loss) else "%"
        for attempt in range(PROBE_RETRIES + 1):
            lr = float(recipe.lr) * self.lr_scale
            transient, annealed = self._probe_at(lr, interrupted, anneal_over=cap)
            if self.interrupted:
                return
            self.recovered = annealed is not None and c.max_drop is not None and annealed <= c.max_drop
            if self.recovered:
                self.log(f"autopilot: plain training at the weights' learning rate {lr:g} costs {transient:.3g} "
                         f"{unit} on the check samples, more than {TRANSIENT_CAP:g} budgets, and {annealed:.3g} once "
                         "the rate anneals: a transient that annealing wins back, not a rate too large for this "
                         "network; the checks discount all of it")
            if transient <= cap or self.recovered or attempt == PROBE_RETRIES \
                    or self.lr_scale * PROBE_LR_STEP < LR_SCALE_MIN:
                break
            # far over the budget before anything is pruned, and still over it once the rate anneals: the learning
            # rate is too large for this network
            self.lr_scale *= PROBE_LR_STEP
            after = "" if annealed is None or not math.isfinite(annealed) else \
                f", and still {annealed:.3g} once the rate anneals"
            self.log(f"autopilot: plain training at the weights' learning rate {lr:g} costs {transient:.3g} {unit} "
                     f"on the check samples, more than {TRANSIENT_CAP:g} budgets before anything is pruned{after}; "
                     f"trying {float(recipe.lr) * self.lr_scale:g}")
        self.probe_lr = lr
        self.transient = transient if math.isfinite(transient) else cap
        if self.transient > 0:
            self.log(f"autopilot: plain training at the weights' learning rate {lr:g} costs {self.transient:.3g} "
                     f"{unit} on the check samples before anything is pruned (probes of {self.probe_steps} steps in "
                     "all); the checks discount it in proportion to the learning rate, which anneals before the end "
                     "(the budget is judged after the noise-free fine-tuning, without it)")

    def _probe_at(self, lr: float, interrupted: Callable[[], bool],
                  anneal_over: float = math.inf) -> tuple[float, float | None]:
        """The mean drop of a copy of the model over the last :data:`PROBE_PLATEAU` of :data:`PROBE_CHECKS` checks'
        worth of plain training at the weights' learning rate ``lr`` (inf when its loss stops being finite); and,
        where that is over ``anneal_over``, the drop after as many steps again with every rate annealed linearly to
        zero (else None): whether the transient is won back once the rate anneals."""
        c, recipe = self.controller, self.recipe
        probe = copy.deepcopy(self.model).to(self.device)
        optimizer = variational_adam(probe, recipe, weights_lr=lr)
        plateau_steps = PROBE_CHECKS * c.check_every
        steps = plateau_steps
        initial = [group["lr"] for group in optimizer.param_groups]
        drops: list[float] = []
        transient: float | None = None
        annealed: float | None = None
        step, epoch = 0, 0

        def drop_now() -> float:
            return autopilot.metric_drop(self.reference, self._val_metric(probe), loss=recipe.loss)

        # the probe draws noise; the training run's stream stays as it was
        with torch.random.fork_rng(devices=[]), dense_gradients(probe):
            while step < steps:
                for x, y in self.data.loader("train", recipe.batch_size, shuffle=True, seed=recipe.seed + 1,
                                             epoch=epoch):
                    if interrupted():  # Ctrl-C or SIGTERM before the first training step: nothing to keep
                        self.interrupted = True
                        return math.inf, None
                    probe.train()
                    loss = data_loss(recipe.loss, probe(x.to(self.device)).float(), y.to(self.device))
                    if not torch.isfinite(loss):
                        self.probe_steps += step
                        return (math.inf, None) if transient is None else (transient, math.inf)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if step >= plateau_steps:  # annealing: linearly to zero over as many steps as the plateau's
                        share = 1.0 - (step - plateau_steps) / plateau_steps
                        for group, rate in zip(optimizer.param_groups, initial, strict=True):
                            group["lr"] = rate * share
                    optimizer.step()
                    step += 1
                    if transient is None and step % c.check_every == 0 \
                            and step > (PROBE_CHECKS - PROBE_PLATEAU) * c.check_every:
                        drops.append(drop_now())
                    if step == plateau_steps:
                        transient = math.inf if any(not math.isfinite(d) for d in drops) else \
                            (max(0.0, sum(drops) / len(drops)) if drops else 0.0)
                        if math.isfinite(transient) and transient > anneal_over:
                            steps = 2 * plateau_steps
                    elif step == 2 * plateau_steps:
                        annealed = max(0.0, drop_now())
                    if step >= steps:
                        break
                else:
                    epoch += 1
                    continue
                break
        self.probe_steps += step
        return (transient if transient is not None else math.inf), annealed

    def discount(self) -> float:
        """The transient (:meth:`_probe`) at the weights' learning rate of this moment, at most
        :data:`TRANSIENT_CAP` budgets unless the probe saw annealing win it back (:attr:`recovered`)."""
        c = self.controller
        if not self.transient or c.max_drop is None or not self.recipe.lr:
            return 0.0
        share = max(0.0, self.weights_lr()) / (self.probe_lr or float(self.recipe.lr))
        amount = self.transient if self.recovered else min(self.transient, TRANSIENT_CAP * c.max_drop)
        return amount * min(1.0, share)

    def on_step(self, step: int) -> None:
        c = self.controller
        if step % c.check_every:
            return
        drop = discount = val_drop = None
        if c.max_drop is not None:
            if self.reference is None:  # resumed from a checkpoint written before this was recorded
                self.reference = self._val_metric()
            discount = self.discount()
            drop = autopilot.metric_drop(self.reference, self._val_metric(), loss=self.recipe.loss) - discount
            if self.val_reference is not None and self.last_val_metric is not None:
                val_drop = autopilot.metric_drop(self.val_reference, self.last_val_metric,
                                                 loss=self.recipe.loss) - discount
        cost_ratio = self.meter.ratio(self.model) if self.meter is not None else None
        if c.checks and self._in_probe_window(c.checks[-1].step) and not self._in_probe_window(step):
            # the restart's shock (below) is behind: the smoothed drop starts again from this check, so that its
            # memory of the shock does not read as over the budget for checks to come (a digits MobileNetV2: 34.7
            # points at step 10, 0.84 at step 30, but smoothed over the budget until step 60)
            c.smoothed_drop = c.val_smoothed = None
        record = c.check(step, drop=drop, cost_ratio=cost_ratio, kept_fraction=kept_fraction(self.model),
                         val_drop=val_drop)
        record.discount = discount
        record.kl = self.kl_sum / self.kl_steps if self.kl_steps else None
        record.loss = self.last_loss if drop is not None else None
        self.kl_sum, self.kl_steps = 0.0, 0
        if c.max_drop is not None and self._within(record) and self.keeps_copies:
            state = self.model.state_dict()
            if self.within is None:
                copies = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
            else:  # into the same buffers: the state's keys and shapes do not change during the phase
                copies = self.within[2]
                for k, v in state.items():
                    copies[k].copy_(v.detach())
            self.within = (step, record.kept_fraction, copies)
        if c.backoffs > self.announced_backoffs:
            self.announced_backoffs = c.backoffs
            if c.over_alone:
                what = (f"the drop on the {self.checked_samples - self.checked_train} validation samples alone "
                        f"({record.val_drop:.3g}; {drop:.3g} on all the checks' samples)")
            else:
                what = f"validation drop {drop:.3g}"
            self.log(f"autopilot: {what} is over the budget of {c.max_drop:g} at step {step}; "
                     f"backing off (β → {record.beta:.3g})")
        if c.max_drop is not None and c.smoothed_drop is not None and c.smoothed_drop > c.max_drop \
                and record.beta <= autopilot.BETA_START and self.lr_scale > LR_SCALE_MIN \
                and self._rate_to_blame() and self._backoff_waited(step):
            # over the budget while β is no higher than it started, and plain training at this rate was measured to
            # cost a share of the budget: the training steps hurt (a learning rate too large for a network that
            # has converged), not only the KL
            self.lr_scale = max(LR_SCALE_MIN, self.lr_scale / 2)
            self.last_backoff = (step, c.smoothed_drop)
            self.log(f"autopilot: over the budget at step {step} with β at {record.beta:.3g}, no higher than it "
                     f"started; the weights' learning rate × {self.lr_scale:g}")
        elif self.lr_scale > LR_SCALE_MIN and self._backoff_waited(step):
            window = self._overfitting()
            if window is not None:
                first, last, slope = window
                # the drift measured, slowed until it would cost at most OVERFIT_SHARE of the budget over the steps
                # the controller must hold it for (SETTLE_STEPS): Adam moves the weights in proportion to the rate
                drift = slope / c.check_every * autopilot.SETTLE_STEPS
                factor = min(0.5, OVERFIT_SHARE * float(c.max_drop) / max(drift, 1e-12))
                self.lr_scale = max(LR_SCALE_MIN, self.lr_scale * factor)
                self.last_backoff = (step, c.smoothed_drop)
                self.overfit_backoffs += 1
                again = ""
                if self.given is not None:
                    # the steps at the larger rate have overfitted the weights: start again from the given ones
                    self._start_again(step)
                    again = f"; back to the given weights, β {autopilot.BETA_START:g}"
                self.log(f"autopilot: over the budget at step {step}, and from step {first.step} the validation drop "
                         f"rose {first.drop:.3g} → {last.drop:.3g} and its loss {first.loss:.4g} → {last.loss:.4g} "
                         f"while the noise did not grow (KL "
                         f"{first.kl:.4g} → {last.kl:.4g}) and nothing more was pruned: training the weights at this "
                         f"rate costs accuracy (a model trained past its best overfits), not the noise; the weights' "
                         f"learning rate × {self.lr_scale:g}{again}")

    def _within(self, check: autopilot.Check) -> bool:
        """Whether ``check`` found the model within the budget, smoothed: on the checks' samples and, where they
        count training samples besides a coarse validation set, on the validation samples alone too, which the
        budget's verdict reads (:meth:`rewind` goes back to the last such check)."""
        c = self.controller
        if c.max_drop is None or check.smoothed_drop is None or check.smoothed_drop > c.max_drop:
            return False
        return check.val_smoothed is None or check.val_smoothed <= c.max_drop

    def _start_again(self, step: int) -> None:
        """An overfitting back-off's restart from the given weights at ``step``. The last state within the budget so
        far is kept aside (:attr:`before_restart`, the most compressed of them over several restarts): the checks that
        set the back-off off can misread a model that fell off a cliff (units pruned too far do not come back, so the
        drop and the loss rise with nothing more pruned), and the restart must not lose what the phase had made."""
        if self.within is not None and (self.before_restart is None or self.within[1] < self.before_restart[1]):
            self.before_restart = self.within
        self.within = None  # the states within the budget after the restart get buffers of their own
        assert self.given is not None
        self.model.load_state_dict(self.given)
        self.reset_optimizer()
        self.controller.restart()
        self.restarts.append(step)

    def note_kl(self, kl: float) -> None:
        """One training step's KL (as trained, with its layer factors), for the next check's ``kl``."""
        self.kl_sum += kl
        self.kl_steps += 1

    def _overfitting(self) -> tuple[autopilot.Check, autopilot.Check, float] | None:
        """The first and last of the last :data:`OVERFIT_CHECKS` checks and the drop's slope over them (per check),
        where they show the weights' training costing accuracy with the noise not to blame; else None. Over the budget (smoothed), all after the last
        learning-rate back-off and past the probe's window, and across them: the measured drop, the data loss on
        the check's samples and the KL rose (the model got worse and its outputs less sure of the truth while the
        noise shrank), each the slope of a line at least :data:`OVERFIT_T` standard errors above 0; the kept
        fraction moved by at most a factor :data:`OVERFIT_KEPT` (nothing more was pruned). The loss tells
        overfitting from the noise's own transient: a digits CNN whose drop jumped from 2.6 to 4.9 points while β
        backed off from 14 to 5 (the KL rising 226 → 252) had its validation loss fall 1.03 → 0.82 (it came back
        within the budget without help; restarted, it ended pruning nothing). β cannot answer that: backing it off shrinks the
        noise, and the drop still grows. A padded tagger trained 10 epochs past its best validation epoch
        (BENCHMARKS.md, twenty-fourth section) lost 1.2 points with nothing pruned under sbp's noise at the
        recipe's rate, and 4.5 once β had backed off to its floor; at a tenth of the rate its validation accuracy
        rose while β climbed."""
        c = self.controller
        if c.max_drop is None or c.smoothed_drop is None or c.smoothed_drop <= c.max_drop:
            return None
        since = self.last_backoff[0] if self.last_backoff is not None else -1
        window = [k for k in c.checks[-OVERFIT_CHECKS:] if k.step > since and not self._in_probe_window(k.step)]
        if len(window) < OVERFIT_CHECKS or any(k.kl is None or k.kept_fraction is None or k.drop is None
                                               or k.loss is None for k in window):
            return None
        kept = [float(k.kept_fraction) for k in window]  # type: ignore[arg-type]
        if max(kept) > OVERFIT_KEPT * min(kept):
            return None
        if _slope([float(k.kl) for k in window])[1] < OVERFIT_T:  # type: ignore[arg-type]
            return None
        if _slope([float(k.loss) for k in window])[1] < OVERFIT_T:  # type: ignore[arg-type]
            return None
        slope, t = _slope([float(k.drop) for k in window])  # type: ignore[arg-type]
        if t < OVERFIT_T:
            return None
        return window[0], window[-1], slope

    @functools.cached_property
    def keeps_copies(self) -> bool:
        """Whether :meth:`rewind` may keep a copy of the model: one process, and a state of at most
        :data:`REWIND_MAX_BYTES` (decided once: neither changes during the phase, and the checks are frequent)."""
        from . import distributed

        if distributed.world_size() > 1:
            return False
        size = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        return size <= REWIND_MAX_BYTES

    def rewind(self) -> str | None:
        """Go back to the last state measured within the budget, when the variational phase ended outside it, or to
        the last one before a restart, when that is more compressed than where the phase ended; a line saying so, or
        None.

        The controller holds the drop near half the budget, and backs β off when it is over; but where the metric
        stays flat while the noise prunes (an easy task: a 200,000-id token classifier at 100% validation
        accuracy while β rose to ~260) it can fall off a cliff faster than the back-off answers, and weights pruned
        that far do not come back: that run ended its variational phase 25 points down, with β at its floor. The
        state at the last check within the budget is the most compressed model the phase made that kept it.

        A cliff can also read as overfitting (the drop and the loss rising with nothing more pruned), and the
        overfitting back-off starts the phase again from the given weights (:meth:`_start_again`): a ConvNeXt-style
        block under SBP fell from 93% to 54% (its dense model: 71.5%) near the end of its phase, started again with
        eight epochs left, pruned nothing more and exported nothing. Its state before the restart stays a candidate."""
        c = self.controller
        if self.rewound is not None or c.max_drop is None or not c.checks:
            return None
        last = c.checks[-1]
        if last.smoothed_drop is None:
            return None
        ended_within = self._within(last)
        choice = None
        if not ended_within and self.within is not None and self.within[0] < last.step:
            choice = self.within
        earlier = self.before_restart
        # the kept fraction the state before a restart must beat: where the phase ended, or where it would go back to
        current = last.kept_fraction if ended_within else choice[1] if choice is not None else None
        if earlier is not None and earlier[1] < (math.inf if current is None else current):
            choice = earlier
        if choice is None:
            return None
        step, kept, state = choice
        self.model.load_state_dict(state)
        self.rewound = (last.step, step)
        self.within = self.before_restart = None
        if ended_within:
            where = f"within the budget at kept fraction {last.kept_fraction:.4g}"
        elif last.smoothed_drop <= c.max_drop and last.val_smoothed is not None:
            where = (f"{last.val_smoothed:.3g} points down on the {self.checked_samples - self.checked_train} "
                     f"validation samples alone ({last.smoothed_drop:.3g} on all the checks' samples), over the "
                     f"budget of {c.max_drop:g}")
        else:
            where = f"{last.smoothed_drop:.3g} points down, over the budget of {c.max_drop:g}"
        which = ("the last check within the budget before the phase started again at step "
                 f"{min(r for r in self.restarts if r > step)}" if choice is earlier and self.restarts
                 else "the last check within the budget")
        return (f"autopilot: the variational phase ended {where}; back to its state at step {step} ({which}, kept "
                f"fraction {kept:.4g})")

    def _rate_to_blame(self) -> bool:
        """Whether the weights' learning rate may be what holds the run over the budget: the probe (:meth:`_probe`)
        measured plain training at it costing at least :data:`LR_BLAME_SHARE` of the budget (or could not tell: a
        run resumed from a checkpoint without the probe). Where plain training at the rate costs less, the noise is
        what costs: the digits example's MLP lost a point at β 0.1 while the noise pruned 90% of its weights within
        230 steps, its probe had measured 0.02 points, and six halvings froze its weights at 1/64 of the rate, so
        that they could not adapt to the noise that β's back-off left (the same on a small attention model: 1.6×).
        Nor is the rate to blame where the probe saw annealing win its transient back (:attr:`recovered`), nor once
        the noise has pruned more than half of what the phase started with (:data:`LR_BLAME_KEPT`): the drop came with
        the pruning, and the weights need their rate to adapt to it. A highway MLP on digits (probe: 0.42 points, over a
        quarter of the budget) had the noise prune 81% of its weights within 150 steps at β 0.1; the six halvings that
        followed froze its weights at 1/64 of the rate, the drop stayed over the budget for 3,500 steps while β backed
        off to 0.0002, and it ended at 8.8× (without them 29.2×, validation and test a little higher)."""
        c = self.controller
        if c.checks and c.checks[0].kept_fraction and c.checks[-1].kept_fraction is not None and (
                c.checks[-1].kept_fraction < LR_BLAME_KEPT * c.checks[0].kept_fraction):
            return False
        if self.transient is None or c.max_drop is None:
            return True
        if self.recovered:
            # the probe saw annealing win the transient back, and the checks discount all of it: what stays over the
            # budget is the noise's (LeNet-300-100 on Fashion-MNIST, --max-drop 0.5: three halvings to 1/8 held one
            # seed at 10.6x, without them 18.7x, test -0.09 -> +0.07; another 23.6x -> 31.4x; BENCHMARKS.md)
            return False
        return self.transient >= LR_BLAME_SHARE * c.max_drop

    def _in_probe_window(self, step: int) -> bool:
        """Within the steps the probe has already trained at this rate (:data:`PROBE_CHECKS` checks)."""
        return bool(self.probe_steps) and step <= PROBE_CHECKS * self.controller.check_every

    def _backoff_waited(self, step: int) -> bool:
        """A learning-rate back-off waits until the probe's window has passed, and then for its own effect:
        :data:`LR_BACKOFF_WAIT_CHECKS` checks after the last one (halving at every check over the budget took a
        ResNet-18 to 1/32 of its rate within 50 steps, before the first halving could show)."""
        every = self.controller.check_every
        if self._in_probe_window(step):
            # the probe has already trained this many steps at this rate and found its plateau within the cap:
            # what the first checks see is the restart's shock that the probe saw settle (a fresh Adam moves every
            # weight by a whole learning rate at first): a digits MobileNetV2 read 34.7 points at the run's step 10,
            # where the probe at the same rate had measured 0.49 over steps 30-50, and the halvings it set off (to
            # 1/16 within 40 steps) left the noise unmoved: nothing pruned after 11 epochs
            return False
        return self.last_backoff is None or step - self.last_backoff[0] >= LR_BACKOFF_WAIT_CHECKS * every

    def should_stop(self) -> str | None:
        if self.stopped is None and self.controller.checks and self.controller.settled(self.controller.checks[-1].step):
            c = self.controller.checks[-1]
            self.stopped = (f"autopilot settled at step {c.step} (β {c.beta:.3g}, kept fraction "
                            f"{c.kept_fraction:.4g} flat over the last {autopilot.SETTLE_STEPS} steps): variational "
                            "phase ends here")
        return self.stopped

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "reference": self.reference, "stopped": self.stopped,
                "lr_scale": self.lr_scale, "last_backoff": self.last_backoff, "transient": self.transient,
                "probe_steps": self.probe_steps, "probe_lr": self.probe_lr, "recovered": self.recovered,
                "resolution": self.controller.resolution,
                "train_samples": self.train_samples, "check_samples": self.check_samples,
                "rewound": None if self.rewound is None else list(self.rewound),
                "kl_partial": [self.kl_sum, self.kl_steps], "overfit_backoffs": self.overfit_backoffs,
                "val_reference": self.val_reference,
                "restarts": list(self.restarts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.reference = state.get("reference")
        self.stopped = state.get("stopped")
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.transient = state.get("transient")
        self.probe_steps = int(state.get("probe_steps", 0))
        self.probe_lr = state.get("probe_lr")
        self.recovered = bool(state.get("recovered", False))
        last = state.get("last_backoff")
        self.last_backoff = None if last is None else (int(last[0]), float(last[1]))
        self.controller.resolution = float(state.get("resolution", 0.0))
        self.train_samples = int(state.get("train_samples", 0))
        self.check_samples = int(state.get("check_samples", CHECK_SAMPLES))  # older checkpoints: the old fixed count
        self.announced_backoffs = self.controller.backoffs
        rewound = state.get("rewound")
        self.rewound = None if rewound is None else (int(rewound[0]), int(rewound[1]))
        kl_sum, kl_steps = state.get("kl_partial") or (0.0, 0)
        self.kl_sum, self.kl_steps = float(kl_sum), int(kl_steps)
        self.overfit_backoffs = int(state.get("overfit_backoffs", 0))
        self.val_reference = state.get("val_reference")
        self.restarts = [int(s) for s in state.get("restarts", [])]

    def summary(self) -> dict[str, Any]:
        out = self.controller.summary()
        out.update(target=None if self.target is None else str(self.target), stopped_early=self.stopped,
                   control_threshold=None if self.meter is None else self.meter.threshold,
                   reference_metric=self.reference, kl_factors=self.factors, lr_scale=self.lr_scale,
                   overfit_backoffs=self.overfit_backoffs, restarts=list(self.restarts),
                   transient=self.transient, transient_recovered=self.recovered, probe_steps=self.probe_steps,
                   probe_lr=self.probe_lr, target_ceiling=self.ceiling,
                   check_samples={"validation": self.checked_samples - self.checked_train,
                                  "training": self.checked_train},
                   rewound=None if self.rewound is None else {"ended_at": self.rewound[0],
                                                              "back_to": self.rewound[1]})
        return out


#: samples per autopilot measurement: at least CHECK_SAMPLES (where the data has them), at most CHECK_SAMPLES_MAX,
#: in between CHECK_SHARE × the samples the steps between two checks train on (:func:`check_samples`)
CHECK_SAMPLES = 2000
CHECK_SAMPLES_MAX = 10000
CHECK_SHARE = 0.5
#: the autopilot's learning-rate back-off stops at this fraction of the recipe's rates
LR_SCALE_MIN = 1 / 64
#: the transient probe trains this many checks' worth of steps; the mean drop of the last PROBE_PLATEAU is the transient
PROBE_CHECKS = 5
PROBE_PLATEAU = 3
#: a probe whose transient is over TRANSIENT_CAP budgets is repeated at PROBE_LR_STEP × the learning rate, at most
#: PROBE_RETRIES times (the variational phase then starts at the lower rate)
PROBE_RETRIES = 2
PROBE_LR_STEP = 0.25
#: the checks discount the transient up to this many budgets (more reads as a learning rate that wrecks the model)
TRANSIENT_CAP = 2.0
#: checks between two learning-rate back-offs (each waits for the effect of the last)
LR_BACKOFF_WAIT_CHECKS = 3
#: :meth:`Pilot._overfitting` reads this many checks after the last learning-rate back-off; the slopes of the measured
#: drop and of the KL over them must be OVERFIT_T standard errors above 0, the kept fraction within a factor OVERFIT_KEPT
OVERFIT_CHECKS = 16
OVERFIT_T = 3.0
OVERFIT_KEPT = 1.01
#: an overfitting back-off slows the measured drift until it would cost at most OVERFIT_SHARE budgets over
#: autopilot.SETTLE_STEPS steps (and at least halves the rate)
OVERFIT_SHARE = 0.25
#: :meth:`Pilot.rewind` keeps a copy of models whose state is at most this many bytes (CPU memory)
REWIND_MAX_BYTES = 2 * 1024**3
#: the weights' learning rate is backed off only where the probe measured plain training at it costing at least
#: this share of the budget (half the aim)
LR_BLAME_SHARE = 0.25
#: nor once the kept fraction is below this share of the phase's first check's (the noise has pruned most of the model)
LR_BLAME_KEPT = 0.5


class CheckSet:
    """The samples the autopilot's checks count (:meth:`Pilot._val_metric`): the validation samples (at most
    ``val_samples``), then, where the validation set is coarse (:meth:`Pilot._coarse_validation`), ``train_samples``
    training samples in their fixed order. Iterable more than once (a sweep reads it at each threshold).

    Where the sweep judges the budget because the validation set is too coarse to judge it after the fine-tuning, the
    most pruning threshold within the budget on a few validation samples sits where accuracy starts falling off a
    cliff more often than not: among the thresholds the cliff's first step reads the same as the plateau on 144
    images and only the next one shows it. Digits models with BatchNorm chose log α > −1 and > 0.5 there, read
    99.31% on validation (before fine-tuning) and 94.72% and 95.83% on the 360 test images, against 98.06% and 96–97%
    one or two grid steps back; their training samples showed the step (97.14% and 97.91% against 99.15% and 99.23%).
    So the sweep's choice must keep the budget on these samples too, measured from the lower of the original's
    metric on them and the least pruning threshold's: the checks while training held the trained model's drop on
    these samples near half the budget, and what a threshold loses beyond it is its own cost. It is measured before
    the fine-tuning, which wins some of it back: the digits MLP, CNN and LSTM of ``benchmarks/autopilot_small.py``
    lost no test accuracy at the thresholds it rules out, and keep 16–26% less compression; its SBP CNN, 1.11 test
    points down before, keeps 42% less at −0.27 (BENCHMARKS.md, twenty-ninth session)."""

    def __init__(self, data: DataBundle, batch_size: int, train_samples: int, val_samples: int = CHECK_SAMPLES):
        self.data, self.batch_size, self.train_samples = data, batch_size, train_samples
        self.val_samples = val_samples

    def part(self, *, borrowed: bool) -> Iterator[Any]:
        """The validation batches, or (``borrowed``) the training ones, streamed (a check may cover thousands of
        large images)."""
        if not borrowed:
            yield from first_batches(self.data.loader("val", self.batch_size), self.val_samples)
        elif self.train_samples:
            yield from first_batches(self.data.loader("train", self.batch_size), self.train_samples)

    def __iter__(self) -> Iterator[Any]:
        """Every batch: the validation ones, then the training ones."""
        yield from self.part(borrowed=False)
        yield from self.part(borrowed=True)

    @property
    def samples(self) -> int:
        return self.data.num_val + min(self.train_samples, self.data.num_train)

    @staticmethod
    def for_run(recipe: Recipe, data: DataBundle) -> CheckSet | None:
        """The check set where the sweep judges an automatic run's accuracy budget on a validation set too coarse
        for it (one sample weighs more than half the budget); None elsewhere, and for a training DataLoader of the
        user's (its order or augmentation may change between reads), as the checks while training."""
        from torch.utils.data import DataLoader

        if not (recipe.automatic and recipe.max_metric_drop is not None and is_classification(recipe.loss)):
            return None
        if recipe.validation_resolves_budget(data.num_val) or recipe.judges_after_finetune(data.num_val):
            return None
        if isinstance(data.split("train"), DataLoader):
            return None
        wanted = min(CHECK_SAMPLES - data.num_val, data.num_train)
        return CheckSet(data, recipe.eval_batch_size, wanted) if wanted > 0 else None


def check_samples(check_every: int, batch_size: int) -> int:
    """How many samples a check measures the drop on. The measured drop moves between checks by about
    sqrt(flips / n), where ``flips`` is the share of samples whose prediction changed (on 2,000 samples, LeNet-5 in
    training moved 0.2–0.3 points from check to check, as much as a half-point budget's aim), so more samples steer
    better; but a check must stay cheap beside the training it steers. An evaluation is a forward pass without
    noise draws or backward, about a third of a training step per sample, so counting CHECK_SHARE × the samples
    trained on between two checks costs about a sixth of that training."""
    return int(min(CHECK_SAMPLES_MAX, max(CHECK_SAMPLES, CHECK_SHARE * check_every * batch_size)))


def _slope(values: list[float]) -> tuple[float, float]:
    """The least-squares slope of ``values`` against their index, and that slope in standard errors (its t
    statistic: inf for a rising line with no scatter, 0 for a flat or falling one)."""
    n = len(values)
    if n < 3:
        return 0.0, 0.0
    mx, my = (n - 1) / 2.0, sum(values) / n
    sxx = sum((i - mx) ** 2 for i in range(n))
    slope = sum((i - mx) * (v - my) for i, v in enumerate(values)) / sxx
    if slope <= 0:
        return slope, 0.0
    residual = sum((v - my - slope * (i - mx)) ** 2 for i, v in enumerate(values)) / (n - 2)
    se = math.sqrt(residual / sxx)
    return slope, math.inf if se == 0 else slope / se
