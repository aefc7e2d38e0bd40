"""A cosine decay of the learning rate over the last part of training, read from the trainer's iteration.

Gap it fills: torch's schedulers (and MONAI's ``LrScheduleHandler`` that steps them, or ``WarmupCosineSchedule``)
count their own steps, so their state must be checkpointed beside the optimizer. A run resumed from a checkpoint
written without a scheduler (any checkpoint of a constant-rate run) could not load it, and a run extended on resume
(a larger ``max_epochs``) would keep the old horizon. This handler keeps no state: the rate is a
function of the trainer's iteration and of the run's total, the clock the adversarial schedule already uses
(``bundle.losses.adversarial_schedule``), so any checkpoint resumes onto the same curve.

Why a decay at all: with the paper's constant rate, stage 2's restoration of removed tissue changes markedly from
one checkpoint to the next (docs/demo_weights.md, "Stage 2 of version 0.9.0"); a rate that falls towards the end lets
the encoder settle.
"""

from __future__ import annotations

import math

from ignite.engine import Engine, Events
from torch.optim import Optimizer


def cosine_decay_factor(iteration: int, decay_start: int, total_iterations: int, final_factor: float) -> float:
    """The learning-rate factor at ``iteration`` (counted from 1): 1 up to ``decay_start``, then half a cosine down to
    ``final_factor`` at ``total_iterations`` (and ``final_factor`` after it)."""
    if iteration <= decay_start:
        return 1.0
    progress = min(1.0, (iteration - decay_start) / max(1, total_iterations - decay_start))
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class CosineLrDecayHandler:
    """Set every parameter group's learning rate of ``optimizer`` to ``base_lr * cosine_decay_factor(...)`` before each
    iteration.

    Args:
        optimizer: the optimizer whose rate decays (the bundle's configs pass the generator's only: the discriminator
            keeps its rate so that it still tells the settling generator's outputs from the targets).
        base_lr: the undecayed rate. Taken from the config, not from the optimizer: a checkpoint written during the
            decay restores the decayed rate into the optimizer.
        total_iterations: the run's last iteration.
        decay_fraction: the share of the run, at its end, over which the rate decays, in [0, 1]; 0 keeps it constant
            (the paper).
        final_factor: the rate at the last iteration, as a fraction of ``base_lr``, in [0, 1].
    """

    def __init__(
        self,
        optimizer: Optimizer,
        base_lr: float,
        total_iterations: int,
        decay_fraction: float = 0.0,
        final_factor: float = 0.01,
    ) -> None:
        if not 0.0 <= decay_fraction <= 1.0:
            raise ValueError(f"CosineLrDecayHandler: decay_fraction must be in [0, 1], got {decay_fraction}")
        if not 0.0 <= final_factor <= 1.0:
            raise ValueError(f"CosineLrDecayHandler: final_factor must be in [0, 1], got {final_factor}")
        if base_lr <= 0 or total_iterations < 1:
            raise ValueError(
                f"CosineLrDecayHandler: base_lr must be > 0 and total_iterations >= 1, got {base_lr} and "
                f"{total_iterations}"
            )
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.total_iterations = total_iterations
        self.decay_start = total_iterations - round(decay_fraction * total_iterations)
        self.final_factor = final_factor

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        factor = cosine_decay_factor(engine.state.iteration, self.decay_start, self.total_iterations, self.final_factor)
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * factor
