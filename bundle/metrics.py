"""Evaluation metrics MONAI does not provide (method.md section 8): voxel-level average precision of a continuous
anomaly map, the best Dice over all thresholds with the threshold reaching it, plus thin wrappers around MONAI's
``compute_dice`` (Dice at a fixed threshold), ``compute_hausdorff_distance`` (HD95 of a segmentation in mm) and
``compute_roc_auc`` (subject-level AUROC of scores).

All threshold sweeps are one sort and cumulative sums over the voxels: every distinct score is evaluated as a
threshold (prediction = score >= threshold) without a Python loop. Ties are grouped, as scikit-learn's
``average_precision_score`` does.

:class:`VoxelAveragePrecisionMetric` is a MONAI ``CumulativeIterationMetric`` that pools the voxels of every subject
seen (dataset-level figures, as reported in the anomaly segmentation literature) and plugs into
``monai.handlers.IgniteMetricHandler``; :func:`best_dice` of its buffer gives the pooled best Dice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.metrics import CumulativeIterationMetric, compute_dice, compute_hausdorff_distance, compute_roc_auc
from monai.utils import convert_to_tensor, evenly_divisible_all_gather


def _flat_pair(y_score: NdarrayOrTensor, y_true: NdarrayOrTensor) -> tuple[torch.Tensor, torch.Tensor]:
    score = convert_to_tensor(y_score, track_meta=False)
    truth = convert_to_tensor(y_true, track_meta=False)
    if score.shape != truth.shape:
        raise ValueError(f"score map of shape {tuple(score.shape)} and truth mask of shape {tuple(truth.shape)} differ")
    return score.flatten().double(), (truth.flatten() > 0).to(score.device)


def _threshold_sweep(score: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thresholds (distinct scores, descending) with the true and all positives predicted at each (score >= t)."""
    order = torch.argsort(score, descending=True, stable=True)
    sorted_score = score[order]
    true_positives = torch.cumsum(truth[order].long(), dim=0)
    # the last position of each run of equal scores: predicting score >= t includes the whole run
    run_end = torch.ones_like(sorted_score, dtype=torch.bool)
    run_end[:-1] = sorted_score[1:] != sorted_score[:-1]
    predicted = torch.arange(1, score.numel() + 1, device=score.device)[run_end]
    return sorted_score[run_end], true_positives[run_end], predicted


def average_precision(y_score: NdarrayOrTensor, y_true: NdarrayOrTensor) -> float:
    """Voxel-level average precision: sum over thresholds of (R_n - R_{n-1}) * P_n (scikit-learn's definition).

    Args:
        y_score: continuous map, any shape (e.g. (1, X, Y, Z)), higher = more anomalous.
        y_true: truth mask of the same shape; voxels > 0 are lesion.

    Returns NaN when the truth mask is empty (precision-recall is undefined without positives).
    """
    score, truth = _flat_pair(y_score, y_true)
    positives = int(truth.sum())
    if positives == 0 or score.numel() == 0:
        return float("nan")
    _, true_positives, predicted = _threshold_sweep(score, truth)
    precision = true_positives.double() / predicted.double()
    recall = true_positives.double() / positives
    recall_gain = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((recall_gain * precision).sum())


def best_dice(y_score: NdarrayOrTensor, y_true: NdarrayOrTensor) -> tuple[float, float]:
    """The best Dice of ``y_score >= t`` against ``y_true`` over every threshold t, and that threshold.

    Dice at threshold t is 2 TP / (predicted + positives). Among thresholds with equal Dice the highest one is
    returned. Shapes as :func:`average_precision`; returns ``(nan, nan)`` when the truth mask is empty.
    """
    score, truth = _flat_pair(y_score, y_true)
    positives = int(truth.sum())
    if positives == 0 or score.numel() == 0:
        return float("nan"), float("nan")
    thresholds, true_positives, predicted = _threshold_sweep(score, truth)
    dice = 2.0 * true_positives.double() / (predicted + positives).double()
    best = int(torch.argmax(dice))  # the first maximum = the highest threshold
    return float(dice[best]), float(thresholds[best])


