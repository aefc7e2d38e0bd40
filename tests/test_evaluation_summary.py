"""The evaluation summary's counts (lesions found by size, normal subjects with any wound region, AUROC) and its
voxel metrics on hand-computed cases."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.evaluation import AnomalyEvaluationHandler, read_fixed_thresholds, size_class


def _case(name, lesion, score, regions, dice=None, volume=None):
    case = {
        "case": name,
        "lesion": lesion,
        "score_two_reconstructions": score,
        "score_original_vs_reconstruction": score + 10,
        "score_wound_volume": (30.0 if lesion == "none" else 100.0) * regions,
        "num_regions": regions,
        "false_positive_voxels": 0 if lesion != "none" else 3 * regions,
    }
    if dice is not None:
        case.update(dice=dice, average_precision=dice, best_dice=dice)
    if volume is not None:
        case["lesion_volume_ml"] = volume
    return case


def test_summary_counts_found_lesions_by_size_and_normals_with_regions(tmp_path):
    handler = AnomalyEvaluationHandler(tmp_path)
    handler.cases = [
        _case("a", "onj", 40, 1, dice=0.8, volume=2.5),
        _case("b", "onj", 30, 1, dice=0.2, volume=1.2),  # >= 1 ml, not found
        _case("c", "onj", 5, 0, dice=0.0, volume=0.6),  # below 1 ml: not counted
        _case("d", "teeth_and_jaw_removed", 90, 2, dice=0.7, volume=9.0),
        _case("e", "none", 0, 0),
        _case("f", "none", 6, 1),
    ]
    summary = handler.summary()
    assert summary["lesions_found"] == {"min_volume_ml": 1.0, "dice_above": 0.3, "n": 3, "found": 2}
    assert summary["normals_with_any_region"] == 1
    assert summary["by_lesion_kind"]["onj"]["dice"]["n"] == 3 and summary["by_lesion_kind"]["onj"]["found"] == 1
    assert summary["by_lesion_kind"]["teeth_and_jaw_removed"]["dice"]["mean"] == pytest.approx(0.7)
    assert summary["lesion_volume_ml"]["min"] == pytest.approx(0.6)
    two = summary["score_two_reconstructions"]
    assert not two["every_lesion_above_every_normal"]  # lesion c (5) is below normal f (6)
    assert two["auroc"] == pytest.approx(7 / 8)
    # ranked 90, 40, 30 (lesions), 6 (healthy), 5 (lesion), 0: precision 1, 1, 1, then 4/5 at the last lesion
    assert two["average_precision"] == pytest.approx((1 + 1 + 1 + 4 / 5) / 4)
    # lesion c has no region: its wound volume (0) ties healthy e's and is below healthy f's (30)
    volume = summary["score_wound_volume"]
    assert volume["lesion"]["min"] == 0 and volume["normal"]["max"] == 30
    assert volume["auroc"] == pytest.approx((3 * 2 + 0.5) / 8) and volume["normals_scoring_zero"] == 1


def _report(case: str, two: int, original: int, wound_mm3: float, regions: int) -> dict:
    """The parts of a case report (bundle.report.CaseReportd) that the handler reads."""
    return {
        "case": case,
        "subject_score": {
            "two_reconstructions": two,
            "original_vs_reconstruction": original,
            "wound_volume_mm3": wound_mm3,
        },
        "num_regions": regions,
    }


def _grid(values: torch.Tensor) -> MetaTensor:
    return MetaTensor(values[None].float(), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))


def test_collected_voxel_metrics_match_hand_computed_values(tmp_path):
    """One lesion case (a 3^3 cube; the wound is the cube moved by one voxel; the maps are the truth itself and its
    complement) and one healthy case, through ``collect`` as the engine calls it."""
    truth = torch.zeros(10, 10, 10)
    truth[2:5, 2:5, 2:5] = 1
    wound = torch.roll(truth, 1, dims=0)
    healthy = torch.zeros(10, 10, 10)
    report = _report("c", two=3, original=1, wound_mm3=216.0, regions=1)
    state = SimpleNamespace(
        batch=[
            {"truth": _grid(truth), "lesion": "onj", "lesion_volume_ml": 2.0},
            {"lesion": "none"},
        ],
        output=[
            {"wound": _grid(wound), "pred_anomaly": _grid(truth), "pred_residual": _grid(1 - truth), "report": report},
            {
                "wound": _grid(healthy),
                "pred_anomaly": _grid(healthy),
                "pred_residual": _grid(healthy),
                "report": dict(report, case="h", num_regions=0),
            },
        ],
    )
    handler = AnomalyEvaluationHandler(tmp_path)
    handler.collect(SimpleNamespace(state=state))
    lesion = handler.cases[0]
    assert lesion["dice"] == pytest.approx(2 * 18 / 54)  # the moved cube keeps 2 of its 3 layers
    assert lesion["hd95_mm"] == pytest.approx(2.0)  # one voxel of 2 mm
    assert lesion["average_precision"] == pytest.approx(1.0) and lesion["best_dice"] == pytest.approx(1.0)
    assert lesion["original_vs_reconstruction_average_precision"] == pytest.approx(27 / 1000)  # all tied at 0
    summary = handler.summary()
    pooled = summary["voxel_metrics"]["two_reconstructions"]["pooled_average_precision"]
    assert pooled == pytest.approx(1.0)  # the healthy case's zeros rank below every lesion voxel
    assert summary["voxel_metrics"]["original_vs_reconstruction"]["pooled_average_precision"] < 0.03
    assert summary["by_lesion_size"]["1-3 cm^3"]["n"] == 1 and summary["by_lesion_size"]["under 1 cm^3"]["n"] == 0
    assert summary["by_lesion_kind"]["onj"]["hd95_mm"]["mean"] == pytest.approx(2.0)
    assert [size_class(v) for v in (0.5, 1.0, 2.99, 3.0)] == ["under 1 cm^3", "1-3 cm^3", "1-3 cm^3", "over 3 cm^3"]


def test_threshold_rules_are_measured_on_one_set_and_applied_on_another(tmp_path):
    """Validation set: the tuned threshold is the pooled best Dice's, the calibrated one the value that the given
    share of healthy voxels reaches; the test set's handler reads both from the validation metrics.json."""
    truth = torch.zeros(10, 10, 10)
    truth[2:5, 2:5, 2:5] = 1
    healthy_map = torch.zeros(10, 10, 10)
    healthy_map[0, 0, :4] = torch.tensor([0.9, 0.8, 0.7, 0.6])  # the four highest healthy voxels
    report = _report("c", two=1, original=1, wound_mm3=0.0, regions=0)
    lesion_output = {"wound": _grid(truth), "pred_anomaly": _grid(0.95 * truth), "report": report}
    healthy_output = {"wound": _grid(torch.zeros(10, 10, 10)), "pred_anomaly": _grid(healthy_map), "report": report}
    state = SimpleNamespace(
        batch=[{"truth": _grid(truth), "lesion": "onj"}, {"lesion": "none"}], output=[lesion_output, healthy_output]
    )
    validation = AnomalyEvaluationHandler(
        tmp_path / "validation", maps={"two_reconstructions": "pred_anomaly"}, healthy_false_positive_rate=0.003
    )
    validation.collect(SimpleNamespace(state=state))
    validation.write(None)
    measured = validation.summary()["voxel_metrics"]["two_reconstructions"]
    assert measured["validation_tuned_threshold"] == pytest.approx(0.95) and measured["pooled_best_dice"] == 1.0
    assert measured["healthy_calibrated_threshold"] == pytest.approx(0.7)  # 3 of 1000 healthy voxels reach it
    thresholds = read_fixed_thresholds(tmp_path / "validation" / "metrics.json")
    assert thresholds == {
        "two_reconstructions": {"validation_tuned": pytest.approx(0.95), "healthy_calibrated": pytest.approx(0.7)}
    }
    test = AnomalyEvaluationHandler(tmp_path, maps={"two_reconstructions": "pred_anomaly"}, fixed_thresholds=thresholds)
    state.output[0] = dict(lesion_output, pred_anomaly=_grid(0.8 * truth))  # weaker on the test set
    test.collect(SimpleNamespace(state=state))
    fixed = test.summary()["voxel_metrics"]["two_reconstructions"]["dice_at_fixed_threshold"]
    assert fixed["validation_tuned"]["dice"]["mean"] == 0.0  # 0.8 < 0.95: the tuned threshold misses it
    assert fixed["validation_tuned"]["hd95_mm"]["n"] == 0  # nothing above it: no distance
    assert fixed["healthy_calibrated"]["dice"]["mean"] == pytest.approx(1.0)
    assert fixed["healthy_calibrated"]["hd95_mm"]["mean"] == 0.0  # the thresholded map is the truth itself
    with pytest.raises(ValueError, match="not the metrics.json"):
        read_fixed_thresholds(tmp_path / "missing.json")


