"""scripts/tune_postprocessing.py on a two-case tuning set with tiny random weights: what it sweeps and reports."""

import json
import sys
from pathlib import Path

import torch

from tests.conftest import INFERENCE_GENERATOR

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import tune_postprocessing  # noqa: E402

from scripts.run_evaluation import held_out_subject_seeds  # noqa: E402


def test_sweeps_inferer_postprocessing_and_score(lesion_and_healthy_set, tiny_weights, tmp_path):
    output = tmp_path / "tuning.json"
    argv = [
        str(lesion_and_healthy_set),
        "--checkpoint",
        str(tiny_weights),
        "--override",
        f"generator_def={json.dumps(INFERENCE_GENERATOR)}",
        "--overlaps",
        "0",
        "0.25",
        "--blend_modes",
        "constant",
        "--grid",
        "segmentation_threshold=[0.0, 2.0]",
        "anomaly_erosion_radius=[0]",
        "anomaly_dilation_radius=[0]",
        "grow_steps=[0]",
        "grow_tissue_threshold=[0.55]",
        "search_region_mm=[null, 10]",
        "min_region_mm3=[0]",
        "--score_thresholds",
        "0.0",
        "2.0",
        "--score_erosions",
        "0",
        "--dice_tolerance",
        "0",
        "--json",
        str(output),
    ]
    assert tune_postprocessing.main(argv) == 0
    assert torch.is_grad_enabled()  # main switches gradients off for its own call only
    results = json.loads(output.read_text())
    entries = json.loads(lesion_and_healthy_set.read_text())["test"]
    names = {Path(entry["image"]).name.removesuffix(".nii.gz"): entry["lesion"] for entry in entries}
    case_names = set(names)
    healthy_names = {name for name, lesion in names.items() if lesion == "none"}
    assert len(case_names) == 2 and len(healthy_names) == 1
    assert results["overrides"] == {"generator_def": INFERENCE_GENERATOR}  # what was tuned is on record
    assert [(r["overlap"], r["mode"]) for r in results["inferer"]] == [(0.0, "constant"), (0.25, "constant")]
    assert all(r["seconds_per_case"] > 0 and 0 < r["mean_average_precision"] <= 1 for r in results["inferer"])
    rows = {(r["search_region_mm"], r["segmentation_threshold"]): r for r in results["postprocessing"]}
    assert set(rows) == {(None, 0.0), (None, 2.0), (10, 0.0), (10, 2.0)}
    # a threshold above every value of the squared difference of two [0, 1] reconstructions segments nothing
    assert rows[None, 2.0]["mean_dice"] == 0.0 and rows[None, 2.0]["mean_false_positive_voxels"] == 0
    assert rows[None, 2.0]["healthy_with_region"] == 0 and not rows[None, 2.0]["wound_volume_separates"]
    assert rows[None, 0.0]["healthy_with_region"] == 1
    assert 0.0 < rows[None, 0.0]["mean_dice"] <= 1.0
    # everything segmented: the search region leaves fewer false-positive voxels in the healthy case
    assert rows[10, 0.0]["mean_false_positive_voxels"] < rows[None, 0.0]["mean_false_positive_voxels"]
    assert results["best_postprocessing"]["mean_dice"] == max(r["mean_dice"] for r in results["postprocessing"])
    scores = {(r["search_region_mm"], r["score_threshold"]): r for r in results["score"]}
    assert set(scores) == set(rows)
    assert scores[None, 2.0]["lesion_min"] == scores[None, 2.0]["normal_max"] == 0
    assert not scores[None, 2.0]["separated"] and scores[None, 2.0]["auroc"] == 0.5  # all tied at 0
    # every case is scored under its file's name, and the summary figures are those of the per-case scores
    for row in results["score"]:
        assert set(row["scores"]) == case_names
        assert max(row["scores"][name] for name in healthy_names) == row["normal_max"]
        assert min(row["scores"][name] for name in case_names - healthy_names) == row["lesion_min"]
    assert scores[None, 0.0]["lesion_min"] > 0 and scores[None, 0.0]["normal_max"] > 0
    # without erosion, a threshold of 0 counts every voxel of the volume, or of the smaller search region
    assert 0 < scores[10, 0.0]["normal_max"] < scores[None, 0.0]["normal_max"]


def test_within_the_dice_tolerance_fewer_false_alarms_win():
    triples = ((0.8, 3, 20.0), (0.797, 3, 9.0), (0.796, 1, 30.0), (0.7, 0, 0.0))
    rows = [{"mean_dice": d, "healthy_with_region": n, "mean_false_positive_voxels": fp} for d, n, fp in triples]
    assert tune_postprocessing.choose_postprocessing(rows, 0.0) is rows[0]
    # within 0.0035 of the best: the same number of healthy subjects with a region, fewer voxels
    assert tune_postprocessing.choose_postprocessing(rows, 0.0035) is rows[1]
    # within 0.005: fewer healthy subjects with a region beats fewer false-positive voxels
    assert tune_postprocessing.choose_postprocessing(rows, 0.005) is rows[2]
    assert tune_postprocessing.choose_postprocessing(rows, 0.2) is rows[3]


def test_refuses_to_overwrite_results_and_unknown_parameters(lesion_and_healthy_set, tiny_weights, tmp_path, capsys):
    existing = tmp_path / "tuning.json"
    existing.write_text("{}")
    assert tune_postprocessing.main([str(lesion_and_healthy_set), "--json", str(existing)]) == 2
    assert existing.read_text() == "{}" and "--overwrite" in capsys.readouterr().err
    argv = [str(lesion_and_healthy_set), "--checkpoint", str(tiny_weights), "--grid", "no_such_parameter=[1]"]
    assert tune_postprocessing.main(argv) == 2
    assert "no_such_parameter" in capsys.readouterr().err
    assert tune_postprocessing.main([str(tmp_path / "missing.json")]) == 2


def test_refuses_a_lesion_and_healthy_set_that_shares_subjects_with_the_held_out_sets(
    lesion_and_healthy_set, tmp_path, capsys
):
    entries = json.loads(lesion_and_healthy_set.read_text())
    entries["test"][1]["seed"] = sorted(held_out_subject_seeds())[0]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps(entries))
    assert tune_postprocessing.main([str(datalist), "--json", str(tmp_path / "tuning.json")]) == 2
    error = capsys.readouterr().err
    assert f"{datalist}: 1 subject(s) are subjects of the held-out evaluation sets" in error
    assert entries["test"][1]["image"] in error and not (tmp_path / "tuning.json").exists()


def test_refuses_a_set_without_lesions(lesion_and_healthy_set, tiny_weights, tmp_path, capsys):
    entries = json.loads(lesion_and_healthy_set.read_text())
    folder = lesion_and_healthy_set.parent
    entries["test"] = [
        {key: str(folder / value) if (folder / str(value)).is_file() else value for key, value in entry.items()}
        for entry in entries["test"]
        if entry["lesion"] == "none"
    ]
    datalist = tmp_path / "healthy_only.json"
    datalist.write_text(json.dumps(entries))
    output = tmp_path / "tuning.json"
    argv = [str(datalist), "--checkpoint", str(tiny_weights), "--overlaps", "0.0", "--json", str(output)]
    assert tune_postprocessing.main(argv) == 2
    assert f"{datalist}: no case with a lesion" in capsys.readouterr().err and not output.exists()
