"""The evaluation summary's counts: lesions found by size, normal subjects with any wound region, AUROC."""

from __future__ import annotations

import pytest

from bundle.evaluation import AnomalyEvaluationHandler


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
    assert summary["dice_by_lesion_kind"]["onj"]["n"] == 3
    assert summary["dice_by_lesion_kind"]["teeth_and_jaw_removed"]["mean"] == pytest.approx(0.7)
    assert summary["lesion_volume_ml"]["min"] == pytest.approx(0.6)
    two = summary["score_two_reconstructions"]
    assert not two["every_lesion_above_every_normal"]  # lesion c (5) is below normal f (6)
    assert two["auroc"] == pytest.approx(7 / 8)
    # lesion c has no region: its wound volume (0) ties healthy e's and is below healthy f's (30)
    volume = summary["score_wound_volume"]
    assert volume["lesion"]["min"] == 0 and volume["normal"]["max"] == 30
    assert volume["auroc"] == pytest.approx((3 * 2 + 0.5) / 8) and volume["normals_scoring_zero"] == 1
