"""Behaviour of bundle.networks: generator shapes and gradients, the vector quantiser, the anomaly detector."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bundle.networks import AnomalyDetector, VectorQuantizer, VQGANGenerator


def _generator(seed: int = 0, **kwargs) -> VQGANGenerator:
    torch.manual_seed(seed)
    options = {"channels": (4, 8), "num_embeddings": 16, "embedding_dim": 4} | kwargs
    generator = VQGANGenerator(**options)
    with torch.no_grad():  # a spread-out codebook, as after training, so that different latents get different codes
        generator.quantizer.embedding.weight.normal_(std=0.5)
    return generator


def _volume(*spatial: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, *spatial, generator=torch.Generator().manual_seed(seed))


def _settle_batch_norm(generator: VQGANGenerator, spatial: tuple[int, int, int] = (8, 8, 8)) -> None:
    """Give the normalisation layers running statistics of inputs like ``spatial`` volumes (cumulative average), so
    that eval mode is neither an identity nor far enough off to switch every activation off."""
    batch_norms = [m for m in generator.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for layer in batch_norms:
        layer.reset_running_stats()
        layer.momentum = None
    generator.train()
    with torch.no_grad():
        for seed in range(3):
            generator(_volume(*spatial, seed=seed + 10))
    for layer in batch_norms:
        layer.momentum = 0.1
    generator.eval()


@pytest.mark.parametrize("spatial", [(8, 8, 8), (16, 12, 20), (24, 8, 4)])
def test_generator_shapes(spatial):
    generator = _generator()
    assert generator.downsample_factor == 4
    reconstruction, vq_loss, indices = generator.reconstruct(_volume(*spatial))
    assert reconstruction.shape == (2, 1, *spatial)
    assert vq_loss.shape == () and float(vq_loss.detach()) >= 0
    assert indices.shape == (2, *(s // 4 for s in spatial)) and indices.dtype == torch.long
    assert 0 <= int(indices.min()) and int(indices.max()) < 16
    assert torch.equal(generator.eval()(_volume(*spatial)), generator.reconstruct(_volume(*spatial))[0])


def test_generator_per_level_res_blocks_and_full_resolution_stem():
    generator = _generator(
        channels=(4, 8), num_res_blocks=(2, 0), act=("LEAKYRELU", {"negative_slope": 0.1}), stem_stride=1
    )
    assert generator.downsample_factor == 2
    assert generator(_volume(6, 4, 2)).shape == (2, 1, 6, 4, 2)
    assert generator.last_layer_weight.shape == (1, 4, 3, 3, 3)  # a plain 3x3x3 convolution at full resolution
    with pytest.raises(ValueError, match="not divisible"):
        generator(_volume(5, 4, 4))
    with pytest.raises(ValueError, match="stem_stride"):
        _generator(stem_stride=4)


def test_strided_stem_keeps_no_full_resolution_feature_map():
    generator = _generator(channels=(4, 8, 16))
    assert generator.downsample_factor == 8
    sizes = []
    for module in [*generator.encoder, *generator.decoder]:
        module.register_forward_hook(lambda _, __, output: sizes.append(output.shape[2:]))
    assert generator(_volume(16, 16, 8)).shape == (2, 1, 16, 16, 8)
    assert sizes[-1] == (16, 16, 8) and all(size[0] <= 8 for size in sizes[:-1])  # only the head's output is full


def test_last_layer_weight_is_the_final_convolution():
    generator = _generator()
    weight = generator.last_layer_weight
    assert weight.shape == (8, 4, 3, 3, 3)  # the sub-pixel head: 2^3 values per half-resolution voxel
    assert weight is list(generator.decoder.parameters())[-2]  # followed only by its bias
    with torch.no_grad():
        weight.zero_()
        generator.decoder[-1].conv_block.bias.fill_(0.25)
    assert torch.all(generator(_volume(8, 8, 8)) == 0.25)


def test_straight_through_gradient_reaches_encoder():
    generator = _generator()
    reconstruction, _, _ = generator.reconstruct(_volume(8, 8, 8))
    F.mse_loss(reconstruction, _volume(8, 8, 8, seed=1)).backward()
    for name, parameter in generator.encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert generator.quantizer.embedding.weight.grad is None, "the reconstruction must not train the codebook"


def test_vq_loss_value_is_one_plus_beta_times_mse():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_embeddings=8, embedding_dim=3, commitment_cost=0.4)
    z_e = torch.randn(2, 3, 4, 5, 6)
    z_q, vq_loss, indices = quantizer(z_e)
    codes = quantizer.embedding.weight[indices].movedim(-1, 1)
    torch.testing.assert_close(vq_loss, 1.4 * F.mse_loss(z_e, codes))
    torch.testing.assert_close(z_q, codes)  # forward value is the code, gradient goes straight to z_e


def test_quantizer_picks_the_nearest_code():
    torch.manual_seed(1)
    quantizer = VectorQuantizer(num_embeddings=32, embedding_dim=5)
    with torch.no_grad():
        quantizer.embedding.weight.normal_()
    z_e = torch.randn(3, 5, 4, 4, 2)
    _, _, indices = quantizer(z_e)
    flat = z_e.movedim(1, -1).reshape(-1, 5)
    expected = torch.cdist(flat, quantizer.embedding.weight).argmin(dim=1).reshape(3, 4, 4, 2)
    assert torch.equal(indices, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, vq_loss, bf16_indices = quantizer(z_e)
    assert torch.equal(bf16_indices, expected) and z_q.dtype == torch.float32 and vq_loss.dtype == torch.float32
    with pytest.raises(ValueError, match="channels"):
        quantizer(torch.randn(1, 4, 2, 2, 2))


def test_codebook_gradient_comes_from_codebook_term_only():
    torch.manual_seed(2)
    quantizer = VectorQuantizer(num_embeddings=8, embedding_dim=3, commitment_cost=0.25)
    z_e = torch.randn(2, 3, 3, 3, 3, requires_grad=True)
    z_q, vq_loss, indices = quantizer(z_e)
    vq_loss.backward()
    codebook_term = F.mse_loss(quantizer.embedding.weight[indices].movedim(-1, 1), z_e.detach())
    (expected_codebook_grad,) = torch.autograd.grad(codebook_term, quantizer.embedding.weight)
    torch.testing.assert_close(quantizer.embedding.weight.grad, expected_codebook_grad)
    # the encoder side gets only beta * the commitment term's gradient
    codes = z_q.detach()
    torch.testing.assert_close(z_e.grad, 0.25 * 2 * (z_e.detach() - codes) / z_e.numel())
    quantizer.embedding.weight.grad = None
    (z_q * torch.randn_like(z_q)).sum().backward()
    assert quantizer.embedding.weight.grad is None


def _stage_pair(encoder_noise: float) -> tuple[VQGANGenerator, VQGANGenerator]:
    """A settled stage-1 generator and a stage-2 copy whose encoder weights carry Gaussian noise of that scale."""
    stage1 = _generator(seed=0)
    _settle_batch_norm(stage1, (16, 8, 12))
    stage2 = copy.deepcopy(stage1)
    with torch.no_grad():
        for parameter in stage2.encoder.parameters():
            parameter.add_(encoder_noise * torch.randn_like(parameter))
    return stage1, stage2


def test_anomaly_detector_equals_two_generators():
    stage1, stage2 = _stage_pair(encoder_noise=0.05)
    x = _volume(16, 8, 12, seed=5)
    with torch.no_grad():
        g1, g2 = stage1(x), stage2(x)
    assert g1.std() > 1e-3 and not torch.allclose(g1, g2)
    detector = AnomalyDetector.from_generators(stage1, stage2).eval()
    everything = AnomalyDetector.from_generators(stage1, stage2, output="all").eval()
    with torch.no_grad():
        anomaly, outputs = detector(x), everything(x)
    assert anomaly.shape == (2, 1, 16, 8, 12) and outputs.shape == (2, 3, 16, 8, 12)
    torch.testing.assert_close(anomaly, (g2 - g1) ** 2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(outputs, torch.cat([(g2 - g1) ** 2, g1, g2], dim=1), rtol=1e-5, atol=1e-7)


def test_latent_disagreement_is_the_distance_of_the_two_chosen_codes():
    stage1 = _generator(seed=0)
    _settle_batch_norm(stage1, (16, 8, 12))
    x = _volume(16, 8, 12, seed=5)
    same = AnomalyDetector.from_generators(stage1, copy.deepcopy(stage1), latent_disagreement=True).eval()
    stage2 = copy.deepcopy(stage1)
    with torch.no_grad():
        for parameter in stage2.encoder.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    detector = AnomalyDetector.from_generators(stage1, stage2, output="all", latent_disagreement=True).eval()
    with torch.no_grad():
        assert torch.equal(
            same.latent_disagreement_map(x), torch.zeros(2, 1, 16, 8, 12)
        )  # one encoder: no disagreement
        outputs, latent = detector(x), detector.latent_disagreement_map(x)
        _, _, codes1 = stage1.quantizer(stage1.encoder(x))
        _, _, codes2 = stage2.quantizer(stage2.encoder(x))
    assert outputs.shape == (2, 4, 16, 8, 12) and torch.equal(outputs[:, 3:], latent)
    factor = stage1.downsample_factor
    codebook = stage1.quantizer.embedding.weight
    expected = ((codebook[codes2] - codebook[codes1]) ** 2).sum(-1)  # (B, x, y, z) on the latent grid
    torch.testing.assert_close(latent[:, 0, ::factor, ::factor, ::factor], expected)
    assert bool((codes1 != codes2).any()) and bool(
        (latent[:, 0, ::factor, ::factor, ::factor] == 0).eq(codes1 == codes2).all()
    )


def test_from_generators_copies_weights_and_names_state_dict():
    stage1 = _generator(seed=0)
    stage2 = copy.deepcopy(stage1)
    with torch.no_grad():
        stage2.encoder[0].conv.weight.add_(1.0)
    detector = AnomalyDetector.from_generators(stage1, stage2)
    state = detector.state_dict()
    assert {key.split(".")[0] for key in state} == {"encoder1", "encoder2", "quantizer", "decoder"}
    for prefix, module in (("encoder1", stage1.encoder), ("encoder2", stage2.encoder), ("quantizer", stage1.quantizer)):
        for key, value in module.state_dict().items():
            assert torch.equal(state[f"{prefix}.{key}"], value), f"{prefix}.{key}"
    parts = {"encoder1": stage1.encoder, "encoder2": stage1.encoder, "quantizer": stage1.quantizer}
    parts["decoder"] = stage1.decoder
    assert set(state) == {f"{prefix}.{key}" for prefix, module in parts.items() for key in module.state_dict()}
    with torch.no_grad():
        stage1.encoder[0].conv.weight.add_(1.0)  # copies, not aliases
    assert not torch.equal(detector.encoder1[0].conv.weight, stage1.encoder[0].conv.weight)
    reloaded = AnomalyDetector(_generator(seed=3))
    reloaded.load_state_dict(state)
    assert torch.equal(reloaded.encoder2[0].conv.weight, stage2.encoder[0].conv.weight)


def test_from_generators_refuses_different_decoders():
    stage1 = _generator(seed=0)
    stage2 = copy.deepcopy(stage1)
    _settle_batch_norm(stage2)  # decoder running statistics drifted: stage 2 did not freeze it
    with pytest.raises(ValueError, match="decoder"):
        AnomalyDetector.from_generators(stage1, stage2)
    with pytest.raises(ValueError, match="output"):
        AnomalyDetector(stage1, output="maps")


def test_mirror_averaging_is_the_mean_of_both_orientations():
    stage1, stage2 = _stage_pair(encoder_noise=0.2)
    single = AnomalyDetector.from_generators(stage1, stage2, output="all", latent_disagreement=True).eval()
    mirrored = AnomalyDetector(stage1, output="all", latent_disagreement=True, mirror_axes=[0]).eval()
    mirrored.load_state_dict(single.state_dict())  # no parameter of its own: the shipped weights load as they are
    x = _volume(16, 8, 12, seed=5)
    with torch.no_grad():
        one_way, other_way, averaged = single(x), single(x.flip(2)).flip(2), mirrored(x)
    assert not torch.allclose(one_way, other_way)  # the network is not symmetric, so the mirror adds information
    torch.testing.assert_close(averaged, (one_way + other_way) / 2, rtol=1e-5, atol=1e-7)
    for axes in ([3], [0, 0], [-1]):
        with pytest.raises(ValueError, match="mirror_axes"):
            AnomalyDetector(stage1, mirror_axes=axes)


@pytest.mark.parametrize(
    "output,latent,mirror", [("anomaly", False, ()), ("all", False, ()), ("all", True, ()), ("all", True, (0, 2))]
)
def test_anomaly_detector_torchscript_matches_eager(tmp_path, output, latent, mirror):
    generator = _generator(seed=4)
    _settle_batch_norm(generator, (12, 16, 8))
    detector = AnomalyDetector(generator, output=output, latent_disagreement=latent, mirror_axes=mirror).eval()
    with torch.no_grad():
        for parameter in detector.encoder2.parameters():
            parameter.mul_(1.1)
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(detector), str(path))
    scripted = torch.jit.load(str(path))
    x = _volume(12, 16, 8, batch=1, seed=9)
    with torch.no_grad():
        eager, exported = detector(x), scripted(x)
    assert eager.shape[1] == (3 if output == "all" else 1) + latent and eager.abs().sum() > 0
    torch.testing.assert_close(exported, eager, rtol=1e-5, atol=1e-7)
    with pytest.raises(torch.jit.Error, match="not divisible"):
        scripted(_volume(10, 16, 8, batch=1))


def test_generator_torchscript_matches_eager():
    generator = _generator(seed=6)
    _settle_batch_norm(generator, (8, 12, 16))
    scripted = torch.jit.script(generator)
    x = _volume(8, 12, 16, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), generator(x))


def test_channels_last_weights_change_layout_not_results():
    fast = _generator(seed=7)
    plain = _generator(seed=7, channels_last=False)
    conv_weight = fast.encoder[1].conv1.conv.weight
    assert conv_weight.is_contiguous(memory_format=torch.channels_last_3d) and not conv_weight.is_contiguous()
    assert plain.encoder[1].conv1.conv.weight.is_contiguous()
    x = _volume(8, 8, 8)
    # float rounding only: the channels-last kernels sum in another order (up to 2e-5 apart seen on 2 busy cores)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)
    fast.load_state_dict(_generator(seed=8, channels_last=False).state_dict())
    assert fast.encoder[1].conv1.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
