"""Run a post-processing step one way for cases that have an optional input and another way for cases without it.

Gap filled: MONAI's ``Compose`` applies one chain to every case, and its branching transforms (``OneOf``,
``SomeOf``, ``RandomOrder``) choose at random. ``allow_missing_keys`` can skip a step for a case that lacks a key,
but cannot run that step with other settings. The bundle needs the second: without the raw CBCT the soft-tissue
step (:class:`bundle.postprocessing.RemoveSoftTissued`) cannot trim wound voxels that lie in soft tissue, so a case
given only its label map uses its own threshold and smallest region, tuned without the CBCT (docs/demo_weights.md).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from monai.transforms import Transform


class IfKeyPresentd(Transform):
    """Apply ``present`` to a data dictionary that holds ``key``, otherwise ``absent``.

    Args:
        key: the optional input whose presence decides (e.g. ``"cbct"``).
        present: transform (any callable on the dictionary, e.g. a MONAI dictionary transform or ``Compose``) for
            cases with ``key``.
        absent: transform for cases without it; ``None`` passes those cases through unchanged.

    Input and output: the data dictionary, as the chosen transform returns it.
    """

    def __init__(
        self,
        key: Hashable,
        present: Callable[[Mapping[Hashable, Any]], Any],
        absent: Callable[[Mapping[Hashable, Any]], Any] | None = None,
    ) -> None:
        self.key, self.present, self.absent = key, present, absent

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:
        if self.key in data:
            return self.present(data)
        return data if self.absent is None else self.absent(data)
