"""The VQ-GAN iteration (stage 1 and stage 2) plugged into MONAI's engines, and the small helpers the training
configs call (stage-2 initialisation, output-folder check, scalar log values).

Gap it fills: MONAI's ``GanTrainer`` and ``AdversarialTrainer`` run a fixed generator/discriminator iteration with
neither a VQ loss nor the adaptive adversarial weight (eq. 5), and nothing in MONAI keeps part of a network in eval
mode while the rest trains. ``VQGANTrainer`` is a ``monai.engines.Trainer`` whose iteration is
``bundle.gan_step.gan_training_step``; everything else (data loading, handlers, checkpoints, validation, logging)
is MONAI's and is composed in ``configs/train*.json``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.inferers import SimpleInferer
from monai.utils import is_scalar
from monai.utils.enums import CommonKeys
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from bundle.gan_step import gan_training_step
from bundle.losses import adversarial_schedule
from bundle.weights import load_checkpoint

__all__ = [
    "VQGANTrainer",
    "DistributedGenerator",
    "scalar_outputs",
    "init_stage2",
    "load_checkpoint_entry",
    "check_resume_checkpoint",
    "check_output_dir",
]


class _ReconstructForward(nn.Module):
    """``generator.reconstruct`` as a module forward, so that ``DistributedDataParallel`` can run it."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.generator.reconstruct(x)


class DistributedGenerator(DistributedDataParallel):
    """``DistributedDataParallel`` for the VQ-GAN generator's training step.

    Gap it fills: DDP all-reduces gradients only for a forward made through its own ``__call__``, which runs the
    wrapped module's ``forward``; the generator's ``forward`` returns the reconstruction alone (what inferers need),
    while ``gan_training_step`` calls ``reconstruct`` (reconstruction, VQ loss, code indices) and reads
    ``last_layer_weight`` and ``quantizer``. Here DDP wraps ``reconstruct`` and those attributes are passed through;
    ``generator`` is the plain module (for checkpoints and validation, whose forward needs no gradient sync).

    Args:
        generator: a ``VQGANGenerator`` already on its device.
        kwargs: ``DistributedDataParallel`` arguments (``device_ids``, ...).
    """

    def __init__(self, generator: nn.Module, **kwargs: Any) -> None:
        super().__init__(_ReconstructForward(generator), **kwargs)

    @property
    def generator(self) -> nn.Module:
        return self.module.generator

    @property
    def last_layer_weight(self) -> nn.Parameter:
        return self.generator.last_layer_weight

    @property
    def quantizer(self) -> nn.Module:
        return self.generator.quantizer

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 1, X, Y, Z) -> reconstruction, VQ loss, code indices, with DDP's gradient synchronisation."""
        return self(x)


