"""The evaluation report's figures (scripts/evaluation_figures.py), drawn from small synthetic slices and meshes."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
import torch
from skimage.measure import marching_cubes

from bundle.evaluation import save_figure_slices
from bundle.stl import write_stl
from scripts import evaluation_figures as figures

SHAPE = (20, 24, 18)


def _volumes(lesion: bool) -> tuple[dict[str, torch.Tensor | None], torch.Tensor]:
    """x'-like volumes (1, X, Y, Z) of a box of mandible (0.7) with a block of lower teeth (0.9), and the lesion mask:
    a cube removed from the mandible when ``lesion``, else empty."""
    intact = torch.zeros((1, *SHAPE))
    intact[:, 3:17, 4:20, 3:10] = 0.7
    intact[:, 6:14, 8:16, 10:14] = 0.9
    truth = torch.zeros((1, *SHAPE))
    if lesion:
        truth[:, 8:12, 6:10, 5:9] = 1.0
    image = intact * (1 - truth)
    generator = torch.Generator().manual_seed(0)
    stage1 = (intact + 0.05 * torch.rand(intact.shape, generator=generator)).clamp(0, 1)
    stage2 = intact.clone()
    wound = torch.zeros_like(truth)
    if lesion:
        wound[:, 7:12, 6:11, 5:9] = 1.0
    volumes = {
        "input": image,
        "intact": intact if lesion else None,
        "stage1": stage1,
        "stage2": stage2,
        "two_reconstructions": (stage2 - stage1).abs(),
        "original_vs_reconstruction": (stage2 - image).abs(),
        "wound": wound,
    }
    if lesion:
        volumes["truth"] = truth
    return volumes, truth


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("figure_slices")
    loaded = {}
    for case, lesion in (("case_000", False), ("case_003", True)):
        path = save_figure_slices(folder / f"{case}.npz", *_volumes(lesion))
        with np.load(path) as npz:
            loaded[case] = {key: npz[key] for key in npz.files}
    return loaded


def _png(path: Path) -> np.ndarray:
    """The image (H, W, channels) of a PNG file, after checking its signature."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")], "temporary file left behind"
    return matplotlib.image.imread(path)


def test_reconstruction_figure_grows_with_columns(tmp_path, slices):
    healthy, lesion = slices["case_000"], slices["case_003"]
    narrow = figures.reconstruction_figure(
        [("input", healthy, "input"), ("VQ-GAN stage 1", healthy, "stage1")], tmp_path / "new" / "fig3.png", "stage 1"
    )
    columns = [
        ("intact original", lesion, "intact"),
        ("teeth and jaw removed", lesion, "input"),
        ("VQ-GAN stage 2", lesion, "stage2"),
        ("VQ-VAE stage 2", lesion, "stage1"),
    ]
    wide = figures.reconstruction_figure(columns, tmp_path / "fig4.png", "stage 2")
    narrow_image, wide_image = _png(narrow), _png(wide)
    assert narrow_image.shape[0] > narrow_image.shape[1]  # three rows, two columns
    assert wide_image.shape[1] > 1.6 * narrow_image.shape[1]
    assert abs(wide_image.shape[0] - narrow_image.shape[0]) < 0.2 * narrow_image.shape[0]


def test_reconstruction_figure_names_a_missing_volume(tmp_path, slices):
    columns = [("input", slices["case_000"], "input"), ("intact original", slices["case_000"], "intact")]
    with pytest.raises(ValueError, match="intact original.*'intact'"):
        figures.reconstruction_figure(columns, tmp_path / "fig.png")
    assert not (tmp_path / "fig.png").exists()


def test_anomaly_maps_figure(tmp_path, slices):
    rows = [("case_000 none", slices["case_000"]), ("case_003 onj", slices["case_003"])]
    two_maps = figures.anomaly_maps_figure(
        rows, tmp_path / "fig5.png", ["two_reconstructions", "original_vs_reconstruction", "latent_disagreement"]
    )
    one_map = figures.anomaly_maps_figure(rows[1:], tmp_path / "one.png", ["two_reconstructions"], plane="coronal")
    two_image, one_image = _png(two_maps), _png(one_map)
    # 3 + 2 + 1 columns against 3 + 1 + 1 (latent_disagreement is in no row), two rows against one
    assert two_image.shape[1] > 1.1 * one_image.shape[1]
    assert two_image.shape[0] > 1.4 * one_image.shape[0]


