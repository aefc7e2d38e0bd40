"""Refuse an input file that is too large for memory, from its header alone, before any voxel is read.

Gap filled: MONAI's ``LoadImage`` reads the whole array before anything can look at it, so an oversized scan (a
whole-head map at 0.1 mm, a mistaken file) exhausts memory instead of failing. :class:`LimitInputSize` reads only the
header (nibabel for NIfTI, whose ``load`` is lazy; ITK's ``ImageIO.ReadImageInformation`` for NRRD, MHA and the
rest) and refuses more than ``max_voxels``. Placed before ``LoadImaged``. Anything that is not a path (an array from
a host such as MONAI Deploy), or a file whose header cannot be read (``LoadImaged`` then reports the problem), passes
through unchanged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import itk
import nibabel as nib
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

# twice the paper's 600 x 600 x 416 CBCT; docs/memory.md gives the measured peak memory behind it
DEFAULT_MAX_VOXELS = 300_000_000


def header_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """Image dimensions from the file header, or None when the header cannot be read."""
    name = str(path).lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            return tuple(int(size) for size in nib.load(path).shape)
        image_io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
        if image_io is None:
            return None
        image_io.SetFileName(str(path))
        image_io.ReadImageInformation()
        return tuple(int(image_io.GetDimensions(axis)) for axis in range(image_io.GetNumberOfDimensions()))
    except Exception:  # noqa: BLE001 - an unreadable header is LoadImage's to report, with its own message
        return None


class LimitInputSize(Transform):
    """Raise ``ValueError`` naming the file when its header declares more than ``max_voxels`` voxels.

    Args:
        max_voxels: the largest accepted number of voxels (product of the header's dimensions, all of them).
    """

    def __init__(self, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
        self.max_voxels = int(max_voxels)

    def __call__(self, data: Any) -> Any:
        if not isinstance(data, (str, os.PathLike)) or not Path(data).is_file():
            return data
        shape = header_shape(data)
        if shape is not None and math.prod(shape) > self.max_voxels:
            raise ValueError(
                f"{data}: {' x '.join(map(str, shape))} = {math.prod(shape):,} voxels, more than the "
                f"{self.max_voxels:,} this bundle accepts (max_input_voxels); crop or resample the label map first"
            )
        return data


class LimitInputSized(MapTransform):
    """Dictionary form of :class:`LimitInputSize`."""

    def __init__(
        self, keys: KeysCollection, max_voxels: int = DEFAULT_MAX_VOXELS, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.limit = LimitInputSize(max_voxels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.limit(d[key])
        return d
