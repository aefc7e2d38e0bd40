"""IfKeyPresentd, and the inference config's own use of it: a case without a CBCT gets the ``label_map_only_*``
threshold and smallest region, a case with one the general settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, Lambdad

from bundle.branching import IfKeyPresentd

ROOT = Path(__file__).resolve().parents[1]
AFFINE_2MM = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))


def test_the_transform_for_the_case_runs():
    mark = IfKeyPresentd(
        "cbct",
        present=Lambdad("value", lambda v: v + 1),
        absent=Compose([Lambdad("value", lambda v: v * 10)]),
    )
    assert mark({"value": 1, "cbct": "scan.nii.gz"}) == {"value": 2, "cbct": "scan.nii.gz"}
    assert mark({"value": 1}) == {"value": 10}
    skip = IfKeyPresentd("cbct", present=Lambdad("value", lambda v: v + 1))
    assert skip({"value": 1}) == {"value": 1}
    assert skip({"value": 1, "cbct": None}) == {"value": 2, "cbct": None}  # the key decides, not its value


def segment(case: dict, **overrides) -> np.ndarray:
    """configs/inference.json's ``segmentation_steps`` on ``case`` (a fresh copy), with ``overrides`` set."""
    config = ConfigParser()
    config.read_config(str(ROOT / "configs" / "inference.json"))
    config["bundle_root"] = str(ROOT)
    for name, value in overrides.items():
        config[name] = value
    return np.asarray(Compose(config.get_parsed_content("segmentation_steps"))(dict(case))["wound"][0])


@pytest.fixture
def case() -> dict:
    """A mandible slab with an empty box above it: the anomaly map is ``level`` in a 4 x 4 x 3 box of 2 mm voxels
    (384 mm^3) there, G1 = G2 = the input (nothing to grow), and the CBCT, where given, is air."""
    image = np.zeros((16, 16, 16), np.float32)
    image[1:15, 1:15, 1:6] = 0.7  # mandible, x' = (2 + 5) / 10
    anomaly = np.zeros_like(image)
    anomaly[6:10, 6:10, 6:9] = 1.0
    return {
        "image": MetaTensor(torch.from_numpy(image[None]), affine=AFFINE_2MM),
        "pred": MetaTensor(torch.from_numpy(np.stack([anomaly, image, image])), affine=AFFINE_2MM),
    }


def with_cbct(case: dict) -> dict:
    air = torch.full_like(case["image"], -1000.0)
    return {**case, "cbct": MetaTensor(air, affine=AFFINE_2MM)}


def scaled(case: dict, level: float) -> dict:
    pred = case["pred"].clone()
    pred[0] *= level
    return {**case, "pred": pred}


def test_a_case_without_cbct_gets_the_label_map_only_threshold(case):
    faint = scaled(case, 0.065)  # between the config's 0.05 (with a CBCT) and 0.08 (label map only)
    # the box is kept by the smallest region of either kind of case, so only the threshold decides
    same_size_rule = {"anomaly_erosion_radius": 0, "anomaly_dilation_radius": 0, "label_map_only_min_region_mm3": 320}
    assert segment(with_cbct(faint), **same_size_rule).max() == 1
    assert segment(faint, **same_size_rule).max() == 0
    assert segment(faint, label_map_only_segmentation_threshold=0.05, **same_size_rule).max() == 1


def test_a_case_without_cbct_gets_the_label_map_only_smallest_region(case):
    no_opening = {"anomaly_erosion_radius": 0, "anomaly_dilation_radius": 0}
    # 384 mm^3: above the config's 320 with a CBCT, below its 480 for a label map only
    assert (segment(with_cbct(case), **no_opening) > 0).sum() * 8 == 384
    assert segment(case, **no_opening).max() == 0
    assert segment(case, label_map_only_min_region_mm3=320, **no_opening).max() == 1
