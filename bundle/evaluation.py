"""Evaluation of the anomaly pipeline on cases with a known truth (simulated lesions and healthy controls).

MONAI's metric handlers each reduce one (prediction, label) pair per iteration; this evaluation needs, per subject,
both subject scores, the voxel metrics of the map and of the final wound segmentation, and then the separation of
lesion and normal subjects over the whole set. ``AnomalyEvaluationHandler`` collects those per case and writes one
``metrics.json``; the voxel metrics themselves come from ``bundle.metrics`` (built on MONAI's ``compute_dice`` and
``compute_roc_auc``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import convert_to_numpy

from bundle.metrics import average_precision, best_dice, subject_auroc
from bundle.outputs import write_text_atomically


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _summary(values: list[float]) -> dict:
    finite = _finite(values)
    if not finite:
        return {"n": 0}
    return {
        "n": len(finite),
        "mean": float(np.mean(finite)),
        "min": float(np.min(finite)),
        "max": float(np.max(finite)),
    }


class AnomalyEvaluationHandler:
    """Collect per-case results during an inference run and write ``<output_dir>/metrics.json`` at its end.

    Reads, per decollated case, from the engine's batch: ``truth_key`` (lesion mask on the 2 mm grid, absent or
    empty for healthy subjects) and ``lesion_key`` (the datalist's lesion kind, ``"none"`` for healthy); from the
    engine's output: ``anomaly_key`` (the anomaly map), ``wound_key`` (the final region map) and ``report_key``
    (the report of :class:`bundle.report.CaseReportd`, holding the three subject scores), and, when the
    datalist gives it, ``lesion_volume_key`` (the lesion's volume in cm^3). The summary counts the lesions of at
    least ``found_min_volume_ml`` whose wound segmentation reaches a Dice above ``found_dice`` ("found"), and the
    normal subjects with any wound region.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        truth_key: str = "truth",
        lesion_key: str = "lesion",
        anomaly_key: str = "pred_anomaly",
        wound_key: str = "wound",
        report_key: str = "report",
        lesion_volume_key: str = "lesion_volume_ml",
        found_dice: float = 0.3,
        found_min_volume_ml: float = 1.0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.truth_key, self.lesion_key = truth_key, lesion_key
        self.anomaly_key, self.wound_key, self.report_key = anomaly_key, wound_key, report_key
        self.lesion_volume_key = lesion_volume_key
        self.found_dice, self.found_min_volume_ml = found_dice, found_min_volume_ml
        self.cases: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        for batch, output in zip(engine.state.batch, engine.state.output):
            anomaly = convert_to_numpy(output[self.anomaly_key])
            truth = batch.get(self.truth_key)
            truth = np.zeros(anomaly.shape, bool) if truth is None else convert_to_numpy(truth) > 0
            wound = convert_to_numpy(output[self.wound_key]) > 0
            report = output[self.report_key]
            lesion = str(batch.get(self.lesion_key, "none"))
            volume = batch.get(self.lesion_volume_key)
            case = {
                "case": report["case"],
                "lesion": lesion,
                "score_two_reconstructions": report["subject_score"]["two_reconstructions"],
                "score_original_vs_reconstruction": report["subject_score"]["original_vs_reconstruction"],
                "score_wound_volume": report["subject_score"]["wound_volume_mm3"],
                "num_regions": report["num_regions"],
                "false_positive_voxels": int((wound & ~truth).sum()),
            }
            if volume is not None:
                case["lesion_volume_ml"] = float(volume)
            if truth.any():
                intersection = float((wound & truth).sum())
                case["dice"] = 2.0 * intersection / float(wound.sum() + truth.sum())
                case["average_precision"] = average_precision(torch.from_numpy(anomaly), torch.from_numpy(truth))
                case["best_dice"], case["best_dice_threshold"] = best_dice(
                    torch.from_numpy(anomaly), torch.from_numpy(truth)
                )
            self.cases.append(case)

    def summary(self) -> dict:
        lesion = [c for c in self.cases if c["lesion"] != "none"]
        normal = [c for c in self.cases if c["lesion"] == "none"]
        result: dict = {"num_lesion_cases": len(lesion), "num_normal_cases": len(normal)}
        for score in ("score_two_reconstructions", "score_original_vs_reconstruction", "score_wound_volume"):
            lesion_scores = [c[score] for c in lesion]
            normal_scores = [c[score] for c in normal]
            entry = {"lesion": _summary(lesion_scores), "normal": _summary(normal_scores)}
            if lesion and normal:
                labels = [1] * len(lesion_scores) + [0] * len(normal_scores)
                entry["auroc"] = subject_auroc(lesion_scores + normal_scores, labels)
                entry["every_lesion_above_every_normal"] = min(lesion_scores) > max(normal_scores)
                entry["normals_scoring_zero"] = sum(s == 0 for s in normal_scores)
            result[score] = entry
        for metric in ("dice", "average_precision", "best_dice"):
            result[metric] = _summary([c[metric] for c in lesion if metric in c])
        result["dice_by_lesion_kind"] = {
            kind: _summary([c["dice"] for c in lesion if c["lesion"] == kind and "dice" in c])
            for kind in sorted({c["lesion"] for c in lesion})
        }
        sized = [c for c in lesion if c.get("lesion_volume_ml", 0.0) >= self.found_min_volume_ml]
        result["lesions_found"] = {
            "min_volume_ml": self.found_min_volume_ml,
            "dice_above": self.found_dice,
            "n": len(sized),
            "found": sum(c.get("dice", 0.0) > self.found_dice for c in sized),
        }
        result["lesion_volume_ml"] = _summary([c["lesion_volume_ml"] for c in lesion if "lesion_volume_ml" in c])
        result["false_positive_voxels_in_normals"] = _summary([float(c["false_positive_voxels"]) for c in normal])
        result["normals_with_any_region"] = sum(c["num_regions"] > 0 for c in normal)
        result["cases"] = self.cases
        return result

    def write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.output_dir / "metrics.json", json.dumps(self.summary(), indent=4) + "\n")