def test_reconstruction_mse_and_teeth_dice_of_healthy_subjects(tmp_path):
    image = torch.zeros(10, 10, 10)
    image[4:6, 4:6, 4:6] = 0.8  # upper teeth, 8 voxels
    report = _report("h", two=0, original=0, wound_mm3=0.0, regions=0)
    output = {
        "image": _grid(image),
        "pred_recon1": _grid(image),  # exact
        "pred_recon2": _grid(0.9 * image),  # teeth at 0.72, under the 0.75 teeth threshold: lost
        "wound": _grid(torch.zeros(10, 10, 10)),
        "pred_anomaly": _grid(torch.zeros(10, 10, 10)),
        "report": report,
    }
    handler = AnomalyEvaluationHandler(tmp_path, maps={"two_reconstructions": "pred_anomaly"})
    handler.collect(SimpleNamespace(state=SimpleNamespace(batch=[{"lesion": "none"}], output=[output])))
    healthy = handler.summary()["reconstruction_of_healthy_subjects"]
    assert healthy["reconstruction_mse_stage1"]["mean"] == 0.0
    assert healthy["reconstruction_teeth_dice_stage1"]["mean"] == 1.0
    assert healthy["reconstruction_mse_stage2"]["mean"] == pytest.approx(8 * 0.08**2 / 1000, rel=1e-5)  # float32
    assert healthy["reconstruction_teeth_dice_stage2"]["mean"] == 0.0


