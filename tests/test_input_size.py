"""Oversized inputs are refused from the header alone, before any voxel is read (bundle/input_size.py)."""

from __future__ import annotations

import gzip

import itk
import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.input_size import LimitInputSize, LimitInputSized, header_shape


def _nifti(path, shape=(20, 30, 40)):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), path)
    return path


def test_header_shape_reads_nifti_and_itk_formats(tmp_path):
    assert header_shape(_nifti(tmp_path / "a.nii.gz")) == (20, 30, 40)
    itk.imwrite(itk.image_from_array(np.zeros((4, 5, 6), np.int16)), str(tmp_path / "b.mha"))
    assert header_shape(tmp_path / "b.mha") == (6, 5, 4)  # ITK reports x, y, z
    (tmp_path / "c.txt").write_text("not an image")
    assert header_shape(tmp_path / "c.txt") is None


def test_refusal_needs_only_the_header(tmp_path):
    whole = _nifti(tmp_path / "whole.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    # the header survives, the voxels do not: loading would fail, the size check still answers
    truncated.write_bytes(gzip.compress(gzip.decompress(whole.read_bytes())[:400]))
    with pytest.raises(ValueError, match=r"truncated\.nii\.gz: 20 x 30 x 40 = 24,000 voxels, more than the 1,000"):
        LimitInputSize(max_voxels=1000)(str(truncated))


def test_inputs_within_the_limit_and_non_paths_pass_unchanged(tmp_path):
    path = str(_nifti(tmp_path / "a.nii.gz"))
    assert LimitInputSize(max_voxels=24_000)(path) == path
    array = torch.zeros(2, 2, 2)
    assert LimitInputSize(max_voxels=1)(array) is array  # an in-memory image from a host
    missing = str(tmp_path / "missing.nii.gz")
    assert LimitInputSize(max_voxels=1)(missing) == missing  # LoadImage reports a missing file


def test_dictionary_form_checks_each_key(tmp_path):
    data = {"image": str(_nifti(tmp_path / "a.nii.gz")), "other": "x"}
    assert LimitInputSized("image", max_voxels=24_000)(data) == data
    with pytest.raises(ValueError, match="a.nii.gz"):
        LimitInputSized("image", max_voxels=100)(data)
