"""Behaviour of bundle.losses: adversarial BCE, adaptive adversarial weight (eq. 5), codebook usage."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bundle.losses import adaptive_adversarial_weight, adversarial_loss, adversarial_schedule, codebook_usage


class _ToyGenerator(nn.Module):
    """x_hat = W h with fixed features h: the gradients at W are known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.last = nn.Linear(3, 4, bias=False, dtype=torch.float64)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.last(features)


def _toy_losses(seed: int = 0):
    torch.manual_seed(seed)
    generator = _ToyGenerator()
    features = torch.randn(5, 3, dtype=torch.float64)
    target = torch.randn(5, 4, dtype=torch.float64)
    critic = torch.randn(4, dtype=torch.float64)  # a linear "discriminator": logits = x_hat * critic
    x_hat = generator(features)
    recon = F.mse_loss(x_hat, target)
    adv = adversarial_loss(x_hat * critic, target_is_real=True)
    return generator, features, target, critic, x_hat, recon, adv


def test_adaptive_weight_equals_hand_computation():
    generator, features, target, critic, x_hat, recon, adv = _toy_losses()
    count = x_hat.numel()
    x_hat = x_hat.detach()
    # d mean((x_hat - t)^2)/dW = 2/N (x_hat - t)^T h ;  d mean(softplus(-c x_hat))/dW = (-c sigmoid(-c x_hat)/N)^T h
    recon_grad = (2.0 / count) * (x_hat - target).t() @ features
    adv_grad = (-critic * torch.sigmoid(-critic * x_hat) / count).t() @ features
    expected = 0.8 * recon_grad.norm() / (adv_grad.norm() + 1e-4)
    weight = adaptive_adversarial_weight(recon, adv, generator.last.weight)
    assert abs(float(weight) - float(expected)) < 1e-6 * float(expected)
    other = adaptive_adversarial_weight(recon, adv, generator.last.weight, factor=0.5, delta=0.1)
    assert abs(float(other) - float(0.5 * recon_grad.norm() / (adv_grad.norm() + 0.1))) < 1e-9


def test_adaptive_weight_is_detached_and_keeps_the_graph():
    generator, *_, recon, adv = _toy_losses()
    weight = adaptive_adversarial_weight(recon, adv, generator.last.weight)
    assert not weight.requires_grad and weight.grad_fn is None and weight.shape == ()
    (recon + weight * adv).backward()  # the graph must still be there for the generator's own backward
    assert generator.last.weight.grad is not None


def test_adaptive_weight_clamps():
    generator, *_, recon, adv = _toy_losses()
    no_adversarial_gradient = 0.0 * generator.last.weight.sum() + adv.detach()
    weight = adaptive_adversarial_weight(recon, no_adversarial_gradient, generator.last.weight, max_weight=50.0)
    assert float(weight) == pytest.approx(0.8 * 50.0)
    no_recon_gradient = 0.0 * generator.last.weight.sum()
    assert float(adaptive_adversarial_weight(no_recon_gradient, adv, generator.last.weight)) == 0.0


def test_adversarial_loss_matches_torch_bce():
    logits = torch.randn(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    for is_real, target in ((True, torch.ones_like(logits)), (False, torch.zeros_like(logits))):
        loss = adversarial_loss(logits, is_real)
        torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, target))
        torch.testing.assert_close(loss, F.binary_cross_entropy(torch.sigmoid(logits), target), rtol=1e-5, atol=1e-6)
    assert float(adversarial_loss(torch.full((3,), 40.0), True)) < 1e-12  # stable for large logits


def test_adversarial_loss_is_float32_under_bf16_autocast():
    torch.manual_seed(0)
    layer = nn.Linear(8, 64)
    inputs = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(inputs)
        loss = adversarial_loss(logits, target_is_real=False)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    expected = F.binary_cross_entropy_with_logits(logits.float(), torch.zeros(logits.shape))
    assert float(loss.detach()) == float(expected.detach())


def test_codebook_usage_known_indices():
    uniform = torch.arange(4).repeat(6).reshape(2, 3, 4)  # codes 0..3, six times each, of 16
    perplexity, used = codebook_usage(uniform, num_embeddings=16)
    assert used == 4 and float(perplexity) == pytest.approx(4.0, rel=1e-6)
    perplexity, used = codebook_usage(torch.full((2, 2, 2), 7), num_embeddings=16)
    assert used == 1 and float(perplexity) == pytest.approx(1.0)
    skewed = torch.tensor([0, 0, 0, 1])  # p = (3/4, 1/4)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    perplexity, used = codebook_usage(skewed, num_embeddings=2)
    assert used == 2 and float(perplexity) == pytest.approx(math.exp(entropy), rel=1e-6)
    assert perplexity.dtype == torch.float32


def test_adversarial_schedule_warms_up_then_ramps_linearly():
    scales = [adversarial_schedule(iteration, warmup=3, ramp=4) for iteration in range(1, 10)]
    assert scales == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [adversarial_schedule(iteration, warmup=2) for iteration in (2, 3)] == [0.0, 1.0]  # no ramp: a switch
    assert adversarial_schedule(1) == 1.0  # the paper's form: no warm-up, full weight from the first iteration
    with pytest.raises(ValueError, match="ramp"):
        adversarial_schedule(5, warmup=1, ramp=-1)