def test_restoration_of_a_removal_is_measured_against_the_intact_map(tmp_path):
    """Paper section 5.1, second part: a lesion subject's reconstructions against the map before the removal, over
    the whole grid and inside the removed tissue; stage 2 restores the removed teeth, stage 1 copies the hole."""
    intact = torch.zeros(10, 10, 10)
    intact[2:8, 2:8, 2:4] = 0.7  # mandible
    intact[4:6, 4:6, 4:6] = 0.9  # lower teeth, 8 voxels: removed by the lesion
    removed = torch.zeros(10, 10, 10, dtype=torch.bool)
    removed[4:6, 4:6, 4:6] = True
    image = torch.where(removed, torch.zeros(()), intact)
    report = _report("r", two=5, original=5, wound_mm3=64.0, regions=1)
    output = {
        "image": _grid(image),
        "pred_recon1": _grid(image),
        "pred_recon2": _grid(intact),
        "wound": _grid(removed.float()),
        "pred_anomaly": _grid(removed.float()),
        "report": report,
    }
    batch = {"truth": _grid(removed.float()), "intact": _grid(intact), "lesion": "teeth_and_jaw_removed"}
    handler = AnomalyEvaluationHandler(tmp_path, maps={"two_reconstructions": "pred_anomaly"})
    handler.collect(SimpleNamespace(state=SimpleNamespace(batch=[batch], output=[output])))
    restoration = handler.summary()["restoration_of_lesion_subjects"]["teeth_and_jaw_removed"]
    assert restoration["restoration_mse_stage1"]["mean"] == pytest.approx(8 * 0.81 / 1000, rel=1e-5)
    assert restoration["restoration_lesion_mse_stage1"]["mean"] == pytest.approx(0.81, rel=1e-5)
    assert restoration["restoration_teeth_dice_stage1"]["mean"] == 0.0
    assert restoration["restoration_mse_stage2"]["mean"] == 0.0
    assert restoration["restoration_lesion_mse_stage2"]["mean"] == 0.0
    assert restoration["restoration_teeth_dice_stage2"]["mean"] == 1.0
    assert "reconstruction_mse_stage1" not in handler.cases[0]  # the input is not the reference of a lesion case


def test_figure_slices_go_through_the_lesion_for_the_first_cases_of_each_kind(tmp_path):
    truth = torch.zeros(10, 12, 14)
    truth[2:5, 6:9, 9:12] = 1  # centroid (3, 7, 10)
    report = _report("c", two=1, original=1, wound_mm3=0.0, regions=0)
    cases = [f"c{k}" for k in range(3)]
    state = SimpleNamespace(
        batch=[{"truth": _grid(truth), "lesion": "onj"} for _ in cases],
        output=[
            {"wound": _grid(truth), "pred_anomaly": _grid(2 * truth), "report": dict(report, case=c)} for c in cases
        ],
    )
    handler = AnomalyEvaluationHandler(tmp_path, maps={"two_reconstructions": "pred_anomaly"}, figure_cases_per_kind=2)
    handler.collect(SimpleNamespace(state=state))
    assert sorted(p.name for p in (tmp_path / "figure_slices").iterdir()) == ["c0.npz", "c1.npz"]
    slices = np.load(tmp_path / "figure_slices" / "c0.npz")
    assert slices["point"].tolist() == [3, 7, 10]
    assert slices["truth.sagittal"].shape == (12, 14) and slices["truth.axial"].shape == (10, 12)
    np.testing.assert_array_equal(slices["two_reconstructions.coronal"], 2 * truth[:, 7, :].numpy())
    assert "intact.axial" not in slices and "stage1.axial" not in slices  # absent volumes are skipped
