"""VQ-GAN losses that MONAI lacks: BCE adversarial loss from PatchGAN logits, the adaptive adversarial weight
(method.md sec. 3, eq. 5), the warm-up and ramp schedule of that weight, and codebook usage statistics. The VQ loss
itself is computed by ``bundle.networks.VectorQuantizer``.

Gap they fill: MONAI's ``PatchAdversarialLoss`` takes the discriminator's list output and applies its own
activation, and MONAI has no adaptive (gradient-norm balanced) adversarial weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "adversarial_loss",
    "adaptive_adversarial_weight",
    "adversarial_schedule",
    "codebook_usage",
    "at_least_float32",
]


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32, or unchanged when already float32 or float64 (losses are never computed in 16 bits)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def adversarial_loss(logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Mean binary cross-entropy of PatchGAN ``logits`` (any shape, unbounded) against an all-real or all-fake target.

    Computed in float32 (also under autocast), because BCE in bfloat16 loses the small differences the adversarial
    game depends on.

    Returns:
        float32 scalar >= 0; ``-mean(log sigmoid(logits))`` for real targets (L_adv of the generator).
    """
    logits = at_least_float32(logits)
    target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.binary_cross_entropy_with_logits(logits, target)


def adaptive_adversarial_weight(
    recon_loss: torch.Tensor,
    adv_loss: torch.Tensor,
    last_layer_weight: torch.Tensor,
    factor: float = 0.8,
    delta: float = 1e-4,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """lambda = ||grad_GL recon_loss|| / (||grad_GL adv_loss|| + delta), clamped to [0, max_weight], times ``factor``.

    Two gradient computations on the single layer ``last_layer_weight`` (G_L, the decoder's last weight), with the
    graph retained for the generator's full backward pass that follows.

    Returns:
        detached float32 scalar in [0, factor * max_weight].
    """
    recon_grad = torch.autograd.grad(recon_loss, last_layer_weight, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adv_loss, last_layer_weight, retain_graph=True)[0]
    weight = at_least_float32(recon_grad).norm() / (at_least_float32(adv_grad).norm() + delta)
    return (weight.clamp(0.0, max_weight) * factor).detach()


def adversarial_schedule(iteration: int, warmup: int = 0, ramp: int = 0) -> float:
    """Scale in [0, 1] of the adversarial term at ``iteration`` (counted from 1, as ignite counts).

    0 during the first ``warmup`` iterations (the discriminator trains alone), then rising linearly, ``k / ramp`` at
    the k-th iteration after the warm-up, and 1 from iteration ``warmup + ramp`` on; ``ramp`` 0 switches the term on
    at once. Why a ramp: switched on at full weight after a warm-up, the adversarial gradient is suddenly as large as
    the reconstruction gradient at the last layer (eq. 5) and much larger in the layers before it, and the
    reconstruction fell apart (docs/training.md).
    """
    if warmup < 0 or ramp < 0:
        raise ValueError(f"warmup and ramp must be >= 0, got {warmup} and {ramp}")
    if iteration <= warmup:
        return 0.0
    if ramp == 0:
        return 1.0
    return min(1.0, (iteration - warmup) / ramp)


def codebook_usage(indices: torch.Tensor, num_embeddings: int) -> tuple[torch.Tensor, int]:
    """Perplexity and number of distinct codes among ``indices`` (any shape, values in [0, num_embeddings)).

    Perplexity is exp(entropy of the code histogram): 1 when one code is used, K when K codes are used equally,
    at most ``num_embeddings``. A collapsing codebook shows as a falling perplexity.

    Returns:
        perplexity (float32 scalar tensor), codes used (int).
    """
    counts = torch.bincount(indices.reshape(-1), minlength=num_embeddings).float()
    probabilities = counts / counts.sum().clamp_min(1.0)
    entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum()
    return entropy.exp(), int((counts > 0).sum())
