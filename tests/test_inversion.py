"""Slab-by-slab inversion (bundle/inversion.py) equals MONAI's resampling and Invertd voxel for voxel."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Invertd, SpatialResample

from bundle.inversion import (
    DEFAULT_SLAB_VOXELS,
    SlabwiseInvert,
    SlabwiseInvertd,
    nonzero_output_box,
    resample_slabwise,
)

ROOT = Path(__file__).resolve().parents[1]


def _rotation(angles) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _affine(rotation: np.ndarray, spacing, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


GEOMETRIES = {
    "axis-aligned, LPS flips": _affine(np.diag([-1.0, -1.0, 1.0]), (0.5, 0.5, 0.5), (20.0, 15.0, -3.0)),
    "anisotropic": _affine(np.eye(3), (0.3, 0.3, 1.0), (1.0, -2.0, 4.0)),
    "oblique": _affine(_rotation((0.2, -0.35, 0.5)), (0.45, 0.4, 0.6), (5.0, 7.0, -9.0)),
}


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("mode,padding_mode,align_corners", [("nearest", "border", False), ("bilinear", "zeros", True)])
@pytest.mark.parametrize("slab_voxels", [1, 700, DEFAULT_SLAB_VOXELS])
def test_resample_slabwise_equals_monai_spatial_resample(geometry, mode, padding_mode, align_corners, slab_voxels):
    """From a coarse 2 mm grid to a fine one: every voxel and the affine equal SpatialResample's (one call, whole grid).
    Slabs of one plane, of a few planes with a remainder, and a single slab."""
    torch.manual_seed(0)
    img = MetaTensor(torch.rand(2, 9, 8, 7) * 5, affine=torch.as_tensor(_affine(np.eye(3), (2.0, 2.0, 2.0), (0, 0, 0))))
    dst_affine = torch.as_tensor(GEOMETRIES[geometry])
    size = (31, 27, 13)
    expected = SpatialResample(mode=mode, padding_mode=padding_mode, align_corners=align_corners, dtype=torch.float32)(
        img, dst_affine=dst_affine, spatial_size=size
    )
    out = resample_slabwise(img, dst_affine, size, mode, padding_mode, align_corners, slab_voxels=slab_voxels)
    assert out.shape == expected.shape == (2, *size) and out.dtype == torch.float32
    assert torch.equal(out.as_tensor(), expected.as_tensor())
    assert torch.equal(out.affine, expected.affine)


def _sparse_regions(edge: bool) -> MetaTensor:
    """A few small regions on a 2 mm grid, as a wound map has them; ``edge``: one touches the grid's border."""
    regions = torch.zeros(1, 12, 11, 10)
    regions[0, 3:5, 4:6, 2:4] = 1
    regions[0, 7, 6:9, 5] = 2
    if edge:
        regions[0, 11, 0:2, 9] = 3
    return MetaTensor(regions, affine=torch.as_tensor(_affine(np.eye(3), (2.0, 2.0, 2.0), (0, 0, 0))))


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("edge", [False, True])
@pytest.mark.parametrize("slab_voxels", [1, 500, DEFAULT_SLAB_VOXELS])
def test_nearest_resampling_of_sparse_regions_samples_only_their_box(geometry, padding_mode, edge, slab_voxels):
    """Nearest sampling of a few regions computes only the output box that can see them, yet equals SpatialResample
    voxel for voxel, also with a region on the border (border padding then samples the whole grid)."""
    img = _sparse_regions(edge)
    dst_affine = torch.as_tensor(GEOMETRIES[geometry])
    size = (47, 45, 33)
    expected = SpatialResample(mode="nearest", padding_mode=padding_mode, dtype=torch.float32)(
        img, dst_affine=dst_affine, spatial_size=size
    )
    out = resample_slabwise(img, dst_affine, size, "nearest", padding_mode, slab_voxels=slab_voxels)
    assert torch.equal(out.as_tensor(), expected.as_tensor())
    assert {1.0, 2.0} <= set(torch.unique(expected).tolist())  # the regions are in the output's field of view


