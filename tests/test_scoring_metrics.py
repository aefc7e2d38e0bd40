"""Subject score (method.md section 5) and voxel/subject metrics against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from bundle.metrics import (
    VoxelAveragePrecisionMetric,
    average_precision,
    best_dice,
    dice_at_threshold,
    subject_auroc,
)
from bundle.scoring import AbsoluteDifferenced, SubjectScored, subject_score


def hand_made_map() -> np.ndarray:
    """A 5 x 4 x 3 block at 0.5, a lone voxel at 0.9 and a one-voxel-thin line at 0.6, in a 16^3 volume."""
    volume = np.zeros((16, 16, 16), dtype=np.float32)
    volume[4:9, 4:8, 4:7] = 0.5
    volume[12, 12, 12] = 0.9
    volume[1, 10:15, 1] = 0.6
    return volume


@pytest.mark.parametrize("structure", ["ball", "cube"])
def test_subject_score_counts_voxels_surviving_erosion(structure):
    volume = hand_made_map()
    # the block erodes to 3 x 2 x 1 = 6 voxels; the lone voxel and the line vanish
    assert subject_score(volume, threshold=0.1, erosion_iterations=1, structure=structure) == 6
    assert subject_score(volume, threshold=0.1, erosion_iterations=0) == 60 + 1 + 5
    assert subject_score(volume, threshold=0.7, erosion_iterations=0) == 1
    assert subject_score(volume, threshold=0.7, erosion_iterations=1) == 0
    assert (
        subject_score(volume, threshold=0.5, erosion_iterations=1) == 6
    )  # a voxel at the threshold counts (>=, as AsDiscrete)
    assert subject_score(volume, threshold=0.51, erosion_iterations=1) == 0
    assert subject_score(np.zeros((4, 4, 4)), threshold=0.1) == 0


@pytest.mark.parametrize("structure, connectivity", [("ball", 1), ("cube", 3)])
def test_subject_score_iterations_match_scipy_binary_erosion(structure, connectivity):
    block = np.zeros((12, 12, 12), dtype=np.float32)
    block[3:9, 3:9, 3:9] = 1.0
    assert [subject_score(block, 0.5, n, structure) for n in range(4)] == [216, 64, 8, 0]
    rng = np.random.default_rng(3)
    mask = rng.random((10, 11, 12)) < 0.7
    element = ndimage.generate_binary_structure(3, connectivity)
    for iterations in (1, 2):
        expected = ndimage.binary_erosion(mask, element, iterations=iterations, border_value=1).sum()
        assert subject_score(mask.astype(np.float32), 0.5, iterations, structure) == expected


def test_subject_score_accepts_numpy_torch_and_channel_dims():
    volume = hand_made_map()
    as_meta = MetaTensor(torch.from_numpy(volume)[None])
    for variant in (volume, volume[None], volume[None, None], torch.from_numpy(volume), as_meta):
        assert subject_score(variant, threshold=0.1, erosion_iterations=1) == 6
    with pytest.raises(ValueError, match="one 3D anomaly map"):
        subject_score(np.zeros((3, 8, 8, 8)), threshold=0.1)


def test_subject_score_does_not_erode_from_outside_the_volume():
    volume = np.zeros((8, 8, 8), dtype=np.float32)
    volume[:3, :3, :3] = 1.0  # a corner block: only its inner faces erode
    assert subject_score(volume, threshold=0.5, erosion_iterations=1) == 8


def test_subject_scored_writes_the_score_key():
    data = SubjectScored("anomaly", threshold=0.1, erosion_iterations=1)(
        {"anomaly": torch.from_numpy(hand_made_map())[None]}
    )
    assert data["anomaly_score"] == 6 and isinstance(data["anomaly_score"], int)


def test_subject_score_counts_only_voxels_in_the_region():
    volume = hand_made_map()
    far = np.zeros_like(volume)
    far[10:14, 10:14, 10:14] = 0.5  # a second block, far from the jaw: 2 x 2 x 2 survive the erosion
    volume = np.maximum(volume, far)
    assert subject_score(volume, threshold=0.1, erosion_iterations=1) == 6 + 8
    region = np.zeros(volume.shape, dtype=bool)
    region[:10, :10, :10] = True  # the search region holds the first block only
    assert subject_score(volume, threshold=0.1, region=region, erosion_iterations=1) == 6
    # the region's border cuts the eroded block (x 5..7, y 5..6, z 5) to x = 5: it does not erode the block again
    region[6:] = False
    assert subject_score(volume, threshold=0.1, region=region, erosion_iterations=1) == 1 * 2 * 1
    region[:] = False
    region[4:9, 4:8, 4] = True  # only the block's bottom layer, which the erosion removes
    assert subject_score(volume, threshold=0.1, region=region[None], erosion_iterations=1) == 0
    assert subject_score(
        volume, threshold=0.1, region=np.ones(volume.shape, bool), erosion_iterations=1
    ) == subject_score(volume, 0.1, erosion_iterations=1)
    data = {"anomaly": torch.from_numpy(volume)[None], "search_region": torch.from_numpy(region)[None]}
    assert SubjectScored("anomaly", 0.1, region_key="search_region", erosion_iterations=1)(data)["anomaly_score"] == 0
    with pytest.raises(ValueError, match="region has shape"):
        subject_score(volume, threshold=0.1, region=np.ones((8, 8, 8), bool))


SCORES = torch.tensor([0.9, 0.8, 0.8, 0.3, 0.1])
TRUTH = torch.tensor([1, 0, 1, 1, 0])


def test_average_precision_by_hand_with_ties():
    # thresholds 0.9: P 1, R 1/3; 0.8 (tie, both voxels at once): P 2/3, R 2/3; 0.3: P 3/4, R 1
    expected = 1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 4
    assert average_precision(SCORES, TRUTH) == pytest.approx(expected)
    assert average_precision(SCORES.numpy().reshape(1, 5, 1, 1), TRUTH.numpy().reshape(1, 5, 1, 1)) == pytest.approx(
        expected
    )
    assert average_precision(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1, 1, 0])) == pytest.approx(1.0)
    assert np.isnan(average_precision(SCORES, torch.zeros(5)))


def test_best_dice_and_its_threshold_by_hand():
    dice, threshold = best_dice(SCORES, TRUTH)
    # candidates: t=0.9 -> 2/(1+3) = 0.5; t=0.8 -> 4/(3+3) = 0.667; t=0.3 -> 6/(4+3) = 0.857; t=0.1 -> 6/8
    assert dice == pytest.approx(6 / 7)
    assert threshold == pytest.approx(0.3)
    assert dice_at_threshold(SCORES, TRUTH, threshold) == pytest.approx(6 / 7, rel=1e-6)
    perfect, cut = best_dice(torch.tensor([0.2, 0.7, 0.7, 0.1]), torch.tensor([0, 1, 1, 0]))
    assert perfect == pytest.approx(1.0) and cut == pytest.approx(0.7)


def test_dice_at_fixed_threshold_by_hand():
    # prediction [1, 1, 1, 0, 0] against truth [1, 0, 1, 1, 0]: 2 * 2 / (3 + 3)
    assert dice_at_threshold(SCORES, TRUTH, 0.5) == pytest.approx(2 / 3, rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        dice_at_threshold(SCORES, TRUTH[:4], 0.5)


def brute_force(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """AP and best Dice by an explicit loop over thresholds (the reference the vectorised code must match)."""
    positives = truth.sum()
    ap, previous_recall, dices = 0.0, 0.0, []
    for threshold in np.unique(scores)[::-1]:
        predicted = scores >= threshold
        tp = (predicted & truth).sum()
        recall = tp / positives
        ap += (recall - previous_recall) * tp / predicted.sum()
        previous_recall = recall
        dices.append(2 * tp / (predicted.sum() + positives))
    return ap, max(dices)


def test_vectorised_metrics_match_a_threshold_loop():
    rng = np.random.default_rng(1)
    truth = rng.random((6, 7, 8)) < 0.2
    scores = np.round(rng.random((6, 7, 8)) + 0.5 * truth, 2).astype(np.float32)  # rounded: many ties
    expected_ap, expected_dice = brute_force(scores, truth)
    assert average_precision(scores, truth) == pytest.approx(expected_ap)
    assert best_dice(scores, truth)[0] == pytest.approx(expected_dice)


def test_pooled_metrics_equal_the_functions_on_all_voxels():
    rng = np.random.default_rng(2)
    first = (torch.from_numpy(rng.random((1, 1, 4, 5, 6))), torch.from_numpy(rng.random((1, 1, 4, 5, 6)) < 0.3))
    second = (torch.from_numpy(rng.random((2, 1, 3, 3, 3))), torch.from_numpy(rng.random((2, 1, 3, 3, 3)) < 0.3))
    all_scores = torch.cat([first[0].flatten(), second[0].flatten()])
    all_truth = torch.cat([first[1].flatten(), second[1].flatten()])
    ap_metric = VoxelAveragePrecisionMetric()
    for y_pred, y in (first, second):
        ap_metric(y_pred=y_pred, y=y)
    assert ap_metric.aggregate() == pytest.approx(average_precision(all_scores, all_truth))
    # the pooled best Dice, as the evaluation computes it: best_dice on the metric's buffers (all voxels, in order)
    pooled_scores, pooled_truth = ap_metric.get_buffer()
    torch.testing.assert_close(pooled_scores.flatten(), all_scores.float())
    assert torch.equal(pooled_truth.flatten().bool(), all_truth)
    expected_dice, expected_threshold = best_dice(all_scores, all_truth)
    dice, threshold = best_dice(*ap_metric.get_buffer())
    assert dice == pytest.approx(expected_dice)
    assert threshold == pytest.approx(expected_threshold)
    # one buffer row per call, not one per voxel (Cumulative.extend splits along the first dimension)
    assert len(ap_metric._buffers[0]) == 2
    listed = VoxelAveragePrecisionMetric()
    listed(y_pred=[MetaTensor(first[0][0])], y=[first[1][0]])  # channel-first list, as a handler passes a case
    assert len(listed._buffers[0]) == 1 and listed.aggregate() == pytest.approx(average_precision(*first))


def test_subject_auroc_uses_scores_and_handles_ties():
    # normals 0, 1, 2; patients 2, 3: pairs won 1 + 1 + 0.5 (tie) and 3 -> 5.5 / 6
    assert subject_auroc([0, 1, 2, 2, 3], [0, 0, 0, 1, 1]) == pytest.approx(5.5 / 6)
    assert subject_auroc(np.array([0, 0, 1, 30, 1500]), np.array([0, 0, 0, 1, 1])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="labels"):
        subject_auroc([0, 1], [0, 1, 1])


def test_absolute_difference_is_stored_under_its_name():
    reconstruction = torch.tensor([[[[0.2, 0.9], [0.5, 0.5]]]])
    image = torch.tensor([[[[0.7, 0.4], [0.5, 0.0]]]])
    data = AbsoluteDifferenced("recon", reference_key="image", names="residual")(
        {"recon": reconstruction, "image": image}
    )
    torch.testing.assert_close(data["residual"], torch.tensor([[[[0.5, 0.5], [0.0, 0.5]]]]))
    assert data["recon"] is reconstruction
