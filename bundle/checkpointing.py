"""Training checkpoints that survive a kill and resume bit for bit.

Gaps filled:

- MONAI's ``CheckpointSaver`` writes each file in place (``DiskSaver(atomic=False)``, for a file-permission reason
  ignite has since fixed: its atomic mode now adds group/other read permission). A kill during ``torch.save`` then
  leaves a truncated latest checkpoint. :class:`AtomicCheckpointSaver` is MONAI's handler with ignite's atomic
  writing switched on: temporary file in the same folder, then ``os.replace``.
- A checkpoint of networks, optimizers and the engine does not hold the random number generators, so a resumed run
  draws other crops, masks and batches than the run it continues. :class:`RandomStates` is a checkpointable object
  (``state_dict`` / ``load_state_dict``, as ``CheckpointSaver`` and ``CheckpointLoader`` expect) holding the states of
  torch (CPU and CUDA), NumPy's and Python's global generators and the ``R`` generator of every MONAI ``Randomizable``
  transform of the training pipeline. Worker processes need no state of their own: MONAI's ``DataLoader`` seeds them
  from the main torch generator at the start of each epoch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.handlers import CheckpointSaver
from monai.transforms import Compose, Randomizable


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are replaced atomically, never left half-written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True  # ignite's DiskSaver option, fixed at construction by MONAI


def _randomizable_transforms(transforms: Compose | Sequence | None) -> list[Randomizable]:
    """Every ``Randomizable`` reachable from ``transforms``, depth first and each once: nested ``Compose``/``OneOf``
    and the array transforms a dictionary transform draws with (``RandSpatialCropd`` crops with the ``R`` of its
    inner ``RandSpatialCrop``, not its own)."""
    found: list[Randomizable] = []
    seen: set[int] = set()

    def visit(item: Any) -> None:
        if isinstance(item, (list, tuple)):
            for element in item:
                visit(element)
        elif isinstance(item, Randomizable) and id(item) not in seen:
            seen.add(id(item))
            found.append(item)
            for attribute in vars(item).values():
                if isinstance(attribute, (Randomizable, list, tuple)):
                    visit(attribute)

    visit(transforms.transforms if isinstance(transforms, Compose) else list(transforms or []))
    return found


def _numpy_state(state: tuple) -> dict[str, Any]:
    """A NumPy ``RandomState`` state as tensors and plain numbers (``torch.load(weights_only=True)`` reads those)."""
    name, keys, position, has_gauss, cached_gaussian = state
    if name != "MT19937":
        raise ValueError(f"unsupported NumPy generator {name}")
    keys = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    return {"keys": keys, "position": int(position), "has_gauss": int(has_gauss), "cached": float(cached_gaussian)}


def _numpy_tuple(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return "MT19937", keys, state["position"], state["has_gauss"], state["cached"]


class RandomStates:
    """The random generators of a training run, as a checkpointable object.

    Args:
        transforms: the training pipeline (a ``Compose`` or a list of transforms); the ``R`` generator of every
            ``Randomizable`` in it (nested ones included) is saved and restored, in pipeline order.
    """

    def __init__(self, transforms: Compose | Sequence | None = None) -> None:
        self.transforms = transforms

    def state_dict(self) -> dict[str, Any]:
        return {
            "torch": torch.get_rng_state(),
            "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(np.random.get_state()),
            "python": random.getstate(),
            "transforms": [_numpy_state(t.R.get_state()) for t in _randomizable_transforms(self.transforms)],
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        transforms = _randomizable_transforms(self.transforms)
        if len(state["transforms"]) != len(transforms):
            raise ValueError(
                f"the checkpoint holds the states of {len(state['transforms'])} random transforms, the training "
                f"pipeline has {len(transforms)}: it is not the pipeline the checkpoint was saved with"
            )
        torch.set_rng_state(state["torch"])
        if state["torch_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["torch_cuda"])
        np.random.set_state(_numpy_tuple(state["numpy"]))
        random.setstate(state["python"])
        for transform, transform_state in zip(transforms, state["transforms"]):
            transform.R.set_state(_numpy_tuple(transform_state))