def dice_at_threshold(y_score: NdarrayOrTensor, y_true: NdarrayOrTensor, threshold: float) -> float:
    """Dice of ``y_score >= threshold`` against ``y_true`` (MONAI's ``compute_dice``); NaN for an empty truth."""
    score, truth = _flat_pair(y_score, y_true)
    prediction = (score >= threshold).float().reshape(1, 1, -1)
    return float(compute_dice(prediction, truth.float().reshape(1, 1, -1), include_background=True)[0, 0])


def hausdorff95_mm(y_pred: NdarrayOrTensor, y_true: NdarrayOrTensor, spacing: float | Sequence[float] = 1.0) -> float:
    """The 95th percentile symmetric Hausdorff distance between two masks (voxels > 0), in mm: MONAI's
    ``compute_hausdorff_distance(percentile=95)`` on one subject. ``spacing``: voxel size, one number or per axis.
    NaN when either mask is empty (the distance is undefined)."""
    prediction, truth = (convert_to_tensor(v, track_meta=False) > 0 for v in (y_pred, y_true))
    if prediction.shape != truth.shape:
        raise ValueError(f"masks of shape {tuple(prediction.shape)} and {tuple(truth.shape)} differ")
    if not bool(prediction.any()) or not bool(truth.any()):
        return float("nan")
    spatial = prediction.shape[-3:]
    distance = compute_hausdorff_distance(
        prediction.reshape(1, 1, *spatial).float(),
        truth.reshape(1, 1, *spatial).float(),
        include_background=True,
        percentile=95,
        spacing=spacing,
    )
    return float(distance[0, 0])


def _vector(values: NdarrayOrTensor | Sequence[float]) -> torch.Tensor:
    """One value per subject as a flat CPU tensor (MONAI's ROC AUC is computed on the CPU anyway)."""
    if isinstance(values, (list, tuple)):
        return torch.as_tensor(np.asarray(values, dtype=np.float64))
    return convert_to_tensor(values, track_meta=False).detach().cpu().flatten()


def subject_auroc(scores: NdarrayOrTensor | Sequence[float], labels: NdarrayOrTensor | Sequence[int]) -> float:
    """Subject-level area under the ROC curve of anomaly scores (MONAI's ``compute_roc_auc``).

    Args:
        scores: one score per subject, shape (N,), higher = more likely abnormal (e.g. :func:`subject_score`).
        labels: 1 for abnormal, 0 for normal, shape (N,). Both classes must be present, otherwise NaN.
    """
    score, label = _vector(scores).double(), _vector(labels).long()
    if score.numel() != label.numel():
        raise ValueError(f"{score.numel()} scores but {label.numel()} labels")
    return float(compute_roc_auc(score, label))


class VoxelAveragePrecisionMetric(CumulativeIterationMetric):
    """Voxel-level average precision over all voxels of all subjects seen since the last ``reset``.

    Inputs per call: ``y_pred`` continuous maps and ``y`` truth masks, batch-first (B, 1, X, Y, Z) or lists of
    channel-first tensors; volumes may differ in size between calls. ``get_buffer`` returns the pooled (score, truth)
    voxels, from which :func:`best_dice` gives the pooled best Dice.

    Each batch is buffered as one (1, N) row: ``Cumulative.extend`` splits what it gets along the first dimension
    into buffer items, so a flat (N,) tensor would become N one-voxel tensors (seconds and hundreds of MB per 2 mm
    volume). The rows differ in length between volumes, so ``_sync`` concatenates them where ``Cumulative`` stacks.
    """

    def _sync(self) -> None:
        if self._synced or self._buffers is None:
            return
        self._synced_tensors = [evenly_divisible_all_gather(torch.cat(b, dim=0), concat=True) for b in self._buffers]
        self._synced = True

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any):  # type: ignore
        if y is None:
            raise ValueError(f"{self.__class__.__name__} needs the truth mask y")
        if y_pred.shape != y.shape:
            raise ValueError(f"y_pred of shape {tuple(y_pred.shape)} and y of shape {tuple(y.shape)} differ")
        score = convert_to_tensor(y_pred, track_meta=False).flatten().float()
        truth = convert_to_tensor(y, track_meta=False).flatten() > 0
        return score[None], truth.to(torch.uint8)[None]

    def aggregate(self) -> float:
        y_pred, y = self.get_buffer()
        return average_precision(y_pred, y)