def test_output_box_is_bounded_and_tight_when_it_can_be():
    img = _sparse_regions(edge=False)
    xform = torch.diag(torch.tensor([0.25, 0.25, 0.25, 1.0]))  # output voxel o samples source coordinate o / 4
    box = nonzero_output_box(img.as_tensor(), xform, (48, 44, 40), "border")
    # regions cover source voxels 3..7, 4..8, 2..5, i.e. coordinates [2.5, 7.5], [3.5, 8.5], [1.5, 5.5]: output
    # voxels 10..30, 14..34, 6..22, plus one voxel of margin each side
    assert [(part.start, part.stop) for part in box] == [(9, 32), (13, 36), (5, 24)]
    assert nonzero_output_box(torch.zeros(1, 4, 4, 4), xform, (16, 16, 16), "border") == (slice(0, 0),) * 3
    assert nonzero_output_box(_sparse_regions(edge=True).as_tensor(), xform, (48, 44, 40), "border") is None
    assert nonzero_output_box(_sparse_regions(edge=True).as_tensor(), xform, (48, 44, 40), "zeros") is not None


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """The bundle's own preprocessing (configs/inference.json) of a tilted, anisotropic LPS label map, plus a float
    map and a region map on its 2 mm grid, as the post-processing has them before the inversion."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    preprocessing = parser.get_parsed_content("preprocessing")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=(43, 37, 19)).astype(np.int16)
    affine = np.array([[-0.6, 0.05, 0, 60], [0, -0.6, 0, 50], [0.02, 0, 0.9, -20], [0, 0, 0, 1]], float)
    path = tmp_path_factory.mktemp("inversion") / "tilted.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), path)
    data = preprocessing({"image": str(path)})
    grid = data["image"]
    data["anomaly"] = MetaTensor(torch.rand(grid.shape), affine=grid.affine)
    data["wound"] = MetaTensor(torch.randint(0, 4, grid.shape).float(), affine=grid.affine)
    return preprocessing, data, labels.shape, affine


def test_slabwise_invertd_equals_invertd_on_the_bundle_preprocessing(preprocessed):
    preprocessing, data, shape, affine = preprocessed
    keys, nearest = ["anomaly", "wound"], [False, True]
    expected = Invertd(keys, preprocessing, orig_keys="image", nearest_interp=nearest)(dict(data))
    out = SlabwiseInvertd(
        keys, preprocessing, orig_keys="image", nearest_interp=nearest, dtype=[None, "uint8"], slab_voxels=500
    )(dict(data))
    for key, dtype in zip(keys, (torch.float32, torch.uint8)):
        assert out[key].shape == expected[key].shape == (1, *shape)
        assert out[key].dtype == dtype
        assert torch.equal(out[key].as_tensor(), expected[key].as_tensor().to(dtype))
        assert torch.equal(out[key].affine, expected[key].affine)
        np.testing.assert_allclose(out[key].affine.numpy(), affine, atol=1e-5)  # the input's own frame
        assert out[key].meta["filename_or_obj"] == data["image"].meta["filename_or_obj"]
    assert data["wound"].shape[1:] == data["image"].shape[1:]  # the 2 mm inputs are left as they were


def test_array_form_inverts_one_tensor_that_carries_the_trace(preprocessed):
    preprocessing, data, shape, _ = preprocessed
    wound = data["wound"].clone()
    wound.applied_operations, wound.meta = list(data["image"].applied_operations), dict(data["image"].meta)
    for nearest in (True, False):
        out = SlabwiseInvert(preprocessing, orig_key="image", nearest_interp=nearest, dtype=torch.uint8)(wound)
        expected = SlabwiseInvertd("wound", preprocessing, orig_keys="image", dtype="uint8")(dict(data))["wound"]
        assert out.shape == (1, *shape) and torch.equal(out.as_tensor(), expected.as_tensor())
        assert len(wound.applied_operations) == 2  # the trace of the input is left as it was


def test_integer_output_refuses_values_it_cannot_hold_or_interpolation(preprocessed):
    preprocessing, data, _, _ = preprocessed
    many = dict(data, wound=data["wound"] * 100)  # labels up to 300
    with pytest.raises(ValueError, match="uint8"):
        SlabwiseInvertd("wound", preprocessing, orig_keys="image", dtype="uint8")(many)
    assert SlabwiseInvertd("wound", preprocessing, orig_keys="image", dtype="int16")(many)["wound"].max() > 255
    img = MetaTensor(torch.ones(1, 3, 3, 3))
    with pytest.raises(ValueError, match="nearest"):
        resample_slabwise(img, torch.eye(4) * 0.5, (5, 5, 5), mode="bilinear", output_dtype=torch.uint8)


def test_missing_original_key_is_an_error_unless_allowed(preprocessed):
    preprocessing, data, _, _ = preprocessed
    without = {k: v for k, v in data.items() if k != "image"}
    with pytest.raises(KeyError, match="image"):
        SlabwiseInvertd("wound", preprocessing, orig_keys="image")(without)
    kept = SlabwiseInvertd("wound", preprocessing, orig_keys="image", allow_missing_keys=True)(without)
    assert kept["wound"] is without["wound"]


def test_nothing_to_resample_goes_through_monai_and_is_cast():
    img = MetaTensor(torch.randint(0, 3, (1, 4, 5, 6)).float(), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = resample_slabwise(img, img.affine, (4, 5, 6), output_dtype=torch.uint8)
    assert out.dtype == torch.uint8 and torch.equal(out.as_tensor(), img.as_tensor().to(torch.uint8))
    assert torch.equal(out.affine, img.affine)
