"""Anatomical search region (method.md section 9): the mask itself, and the inference config's 2 mm post-processing
(``segmentation_steps``) with it on, off, and built from the input alone."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, MaskIntensityd

from bundle.postprocessing import MaskRegionsd
from bundle.scoring import subject_score
from bundle.search_region import JawSearchRegion, JawSearchRegiond

ROOT = Path(__file__).resolve().parents[1]
AFFINE_2MM = torch.tensor([[-2.0, 0, 0, 40], [0, 2.0, 0, -30], [0, 0, 2.0, 10], [0, 0, 0, 1]], dtype=torch.float64)


def test_region_is_exactly_the_voxels_within_r_mm_of_jaw_tissue_with_anisotropic_spacing():
    spacing = np.array([1.0, 2.0, 3.0])
    affine = np.diag([-1.0, 2.0, 3.0, 1.0])  # a flipped first axis: the spacing is the column norm
    image = np.zeros((1, 14, 10, 8), dtype=np.float32)
    image[0, 3, 2, 2] = 0.7  # mandible
    image[0, 9, 6, 5] = 1.0  # canal
    image[0, 4, 7, 6] = 0.8  # upper teeth
    image[0, 12, 1, 0] = 0.6  # upper skull: not jaw tissue
    image[0, 0:2, 8:10, 6:8] = 0.6
    radius = 4.0
    region = JawSearchRegion(radius_mm=radius)(MetaTensor(torch.from_numpy(image), affine=torch.from_numpy(affine)))
    assert isinstance(region, MetaTensor) and region.dtype == torch.bool and region.shape == (1, 14, 10, 8)
    assert np.allclose(region.affine, affine)

    grid = np.stack(np.meshgrid(*(np.arange(n) for n in image.shape[1:]), indexing="ij"), axis=-1) * spacing
    jaw_mm = np.argwhere(image[0] >= 0.65) * spacing
    distance = np.linalg.norm(grid[..., None, :] - jaw_mm, axis=-1).min(axis=-1)
    expected = distance <= radius  # inclusive: the voxel 4 x-steps (4 mm) or 2 y-steps (4 mm) away is inside
    assert np.array_equal(region[0].numpy(), expected)
    assert region[0, 7, 2, 2] and region[0, 3, 4, 2] and not region[0, 3, 2, 4]  # 4 mm, 4 mm and 6 mm away
    assert not region[0, 12, 1, 0] and not region[0, 0, 9, 7]  # skull far from the jaw stays out
    # an explicit spacing replaces the affine, and numpy in gives numpy out
    from_array = JawSearchRegion(radius_mm=radius, spacing=spacing.tolist())(image)
    assert isinstance(from_array, np.ndarray) and np.array_equal(from_array[0], expected)
    assert JawSearchRegion(radius_mm=0.0, spacing=1.0)(image)[0].sum() == 3  # R = 0: the jaw voxels themselves


def test_region_off_jaw_free_input_and_bad_arguments():
    image = np.zeros((1, 4, 4, 4), dtype=np.float32)
    image[0, 0, 0, 0] = 0.6  # skull only
    assert JawSearchRegion(radius_mm=None)(image).all()  # off: every voxel counts (the paper)
    with pytest.warns(UserWarning, match="no jaw tissue"):
        assert not JawSearchRegion(radius_mm=10.0, spacing=2.0)(image).any()
    for bad in (-1.0, float("nan"), "null", True):
        with pytest.raises(ValueError, match="radius_mm"):
            JawSearchRegion(radius_mm=bad)
    with pytest.raises(ValueError, match="spacing"):
        JawSearchRegion()(torch.from_numpy(image) + 0.7)  # mm need a spacing: a plain tensor has no affine
    with pytest.raises(ValueError, match="one grid"):
        JawSearchRegiond("image", "g2")({"image": image, "g2": np.zeros((1, 4, 4, 5), np.float32)})


def test_g2_restored_tissue_counts_where_the_input_is_empty_and_it_joins_the_jaw():
    image = np.zeros((1, 40, 4, 4), dtype=np.float32)
    reconstruction = np.zeros_like(image)
    image[0, 0] = 0.9  # lower teeth
    reconstruction[0, 1:12] = 0.6  # G2 restores tissue in empty voxels next to the teeth: jaw, whatever its value
    reconstruction[0, 25] = 0.7  # restored, but cut off from the jaw (a gap in the cranial vault): not jaw
    image[0, 39] = 0.6
    reconstruction[0, 39] = 0.9  # G2 overshoots on skull present in the input: the input's label wins
    data = {"image": MetaTensor(torch.from_numpy(image), affine=AFFINE_2MM), "g2": torch.from_numpy(reconstruction)}
    out = JawSearchRegiond("image", reconstruction_key="g2", name="region", radius_mm=10.0)(data)
    assert out["region"][0, :, 0, 0].tolist() == [True] * 17 + [False] * 23  # jaw x 0..11, then 5 voxels of 2 mm
    assert torch.equal(out["region"].affine, AFFINE_2MM) and out["image"] is data["image"]
    assert out["region"].dtype == torch.bool and out["region"].shape == (1, 40, 4, 4)
    reconstruction[0, 6] = 0.54  # below the threshold: the restored run beyond x = 5 no longer joins the jaw
    assert JawSearchRegiond("image", "g2", radius_mm=10.0)(data)["search_region"][0, :, 0, 0].sum() == 6 + 5
    only_input = JawSearchRegiond("image", reconstruction_key=None, radius_mm=10.0)(data)["search_region"]
    assert only_input[0, :, 0, 0].tolist() == [True] * 6 + [False] * 34


@pytest.fixture
def config() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser["bundle_root"] = str(ROOT)
    return parser


def segment(config: ConfigParser, case: dict, **overrides) -> dict:
    """The config's 2 mm post-processing on one case (``pred`` = [anomaly, G1, G2]), with ``overrides`` set first.

    The anomaly blobs of :func:`synthetic_case` are 2 x 2 x 1 voxels, which the map's erosion would remove, and its
    holes of 384 mm^3 are below the smallest region of a case without a CBCT (as these are): these tests are about
    the search region, so the erosion is off and such a case keeps the general smallest region unless a test sets
    them."""
    defaults = {"anomaly_erosion_radius": 0, "label_map_only_min_region_mm3": config["min_region_mm3"]}
    for name, value in {**defaults, **overrides}.items():
        config[name] = value
    return Compose(config.get_parsed_content("segmentation_steps"))(dict(case))


def synthetic_case(destroyed_segment: bool = False) -> dict:
    """A 48 mm cube at 2 mm: mandible and lower teeth low, upper skull high, anomaly blobs on empty voxels.

    Without ``destroyed_segment``: blob A in a hole of the mandible (G2 restores bone there), blob B in a pocket of the
    skull 25 mm or more from any jaw tissue (G2 restores skull there, not connected to the jaw, and overshoots to 0.7
    on present skull next to it).
    With it: the mandible and teeth are gone over x = 4..19 (G2 restores them), and the one blob lies in the middle
    of that gap, 16 mm from the input's jaw.
    """
    shape = (24, 24, 24)
    image = np.zeros(shape, dtype=np.float32)
    image[2:22, 4:10, 2:8] = 0.7
    image[2:22, 4:10, 8:10] = 0.9
    image[2:22, 4:24, 14:24] = 0.6
    reconstruction = image.copy()
    reconstruction[2:22, 16:24, 22] = 0.7  # G2 overshoots on the skull: not jaw, the input has skull there
    anomaly = np.zeros(shape, dtype=np.float32)
    if destroyed_segment:
        image[4:20, :, :10] = 0.0
        anomaly[11:13, 5:7, 5] = 0.5
    else:
        image[8:12, 4:8, 4:7] = 0.0
        anomaly[9:11, 5:7, 5] = 0.5
        image[8:12, 18:22, 18:21] = 0.0
        anomaly[9:11, 19:21, 19] = 0.5
    pred = np.stack([anomaly, image, reconstruction])
    return {
        "image": MetaTensor(torch.from_numpy(image[None]), affine=AFFINE_2MM),
        "pred": MetaTensor(torch.from_numpy(pred), affine=AFFINE_2MM),
    }


def wound_voxels(data: dict) -> np.ndarray:
    return np.asarray(data["wound"][0]) > 0


def test_region_far_from_the_jaw_is_removed_and_the_jaw_wound_stays(config):
    case = synthetic_case()
    on = segment(config, case, search_region_mm=10)
    off = segment(config, case, use_search_region=False)
    jaw_hole = np.zeros((24, 24, 24), dtype=bool)
    jaw_hole[8:12, 4:8, 4:7] = True
    skull_pocket = np.zeros_like(jaw_hole)
    skull_pocket[8:12, 18:22, 18:21] = True
    assert np.array_equal(wound_voxels(off), jaw_hole | skull_pocket)  # the paper's chain keeps both
    assert np.array_equal(wound_voxels(on), jaw_hole) and int(on["wound"].max()) == 1
    assert not on["search_region"][0][skull_pocket].any() and on["search_region"][0][jaw_hole].all()
    anomaly = off["pred_anomaly"]
    assert torch.equal(on["pred_anomaly"], anomaly)  # the saved anomaly map stays the raw map
    # no erosion: each 2 x 2 x 1 blob counts 4 voxels, and only the one at the jaw lies in the region
    assert subject_score(anomaly, 0.2, 0) == 2 * subject_score(anomaly, 0.2, 0, region=on["search_region"]) == 8


def test_destroyed_jaw_segment_stays_inside_through_g2(config):
    case = synthetic_case(destroyed_segment=True)
    blob = np.zeros((24, 24, 24), dtype=bool)
    blob[11:13, 5:7, 5] = True
    with_g2 = wound_voxels(segment(config, case, search_region_mm=10))
    assert with_g2[blob].all() and with_g2.sum() > blob.sum()  # grown into the restored segment
    # read from the input alone, the middle of the gap is more than R from the remaining jaw: the wound is lost
    input_only = segment(config, case, search_region_mm=10, **{"search_region_step#reconstruction_key": None})
    assert not wound_voxels(input_only).any()


def test_off_reproduces_the_chain_without_the_search_region(config):
    case = synthetic_case()
    off = segment(config, case, use_search_region=False)
    new_steps = (JawSearchRegiond, MaskIntensityd, MaskRegionsd)  # the three steps the search region adds
    paper_chain = [s for s in config.get_parsed_content("segmentation_steps") if not isinstance(s, new_steps)]
    assert len(paper_chain) == len(config["segmentation_steps"]) - 3
    paper = Compose(paper_chain)(dict(case))
    assert torch.equal(off["wound"], paper["wound"]) and off["wound"].dtype == paper["wound"].dtype
    assert off["search_region"].all()
    anomaly = paper["pred_anomaly"]
    for threshold in (0.0, 0.2):
        assert subject_score(anomaly, threshold, region=off["search_region"]) == subject_score(anomaly, threshold)


def test_python_defaults_are_the_config_defaults(config):
    assert config["use_search_region"] is True
    parameters = inspect.signature(JawSearchRegiond).parameters
    assert parameters["radius_mm"].default == config["search_region_mm"]
    assert parameters["reconstruction_threshold"].default == config["search_region_g2_threshold"]
    assert inspect.signature(JawSearchRegion).parameters["radius_mm"].default == config["search_region_mm"]