class VQGANTrainer(Trainer):
    """Two-optimiser VQ-GAN training engine: each iteration updates the generator (L_recon + L_vq + lambda L_adv),
    then the discriminator (BCE of real vs reconstructed), through ``bundle.gan_step.gan_training_step``.

    The batch is read with ``prepare_batch`` (MONAI default: ``batch["image"]`` is the generator input x', masked in
    stage 2, shape (B, 1, X, Y, Z) with values in [0, 1]; ``batch["label"]`` is the reconstruction target, the
    unmasked x'; when the batch has no ``"label"`` the input is its own target, as in stage 1).

    ``engine.state.output`` after each iteration holds ``image``, ``label`` and the detached scalars of the step:
    ``loss`` (= ``loss_g``), ``loss_g``, ``loss_recon``, ``loss_vq``, ``loss_adv``, ``loss_d``, ``adv_scale`` (the
    warm-up/ramp scale, ``bundle.losses.adversarial_schedule``), ``adv_weight`` (``adv_scale`` times lambda of
    eq. 5), ``perplexity`` and ``codes_used`` of the codebook; ``scalar_outputs`` picks the scalars for
    ``StatsHandler`` / ``TensorBoardStatsHandler``.

    Args:
        device: device of the networks and of the batches.
        max_epochs: number of epochs to train.
        train_data_loader: loader of training batches (dicts).
        generator: the ``VQGANGenerator`` (or a DDP wrapper of it).
        generator_optimizer: optimiser of the trainable generator parameters (only the encoder's in stage 2).
        discriminator: a ``PatchDiscriminator`` (or a DDP wrapper of it); ``None`` trains a plain VQ-VAE.
        discriminator_optimizer: optimiser of the discriminator; required when ``discriminator`` is given.
        inferer: the bundle's ``train#inferer`` property; the generator forward of the GAN step is a direct call,
            so only a ``SimpleInferer`` is accepted (anything else would be silently ignored).
        frozen_modules: modules kept in eval mode at every iteration (stage 2: the codebook and the decoder), so
            that their normalisation statistics never change although the trainer puts the generator in train mode.
        adversarial_weight_factor: the 0.8 of eq. 5.
        adversarial_delta: delta of eq. 5.
        discriminator_warmup: iterations (counted from 1) without the adversarial term in the generator loss; the
            discriminator trains meanwhile.
        adversarial_ramp: iterations after the warm-up over which the adversarial term's scale rises linearly from
            0 to 1 (0: full weight at once).
        autocast_dtype: ``None`` for float32, ``torch.bfloat16`` for mixed precision (float16 is refused).
        epoch_length: iterations per epoch, default ``len(train_data_loader)``.
        non_blocking: non-blocking host-to-device copies.
        prepare_batch: ``(batch, device, non_blocking, **kwargs) -> (inputs, targets)``.
        train_handlers: ignite / MONAI handlers to attach.
        to_kwargs: extra arguments of ``prepare_batch``'s ``Tensor.to``.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        generator: nn.Module,
        generator_optimizer: torch.optim.Optimizer,
        discriminator: nn.Module | None = None,
        discriminator_optimizer: torch.optim.Optimizer | None = None,
        inferer: Callable | None = None,
        frozen_modules: Sequence[nn.Module] | None = None,
        adversarial_weight_factor: float = 0.8,
        adversarial_delta: float = 1e-4,
        discriminator_warmup: int = 0,
        adversarial_ramp: int = 0,
        autocast_dtype: torch.dtype | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
        to_kwargs: dict | None = None,
    ) -> None:
        if discriminator is not None and discriminator_optimizer is None:
            raise ValueError("VQGANTrainer: a discriminator was given without discriminator_optimizer")
        if inferer is not None and not isinstance(inferer, SimpleInferer):
            raise ValueError(f"VQGANTrainer: the GAN step calls the generator directly; got inferer {inferer!r}")
        if discriminator_warmup < 0 or adversarial_ramp < 0:
            raise ValueError(
                f"VQGANTrainer: discriminator_warmup and adversarial_ramp must be >= 0, got {discriminator_warmup} "
                f"and {adversarial_ramp}"
            )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            handlers=train_handlers,
            decollate=False,
            to_kwargs=to_kwargs,
        )
        self.generator = generator
        self.generator_optimizer = generator_optimizer
        self.discriminator = discriminator
        self.discriminator_optimizer = discriminator_optimizer
        self.inferer = inferer
        self.frozen_modules = list(frozen_modules or [])
        self.adversarial_weight_factor = adversarial_weight_factor
        self.adversarial_delta = adversarial_delta
        self.discriminator_warmup = discriminator_warmup
        self.adversarial_ramp = adversarial_ramp
        self.autocast_dtype = autocast_dtype

    def set_train_modes(self) -> None:
        """Generator and discriminator in train mode, then the frozen modules back in eval mode."""
        self.generator.train()
        if self.discriminator is not None:
            self.discriminator.train()
        for module in self.frozen_modules:
            module.eval()

    def _iteration(self, engine: VQGANTrainer, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("VQGANTrainer: no batch data for the current iteration")
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if targets is None:
            targets = inputs
        # the engine's validation (network.eval()) and any handler may have changed modes since the last iteration
        engine.set_train_modes()
        scale = adversarial_schedule(engine.state.iteration, engine.discriminator_warmup, engine.adversarial_ramp)
        step = gan_training_step(
            engine.generator,
            engine.discriminator,
            engine.generator_optimizer,
            engine.discriminator_optimizer,
            inputs,
            targets,
            adversarial_weight_factor=engine.adversarial_weight_factor,
            adversarial_scale=scale,
            delta=engine.adversarial_delta,
            autocast_dtype=engine.autocast_dtype,
        )
        engine.state.output = {CommonKeys.IMAGE: inputs, CommonKeys.LABEL: targets, CommonKeys.LOSS: step["loss_g"]}
        engine.state.output.update(step, adv_scale=scale)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def scalar_outputs(output: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of ``engine.state.output`` (losses, lambda, perplexity, codes used) as floats, for the
    ``output_transform`` of ``StatsHandler`` and ``TensorBoardStatsHandler``; image tensors are left out."""
    return {name: float(value) for name, value in output.items() if name != CommonKeys.LOSS and is_scalar(value)}


