"""The 3D VQ-GAN generator (a VQ-VAE built from MONAI blocks) and the combined two-encoder anomaly module.

Shapes: images are ``(B, C, X, Y, Z)`` float tensors (x' in [0, 1] for this bundle); every spatial size must be
divisible by the generator's downsample factor ``stem_stride * 2 ** (len(channels) - 1)``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from math import gcd

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import ADN, Convolution, SpatialAttentionBlock, SubpixelUpsample
from monai.networks.blocks.segresnet_block import ResBlock
from monai.utils import ensure_tuple_rep

__all__ = ["VectorQuantizer", "ScriptableSpatialAttentionBlock", "VQGANGenerator", "AnomalyDetector"]


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantiser with the VQ-VAE codebook + commitment loss (method.md sec. 3, eq. 1).

    Gap it fills: MONAI's ``VectorQuantizer`` only wraps an EMA quantiser (``EMAQuantizer``), which updates the
    codebook by moving averages instead of the gradient codebook term ``||sg[z_e] - e||^2`` the paper trains with.

    Args:
        num_embeddings: number of codes K in the codebook.
        embedding_dim: length D of each code; equals the channel count of the encoder output.
        commitment_cost: beta, the weight of the commitment term ``||z_e - sg[e]||^2``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, commitment_cost: float = 0.25) -> None:
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(
                f"num_embeddings and embedding_dim must be positive, got {num_embeddings} and {embedding_dim}"
            )
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_embeddings, 1.0 / num_embeddings)

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float32 (or float64) quantisation of ``z`` (B, D, *spatial) -> (z_q straight-through, vq_loss, indices)."""
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        codebook = self.embedding.weight.to(z.dtype)
        flat = z.movedim(1, -1).reshape(-1, self.embedding_dim)
        # ||z||^2 is the same for every code of a row, so the argmin needs only ||e||^2 - 2 z.e
        scores = torch.addmm((codebook * codebook).sum(1), flat.detach(), codebook.detach().t(), alpha=-2.0)
        flat_indices = scores.argmin(dim=1)
        z_q = F.embedding(flat_indices, codebook).reshape(z.movedim(1, -1).shape).movedim(-1, 1)
        codebook_loss = F.mse_loss(z_q, z.detach())
        commitment_loss = F.mse_loss(z, z_q.detach())
        vq_loss = codebook_loss + self.commitment_cost * commitment_loss
        z_q = z + (z_q - z).detach()
        indices = flat_indices.reshape(z.shape[:1] + z.shape[2:])
        return z_q, vq_loss, indices

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise ``z`` of shape (B, embedding_dim, X, Y, Z).

        Returns:
            z_q: (B, embedding_dim, X, Y, Z) float32, the nearest codes with a straight-through gradient to ``z``.
            vq_loss: scalar, codebook term + commitment_cost * commitment term (mean squared errors).
            indices: (B, X, Y, Z) long, code index in [0, num_embeddings) of each latent voxel.
        """
        if z.shape[1] != self.embedding_dim:
            raise ValueError(f"expected {self.embedding_dim} channels to quantise, got input of shape {list(z.shape)}")
        if torch.jit.is_scripting():
            return self._quantize(z)
        # distances in bfloat16 would pick wrong codes, so autocast is switched off here
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._quantize(z)


class ScriptableSpatialAttentionBlock(SpatialAttentionBlock):
    """MONAI's ``SpatialAttentionBlock`` (non-local block) with a TorchScript-compatible forward.

    Gap it fills: the parent's forward unpacks a shape slice into ``reshape``, which TorchScript cannot compile, and
    the bundle exports the anomaly detector as TorchScript. Same parameters and the same computation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, *spatial) -> same shape: x + attention over all voxels of GroupNorm(x)."""
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        return x + self.attn(tokens).transpose(1, 2).reshape(x.shape)


def _check_divisible(x: torch.Tensor, factor: int) -> None:
    """Raise ValueError unless every spatial size of ``x`` (B, C, *spatial) is a multiple of ``factor``."""
    for size in x.shape[2:]:
        if size % factor != 0:
            raise ValueError(
                f"input spatial shape {list(x.shape[2:])} is not divisible by the downsample factor {factor}; "
                "pad or crop it first (or use a sliding-window inferer with such a window)"
            )


def _check_intensity(x: torch.Tensor) -> None:
    """Raise ValueError unless ``x`` holds x' values: finite and within [0, 1] (a raw label map holds 0-5)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError("input holds NaN or infinite values; expected x' in [0, 1]")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            "input is not x' (values in [0, 1]): got {} to {}; a DentalSegmentator label map must first go through "
            "the bundle's preprocessing (ValidateLabelsd, 2 mm, LabelToIntensityd: x' = (label + 5) / 10)".format(
                low, high
            )
        )


