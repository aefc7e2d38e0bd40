"""Stage-2 target option: the frozen stage-1 generator's reconstruction of the unmasked input, G1(x'), instead of x'.

Gap it fills: a MONAI engine's ``prepare_batch`` turns batch keys into (input, target); none computes the target
with a frozen network. This one does, for ``VQGANTrainer(prepare_batch=...)``.

Why (an addition to the paper, ``configs/train_stage2.json#stage2_target``; ``"input"`` is the paper's x'): stage 2
freezes the codebook and the decoder, so no encoder can make the decoder reproduce the crisp label map x'. Trained
toward x', the stage-2 encoder picks codes that differ from the stage-1 encoder's wherever that trades one decoder
error for another, which is noise in the anomaly map (G2 - G1)^2 on healthy tissue; and a discriminator that is
shown x' as real tells every decoder output apart from it at once, so its adversarial gradient carries no
information (on the demo phantoms its loss stayed under 0.01 for over 99 % of stage-2 iterations:
``docs/training_runs.md``). Toward G1(x'), the optimum on unmasked healthy tissue is G2 = G1 exactly (the encoders
share the initialisation), masked tissue is restored as the decoder renders intact anatomy, and the discriminator
compares two outputs of the same decoder.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn
from monai.engines.utils import PrepareBatch, default_prepare_batch

from bundle.trainer import load_checkpoint_entry

__all__ = ["Stage1ReconstructionTarget", "stage2_prepare_batch"]

STAGE2_TARGETS = ("input", "stage1_reconstruction")


class Stage1ReconstructionTarget(PrepareBatch):
    """``prepare_batch`` for stage 2: (masked x', G1(unmasked x')).

    The batch is read as MONAI's default does: ``batch["image"]`` is the masked input, (B, 1, X, Y, Z) in [0, 1];
    ``batch["label"]`` the unmasked x' of the same crop. The target is ``generator(label)`` under ``torch.no_grad``,
    same shape, with the generator in eval mode (batch-norm running statistics of stage 1).

    Args:
        generator: a ``VQGANGenerator`` of the training configuration (a separate instance from the one that trains).
        stage1_checkpoint: the stage-1 ``CheckpointSaver`` file whose ``"generator"`` entry it gets; loaded with
            ``weights_only=True``.
        map_location: where to load the tensors; the generator follows the batch's device at the first call.

    Raises:
        FileNotFoundError / ValueError: the checkpoint is missing or does not fit the generator (the file is named).
    """

    def __init__(self, generator: nn.Module, stage1_checkpoint: str | os.PathLike, map_location: Any = "cpu") -> None:
        load_checkpoint_entry(generator, stage1_checkpoint, "generator", map_location=map_location)
        self.generator = generator.requires_grad_(False).eval()

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, unmasked = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if unmasked is None:
            raise ValueError("Stage1ReconstructionTarget: the batch has no 'label' (the unmasked x' of each crop)")
        self.generator.to(unmasked.device)
        with torch.no_grad():
            return inputs, self.generator(unmasked)


def stage2_prepare_batch(stage2_target: str, stage1_reconstruction: Stage1ReconstructionTarget | None):
    """The stage-2 trainer's ``prepare_batch`` for ``configs/train_stage2.json#stage2_target``: MONAI's default
    (target x', the paper's) for ``"input"``, ``stage1_reconstruction`` for ``"stage1_reconstruction"``.

    Raises:
        ValueError: any other value, or ``"stage1_reconstruction"`` without its component.
    """
    if stage2_target not in STAGE2_TARGETS:
        raise ValueError(f"stage2_target must be one of {STAGE2_TARGETS}, got {stage2_target!r}")
    if stage2_target == "input":
        return default_prepare_batch
    if stage1_reconstruction is None:
        raise ValueError("stage2_target 'stage1_reconstruction' needs the stage1_reconstruction_target component")
    return stage1_reconstruction
