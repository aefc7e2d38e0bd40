"""Per-case writers of bundle/outputs.py on label maps of any integer type, without full-size copies."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor, NibabelWriter
from monai.utils import convert_to_numpy

from bundle.outputs import _write_nifti, crop_to_regions, region_statistics

AFFINE = np.array([[-0.6, 0.05, 0, 60], [0, -0.6, 0, 50], [0.02, 0, 0.9, -20], [0, 0, 0, 1]], float)


def _regions() -> np.ndarray:
    regions = np.zeros((12, 10, 8), np.uint8)
    regions[1:4, 2:5, 1:3] = 1
    regions[6:11, 1:3, 4:8] = 2
    regions[7, 7, 7] = 4  # label 3 absent
    return regions


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64])
def test_region_statistics_counts_each_region_whatever_the_integer_type(dtype):
    regions = _regions().astype(dtype)
    stats = region_statistics(regions, AFFINE)
    counts = np.bincount(regions.ravel().astype(np.int64))
    assert [s["label"] for s in stats] == [1, 2, 4]
    assert [s["voxels"] for s in stats] == [counts[1], counts[2], counts[4]]
    voxel_mm3 = abs(np.linalg.det(AFFINE[:3, :3]))
    assert stats[1]["volume_mm3"] == pytest.approx(counts[2] * voxel_mm3, abs=1e-3)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_write_nifti_equals_monai_writer_with_set_metadata(dtype, tmp_path):
    """The affine handed to NibabelWriter directly gives the same file as ``set_metadata(meta, resample=False)``."""
    array = MetaTensor(torch.from_numpy(_regions().astype(dtype))[None], affine=torch.as_tensor(AFFINE))
    _write_nifti(array, tmp_path / "ours.nii.gz", np.dtype(dtype))
    writer = NibabelWriter(output_dtype=dtype)
    writer.set_data_array(convert_to_numpy(array).astype(dtype), channel_dim=0)
    writer.set_metadata(dict(array.meta), resample=False)
    writer.write(tmp_path / "monai.nii.gz")
    ours, monai = nib.load(tmp_path / "ours.nii.gz"), nib.load(tmp_path / "monai.nii.gz")
    assert ours.header.binaryblock == monai.header.binaryblock
    assert np.asarray(ours.dataobj).dtype == dtype
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(monai.dataobj))


def test_crop_to_regions_keeps_every_region_in_place():
    regions = np.zeros((20, 18, 16), np.uint8)
    regions[3:6, 10:12, 4] = 1
    regions[8, 2, 9:14] = 2
    box, box_affine = crop_to_regions(regions, AFFINE)
    assert [(part.start, part.stop) for part in box] == [(3, 9), (2, 12), (4, 14)]
    assert np.count_nonzero(regions[box]) == np.count_nonzero(regions)
    assert region_statistics(regions[box], box_affine) == region_statistics(regions, AFFINE)  # same world boxes
    empty_box, _ = crop_to_regions(np.zeros((5, 5, 5), np.uint8), AFFINE)
    assert np.zeros((5, 5, 5))[empty_box].shape == (1, 1, 1)  # never empty: scipy's find_objects needs a voxel