class VQGANGenerator(nn.Module):
    """3D VQ-GAN generator: residual/downsampling encoder, self-attention at the lowest level, codebook, decoder.

    Built from MONAI blocks (method.md sec. 2): residual blocks are ``segresnet_block.ResBlock`` (pre-activation,
    two 3x3x3 convs); each downsampling block is a ``Convolution`` with stride 2 followed by normalisation and
    activation; each upsampling block is a transposed ``Convolution`` (kernel 4, stride 2, so every output voxel sees
    the same number of taps) followed by normalisation and activation; the non-local block is MONAI's
    ``SpatialAttentionBlock``. The decoder ends with normalisation + activation and a convolution whose weight is
    G_L of the adaptive adversarial weight (eq. 5): a plain one (``stem_stride`` 1), or a sub-pixel upsampling
    (``stem_stride`` 2: MONAI's ``SubpixelUpsample``, a 3x3x3 convolution to 2^3 values per voxel, then pixel shuffle).

    With ``stem_stride`` 2 the stem is itself a downsampling block (image -> ``channels[0]`` at half resolution) and
    the head a sub-pixel upsampling (``channels[0]`` -> image), so no feature map is held at full resolution: the
    full-resolution stem, upsampling and tail made most of the inference time (docs/benchmark_inference.md), while
    the head's own value for each of the 2^3 voxels under a half-resolution voxel still places 1-voxel structures
    (the mandibular canal).

    Args:
        spatial_dims: number of spatial dimensions (3 for CBCT volumes).
        in_channels: channels of the input image.
        out_channels: channels of the reconstruction.
        channels: feature channels per resolution level, highest resolution first; the first level is at
            1 / ``stem_stride`` of the input resolution, and the downsample factor is
            ``stem_stride * 2 ** (len(channels) - 1)``.
        num_res_blocks: residual blocks per level (an int for all levels, or one per level).
        num_embeddings: codebook size K.
        embedding_dim: code length D (channels of the latent).
        commitment_cost: beta of the VQ loss.
        attention_heads: heads of the self-attention block; must divide ``channels[-1]``.
        act: activation, any MONAI name or (name, args) tuple.
        norm: normalisation of the residual, down- and upsampling blocks, any MONAI name or tuple.
        stem_stride: 2 for a strided stem and a sub-pixel head (no full-resolution feature maps), 1 for a
            full-resolution stem convolution and tail (the first level at the input resolution).
        channels_last: store the 3D convolution weights channels-last (``torch.channels_last_3d``), so that oneDNN
            (CPU) and cuDNN run their channels-last kernels whatever the input layout: a training step at 64^3 was
            about 25 % faster on CPU (docs/benchmark_training.md). The layout survives ``.to(device)`` and
            ``load_state_dict``; results are the same up to float rounding.
    """

    __jit_unused_properties__ = ["last_layer_weight", "downsample_factor"]

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64),
        num_res_blocks: Sequence[int] | int = 1,
        num_embeddings: int = 256,
        embedding_dim: int = 32,
        commitment_cost: float = 0.25,
        attention_heads: int = 1,
        act: tuple | str = ("RELU", {"inplace": True}),
        norm: tuple | str = "BATCH",
        stem_stride: int = 2,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        if not channels:
            raise ValueError("channels must name at least one level")
        if channels[-1] % attention_heads != 0:
            raise ValueError(f"attention_heads={attention_heads} must divide the last channel count {channels[-1]}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        res_blocks = ensure_tuple_rep(num_res_blocks, len(channels))
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.stem_stride = stem_stride
        self._downsample_factor = stem_stride * 2 ** (len(channels) - 1)

        def res_stage(level: int) -> list[nn.Module]:
            return [ResBlock(spatial_dims, channels[level], norm=norm, act=act) for _ in range(res_blocks[level])]

        def attention() -> nn.Module:
            return ScriptableSpatialAttentionBlock(
                spatial_dims,
                channels[-1],
                num_head_channels=channels[-1] // attention_heads,
                norm_num_groups=gcd(32, channels[-1]),  # GroupNorm needs a divisor of the channel count
                use_flash_attention=True,
            )

        if stem_stride == 1:
            stem = Convolution(spatial_dims, in_channels, channels[0], conv_only=True)
        else:
            stem = Convolution(spatial_dims, in_channels, channels[0], strides=2, act=act, norm=norm)
        encoder: list[nn.Module] = [stem]
        for level in range(len(channels)):
            encoder += res_stage(level)
            if level < len(channels) - 1:
                encoder.append(
                    Convolution(spatial_dims, channels[level], channels[level + 1], strides=2, act=act, norm=norm)
                )
        encoder += [attention(), Convolution(spatial_dims, channels[-1], embedding_dim, kernel_size=1, conv_only=True)]

        decoder: list[nn.Module] = [
            Convolution(spatial_dims, embedding_dim, channels[-1], kernel_size=1, conv_only=True),
            attention(),
        ]
        for level in reversed(range(len(channels))):
            decoder += res_stage(level)
            if level > 0:
                decoder.append(
                    Convolution(
                        spatial_dims,
                        channels[level],
                        channels[level - 1],
                        strides=2,
                        kernel_size=4,
                        padding=1,
                        output_padding=0,
                        is_transposed=True,
                        act=act,
                        norm=norm,
                    )
                )
        if stem_stride == 1:
            head: nn.Module = Convolution(spatial_dims, channels[0], out_channels, conv_only=True)
        else:
            # sub-pixel convolution: same receptive field as a kernel-4 transposed convolution, but a plain 3x3x3
            # convolution, about 2.5 times faster on CPU for one output channel; no pad-pool, which would blur
            head = SubpixelUpsample(spatial_dims, channels[0], out_channels, scale_factor=2, apply_pad_pool=False)
        decoder += [ADN(ordering="NA", in_channels=channels[0], act=act, norm=norm, norm_dim=spatial_dims), head]

        self.encoder = nn.Sequential(*encoder)
        self.quantizer = VectorQuantizer(num_embeddings, embedding_dim, commitment_cost)
        self.decoder = nn.Sequential(*decoder)
        if channels_last and spatial_dims == 3:
            self.to(memory_format=torch.channels_last_3d)

    @property
    def downsample_factor(self) -> int:
        """Spatial sizes of inputs must be multiples of this."""
        return self._downsample_factor

    @property
    def last_layer_weight(self) -> nn.Parameter:
        """Weight of the decoder's final convolution (before the pixel shuffle with ``stem_stride`` 2): G_L of the
        adaptive adversarial weight (eq. 5)."""
        head = self.decoder[-1]
        return head.conv.weight if isinstance(head, Convolution) else head.conv_block.weight

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, quantise and decode ``x`` (B, in_channels, X, Y, Z).

        Returns:
            reconstruction (B, out_channels, X, Y, Z), vq_loss (scalar), code indices (B, X/f, Y/f, Z/f) long,
            with f the downsample factor.

        Raises:
            ValueError: when a spatial size is not a multiple of the downsample factor.
        """
        _check_divisible(x, self._downsample_factor)
        z_q, vq_loss, indices = self.quantizer(self.encoder(x))
        return self.decoder(z_q), vq_loss, indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction only (B, out_channels, X, Y, Z), so MONAI inferers can call the generator directly."""
        return self.reconstruct(x)[0]


class AnomalyDetector(nn.Module):
    """Stage-1 and stage-2 generators in one module: anomaly map D = (G2(x) - G1(x))^2 (eq. 16).

    Both generators share the frozen codebook and decoder, so the module holds two encoders and one quantizer and
    decoder, and both latents go through the quantizer and decoder as one batch. One tensor in, one tensor out, so
    that it can be scripted and used with MONAI's sliding-window inferer. Use it in eval mode: in train mode batch
    normalisation would mix the two halves of the joint batch.

    Args:
        generator: a ``VQGANGenerator``; its encoder becomes ``encoder1`` and a deep copy ``encoder2``, its quantizer
            and decoder are shared (deep copies: the generator is not aliased). Load trained weights with
            ``load_state_dict`` or build from two trained generators with ``from_generators``.
        output: ``"anomaly"`` for (B, 1, X, Y, Z) maps; ``"all"`` for (B, 3, X, Y, Z) = [anomaly, G1(x), G2(x)].
        latent_disagreement: also return the latent disagreement map (:meth:`latent_disagreement_map`) as one more,
            last channel.
        mirror_axes: spatial axes (0, 1, 2 of X, Y, Z) along which the input is also mirrored; every output channel
            is then the mean of the maps of the input and of its mirror image (mirrored back), the anomaly map
            included (the mean of the two squared differences). ``()`` (default) is the paper's single pass; ``(0,)``
            after ``Orientationd("RAS")`` is the left-right mirror, a jaw's other side, which the training phantoms
            also show (mirrored shapes). An addition to the paper, at twice the compute: the two images go through
            as one batch.
    """

    # a constant tuple: TorchScript cannot infer the element type of an empty list attribute
    __constants__ = ["mirror_dims"]

    def __init__(
        self,
        generator: VQGANGenerator,
        output: str = "anomaly",
        latent_disagreement: bool = False,
        mirror_axes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if output not in ("anomaly", "all"):
            raise ValueError(f"output must be 'anomaly' or 'all', got {output!r}")
        mirror_axes = [int(axis) for axis in mirror_axes]
        if len(set(mirror_axes)) != len(mirror_axes) or any(axis not in (0, 1, 2) for axis in mirror_axes):
            raise ValueError(f"mirror_axes must be distinct spatial axes among 0, 1, 2, got {mirror_axes}")
        self.output = output
        self.latent_disagreement = latent_disagreement
        self.mirror_dims = tuple(axis + 2 for axis in mirror_axes)
        self._downsample_factor = generator.downsample_factor
        self.encoder1 = copy.deepcopy(generator.encoder)
        self.encoder2 = copy.deepcopy(generator.encoder)
        self.quantizer = copy.deepcopy(generator.quantizer)
        self.decoder = copy.deepcopy(generator.decoder)

    @classmethod
    def from_generators(
        cls, stage1: VQGANGenerator, stage2: VQGANGenerator, output: str = "anomaly", latent_disagreement: bool = False
    ) -> "AnomalyDetector":
        """Combine the stage-1 generator (G1) and the stage-2 generator (G2) into one detector (weights copied).

        Raises:
            ValueError: when the two generators' codebooks or decoders differ (stage 2 must keep them frozen,
                running statistics included), because then no single shared decoder reproduces both.
        """
        for name in ("quantizer", "decoder"):
            state1, state2 = getattr(stage1, name).state_dict(), getattr(stage2, name).state_dict()
            if state1.keys() != state2.keys() or any(not torch.equal(state1[k], state2[k]) for k in state1):
                raise ValueError(
                    f"stage-1 and stage-2 generators have different {name} weights; stage 2 must keep the {name} "
                    "frozen (eval mode for its normalisation statistics)"
                )
        detector = cls(stage1, output=output, latent_disagreement=latent_disagreement)
        detector.encoder2.load_state_dict(stage2.encoder.state_dict())
        return detector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 1, X, Y, Z) -> (B, 1, X, Y, Z) anomaly map, or (B, 3, X, Y, Z) when output == "all"; one more
        channel, the latent disagreement map, with ``latent_disagreement``.

        ``x`` must be x' (finite, in [0, 1]): a raw label map, or NaNs, raise ``ValueError`` here too, so that the
        exported TorchScript refuses what the bundle's preprocessing would have refused or transformed.
        """
        _check_divisible(x, self._downsample_factor)
        _check_intensity(x)
        if len(self.mirror_dims) == 0:
            return self._maps(x)
        batch = x.shape[0]
        maps = self._maps(torch.cat([x, torch.flip(x, self.mirror_dims)], dim=0))
        return (maps[:batch] + torch.flip(maps[batch:], self.mirror_dims)) / 2

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        """The maps of :meth:`forward` for one orientation of ``x``."""
        batch = x.shape[0]
        latents = torch.cat([self.encoder1(x), self.encoder2(x)], dim=0)
        z_q, _, indices = self.quantizer(latents)
        reconstructions = self.decoder(z_q)
        g1, g2 = reconstructions[:batch], reconstructions[batch:]
        anomaly = (g2 - g1) ** 2
        maps = [anomaly, g1, g2] if self.output == "all" else [anomaly]
        if self.latent_disagreement:
            maps.append(self._code_distance(indices[:batch], indices[batch:]))
        return torch.cat(maps, dim=1) if len(maps) > 1 else anomaly

    def _code_distance(self, indices1: torch.Tensor, indices2: torch.Tensor) -> torch.Tensor:
        """Squared distance between the codebook entries ``indices1`` and ``indices2`` (B, x, y, z) of each latent
        voxel (exactly 0 where they are the same code), repeated over the image voxels each latent voxel covers:
        (B, 1, X, Y, Z)."""
        codebook = self.quantizer.embedding.weight
        distance = ((codebook[indices2] - codebook[indices1]) ** 2).sum(dim=-1).unsqueeze(1)
        return F.interpolate(distance, scale_factor=float(self._downsample_factor), mode="nearest")

    def latent_disagreement_map(self, x: torch.Tensor) -> torch.Tensor:
        """Where the stage-1 and stage-2 encoders choose different codes (the paper's discussion), without a decoder
        pass: ``x`` (B, 1, X, Y, Z) -> (B, 1, X, Y, Z), the squared distance between the two chosen codes of the
        latent voxel each image voxel belongs to; 0 where both encoders choose the same code."""
        _check_divisible(x, self._downsample_factor)
        _check_intensity(x)
        batch = x.shape[0]
        _, _, indices = self.quantizer(torch.cat([self.encoder1(x), self.encoder2(x)], dim=0))
        return self._code_distance(indices[:batch], indices[batch:])
