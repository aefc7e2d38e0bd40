"""The configured sliding window covers a real scan's 2 mm grid with two windows per axis.

A DentalSegmentator map of 360 voxels at 0.5 mm resamples to 91 voxels at 2 mm; MONAI steps
``int(roi * (1 - overlap))`` voxels, so at overlap 0.125 (42-voxel steps) such an axis took three windows
(docs/benchmark_inference.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]


def _window_count(inferer, shape: tuple[int, int, int]) -> int:
    windows = []

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        windows.append(batch.shape[0])
        return batch

    inferer(torch.zeros(1, 1, *shape), predictor)
    return sum(windows)


@pytest.fixture(scope="module")
def configured_inferer():
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    return parser.get_parsed_content("inferer")


@pytest.mark.parametrize("axis_voxels", [90, 91, 93])
def test_axes_up_to_93_voxels_take_two_windows(configured_inferer, axis_voxels):
    assert _window_count(configured_inferer, (axis_voxels, axis_voxels, 84)) == 8


def test_longer_axes_take_a_third_window(configured_inferer):
    assert _window_count(configured_inferer, (94, 48, 48)) == 3
