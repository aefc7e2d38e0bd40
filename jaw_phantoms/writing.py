"""Writing phantoms: NIfTI files whose bytes depend only on the data."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

_GZIP_LEVEL = 6


def write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI-1 ``.nii.gz`` whose bytes depend only on the data (gzip header without time stamp or name)."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    Path(path).write_bytes(gzip.compress(image.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0))
