"""One VQ-GAN training iteration (generator step, then discriminator step), shared by the trainer and the benchmark.

Gap it fills: MONAI's ``GanTrainer`` alternates generator and discriminator updates but has no VQ loss and no
adaptive adversarial weight, which needs the gradients of two losses at the generator's last layer.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from bundle.losses import adaptive_adversarial_weight, adversarial_loss, at_least_float32, codebook_usage
from bundle.networks import VQGANGenerator

__all__ = ["gan_training_step"]


def gan_training_step(
    generator: VQGANGenerator,
    discriminator: nn.Module | None,
    optimizer_g: torch.optim.Optimizer,
    optimizer_d: torch.optim.Optimizer | None,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    adversarial_weight_factor: float = 0.8,
    adversarial_scale: float = 1.0,
    delta: float = 1e-4,
    max_weight: float = 1e4,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor | int]:
    """Update the generator with L_G = L_recon + L_vq + lambda * L_adv, then the discriminator with its BCE loss.

    Args:
        generator: the VQ-GAN generator; in stage 2 only the parameters in ``optimizer_g`` change (freeze the rest,
            and put the frozen modules in eval mode, before calling).
        discriminator: a MONAI ``PatchDiscriminator`` (its last output is the logit grid), or None for a plain
            VQ-VAE step (no adversarial term, no discriminator update).
        optimizer_g, optimizer_d: optimisers of the generator and discriminator (``optimizer_d`` unused when
            ``discriminator`` is None).
        inputs: (B, 1, X, Y, Z) generator input (x', masked in stage 2); sizes divisible by the downsample factor.
        targets: (B, 1, X, Y, Z) what the generator must reconstruct (unmasked x'); also the discriminator's real.
        adversarial_weight_factor: the 0.8 of eq. 5.
        adversarial_scale: multiplies the adaptive weight (``bundle.losses.adversarial_schedule``: 0 during a
            warm-up, then a ramp to 1). At 0 the generator gets no adversarial term while the discriminator keeps
            training, so it is ready when the term switches on.
        delta, max_weight: stabiliser and upper clamp of the adaptive weight.
        autocast_dtype: None for float32, or torch.bfloat16 to run forward passes under autocast (losses stay
            float32). float16 is refused: it would need gradient scaling.

    Returns:
        detached scalar tensors ``loss_g``, ``loss_recon``, ``loss_vq``, ``loss_adv``, ``loss_d``, ``adv_weight``,
        ``perplexity`` (0 where a term is off), and ``codes_used`` (int); ``adv_weight`` is the applied weight,
        ``adversarial_scale`` times lambda of eq. 5.
    """
    if autocast_dtype == torch.float16:
        raise ValueError("autocast_dtype=float16 needs gradient scaling, which this step does not do; use bfloat16")
    if discriminator is not None and optimizer_d is None:
        raise ValueError("a discriminator was given without optimizer_d")
    autocast = torch.autocast(device_type=inputs.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    zero = torch.zeros((), device=inputs.device)
    if not 0.0 <= adversarial_scale <= 1.0:
        raise ValueError(f"adversarial_scale must be in [0, 1], got {adversarial_scale}")
    use_adversarial = discriminator is not None and adversarial_scale > 0

    optimizer_g.zero_grad(set_to_none=True)
    balance_weight = generator.last_layer_weight
    # Stage 2 freezes the decoder, yet eq. 5 still measures both gradients at G_L: it joins the graph for this step
    # only, and its gradient is discarded afterwards.
    borrow_balance_weight = use_adversarial and not balance_weight.requires_grad
    if borrow_balance_weight:
        balance_weight.requires_grad_(True)
    try:
        with autocast:
            reconstruction, vq_loss, indices = generator.reconstruct(inputs)
        recon_loss = F.mse_loss(at_least_float32(reconstruction), at_least_float32(targets))
        loss_g = recon_loss + vq_loss
        adv_loss, adv_weight, fake_logits = zero, zero, None
        if use_adversarial:
            # One backward through the discriminator, to its input only, gives dL_adv/dx_hat; the linear surrogate
            # <x_hat, dL_adv/dx_hat> has L_adv's gradient for every generator parameter, and serves both the adaptive
            # weight and the generator's backward without a second pass through the discriminator. The logits are
            # reused by the discriminator step (its weights are unchanged until then).
            with autocast:
                fake_logits = discriminator(reconstruction)[-1]
            adv_loss = adversarial_loss(fake_logits, target_is_real=True)
            (adv_grad,) = torch.autograd.grad(adv_loss, reconstruction, retain_graph=True)
            adv_surrogate = (at_least_float32(reconstruction) * at_least_float32(adv_grad)).sum()
            adv_weight = adaptive_adversarial_weight(
                recon_loss,
                adv_surrogate,
                balance_weight,
                factor=adversarial_weight_factor * adversarial_scale,
                delta=delta,
                max_weight=max_weight,
            )
            (loss_g + adv_weight * adv_surrogate).backward()
            loss_g = loss_g + adv_weight * adv_loss
        else:
            loss_g.backward()
    finally:
        if borrow_balance_weight:
            balance_weight.requires_grad_(False)
            balance_weight.grad = None
    optimizer_g.step()

    loss_d = zero
    if discriminator is not None:
        optimizer_d.zero_grad(set_to_none=True)
        with autocast:
            if fake_logits is None:
                fake_logits = discriminator(reconstruction.detach())[-1]
            real_logits = discriminator(targets)[-1]
        loss_d = 0.5 * (adversarial_loss(real_logits, True) + adversarial_loss(fake_logits, False))
        # inputs= keeps the reused fake logits from reaching back into the generator's (already freed) graph
        loss_d.backward(inputs=[p for p in discriminator.parameters() if p.requires_grad])
        optimizer_d.step()

    perplexity, codes_used = codebook_usage(indices, generator.quantizer.num_embeddings)
    return {
        "loss_g": loss_g.detach(),
        "loss_recon": recon_loss.detach(),
        "loss_vq": vq_loss.detach(),
        "loss_adv": adv_loss.detach(),
        "loss_d": loss_d.detach(),
        "adv_weight": adv_weight,
        "perplexity": perplexity,
        "codes_used": codes_used,
    }
