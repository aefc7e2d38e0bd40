"""ValidateLabels / ValidateLabelsd on hand-made arrays: each error message, and the ToothFairy2 remap preset."""

import re
import struct

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.transforms import LoadImageWithFileErrorsd, ValidateLabels, ValidateLabelsd, check_nifti_geometry

SOURCE = "/data/case_007.nii.gz"


def labelled(array: np.ndarray) -> MetaTensor:
    """A MetaTensor as LoadImage returns it: the validator names this source file in its errors."""
    return MetaTensor(torch.as_tensor(array), meta={"filename_or_obj": SOURCE})


def jaw(shape=(6, 5, 4), dtype=np.int16) -> np.ndarray:
    labels = np.zeros(shape, dtype)
    labels[1:5, 1:4, 1:3] = 2
    labels[2, 2, 2] = 4
    labels[3, 2, 1] = 5
    return labels


@pytest.mark.parametrize(
    "array, message",
    [
        (np.ones((6, 5), np.int16), r"expected a 3D label map, got an image of shape \(6, 5\)"),
        (np.ones((6, 5, 4, 2), np.int16), r"expected a 3D label map, got an image of shape \(6, 5, 4, 2\)"),
        (jaw(dtype=np.float32) + np.float32(0.5), r"label map has non-integer values"),
        (np.where(jaw() == 2, 7, jaw()).astype(np.int16), r"labels \[7\] are outside 0\.\.5"),
        (np.zeros((6, 5, 4), np.uint8), r"label map is empty \(all voxels are 0\)"),
        (np.where(jaw() == 2, -1, 0).astype(np.int16), r"label map has negative labels \(minimum -1\)"),
    ],
    ids=["2d", "4d", "non-integer", "out-of-range", "all-zero", "negative"],
)
def test_each_invalid_label_map_is_rejected_with_file_and_reason(array, message):
    with pytest.raises(ValueError, match=re.escape(SOURCE) + ": " + message):
        ValidateLabels()(labelled(array))
    with pytest.raises(ValueError, match=message):
        ValidateLabelsd(keys="image")({"image": labelled(array)})


def test_out_of_range_message_lists_offending_labels_and_suggests_a_preset():
    labels = jaw()
    labels[0, 0, 0], labels[0, 0, 1] = 11, 31
    with pytest.raises(ValueError, match=r"labels \[11, 31\] are outside 0\.\.5.*remap preset"):
        ValidateLabels()(labelled(labels))


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int64, np.float32])
def test_valid_dentalsegmentator_map_passes_unchanged(dtype):
    labels = jaw(dtype=dtype)
    for preset in (None, "dentalsegmentator"):
        out = ValidateLabels(preset)(labelled(labels))
        np.testing.assert_array_equal(np.asarray(out), labels)
        assert out.dtype == torch.as_tensor(labels).dtype
    assert ValidateLabelsd(keys="image")({"image": labelled(labels)})["image"].shape == labels.shape


def test_toothfairy2_preset_maps_every_label_of_the_convention():
    toothfairy2 = np.arange(0, 60, dtype=np.int16).reshape(3, 4, 5)  # every label 0..59 once
    expected = np.zeros(60, np.int16)
    expected[1], expected[2], expected[3], expected[4] = 2, 1, 5, 5  # lower jaw, upper jaw, both canals
    expected[11:29] = 3  # FDI 11..28: upper teeth
    expected[31:49] = 4  # FDI 31..48: lower teeth; sinuses, pharynx, restorations, 29, 30 and 49.. stay 0
    out = ValidateLabels("toothfairy2")(labelled(toothfairy2))
    np.testing.assert_array_equal(np.asarray(out).ravel(), expected)
    assert out.shape == toothfairy2.shape and out.dtype == torch.int16
    dict_out = ValidateLabelsd(keys="image", remap_preset="toothfairy2")({"image": labelled(toothfairy2)})["image"]
    np.testing.assert_array_equal(np.asarray(dict_out), np.asarray(out))


@pytest.mark.parametrize(
    "source, target",
    [(1, 2), (2, 1), (3, 5), (4, 5), (11, 3), (18, 3), (21, 3), (28, 3), (31, 4), (38, 4), (41, 4), (48, 4)]
    + [(label, 0) for label in (5, 9, 10, 29, 30, 49, 50, 53, 255)],
)
def test_toothfairy2_single_label(source, target):
    labels = np.zeros((3, 3, 3), np.int16)
    labels[1, 1, 1] = source
    labels[0, 0, 0] = 1  # keeps a jaw label present when ``source`` maps to 0
    out = np.asarray(ValidateLabels("toothfairy2")(labelled(labels)))
    assert out[1, 1, 1] == target
    assert out[0, 0, 0] == 2


