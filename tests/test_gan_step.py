"""Behaviour of bundle.gan_step.gan_training_step: same updates as the plain two-backward VQ-GAN iteration."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import PatchDiscriminator

from bundle.gan_step import gan_training_step
from bundle.losses import adaptive_adversarial_weight, adversarial_loss
from bundle.networks import VQGANGenerator

KEYS = {"loss_g", "loss_recon", "loss_vq", "loss_adv", "loss_d", "adv_weight", "perplexity", "codes_used"}


def _models(seed: int = 0) -> tuple[VQGANGenerator, PatchDiscriminator]:
    torch.manual_seed(seed)
    generator = VQGANGenerator(channels=(4, 8), num_embeddings=16, embedding_dim=4)
    discriminator = PatchDiscriminator(spatial_dims=3, channels=4, in_channels=1, num_layers_d=2)
    return generator, discriminator


def _data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.rand(2, 1, 16, 16, 16, generator=generator)
    inputs = targets * (torch.rand(targets.shape, generator=generator) > 0.3)
    return inputs, targets


def _reference_step(generator, discriminator, opt_g, opt_d, inputs, targets, factor=0.8):
    """The textbook iteration: the adversarial loss backpropagated through the discriminator twice."""
    opt_g.zero_grad()
    reconstruction, vq_loss, _ = generator.reconstruct(inputs)
    recon_loss = F.mse_loss(reconstruction, targets)
    adv_loss = adversarial_loss(discriminator(reconstruction)[-1], True)
    weight = adaptive_adversarial_weight(recon_loss, adv_loss, generator.last_layer_weight, factor=factor)
    (recon_loss + vq_loss + weight * adv_loss).backward()
    opt_g.step()
    opt_d.zero_grad()
    real = adversarial_loss(discriminator(targets)[-1], True)
    fake = adversarial_loss(discriminator(reconstruction.detach())[-1], False)
    loss_d = 0.5 * (real + fake)
    loss_d.backward()
    opt_d.step()
    return weight, loss_d


def test_step_matches_reference_iteration():
    # float64 so that the comparison sees the algorithm, not float32 rounding of two summation orders
    inputs, targets = (t.double() for t in _data())
    gen_a, disc_a = (m.double() for m in _models())
    gen_b, disc_b = copy.deepcopy(gen_a), copy.deepcopy(disc_a)
    opt = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (gen_a, disc_a, gen_b, disc_b)]
    out = gan_training_step(gen_a, disc_a, opt[0], opt[1], inputs, targets)
    weight, loss_d = _reference_step(gen_b, disc_b, opt[2], opt[3], inputs, targets)
    assert set(out) == KEYS
    assert out["adv_weight"] > 0
    torch.testing.assert_close(out["adv_weight"], weight, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out["loss_d"], loss_d)
    for model_a, model_b in ((gen_a, gen_b), (disc_a, disc_b)):
        for (name, p_a), p_b in zip(model_a.named_parameters(), model_b.parameters()):
            torch.testing.assert_close(p_a, p_b, rtol=1e-9, atol=1e-10, msg=name)
    # a key bias shifts every attention logit of a query equally, so softmax makes its gradient zero (up to rounding)
    changed = [
        not torch.equal(p, q.double())
        for (name, p), q in zip(gen_a.named_parameters(), _models()[0].parameters())
        if not name.endswith("attn.to_k.bias")
    ]
    assert all(changed), "every generator parameter should have been updated"


def test_step_losses_are_consistent():
    inputs, targets = _data()
    generator, discriminator = _models()
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    out = gan_training_step(generator, discriminator, opt_g, opt_d, inputs, targets)
    expected = out["loss_recon"] + out["loss_vq"] + out["adv_weight"] * out["loss_adv"]
    torch.testing.assert_close(out["loss_g"], expected)
    assert 1 <= out["codes_used"] <= 16
    assert 1.0 <= float(out["perplexity"]) <= out["codes_used"] + 1e-4


def _assert_equals_plain_vqvae_step(generator, reference, inputs, targets):
    """``generator`` (already stepped) equals ``reference`` after one SGD(0.1) step on MSE + VQ loss alone."""
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.1)
    reconstruction, vq_loss, _ = reference.reconstruct(inputs)
    (F.mse_loss(reconstruction, targets) + vq_loss).backward()
    opt_ref.step()
    for p_a, p_b in zip(generator.parameters(), reference.parameters()):
        torch.testing.assert_close(p_a, p_b)


def test_vqvae_step_without_discriminator():
    inputs, targets = _data()
    generator, _ = _models()
    opt_g = torch.optim.SGD(generator.parameters(), lr=0.1)
    reference = copy.deepcopy(generator)
    out = gan_training_step(generator, None, opt_g, None, inputs, targets)
    assert float(out["loss_adv"]) == 0.0 and float(out["loss_d"]) == 0.0 and float(out["adv_weight"]) == 0.0
    _assert_equals_plain_vqvae_step(generator, reference, inputs, targets)


def test_warmup_trains_discriminator_only():
    inputs, targets = _data()
    generator, discriminator = _models()
    reference = copy.deepcopy(generator)
    opt_g = torch.optim.SGD(generator.parameters(), lr=0.1)
    opt_d = torch.optim.SGD(discriminator.parameters(), lr=0.1)
    before = [p.clone() for p in discriminator.parameters()]
    out = gan_training_step(generator, discriminator, opt_g, opt_d, inputs, targets, adversarial_scale=0.0)
    assert float(out["adv_weight"]) == 0.0 and float(out["loss_d"]) > 0.0
    assert any(not torch.equal(p, q) for p, q in zip(discriminator.parameters(), before))
    _assert_equals_plain_vqvae_step(generator, reference, inputs, targets)


def test_adversarial_scale_multiplies_the_adaptive_weight():
    inputs, targets = _data()
    outs = []
    for scale in (1.0, 0.25):
        generator, discriminator = _models()
        opt_g = torch.optim.SGD(generator.parameters(), lr=0.1)
        opt_d = torch.optim.SGD(discriminator.parameters(), lr=0.1)
        outs.append(gan_training_step(generator, discriminator, opt_g, opt_d, inputs, targets, adversarial_scale=scale))
    assert float(outs[0]["adv_weight"]) > 0
    torch.testing.assert_close(outs[1]["adv_weight"], 0.25 * outs[0]["adv_weight"])
    with pytest.raises(ValueError, match="adversarial_scale"):
        gan_training_step(generator, discriminator, opt_g, opt_d, inputs, targets, adversarial_scale=1.5)


def test_stage2_frozen_decoder_and_codebook_stay_fixed():
    inputs, targets = _data()
    generator, discriminator = _models()
    for module in (generator.quantizer, generator.decoder):
        module.eval().requires_grad_(False)
    frozen = copy.deepcopy({"q": generator.quantizer.state_dict(), "d": generator.decoder.state_dict()})
    encoder_before = copy.deepcopy(generator.encoder.state_dict())
    opt_g = torch.optim.Adam(generator.encoder.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    out = gan_training_step(generator, discriminator, opt_g, opt_d, inputs, targets)
    assert float(out["adv_weight"]) > 0
    assert not generator.last_layer_weight.requires_grad and generator.last_layer_weight.grad is None
    for name, state in (("q", generator.quantizer.state_dict()), ("d", generator.decoder.state_dict())):
        for key, value in state.items():
            assert torch.equal(value, frozen[name][key]), key
    assert any(not torch.equal(v, encoder_before[k]) for k, v in generator.encoder.state_dict().items())


def test_bf16_autocast_step_runs_and_refuses_float16():
    inputs, targets = _data()
    generator, discriminator = _models()
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    out = gan_training_step(generator, discriminator, opt_g, opt_d, inputs, targets, autocast_dtype=torch.bfloat16)
    assert all(torch.isfinite(torch.as_tensor(out[k])) for k in KEYS)
    assert out["loss_recon"].dtype == torch.float32 and out["loss_d"].dtype == torch.float32
    with pytest.raises(ValueError, match="float16"):
        gan_training_step(generator, discriminator, opt_g, opt_d, inputs, targets, autocast_dtype=torch.float16)


def test_stage2_adaptive_weight_measured_at_frozen_last_layer():
    """Freezing G_L (requires_grad False) gives the same lambda and update as leaving it out of the optimiser."""
    inputs, targets = (t.double() for t in _data())
    generator, discriminator = (m.double() for m in _models())
    twin, twin_disc = copy.deepcopy(generator), copy.deepcopy(discriminator)
    for model, freeze in ((generator, True), (twin, False)):
        for module in (model.quantizer, model.decoder):
            module.eval().requires_grad_(not freeze)
    outs = []
    for model, disc in ((generator, discriminator), (twin, twin_disc)):
        opt_g = torch.optim.SGD(model.encoder.parameters(), lr=0.1)
        opt_d = torch.optim.SGD(disc.parameters(), lr=0.1)
        outs.append(gan_training_step(model, disc, opt_g, opt_d, inputs, targets))
    torch.testing.assert_close(outs[0]["adv_weight"], outs[1]["adv_weight"], rtol=1e-9, atol=1e-12)
    for p_a, p_b in zip(generator.encoder.parameters(), twin.encoder.parameters()):
        torch.testing.assert_close(p_a, p_b, rtol=1e-9, atol=1e-12)
