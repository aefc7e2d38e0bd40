"""Post-processing steps of method.md section 6 on small hand-made volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Compose
from scipy import ndimage

from bundle.postprocessing import (
    GreyDilation,
    GreyDilationd,
    GreyErosion,
    GreyErosiond,
    GrowRegions,
    GrowRegionsd,
    LabelRegions,
    LabelRegionsd,
    MaskRegions,
    MaskRegionsd,
    RemoveSmallRegions,
    RemoveSmallRegionsd,
    RemoveSoftTissue,
    RemoveSoftTissued,
    RemoveTissueRegions,
    RemoveTissueRegionsd,
    footprint,
)

AFFINE = torch.tensor([[2.0, 0, 0, -40], [0, 2.0, 0, -30], [0, 0, 2.0, 10], [0, 0, 0, 1]], dtype=torch.float64)


def meta_volume(array: np.ndarray, dtype=torch.float32) -> MetaTensor:
    return MetaTensor(torch.as_tensor(array, dtype=dtype), affine=AFFINE, meta={"filename_or_obj": "case01.nii.gz"})


def labels_of(img) -> np.ndarray:
    return np.asarray(torch.as_tensor(img))[0]


@pytest.mark.parametrize(
    "radius, structure", [(1, "ball"), (2, "ball"), ((2, 1, 0), "ball"), (1, "cube"), ((1, 2, 1), "cube")]
)
def test_grey_morphology_matches_scipy(radius, structure):
    rng = np.random.default_rng(0)
    volume = rng.random((2, 7, 8, 9)).astype(np.float32)
    element = footprint(radius, structure).numpy()
    eroded = GreyErosion(radius, structure)(torch.from_numpy(volume))
    dilated = GreyDilation(radius, structure)(torch.from_numpy(volume))
    for channel in range(2):
        # outside voxels never win: scipy's "nearest" border gives the same minimum/maximum for these footprints
        expected_min = ndimage.grey_erosion(volume[channel], footprint=element, mode="nearest")
        expected_max = ndimage.grey_dilation(volume[channel], footprint=element, mode="nearest")
        np.testing.assert_allclose(eroded[channel].numpy(), expected_min)
        np.testing.assert_allclose(dilated[channel].numpy(), expected_max)


def test_ball_of_radius_one_is_the_six_connected_cross():
    assert torch.equal(footprint(1, "ball"), torch.as_tensor(ndimage.generate_binary_structure(3, 1)))
    assert footprint((2, 1, 1), "ball").shape == (5, 3, 3)
    with pytest.raises(ValueError, match="radius"):
        footprint(-1)


def test_erosion_removes_single_hot_voxel_and_dilation_restores_the_blob():
    anomaly = np.zeros((1, 12, 12, 12), dtype=np.float32)
    anomaly[0, 2, 2, 2] = 1.0  # isolated hot voxel
    anomaly[0, 5:10, 5:10, 4:8] = 0.3  # a true anomaly, a 5 x 5 x 4 block
    img = meta_volume(anomaly)
    data = {"anomaly": img}
    opened = Compose([GreyErosiond("anomaly", radius=1, structure="cube"), GreyDilationd("anomaly", 1, "cube")])(data)
    result = opened["anomaly"]
    assert isinstance(result, MetaTensor)
    assert torch.equal(result.affine, AFFINE) and result.meta["filename_or_obj"] == "case01.nii.gz"
    eroded = GreyErosion(1, "cube")(img)
    assert float(eroded[0, 2, 2, 2]) == 0.0  # the single voxel is gone after erosion alone
    assert float(eroded.sum()) == pytest.approx(0.3 * 3 * 3 * 2)  # the block shrinks by one voxel per side
    np.testing.assert_allclose(np.asarray(result), np.where(anomaly == 1.0, 0.0, anomaly))  # block restored exactly


def test_morphology_keeps_numpy_in_numpy_out():
    volume = np.zeros((1, 5, 5, 5), dtype=np.float32)
    volume[0, 2, 2, 2] = 1
    out = GreyDilation(1)(volume)
    assert isinstance(out, np.ndarray) and out.sum() == 7  # the cross


def test_label_regions_connectivity_and_consecutive_labels():
    mask = np.zeros((1, 8, 8, 8), dtype=np.float32)
    mask[0, 1:3, 1:3, 1:3] = 1
    mask[0, 3, 3, 3] = 1  # touches the first block only by a corner
    mask[0, 6, 6, 6] = 1
    faces = labels_of(LabelRegions(connectivity=1)(meta_volume(mask)))
    corners = labels_of(LabelRegions(connectivity=3)(meta_volume(mask)))
    assert sorted(np.unique(faces)) == [0, 1, 2, 3]
    assert sorted(np.unique(corners)) == [0, 1, 2]
    assert faces[1, 1, 1] != faces[3, 3, 3] and corners[1, 1, 1] == corners[3, 3, 3]
    out = LabelRegionsd("mask")({"mask": meta_volume(mask)})["mask"]
    assert out.dtype == torch.int32 and torch.equal(out.affine, AFFINE)


def test_label_regions_rejects_multichannel():
    with pytest.raises(ValueError, match=r"\(1, X, Y, Z\)"):
        LabelRegions()(torch.zeros(2, 4, 4, 4))


def _two_regions_on_tissue():
    """Region 1: 4 voxels, 2 on tissue (fraction 0.5). Region 2: 4 voxels, 3 on tissue (0.75). Region 3: none."""
    regions = np.zeros((1, 6, 6, 6), dtype=np.int32)
    image = np.zeros((1, 6, 6, 6), dtype=np.float32)
    regions[0, 0, 0, 0:4] = 1
    image[0, 0, 0, 0:2] = 0.7
    regions[0, 2, 0, 0:4] = 2
    image[0, 2, 0, 0:3] = 0.9
    regions[0, 4, 4, 4] = 3
    return regions, image


def test_remove_tissue_regions_at_the_fraction_boundary():
    regions, image = _two_regions_on_tissue()
    kept = labels_of(RemoveTissueRegions(0.5)(meta_volume(regions, torch.int32), image))
    assert set(np.unique(kept)) == {0, 1, 2}  # region 2 (0.75) dropped, region 3 renumbered 2
    assert (kept[0, 0, 0:4] == 1).all() and kept[4, 4, 4] == 2 and (kept[2] == 0).all()
    kept_all = labels_of(RemoveTissueRegions(0.75)(regions, image))
    assert set(np.unique(kept_all)) == {0, 1, 2, 3}
    stricter = labels_of(RemoveTissueRegions(0.49)(regions, image))
    assert set(np.unique(stricter)) == {0, 1} and stricter[4, 4, 4] == 1


def test_remove_tissue_regions_dict_reads_the_input_key():
    regions, image = _two_regions_on_tissue()
    data = {"regions": meta_volume(regions, torch.int32), "image": meta_volume(image)}
    out = RemoveTissueRegionsd("regions", image_key="image", max_tissue_fraction=0.5)(data)
    assert int(out["regions"].max()) == 2 and torch.equal(out["image"], data["image"])
    with pytest.raises(ValueError, match="same grid"):
        RemoveTissueRegions()(regions, np.zeros((1, 5, 6, 6)))


def _line_case():
    """A 1 x 9 line of candidate voxels along x inside an otherwise forbidden volume."""
    shape = (1, 9, 3, 3)
    regions = np.zeros(shape, dtype=np.int32)
    image = np.ones(shape, dtype=np.float32)  # tissue everywhere ...
    image[0, :, 1, 1] = 0.0  # ... except along the line
    reconstruction = np.zeros(shape, dtype=np.float32)
    reconstruction[0, :, 1, 1] = 0.8
    return regions, image, reconstruction


def test_grow_stops_after_steps_and_only_into_allowed_voxels():
    regions, image, reconstruction = _line_case()
    regions[0, 0, 1, 1] = 1
    reconstruction[0, 0, 1, 1] = 0.0  # the seed itself need not satisfy the condition
    grown = labels_of(GrowRegions(tissue_threshold=0.55, steps=3)(regions, image, reconstruction))
    assert grown[:, 1, 1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert grown.sum() == 4  # nothing leaked off the line, where the input has tissue
    more = labels_of(GrowRegions(steps=100)(regions, image, reconstruction))
    assert (more[:, 1, 1] == 1).all() and more.sum() == 9
    none = labels_of(GrowRegions(steps=0)(regions, image, reconstruction))
    assert none.sum() == 1


def test_grow_respects_the_reconstruction_threshold():
    regions, image, reconstruction = _line_case()
    regions[0, 0, 1, 1] = 1
    reconstruction[0, 3, 1, 1] = 0.54  # just below 0.55: G2 predicts no tissue here, growth stops
    grown = labels_of(GrowRegions(tissue_threshold=0.55, steps=8)(regions, image, reconstruction))
    assert grown[:, 1, 1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    reconstruction[0, 3, 1, 1] = 0.55  # at the threshold: allowed
    grown = labels_of(GrowRegions(tissue_threshold=0.55, steps=8)(regions, image, reconstruction))
    assert (grown[:, 1, 1] == 1).all()


def test_grow_competition_goes_to_the_lower_label():
    regions, image, reconstruction = _line_case()
    regions[0, 0, 1, 1] = 2
    regions[0, 6, 1, 1] = 1
    grown = GrowRegionsd("regions", "image", "g2", steps=3)(
        {"regions": meta_volume(regions, torch.int32), "image": image, "g2": reconstruction}
    )["regions"]
    # step 3 reaches x=3 from both sides: label 1 wins; x=7, 8 belong to label 1 from steps 1-2
    assert labels_of(grown)[:, 1, 1].tolist() == [2, 2, 2, 1, 1, 1, 1, 1, 1]
    assert isinstance(grown, MetaTensor) and torch.equal(grown.affine, AFFINE)


def test_soft_tissue_voxels_removed_and_empty_regions_dropped():
    regions = np.zeros((1, 4, 4, 4), dtype=np.int32)
    cbct = np.full((1, 4, 4, 4), -1000.0, dtype=np.float32)
    regions[0, 0, 0, 0:3] = 1
    cbct[0, 0, 0, 0:3] = [-1000.0, 0.0, 1200.0]  # air kept, soft tissue removed, bone kept
    regions[0, 2, 2, 0:2] = 2
    cbct[0, 2, 2, 0:2] = [-500.0, 400.0]  # window bounds are inclusive: the whole region goes
    regions[0, 3, 3, 3] = 3
    out = labels_of(RemoveSoftTissue(window=(-500, 400))(regions, cbct))
    assert out[0, 0, :3].tolist() == [1, 0, 1]
    assert (out[2, 2] == 0).all() and out[3, 3, 3] == 2  # region 3 renumbered after region 2 vanished


def test_soft_tissue_dict_is_a_no_op_without_cbct():
    regions = meta_volume(np.ones((1, 2, 2, 2)), torch.int32)
    skip = RemoveSoftTissued("regions", cbct_key="cbct", allow_missing_keys=True)
    assert torch.equal(skip({"regions": regions})["regions"], regions)
    with pytest.raises(KeyError, match="cbct"):
        RemoveSoftTissued("regions", cbct_key="cbct")({"regions": regions})
    removed = skip({"regions": regions, "cbct": np.zeros((1, 2, 2, 2), dtype=np.float32)})["regions"]
    assert int(removed.sum()) == 0
    with pytest.raises(ValueError, match="low <= high"):
        RemoveSoftTissue(window=(400, -500))


def test_mask_regions_clips_drops_emptied_regions_and_renumbers():
    regions = np.zeros((1, 6, 6, 6), dtype=np.int32)
    regions[0, 0, 0, 0:4] = 1  # half inside the mask
    regions[0, 5, 5, 5] = 2  # outside: dropped
    regions[0, 3, 3, 0:2] = 3  # inside: renumbered 2
    mask = np.zeros((1, 6, 6, 6), dtype=bool)
    mask[0, :4, :4, :2] = True
    out = MaskRegionsd("regions", mask_key="search_region")(
        {"regions": meta_volume(regions, torch.int32), "search_region": mask}
    )["regions"]
    clipped = labels_of(out)
    assert clipped[0, 0].tolist() == [1, 1, 0, 0, 0, 0] and (clipped[3, 3, :2] == 2).all()
    assert set(np.unique(clipped)) == {0, 1, 2}
    assert isinstance(out, MetaTensor) and out.dtype == torch.int32 and torch.equal(out.affine, AFFINE)
    assert np.array_equal(labels_of(MaskRegions()(regions, np.ones((1, 6, 6, 6), np.float32))), regions[0])
    with pytest.raises(ValueError, match="same grid"):
        MaskRegions()(regions, mask[:, :5])


def test_remove_small_regions_in_voxels_and_mm3():
    regions = np.zeros((1, 6, 6, 6), dtype=np.int32)
    regions[0, 0, 0, 0] = 1  # 1 voxel
    regions[0, 2, 0, 0:3] = 2  # 3 voxels
    regions[0, 4:6, 4:6, 4:6] = 3  # 8 voxels
    by_voxels = labels_of(RemoveSmallRegions(min_size=3, unit="voxel")(regions))
    assert by_voxels[0, 0, 0] == 0 and (by_voxels[2, 0, :3] == 1).all() and (by_voxels[4:, 4:, 4:] == 2).all()
    # 2 mm voxels (from the MetaTensor's affine): 8 mm^3 each; 24 mm^3 keeps the 3- and 8-voxel regions
    by_volume = RemoveSmallRegionsd("regions", min_size=24, unit="mm3")({"regions": meta_volume(regions, torch.int32)})
    assert np.array_equal(labels_of(by_volume["regions"]), by_voxels)
    assert labels_of(RemoveSmallRegions(min_size=25, unit="mm3", spacing=2.0)(regions)).max() == 1
    with pytest.raises(ValueError, match="spacing"):
        RemoveSmallRegions(min_size=8, unit="mm3")(regions)


def test_full_chain_keeps_one_grown_wound_and_the_meta_data():
    shape = (1, 16, 16, 16)
    image = np.zeros(shape, dtype=np.float32)
    image[0, :, :, :8] = 0.7  # bone in the lower half
    reconstruction = image.copy()
    reconstruction[0, 4:12, 4:12, 8:11] = 0.7  # G2 restores bone over a defect in the upper half
    anomaly = np.zeros(shape, dtype=np.float32)
    anomaly[0, 6:10, 6:10, 8:11] = 0.5  # difference over the defect
    anomaly[0, 2:6, 10:14, 2:6] = 0.5  # difference on present bone: not a wound
    anomaly[0, 13, 2, 13] = 0.9  # a lone hot voxel
    data = {
        "anomaly": meta_volume(anomaly),
        "image": meta_volume(image),
        "g2": meta_volume(reconstruction),
    }
    chain = Compose(
        [
            GreyErosiond("anomaly", radius=1, structure="cube"),
            GreyDilationd("anomaly", radius=1, structure="cube"),
            AsDiscreted("anomaly", threshold=0.1),
            LabelRegionsd("anomaly"),
            RemoveTissueRegionsd("anomaly", image_key="image"),
            GrowRegionsd("anomaly", image_key="image", reconstruction_key="g2", steps=10),
            RemoveSoftTissued("anomaly", cbct_key="cbct", allow_missing_keys=True),
            RemoveSmallRegionsd("anomaly", min_size=2, unit="voxel"),
        ]
    )
    out = chain(data)["anomaly"]
    regions = labels_of(out)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, AFFINE) and out.dtype == torch.int32
    assert set(np.unique(regions)) == {0, 1}
    expected = np.zeros(shape[1:], dtype=bool)
    expected[4:12, 4:12, 8:11] = True  # grown to fill the whole defect where G2 predicts bone
    assert np.array_equal(regions == 1, expected)