def test_toothfairy2_rejects_a_map_with_no_jaw_label_and_labels_beyond_the_table():
    only_pulp = np.where(jaw() > 0, 50, 0).astype(np.int16)  # pulp and other structures map to 0
    with pytest.raises(ValueError, match=re.escape(SOURCE) + r": no 'toothfairy2' label of the jaw is present"):
        ValidateLabels("toothfairy2")(labelled(only_pulp))
    too_high = jaw()
    too_high[0, 0, 0] = 300
    with pytest.raises(ValueError, match=r"label 300 exceeds the 'toothfairy2' preset's range"):
        ValidateLabels("toothfairy2")(labelled(too_high))


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="toothfairy3"):
        ValidateLabels("toothfairy3")


def _with_affine(affine: np.ndarray) -> MetaTensor:
    return MetaTensor(torch.as_tensor(jaw()), affine=torch.as_tensor(affine), meta={"filename_or_obj": SOURCE})


SINGULAR = np.eye(4)
SINGULAR[:3, 1] = SINGULAR[:3, 0]


@pytest.mark.parametrize(
    "affine",
    [np.diag([0.0, 0.0, 0.0, 1.0]), np.diag([100.0, 100.0, 100.0, 1.0]), np.diag([0.4, np.nan, 0.4, 1.0]), SINGULAR],
    ids=["zero-spacing", "100mm", "nan", "singular"],
)
def test_invalid_geometry_is_rejected_with_file_and_reason(affine):
    with pytest.raises(ValueError, match=re.escape(SOURCE) + ": .*(voxel size|non-finite)"):
        ValidateLabels()(_with_affine(affine))


def test_oblique_anisotropic_geometry_is_accepted():
    angle = 0.3
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine[:3, :3] = affine[:3, :3] @ np.diag([0.3, 0.3, 1.0])
    np.testing.assert_array_equal(np.asarray(ValidateLabels()(_with_affine(affine))), jaw())


def test_nifti_header_with_zero_spacing_and_no_qform_or_sform_is_refused(tmp_path):
    import nibabel as nib
    from monai.transforms import LoadImage

    image = nib.Nifti1Image(jaw(), None)
    image.header.set_zooms((0.0, 0.0, 0.0))
    image.header.set_qform(None, code=0)
    image.header.set_sform(None, code=0)
    path = tmp_path / "zero_spacing.nii.gz"
    nib.save(image, path)
    loaded = LoadImage(image_only=True, dtype=None)(str(path))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": the NIfTI header has neither a qform nor an sform"):
        ValidateLabels()(loaded)


def _stored_header(tmp_path, qform_code: int, sform_code: int, pixdim=(0.5, 0.5, 0.5), srow=None):
    """An uncompressed NIfTI-1 with these header fields written into its bytes (nibabel would repair them)."""
    path = tmp_path / "labels.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.diag([0.5, 0.5, 0.5, 1.0])), path)
    header = bytearray(path.read_bytes())
    struct.pack_into("<3f", header, 80, *pixdim)
    struct.pack_into("<hh", header, 252, qform_code, sform_code)
    if srow is not None:
        struct.pack_into("<12f", header, 280, *np.ravel(srow))
    path.write_bytes(bytes(header))
    return path


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"qform_code": 0, "sform_code": 1, "srow": [[0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 0, 0]]}, "singular"),
        ({"qform_code": 0, "sform_code": 1, "srow": [[np.nan, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 0.5, 0]]}, "finite"),
        ({"qform_code": 1, "sform_code": 0, "pixdim": (-0.5, 0.5, 0.5)}, "positive"),
        ({"qform_code": 1, "sform_code": 0, "pixdim": (0.5, 0.0, 0.5)}, "positive"),
    ],
)
def test_nifti_geometry_that_monai_would_repair_silently_is_refused(tmp_path, fields, message):
    path = _stored_header(tmp_path, **fields)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: .*{message}"):
        check_nifti_geometry(path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        LoadImageWithFileErrorsd("image", image_only=True)({"image": str(path)})


def test_valid_nifti_geometry_passes(tmp_path):
    check_nifti_geometry(_stored_header(tmp_path, qform_code=1, sform_code=0))
    check_nifti_geometry(_stored_header(tmp_path, 0, 1, srow=[[0, 0.5, 0, 3], [-0.5, 0, 0, 1], [0, 0, 0.4, 2]]))
