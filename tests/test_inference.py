"""configs/inference.json through the real CLI: outputs in the input's grid, report, STL, and bad input refused early.

Weights here are random (a tiny network saved with its checksum): these tests check the pipeline, not accuracy;
docs/evaluation.md measures accuracy of the shipped weights.
"""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow
from monai.transforms import LoadImage

from tests.conftest import INFERENCE_GENERATOR, PERMISSIVE, jaw_label_map

ROOT = Path(__file__).resolve().parents[1]
TINY_GENERATOR = json.dumps(INFERENCE_GENERATOR)


@pytest.fixture(scope="module")
def label_map(tmp_path_factory) -> Path:
    """A jaw-like label map at 0.6 x 0.6 x 0.8 mm with flipped (LPS) axes and a tilt."""
    labels, affine = jaw_label_map()
    path = tmp_path_factory.mktemp("input") / "jaw_case.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), path)
    return path


def run_inference(*overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    command += ["--generator_def", TINY_GENERATOR, *overrides]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def run_permissive(label_map: Path, weights: Path, output: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The case through the CLI with the tiny weights and ``PERMISSIVE``, plus ``overrides``."""
    arguments = ("--input", str(label_map), "--checkpoint", str(weights), "--output_dir", str(output))
    return run_inference(*arguments, *PERMISSIVE, *overrides)


@pytest.fixture(scope="module")
def default_case(tiny_weights, label_map, tmp_path_factory) -> Path:
    """Output folder of the case, run with the config's defaults (search region included) and ``PERMISSIVE``."""
    output = tmp_path_factory.mktemp("default_run") / "out"
    result = run_permissive(label_map, tiny_weights, output)
    assert result.returncode == 0, result.stderr[-3000:]
    return output / "jaw_case"


def _world_centre(image: nib.Nifti1Image) -> np.ndarray:
    return image.affine[:3, :3] @ ((np.asarray(image.shape[:3]) - 1) / 2) + image.affine[:3, 3]


def test_inference_writes_every_output_in_the_input_grid(default_case, label_map):
    """The wound segmentation in the input's grid; the anomaly map on the 2 mm grid it is computed on, over the same
    field of view (a viewer places it by its affine)."""
    case, output = default_case, default_case.parent
    source = nib.load(label_map)
    anomaly = nib.load(case / "anomaly_map.nii.gz")
    wound = nib.load(case / "wound_segmentation.nii.gz")
    assert wound.shape == source.shape
    np.testing.assert_allclose(wound.affine, source.affine, atol=1e-4)
    np.testing.assert_allclose(anomaly.header.get_zooms(), (2.0, 2.0, 2.0))
    assert nib.aff2axcodes(anomaly.affine) == ("R", "A", "S")
    np.testing.assert_allclose(_world_centre(anomaly), _world_centre(source), atol=1.0)
    assert anomaly.get_data_dtype() == np.float32 and wound.get_data_dtype() == np.uint8
    report = json.loads((case / "report.json").read_text())
    regions = np.asarray(wound.dataobj)
    assert report["num_regions"] == len(np.unique(regions)) - 1 == len(list(case.glob("*.stl")))
    assert report["num_regions"] > 0
    segmentation = LoadImage(reader="ITKReader", image_only=True)(str(case / "wound_segmentation.seg.nrrd"))
    np.testing.assert_array_equal(np.asarray(segmentation), regions)  # the Slicer file holds the same regions
    voxel_mm3 = abs(np.linalg.det(source.affine[:3, :3]))
    for region in report["regions"]:
        assert region["volume_mm3"] == pytest.approx((regions == region["label"]).sum() * voxel_mm3, rel=1e-3)
    assert set(report["subject_score"]) >= {"two_reconstructions", "original_vs_reconstruction"}
    total = sum(region["volume_mm3"] for region in report["regions"])
    assert report["subject_score"]["wound_volume_mm3"] == pytest.approx(total, abs=1e-3)
    config = json.loads((ROOT / "configs" / "inference.json").read_text())
    for name in ("search_region_mm", "search_region_g2_threshold"):
        assert report["thresholds"][name] == config[name]
    # a label map without its CBCT: the report says so, and which settings such a case gets
    assert report["cbct"] is None and report["thresholds"]["label_map_only_segmentation_threshold"] == 1e-6
    assert len(report["model"]["sha256"]) == 64
    assert (case / "overview.png").stat().st_size > 10_000
    assert not list(output.glob(".*"))  # no partial folder left


def test_search_region_off_is_one_override_away(default_case, tiny_weights, label_map, tmp_path):
    output = tmp_path / "out"
    result = run_permissive(label_map, tiny_weights, output, "--use_search_region", "false")  # as typed: str2bool
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((case / "report.json").read_text()) for case in (default_case, output / "jaw_case")]
    radius = json.loads((ROOT / "configs" / "inference.json").read_text())["search_region_mm"]
    assert [r["thresholds"]["search_region_mm"] for r in reports] == [radius, None]  # the radius applied; None: off
    wound_on, wound_off = (
        np.asarray(nib.load(c / "wound_segmentation.nii.gz").dataobj) > 0 for c in (default_case, output / "jaw_case")
    )
    # the skull far above and behind the jaw is searched only without the region
    assert (wound_on <= wound_off).all() and wound_on.sum() < wound_off.sum()
    for score in ("two_reconstructions", "original_vs_reconstruction", "wound_volume_mm3"):
        assert reports[0]["subject_score"][score] <= reports[1]["subject_score"][score]
    raw_on, raw_off = (nib.load(c / "anomaly_map.nii.gz").get_fdata() for c in (default_case, output / "jaw_case"))
    np.testing.assert_array_equal(raw_on, raw_off)  # the saved map is the raw map either way


def test_anomaly_map_in_the_input_grid_is_one_override_away(default_case, tiny_weights, label_map, tmp_path):
    """``--anomaly_map_in_input_grid true``: the map resampled (trilinear) to the input's grid; the wound regions and
    report are the same."""
    output = tmp_path / "out"
    result = run_permissive(label_map, tiny_weights, output, "--anomaly_map_in_input_grid", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    source, case = nib.load(label_map), output / "jaw_case"
    fine, coarse = (nib.load(c / "anomaly_map.nii.gz") for c in (case, default_case))
    assert fine.shape == source.shape and fine.get_data_dtype() == np.float32
    np.testing.assert_allclose(fine.affine, source.affine, atol=1e-4)
    assert fine.get_fdata().max() == pytest.approx(coarse.get_fdata().max(), rel=0.05)  # same map, interpolated
    wounds = [np.asarray(nib.load(c / "wound_segmentation.nii.gz").dataobj) for c in (case, default_case)]
    np.testing.assert_array_equal(*wounds)


def test_infer_workflow_has_every_required_property(tiny_weights, label_map, tmp_path):
    workflow = ConfigWorkflow(
        config_file=str(ROOT / "configs" / "inference.json"),
        workflow_type="infer",
        generator_def=json.loads(TINY_GENERATOR),
        input=str(label_map),
        checkpoint=str(tiny_weights),
        output_dir=str(tmp_path / "out"),
    )
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    assert list(workflow.inferer.roi_size) == [48, 48, 48]


@pytest.mark.parametrize(
    "problem, make_overrides, message",
    [
        ("missing weights", lambda w, d: ["--checkpoint", str(d / "absent.pt")], "weights file not found"),
        ("checksum mismatch", lambda w, d: ["--checkpoint", str(_corrupted_copy(w, d))], "does not match"),
        ("output not empty", lambda w, d: ["--output_dir", str(_non_empty(d))], "not empty"),
        ("bad label map", lambda w, d: ["--input", str(_float_map(d))], "non-integer"),
    ],
)
def test_bad_input_fails_with_a_clear_error_and_writes_nothing(
    problem, make_overrides, message, tiny_weights, label_map, tmp_path
):
    overrides = ["--input", str(label_map), "--checkpoint", str(tiny_weights), "--output_dir", str(tmp_path / "out")]
    overrides += make_overrides(tiny_weights, tmp_path)
    result = run_inference(*overrides)
    assert result.returncode != 0, problem
    assert message in result.stderr + result.stdout
    output = Path(overrides[len(overrides) - 1 - overrides[::-1].index("--output_dir") + 1])
    written = [p for p in output.rglob("*") if p.is_file() and p.name != "mine.txt"] if output.exists() else []
    assert written == [], problem
    if problem in ("missing weights", "checksum mismatch"):
        assert not output.exists(), f"{problem}: the output folder was created before the weights were checked"


def _corrupted_copy(weights: Path, folder: Path) -> Path:
    copy = folder / "model.pt"
    copy.write_bytes(weights.read_bytes()[:-10] + b"0" * 10)
    (folder / "model.pt.sha256").write_text((weights.parent / "model.pt.sha256").read_text())
    return copy


def _non_empty(folder: Path) -> Path:
    output = folder / "taken"
    output.mkdir()
    (output / "mine.txt").write_text("the user's file")
    return output


def _float_map(folder: Path) -> Path:
    path = folder / "float_map.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4)), path)
    return path


@pytest.mark.slow
def test_evaluation_overlay_scores_lesion_and_normal_cases(lesion_and_healthy_set, tiny_weights, tmp_path):
    datalist = lesion_and_healthy_set
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['configs/inference.json','configs/evaluate.json']",
        "--generator_def",
        TINY_GENERATOR,
        "--checkpoint",
        str(tiny_weights),
        "--datalist",
        str(datalist),
        "--output_dir",
        str(tmp_path / "eval"),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (metrics["num_lesion_cases"], metrics["num_normal_cases"]) == (1, 1)
    lesion_case = next(c for c in metrics["cases"] if c["lesion"] != "none")
    assert 0.0 <= lesion_case["dice"] <= 1.0 and 0.0 < lesion_case["average_precision"] <= 1.0
    written = next(e for e in json.loads(datalist.read_text())["test"] if e["lesion"] != "none")
    assert lesion_case["lesion_volume_ml"] == pytest.approx(written["lesion_volume_ml"])
    assert written["lesion_volume_ml"] > 0.3
    assert 0.0 <= metrics["score_two_reconstructions"]["auroc"] <= 1.0
    case_folders = {p.name for p in (tmp_path / "eval").iterdir() if p.is_dir()} - {"figure_slices"}
    assert {c["case"] for c in metrics["cases"]} == case_folders
    # the lesion case is measured against its intact map, and both cases leave slices for the figures
    assert 0.0 <= lesion_case["restoration_mse_stage2"] < 1.0 and "restoration_lesion_mse_stage1" in lesion_case
    assert {p.stem for p in (tmp_path / "eval" / "figure_slices").iterdir()} == case_folders
    # the report of that run: tables from its metrics, figures from its slices and meshes
    report = [sys.executable, "-m", "scripts.report_evaluation", "--run", f"default={tmp_path / 'eval'}"]
    report += ["--json", str(tmp_path / "evaluation.json"), "--docs_dir", str(tmp_path / "docs")]
    result = subprocess.run(report, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = (tmp_path / "docs" / "results.md").read_text()
    assert "## Experiment 1" in results and f"{metrics['num_normal_cases']} healthy" in results
    figures = {p.name for p in (tmp_path / "docs" / "figures" / "evaluation").iterdir()}
    assert {"reconstruction_healthy.png", "anomaly_maps.png", "score_histograms.png"} <= figures
    assert all(f"figures/evaluation/{name}" in results for name in figures)
