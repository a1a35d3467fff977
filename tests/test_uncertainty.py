"""Tests for prunedrop.uncertainty: calibration metrics on constructed toys, MC prediction, restored modes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunedrop.convert import to_variational, variational_layers
from prunedrop.errors import PrunedropError
from prunedrop.recipes import Recipe
from prunedrop.testing import TinyMLP, tiny_classification_data
from prunedrop.train import evaluate
from prunedrop.uncertainty import (
    calibration_summary,
    expected_calibration_error,
    mc_predictive,
    negative_log_likelihood,
    sampled_statistics,
)

# ------------------------------------------------------------------------------------ calibration metrics


def test_ece_of_a_calibrated_toy_is_near_zero():
    # labels drawn from the predicted distribution: P(label = argmax | confidence c) = c exactly
    g = torch.Generator().manual_seed(0)
    probs = (2.0 * torch.randn(100_000, 4, generator=g)).softmax(dim=1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    assert expected_calibration_error(probs, labels) < 0.02


def test_ece_of_confident_mistakes_is_one():
    labels = torch.arange(30) % 3
    probs = F.one_hot((labels + 1) % 3, 3).float()
    assert expected_calibration_error(probs, labels) == pytest.approx(1.0)
    # and of confident hits is zero
    assert expected_calibration_error(F.one_hot(labels, 3).float(), labels) == pytest.approx(0.0)


def test_ece_hand_values():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])  # correct, wrong, correct
    # one bin (0.5, 1]: |2/3 - (0.9 + 0.6 + 0.7)/3|
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(abs(2 / 3 - 2.2 / 3))
    # ten bins: each example alone, |1 - 0.9| + |0 - 0.6| + |1 - 0.7| over 3
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(1.0 / 3)
    with pytest.raises(ValueError):
        expected_calibration_error(probs, labels, n_bins=0)
    with pytest.raises(ValueError):
        expected_calibration_error(probs[:2], labels)


def test_nll_hand_values():
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    labels = torch.tensor([0, 1])
    assert negative_log_likelihood(probs, labels) == pytest.approx((math.log(2) + math.log(10)) / 2, rel=1e-6)
    assert negative_log_likelihood(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == pytest.approx(0.0)
    # a zero probability on the true class is large but finite
    assert negative_log_likelihood(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == pytest.approx(
        -math.log(1e-12))


# --------------------------------------------------------------------------------------- Monte Carlo


class _Net(nn.Module):
    """A variational-ready net with the modules that must stay in eval: BatchNorm and plain dropout."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 24)
        self.bn = nn.BatchNorm1d(24)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(24, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x.flatten(1))))))


def _variational(log_alpha: float, net: type[nn.Module] = _Net) -> nn.Module:
    torch.manual_seed(0)
    model = to_variational(net(), Recipe())
    with torch.no_grad():
        for layer in variational_layers(model).values():
            layer.log_sigma2.copy_(log_alpha + torch.log(layer.weight**2 + 1e-8))
    return model


def test_mc_mutual_information_large_noise_vs_tiny_noise():
    x = torch.randn(64, 1, 4, 4)
    torch.manual_seed(1)
    noisy = mc_predictive(_variational(2.0), x, samples=30)
    quiet = mc_predictive(_variational(-10.0), x, samples=30)
    for pred in (noisy, quiet):
        assert pred.mean.shape == (64, 3) and pred.entropy.shape == (64,)
        assert torch.allclose(pred.mean.sum(dim=1), torch.ones(64), atol=1e-5)
        assert (pred.mutual_information >= 0).all()
        assert (pred.mutual_information <= pred.entropy + 1e-6).all()
    assert noisy.mutual_information.mean() > 0.05
    assert quiet.mutual_information.max() < 1e-3


def test_mc_samples_only_the_variational_layers_and_restores_modes():
    model = _variational(-10.0)
    model.eval()
    x = torch.randn(32, 16)
    eval_probs = model(x).softmax(dim=1)
    model.train()
    model.fc2.eval()
    modes = [m.training for m in model.modules()]
    running_mean = model.bn.running_mean.clone()
    pred = mc_predictive(model, x, samples=5)
    # dropout(0.5) off and BatchNorm on running statistics: with tiny weight noise, MC = the eval model
    assert torch.allclose(pred.mean, eval_probs, atol=1e-3)
    assert torch.equal(model.bn.running_mean, running_mean)
    assert [m.training for m in model.modules()] == modes


def test_mc_runs_with_statistics_of_the_sampling_network_and_restores_the_thresholded_ones():
    """The pipeline re-estimates every BatchNorm's statistics for the thresholded network (noise off) after each
    epoch and check; a Monte Carlo pass normalised its noisy activations with them (a digits CNN with a cosine
    classifier read 9.0% accuracy, about 95% in training mode). Within the block they are the sampling network's."""
    from prunedrop.batchnorm import recalibrate_batchnorm

    model = _variational(3.0)  # noisy: each weight's variance e^3 times its square
    torch.manual_seed(2)
    batches = [(torch.randn(64, 16), torch.randint(0, 3, (64,))) for _ in range(4)]
    recalibrate_batchnorm(model, (x for x, _ in batches))  # the thresholded network's, as the pipeline leaves them
    model.eval()
    quiet = {k: v.clone() for k, v in model.bn.state_dict().items()}
    with torch.no_grad(), sampled_statistics(model, batches):
        assert not model.training and not model.bn.training  # nothing left in training mode
        noisy_var = model.bn.running_var.clone()
    # the noise adds variance to every unit (e^3 ≈ 20 times the weights' own contribution)
    assert (noisy_var > 5 * quiet["running_var"]).all(), (noisy_var / quiet["running_var"]).min()
    assert all(torch.equal(v, model.bn.state_dict()[k]) for k, v in quiet.items())  # restored exactly


def test_mc_needs_a_variational_model():
    with pytest.raises(PrunedropError, match="before prune"):
        mc_predictive(TinyMLP(), torch.randn(2, 16))
    with pytest.raises(ValueError):
        mc_predictive(_variational(0.0), torch.randn(2, 16), samples=0)


# ---------------------------------------------------------------------------------- calibration summary


def _loader(n: int = 60, batch: int = 16):
    x, y = tiny_classification_data(n=n, shape=(1, 4, 4))
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def test_summary_of_a_plain_model_agrees_with_evaluate():
    torch.manual_seed(0)
    model = TinyMLP().train()
    loader = _loader()
    s = calibration_summary(model, loader)
    ev = evaluate(model, loader)
    assert s["accuracy"] == pytest.approx(ev["accuracy"])
    assert s["nll"] == pytest.approx(ev["loss"], rel=1e-5)  # NLL of softmax = cross-entropy
    assert 0.0 <= s["ece"] <= 1.0 and s["n"] == 60 and s["samples"] is None
    assert model.training  # mode restored


def test_summary_with_monte_carlo_and_with_a_function():
    model = _variational(1.0, TinyMLP)
    loader = _loader()
    modes = [m.training for m in model.modules()]
    s = calibration_summary(model, loader, samples=4)
    assert s["samples"] == 4 and s["mutual_information"] > 0 and s["entropy"] >= s["mutual_information"]
    assert [m.training for m in model.modules()] == modes

    uniform = calibration_summary(lambda x: torch.full((x.shape[0], 3), 1 / 3), loader)
    assert uniform["nll"] == pytest.approx(math.log(3), rel=1e-6)
    with pytest.raises(ValueError):
        calibration_summary(lambda x: x, loader, samples=3)
    with pytest.raises(PrunedropError, match="empty"):
        calibration_summary(model, [])
