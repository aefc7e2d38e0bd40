"""scripts/make_phantoms.py (data set layout, MONAI-readable files, byte-identical reruns, safe output handling) and
scripts/benchmark_phantoms.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage, Orientation

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_phantoms.py"
sys.path.insert(0, str(ROOT / "scripts"))

import benchmark_phantoms  # noqa: E402

from jaw_phantoms import writing as make_phantoms  # noqa: E402
from jaw_phantoms.anatomy import sample_subject  # noqa: E402
from jaw_phantoms.writing import GENERATOR_REVISION_KEY, GENERATOR_REVISIONS  # noqa: E402

# tiny sets: coarse native spacing keeps each subject well under a second
SEED_POSED = 3  # any subject: every draw but the rotation stays
TINY = dict(train_subjects=1, val_subjects=1, test_subjects=2, lesion_fraction=1.0, spacing=1.6, seed=2)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("sets") / "phantoms"
    make_phantoms.make_phantom_set(output, anisotropic_fraction=0.5, lps_fraction=0.5, log=lambda _: None, **TINY)
    return output


def test_datalist_has_the_three_splits_and_relative_paths(tiny_set):
    datalist = json.loads((tiny_set / "datalist.json").read_text())
    assert list(datalist) == ["training", "validation", "test", GENERATOR_REVISION_KEY]
    assert datalist[GENERATOR_REVISION_KEY] == GENERATOR_REVISIONS["real_mandible"] == 3
    splits = [datalist[key] for key in ("training", "validation", "test")]
    assert [len(entries) for entries in splits] == [1, 1, 2]
    assert all(
        entry["lesion"] == "none" and "truth" not in entry and "intact" not in entry for entry in datalist["training"]
    )
    assert sorted(entry["lesion"] for entry in datalist["test"]) == ["onj", "teeth_and_jaw_removed"]
    for entries in splits:
        for entry in entries:
            assert isinstance(entry["seed"], int)
            for key in ("image", "cbct", "truth", "intact"):
                if key in entry:
                    assert not Path(entry[key]).is_absolute() and (tiny_set / entry[key]).is_file()
    # MONAI resolves them against the datalist's folder
    resolved = load_decathlon_datalist(str(tiny_set / "datalist.json"), data_list_key="test", base_dir=str(tiny_set))
    assert all(Path(entry["truth"]).is_file() and Path(entry["cbct"]).is_file() for entry in resolved)
    assert (tiny_set / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_files_load_in_monai_with_the_planned_spacing_and_content(tiny_set):
    plans = make_phantoms.plan_cases(anisotropic_fraction=0.5, lps_fraction=0.5, **TINY)
    datalist = json.loads((tiny_set / "datalist.json").read_text())
    entries = [entry for split in ("training", "validation", "test") for entry in datalist[split]]
    assert {plan.spacing for plan in plans} == {(1.6, 1.6, 1.6), (1.28, 1.28, 1.92)}
    assert {plan.axcodes for plan in plans} == {"RAS", "LPS"}
    loader = LoadImage(image_only=True)
    for plan, entry in zip(plans, entries):
        assert entry["seed"] == plan.seed and entry["lesion"] == plan.lesion
        labels = loader(str(tiny_set / entry["image"]))
        np.testing.assert_allclose(labels.pixdim, plan.spacing, rtol=1e-5)
        phantom = make_phantoms.generate(plan)
        np.testing.assert_array_equal(np.asarray(labels), phantom.labels)
        np.testing.assert_allclose(np.asarray(labels.affine), phantom.affine, atol=1e-4)
        ras = Orientation(axcodes="RAS")(labels[None])
        assert "".join(nib.aff2axcodes(np.asarray(ras.affine))) == "RAS"
        cbct = nib.load(tiny_set / entry["cbct"])
        assert cbct.get_data_dtype() == np.int16 and cbct.shape == phantom.labels.shape
        np.testing.assert_allclose(np.asanyarray(cbct.dataobj), np.rint(phantom.cbct), atol=0.5)
        if "truth" in entry:
            truth = nib.load(tiny_set / entry["truth"])
            assert truth.get_data_dtype() == np.uint8
            np.testing.assert_array_equal(np.asanyarray(truth.dataobj), phantom.truth)
            assert phantom.truth.sum() > 0
            # the intact map is the same subject before the lesion removed exactly the truth's tissue
            intact = np.asanyarray(nib.load(tiny_set / entry["intact"]).dataobj)
            np.testing.assert_array_equal(intact, phantom.healthy_labels)
            removed = (intact > 0) & (np.asarray(labels) == 0)
            np.testing.assert_array_equal(removed, phantom.truth > 0)


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tiny_set, tmp_path):
    again = tmp_path / "again"
    make_phantoms.make_phantom_set(again, anisotropic_fraction=0.5, lps_fraction=0.5, log=lambda _: None, **TINY)
    assert files_of(again) == files_of(tiny_set)
    other = tmp_path / "other"
    make_phantoms.make_phantom_set(
        other, anisotropic_fraction=0.5, lps_fraction=0.5, preview=False, log=lambda _: None, **{**TINY, "seed": 5}
    )
    assert (other / "labels/case_000.nii.gz").read_bytes() != (tiny_set / "labels/case_000.nii.gz").read_bytes()


def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    output = tmp_path / "data"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    small = dict(train_subjects=1, val_subjects=0, test_subjects=0, spacing=2.5, preview=False, log=lambda _: None)
    with pytest.raises(ValueError, match="not empty"):
        make_phantoms.make_phantom_set(output, **small)
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
    make_phantoms.make_phantom_set(output, overwrite=True, **small)
    assert sorted(p.name for p in output.iterdir()) == ["cbct", "datalist.json", "labels"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging or retired folders left


def test_an_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    generate = make_phantoms.generate

    def failing_phantom(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(args)
        return generate(*args, **kwargs)

    monkeypatch.setattr(make_phantoms, "generate", failing_phantom)
    with pytest.raises(KeyboardInterrupt):
        make_phantoms.make_phantom_set(
            tmp_path / "data", train_subjects=2, val_subjects=0, test_subjects=0, spacing=2.5, log=lambda _: None
        )
    assert list(tmp_path.iterdir()) == []


def test_command_line_errors_are_one_line_with_exit_code_2(tmp_path):
    output = tmp_path / "data"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(output), "--train_subjects", "1", "--spacing", "2.5"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not empty" in result.stderr
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "new"), "--lesion_fraction", "1.5"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "lesion_fraction" in bad.stderr and not (tmp_path / "new").exists()
    for extra, message in [(["--lesion_volume_ml", "2", "1"], "0 < min <= max"), (["--style", "parametric"], "only")]:
        refused = subprocess.run(
            [sys.executable, str(SCRIPT), str(tmp_path / "new"), "--lesion_volume_ml", "0.5", "2", *extra],
            capture_output=True,
            text=True,
        )
        assert refused.returncode == 2 and message in refused.stderr and not (tmp_path / "new").exists()
    helped = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--test_subjects" in helped.stdout


def test_a_set_can_give_every_subject_tooth_gaps_and_records_it(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "gaps"), "--train_subjects", "1", "--val_subjects", "0"]
        + [
            "--test_subjects",
            "2",
            "--lesion_fraction",
            "0",
            "--spacing",
            "2",
            "--anatomy",
            "missing_teeth_probability=1",
        ]
        + ["--no_preview", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    datalist = json.loads((tmp_path / "gaps" / "datalist.json").read_text())
    assert datalist[make_phantoms.ANATOMY_OPTIONS_KEY] == {"missing_teeth_probability": 1.0}
    for split in ("training", "test"):
        for entry in datalist[split]:
            options = make_phantoms.anatomy_options(split, datalist[make_phantoms.ANATOMY_OPTIONS_KEY])
            assert sample_subject(entry["seed"], options).missing_teeth  # every subject lacks teeth
    default = make_phantoms.make_phantom_set(tmp_path / "default", log=lambda _: None, preview=False, **TINY)
    assert make_phantoms.ANATOMY_OPTIONS_KEY not in json.loads(default.read_text())
    for style, overrides, message in [
        ("real_mandible", {"missing_teeth_probability": 1.5}, "missing_teeth_probability must be within"),
        ("real_mandible", {"ridge_resorption_mm": 9}, "ridge_resorption_mm must be within"),
        ("real_mandible", {"shape_split": 0}, "cannot be overridden"),
        ("parametric", {"pose_degrees": 0}, "only"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_phantoms.make_phantom_set(tmp_path / "refused", style=style, anatomy_overrides=overrides, **TINY)
        assert not (tmp_path / "refused").exists()
    refused = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "refused"), "--anatomy", "pose_degrees=level"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "expected NAME=NUMBER" in refused.stderr and not (tmp_path / "refused").exists()


def test_pose_degrees_zero_draws_the_same_subjects_unrotated():
    posed = sample_subject(SEED_POSED, make_phantoms.anatomy_options("test"))
    level = sample_subject(SEED_POSED, make_phantoms.anatomy_options("test", {"pose_degrees": 0}))
    assert np.allclose(level.rotation, np.eye(3)) and not np.allclose(posed.rotation, np.eye(3))
    assert posed.shape.case == level.shape.case and posed.missing_teeth == level.missing_teeth
    assert np.array_equal(posed.translation, level.translation) and posed.field_of_view == level.field_of_view


def test_plan_mixes_lesion_kinds_only_in_the_test_split():
    plans = make_phantoms.plan_cases(4, 2, 10, 0.6, 1.0, 0.25, 0.25, seed=0)
    kinds = [plan.lesion for plan in plans if plan.split == "test"]
    assert kinds.count("onj") == 3 and kinds.count("teeth_and_jaw_removed") == 2 and kinds.count("onj_maxilla") == 1
    assert kinds.count("none") == 4
    parametric = make_phantoms.plan_cases(4, 2, 10, 0.6, 1.0, 0.25, 0.25, seed=0, style="parametric")
    assert {plan.lesion for plan in parametric} == {"none", "onj", "teeth_and_jaw_removed"}
    assert all(plan.lesion == "none" for plan in plans if plan.split != "test")
    assert len({plan.seed for plan in plans}) == len(plans)
    assert plans == make_phantoms.plan_cases(4, 2, 10, 0.6, 1.0, 0.25, 0.25, seed=0)
    # a chosen cycle of kinds changes the kinds only: the same subjects, spacings and axes
    ramus = make_phantoms.plan_cases(4, 2, 10, 0.6, 1.0, 0.25, 0.25, seed=0, lesion_kinds=("onj_ramus", "onj"))
    assert [p.lesion for p in ramus if p.lesion != "none"] == ["onj_ramus", "onj"] * 3
    assert [(p.seed, p.spacing, p.axcodes) for p in ramus] == [(p.seed, p.spacing, p.axcodes) for p in plans]
    with pytest.raises(ValueError, match="onj_ramus"):
        make_phantoms.plan_cases(
            4, 2, 10, 0.6, 1.0, 0.25, 0.25, seed=0, style="parametric", lesion_kinds=("onj_ramus",)
        )


def test_benchmark_reports_timing_and_volumes_against_the_real_map(tmp_path):
    result = benchmark_phantoms.run_benchmark(count=3, spacing=2.0, workers=1, with_cbct=False)
    assert result["phantoms"] == 3 and result["seconds"] > 0
    assert set(result["label_voxels_vs_real"]) == {"1", "2", "3", "4", "5"}
    for figures in result["label_voxels_vs_real"].values():
        assert 0.5 <= figures["ratio_min"] <= figures["ratio_max"] <= 2.0
    assert set(result["lesion_truth_voxels_2mm"]) == {"onj", "teeth_and_jaw_removed"}
    output = tmp_path / "bench.json"
    assert benchmark_phantoms.main(["--count", "2", "--no_cbct", "--output", str(output)]) == 0
    assert json.loads(output.read_text())["phantoms"] == 2
    assert benchmark_phantoms.main(["--count", "0"]) == 2