def init_stage2(
    generator: nn.Module,
    stage1_checkpoint: str | os.PathLike,
    discriminator: nn.Module | None = None,
    output_dir: str | os.PathLike | None = None,
    map_location: torch.device | str = "cpu",
) -> list[nn.Module]:
    """Start stage 2 from stage 1: load the stage-1 generator (and discriminator, which keeps training) from a
    training checkpoint, then freeze the codebook and the decoder.

    The encoder keeps the stage-1 weights as its initialisation and stays trainable; ``quantizer`` and ``decoder``
    get ``requires_grad=False`` and eval mode (so batch-norm running statistics stay those of stage 1).

    Args:
        generator: the plain ``VQGANGenerator`` (not its DDP wrapper, which is built after this, from the frozen
            module, so that DDP only registers the parameters that train).
        stage1_checkpoint: a ``CheckpointSaver`` file of stage 1 with a ``"generator"`` entry (and a
            ``"discriminator"`` entry when ``discriminator`` is given); loaded with ``weights_only=True``.
        discriminator: the plain stage-2 discriminator, or ``None`` (VQ-VAE baseline).
        output_dir: the stage-2 output folder; must not be the stage-1 checkpoint's folder, whose files stage 2
            would otherwise overwrite.
        map_location: where to load the tensors.

    Returns:
        the frozen modules ``[quantizer, decoder]``, for ``VQGANTrainer(frozen_modules=...)``.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: the checkpoint lacks an entry or does not match the networks, or ``output_dir`` is the
            checkpoint's folder.
    """
    path = Path(stage1_checkpoint)
    if output_dir is not None and Path(output_dir).resolve() == path.parent.resolve():
        raise ValueError(f"{output_dir}: stage 2 would write into the folder of its stage-1 checkpoint {path.name}")
    load_checkpoint_entry(generator, path, "generator", map_location=map_location)
    if discriminator is not None:
        load_checkpoint_entry(discriminator, path, "discriminator", map_location=map_location)
    frozen = [generator.quantizer, generator.decoder]
    for module in frozen:
        module.requires_grad_(False)
        module.eval()
    return frozen


def load_checkpoint_entry(
    module: nn.Module, checkpoint: str | os.PathLike, key: str, map_location: torch.device | str = "cpu"
) -> nn.Module:
    """Load the ``key`` entry (``"generator"``, ``"discriminator"``) of a stage-1 training checkpoint into ``module``.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: the file is not a training checkpoint with that entry, or the entry does not fit ``module``.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: stage-1 checkpoint not found (train stage 1 first; its best model.pt is written at validation, "
            "every val_interval epochs; or set stage1_checkpoint, e.g. to checkpoint_final.pt)"
        )
    state = load_checkpoint(path, map_location=map_location)
    if not isinstance(state, dict) or key not in state:
        raise ValueError(f"{path}: no '{key}' entry; expected a stage-1 training checkpoint (CheckpointSaver)")
    try:
        module.load_state_dict(state[key])
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"{path}: '{key}' does not match the configured network: {detail}") from error
    return module


def check_resume_checkpoint(checkpoint: str | os.PathLike, entries: Iterable[str]) -> dict:
    """Load a checkpoint to resume from and check that it holds every entry the run restores.

    Ignite's ``CheckpointLoader`` reports a missing entry as "Key 'x' from ... is not found", which does not say
    that the file cannot resume this run; this names the file and the missing entries before anything is written.

    Raises:
        ValueError: the file is not a readable weights-only checkpoint, or lacks some of ``entries``.
    """
    state = load_checkpoint(checkpoint)
    missing = [entry for entry in entries if not isinstance(state, dict) or entry not in state]
    if missing:
        raise ValueError(
            f"{checkpoint}: cannot resume this run from it: no {', '.join(repr(m) for m in missing)} "
            "entry (a resume checkpoint is one this configuration's CheckpointSaver wrote, e.g. checkpoint_epoch=N.pt; "
            "to start stage 2 from a stage-1 checkpoint use --stage1_checkpoint instead)"
        )
    return state


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> Path:
    """Refuse to start a training run that would overwrite the checkpoints of another one.

    ``output_dir`` is created when missing. An existing folder that already holds ``*.pt`` files is accepted only
    when resuming from a checkpoint or with ``overwrite``. Raises ``ValueError`` naming the folder otherwise.
    """
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: output path exists and is not a folder")
    if not (overwrite or resume) and output.is_dir() and any(output.glob("*.pt")):
        raise ValueError(
            f"{output}: holds checkpoints of an earlier run; set another output_dir, resume with "
            "--resume_checkpoint <file>, or pass --overwrite true"
        )
    output.mkdir(parents=True, exist_ok=True)
    return output
