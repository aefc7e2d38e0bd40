"""Eqs. 12-15 on hand-made arrays and the shared preprocessing chain of the configs."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose
from scipy import ndimage

from bundle.transforms import LabelToIntensityd, MaskTeeth, MaskTeethd, teeth_mask

ROOT = Path(__file__).resolve().parents[1]


def test_label_to_intensity_exact_values():
    labels = torch.tensor([[[0, 1, 2], [3, 4, 5]]], dtype=torch.int16).reshape(1, 2, 3, 1)
    out = LabelToIntensityd(keys="image")({"image": labels})["image"]
    expected = torch.tensor([0.0, 0.6, 0.7, 0.8, 0.9, 1.0]).reshape(1, 2, 3, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)


def test_teeth_mask_thresholds_teeth_and_canal_only():
    intensity = torch.tensor([0.0, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0]).reshape(1, 7, 1, 1)
    mask = teeth_mask(intensity, kernel_size=1)
    assert mask.flatten().tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_teeth_mask_equals_reference_maxpool_dilation():
    rng = np.random.default_rng(3)
    labels = rng.choice(6, size=(1, 19, 17, 15), p=[0.7, 0.1, 0.1, 0.04, 0.04, 0.02])
    intensity = np.where(labels > 0, (labels + 5) / 10, 0.0).astype(np.float32)
    # eq. 14's MaxPool3d(5, stride 1, padding 2) is a grey dilation with a 5^3 box, zeros outside the volume
    reference = ndimage.grey_dilation((intensity[0] > 0.75).astype(np.float32), size=(5, 5, 5), mode="constant")
    mask = teeth_mask(torch.from_numpy(intensity))
    assert mask.shape == intensity.shape and mask.dtype == torch.float32
    np.testing.assert_array_equal(mask[0].numpy(), reference)
    # MaskTeeth blanks exactly that mask (eq. 15), returns the input's type and leaves the input as it was
    original = intensity.copy()
    masked = MaskTeeth()(intensity)
    assert isinstance(masked, np.ndarray) and masked.shape == intensity.shape
    np.testing.assert_array_equal(masked, intensity * (1.0 - reference)[None])
    np.testing.assert_array_equal(intensity, original)
    stored = MaskTeethd(keys="image")({"image": torch.from_numpy(intensity)})
    np.testing.assert_array_equal(stored["image"].numpy(), masked)


def test_mask_teeth_keeps_the_meta_data():
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    intensity = MetaTensor(torch.full((1, 5, 5, 5), 0.7), affine=affine, meta={"filename_or_obj": "case.nii.gz"})
    intensity[0, 2, 2, 2] = 0.9
    masked = MaskTeeth(kernel_size=3)(intensity)
    assert isinstance(masked, MetaTensor) and masked.meta["filename_or_obj"] == "case.nii.gz"
    torch.testing.assert_close(masked.affine, affine.to(masked.affine.dtype))
    assert int((masked.as_tensor() == 0).sum()) == 27


def test_mask_teeth_blanks_dilated_teeth_and_keeps_the_rest():
    intensity = torch.zeros(1, 20, 20, 20)
    intensity[:, 2:18, 2:18, 2:18] = 0.7  # bone
    intensity[:, 9, 9, 9] = 0.9  # one lower-tooth voxel
    masked = MaskTeeth()(intensity)
    assert torch.all(masked[:, 7:12, 7:12, 7:12] == 0)  # the tooth and its 2-voxel margin (eq. 15)
    assert masked[0, 6, 9, 9] == pytest.approx(0.7) and masked[0, 12, 9, 9] == pytest.approx(0.7)
    assert int((masked != intensity).sum()) == 125
    batched = MaskTeethd(keys="image")({"image": intensity.unsqueeze(0)})["image"]
    torch.testing.assert_close(batched[0], masked)


def test_teeth_mask_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        teeth_mask(torch.zeros(1, 4, 4, 4), kernel_size=4)


def _preprocessing():
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    return Compose(parser.get_parsed_content("preprocessing"))


def test_preprocessing_chain_resamples_reorients_and_maps(tmp_path):
    labels = np.zeros((40, 40, 20), np.int16)
    labels[8:32, 8:32, 4:16] = 2
    labels[16:24, 16:24, 8:12] = 4
    # LPS-like axes (first two flipped) at 0.5 x 0.5 x 1.0 mm: the chain must give RAS at 2 mm
    affine = np.diag([-0.5, -0.5, 1.0, 1.0])
    path = tmp_path / "jaw.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), path)
    image = _preprocessing()({"image": str(path)})["image"]
    # 20 x 20 x 20 mm field of view -> 10 or 11 samples at 2 mm per axis, depending on edge rounding
    assert image.shape[0] == 1 and all(n in (10, 11) for n in image.shape[1:])
    np.testing.assert_allclose(np.diag(image.affine.numpy())[:3], [2.0, 2.0, 2.0])
    assert image.meta["space"] == "RAS"
    assert sorted(torch.unique(image).tolist()) == pytest.approx([0.0, 0.7, 0.9])
    # nearest-neighbour resampling keeps the volume of each structure (mm^3) within one 2 mm layer
    assert int((image == 0.9).sum()) * 8 == pytest.approx(8 * 8 * 4 * 0.25, rel=0.5)