def test_anomaly_maps_figure_needs_only_the_input(tmp_path, slices):
    without_stage2 = {key: value for key, value in slices["case_003"].items() if not key.startswith("stage2.")}
    _png(figures.anomaly_maps_figure([("case_003 onj", without_stage2)], tmp_path / "ok" / "fig.png", []))
    without_input = {key: value for key, value in slices["case_003"].items() if not key.startswith("input.")}
    with pytest.raises(ValueError, match="case_003 onj.*'input'"):
        figures.anomaly_maps_figure([("case_003 onj", without_input)], tmp_path / "fig.png", [])
    with pytest.raises(ValueError, match="plane"):
        figures.anomaly_maps_figure([("case_003 onj", slices["case_003"])], tmp_path / "fig.png", [], plane="oblique")


def test_score_histograms(tmp_path):
    cases = [
        {"case": f"case_{i:03d}", "lesion": "none", "score_two_reconstructions": i % 2, "score_wound_volume": 0.0}
        for i in range(12)
    ]
    cases += [
        {
            "case": f"case_{i:03d}",
            "lesion": "onj",
            "score_two_reconstructions": 1000 + 300 * i,
            "score_original_vs_reconstruction": float("nan") if i == 20 else 40 * i,
            "score_wound_volume": 8.0 * (1000 + 300 * i),
        }
        for i in range(20, 28)
    ]
    image = _png(figures.score_histograms(cases, tmp_path / "hist" / "scores.png"))
    assert image.shape[1] > 2.5 * image.shape[0]  # three panels side by side
    with pytest.raises(ValueError):
        figures.score_histograms([], tmp_path / "empty.png")


@pytest.fixture
def label_map(tmp_path) -> Path:
    """A 1.5 mm label map: a box of upper skull (1) over a box of mandible (2) with a block of teeth (4)."""
    labels = np.zeros((24, 20, 16), dtype=np.uint8)
    labels[2:22, 2:18, 9:14] = 1
    labels[3:21, 3:17, 2:7] = 2
    labels[8:16, 5:12, 7:9] = 4
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([1.5, 1.5, 1.5, 1.0])), path)
    return path


def _wound_stl(path: Path) -> Path:
    """A small closed mesh in LPS millimetres inside the label map's mandible."""
    cube = np.pad(np.ones((3, 3, 3), dtype=np.float32), 1)
    vertices, faces, _, _ = marching_cubes(cube, level=0.5)
    vertices = (vertices + [8.0, 6.0, 3.0]) * 1.5 * np.array([-1.0, -1.0, 1.0])
    return write_stl(path, vertices, faces, "case_test_01")


def test_mesh_figure(tmp_path, label_map):
    stl = _wound_stl(tmp_path / "case_test_01.stl")
    with_wound = _png(figures.mesh_figure(label_map, [stl], tmp_path / "meshes" / "mesh.png", "case_test"))
    alone = _png(figures.mesh_figure(label_map, [], tmp_path / "meshes" / "jaw.png", "case_test"))
    assert with_wound.shape[1] > 1.5 * with_wound.shape[0]  # two views side by side
    assert alone.shape[1] > 1.5 * alone.shape[0]
    red = (with_wound[..., 0] > 0.6) & (with_wound[..., 1] < 0.3) & (with_wound[..., 2] < 0.3)
    assert red.sum() > 20
    red_alone = (alone[..., 0] > 0.6) & (alone[..., 1] < 0.3) & (alone[..., 2] < 0.3)
    assert red_alone.sum() == 0


def test_mesh_figure_names_missing_files(tmp_path, label_map):
    stl = _wound_stl(tmp_path / "case_test_01.stl")
    missing = tmp_path / "case_test_02.stl"
    with pytest.raises(ValueError, match="case_test_02.stl"):
        figures.mesh_figure(label_map, [stl, missing], tmp_path / "mesh.png")
    garbage = tmp_path / "garbage.stl"
    garbage.write_bytes(b"not a mesh")
    with pytest.raises(ValueError, match="garbage.stl"):
        figures.mesh_figure(label_map, [garbage], tmp_path / "mesh.png")
    with pytest.raises(ValueError, match="absent.nii.gz"):
        figures.mesh_figure(tmp_path / "absent.nii.gz", [stl], tmp_path / "mesh.png")
    assert not (tmp_path / "mesh.png").exists()
