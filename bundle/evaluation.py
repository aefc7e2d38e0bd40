"""Evaluation of the anomaly pipeline on cases with a known truth (simulated lesions and healthy controls).

MONAI's metric handlers each reduce one (prediction, label) pair per iteration; this evaluation needs, per subject,
both subject scores, the voxel metrics of the map and of the final wound segmentation, and then the separation of
lesion and normal subjects over the whole set. ``AnomalyEvaluationHandler`` collects those per case and writes one
``metrics.json``; the voxel metrics themselves come from ``bundle.metrics`` (built on MONAI's ``compute_dice`` and
``compute_roc_auc``, ``compute_hausdorff_distance``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import convert_to_tensor

from bundle.atomic_files import hidden_name, write_json_atomically
from bundle.metrics import (
    VoxelAveragePrecisionMetric,
    average_precision,
    best_dice,
    dice_at_threshold,
    hausdorff95_mm,
    subject_auroc,
)
from bundle.transforms import teeth_mask

# name -> output key of the maps measured at voxel level: those of configs/inference.json#scoring_steps
DEFAULT_MAPS = {"two_reconstructions": "pred_anomaly", "original_vs_reconstruction": "pred_residual"}
# generator -> output key of its reconstruction (configs/inference.json: SplitDimd of the network's output)
DEFAULT_RECONSTRUCTIONS = {"stage1": "pred_recon1", "stage2": "pred_recon2"}


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


THRESHOLD_RULES = ("validation_tuned", "healthy_calibrated")


def read_fixed_thresholds(metrics_file: str | os.PathLike | None) -> dict[str, dict[str, float]]:
    """Both threshold rules of every map from the ``metrics.json`` of an evaluation of a validation set (never the
    test set), for ``AnomalyEvaluationHandler(fixed_thresholds=...)``; ``{}`` for None. A missing or unreadable file,
    or one without the thresholds, raises ``ValueError`` naming it."""
    if metrics_file is None:
        return {}
    try:
        voxel_metrics = json.loads(Path(metrics_file).read_text())["voxel_metrics"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{metrics_file}: not the metrics.json of an evaluation run ({error})") from None
    thresholds = {
        name: {rule: entry[f"{rule}_threshold"] for rule in THRESHOLD_RULES if f"{rule}_threshold" in entry}
        for name, entry in voxel_metrics.items()
    }
    if not any(thresholds.values()):
        raise ValueError(f"{metrics_file}: holds no thresholds (a set with lesion and healthy subjects gives both)")
    return thresholds


# lesion size classes of the breakdown, cm^3: [low, high)
SIZE_CLASSES = {"under 1 cm^3": (0.0, 1.0), "1-3 cm^3": (1.0, 3.0), "over 3 cm^3": (3.0, math.inf)}


def size_class(volume_ml: float) -> str:
    """The breakdown class of a lesion volume in cm^3 (``SIZE_CLASSES``)."""
    return next(name for name, (low, high) in SIZE_CLASSES.items() if low <= volume_ml < high)


FIGURE_SLICES = "figure_slices"
PLANES = ("sagittal", "coronal", "axial")


def save_figure_slices(path: Path, volumes: Mapping[str, torch.Tensor | None], lesion: torch.Tensor) -> Path:
    """Save the sagittal, coronal and axial slices (RAS voxel axes of the 2 mm grid: x, y, z) of every given volume
    through one point, as ``<name>.<plane>`` arrays of an ``.npz``, for the figures of ``scripts/report_evaluation``.
    The point is the lesion's centroid, or for a healthy subject the teeth's (x' > 0.75) of ``volumes["input"]``,
    or the grid's centre. Volumes that are None are skipped. Slices, not volumes, keep a run's folder small."""
    present = {name: convert_to_tensor(v, track_meta=False).squeeze(0) for name, v in volumes.items() if v is not None}
    anchor = lesion.squeeze(0)
    if not anchor.any() and "input" in present:
        anchor = teeth_mask(present["input"][None], kernel_size=1).squeeze(0)
    shape = next(iter(present.values())).shape
    if anchor.any():
        point = [int(i) for i in torch.nonzero(anchor).float().mean(0).round()]
    else:
        point = [size // 2 for size in shape]
    arrays = {"point": np.asarray(point)}
    for name, volume in present.items():
        for axis, plane in enumerate(PLANES):
            arrays[f"{name}.{plane}"] = volume.select(axis, point[axis]).cpu().numpy().astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = hidden_name(path.parent, path.name, ".partial")
    try:
        with open(temporary, "xb") as stream:
            np.savez_compressed(stream, **arrays)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


class AnomalyEvaluationHandler:
    """Collect per-case results during an inference run and write ``<output_dir>/metrics.json`` at its end.

    Reads, per decollated case, from the engine's batch: ``truth_key`` (lesion mask on the 2 mm grid, absent or
    empty for healthy subjects) and ``lesion_key`` (the datalist's lesion kind, ``"none"`` for healthy); from the
    engine's output: ``maps`` (name -> key of each continuous map measured at voxel level: the two-reconstruction
    map and the original-vs-reconstruction map of the inference config's ``scoring_steps``), ``wound_key`` (the final
    region map on the 2 mm grid) and ``report_key`` (the report of :class:`bundle.report.CaseReportd`, holding the
    three subject scores), and, when the datalist gives it, ``lesion_volume_key`` (the lesion's volume in cm^3).

    Per lesion case: Dice and HD95 (mm, MONAI's metrics) of the wound segmentation; per map, average precision and
    the best Dice over thresholds. Over the whole set: each map's average precision pooled over every voxel of every
    case, healthy ones included (as the MOOD challenge counts it, :class:`bundle.metrics.VoxelAveragePrecisionMetric`);
    subject-score separation; the lesions of at least ``found_min_volume_ml`` whose wound segmentation reaches a Dice
    above ``found_dice`` ("found"); the normal subjects with any wound region; and a breakdown of the wound
    segmentation by lesion kind (site) and size (``SIZE_CLASSES``).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        truth_key: str = "truth",
        lesion_key: str = "lesion",
        maps: Mapping[str, str] | None = None,
        wound_key: str = "wound",
        report_key: str = "report",
        lesion_volume_key: str = "lesion_volume_ml",
        found_dice: float = 0.3,
        found_min_volume_ml: float = 1.0,
        healthy_false_positive_rate: float = 1e-4,
        fixed_thresholds: Mapping[str, Mapping[str, float]] | None = None,
        image_key: str = "image",
        reconstruction_keys: Mapping[str, str] | None = None,
        intact_key: str = "intact",
        figure_cases_per_kind: int = 2,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.truth_key, self.lesion_key = truth_key, lesion_key
        self.maps = dict(maps or DEFAULT_MAPS)
        self.wound_key, self.report_key = wound_key, report_key
        self.lesion_volume_key = lesion_volume_key
        self.found_dice, self.found_min_volume_ml = found_dice, found_min_volume_ml
        if not 0.0 < healthy_false_positive_rate < 1.0:
            raise ValueError(f"healthy_false_positive_rate must be in (0, 1), got {healthy_false_positive_rate}")
        self.healthy_false_positive_rate = healthy_false_positive_rate
        self.image_key = image_key
        self.reconstruction_keys = dict(reconstruction_keys or DEFAULT_RECONSTRUCTIONS)
        self.intact_key = intact_key
        self.figure_cases_per_kind = figure_cases_per_kind
        self.fixed_thresholds = {name: dict(rules) for name, rules in (fixed_thresholds or {}).items()}
        self.cases: list[dict] = []
        self.settings: dict = {}
        self._figure_counts: dict[str, int] = {}
        self.pooled = {name: VoxelAveragePrecisionMetric() for name in self.maps}
        self.healthy_voxels: dict[str, list[torch.Tensor]] = {name: [] for name in self.maps}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self) -> None:
        self.cases.clear()
        self.settings.clear()
        self._figure_counts.clear()
        for metric in self.pooled.values():
            metric.reset()
        for voxels in self.healthy_voxels.values():
            voxels.clear()

    def collect(self, engine: Engine) -> None:
        for batch, output in zip(engine.state.batch, engine.state.output):
            wound = convert_to_tensor(output[self.wound_key], track_meta=False) > 0
            truth = batch.get(self.truth_key)
            truth = torch.zeros_like(wound) if truth is None else convert_to_tensor(truth, track_meta=False) > 0
            report = output[self.report_key]
            if not self.settings:
                # the same for every case of a run: the weights, the post-processing and the score's parameters
                self.settings = {key: report[key] for key in ("model", "thresholds") if key in report}
                self.settings["subject_score_parameters"] = {
                    key: value
                    for key, value in report["subject_score"].items()
                    if key in ("threshold", "erosion_iterations")
                }
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
            image = output.get(self.image_key)
            intact = batch.get(self.intact_key)
            if lesion == "none" and image is not None:
                case.update(self._reconstruction(output, image, "reconstruction"))
            elif intact is not None:
                case.update(self._reconstruction(output, intact, "restoration", truth))
            for name, key in self.maps.items():
                self.pooled[name](y_pred=[output[key]], y=[truth])
                if lesion == "none":
                    self.healthy_voxels[name].append(convert_to_tensor(output[key], track_meta=False).flatten())
            if truth.any():
                spacing = output[self.wound_key].pixdim.tolist() if hasattr(output[self.wound_key], "pixdim") else 1.0
                case["dice"] = dice_at_threshold(wound.float(), truth, 0.5)
                case["hd95_mm"] = hausdorff95_mm(wound, truth, spacing)
                for name, key in self.maps.items():
                    score = convert_to_tensor(output[key], track_meta=False)
                    prefix = self._prefix(name)
                    case[f"{prefix}average_precision"] = average_precision(score, truth)
                    case[f"{prefix}best_dice"], case[f"{prefix}best_dice_threshold"] = best_dice(score, truth)
                    for rule, threshold in self.fixed_thresholds.get(name, {}).items():
                        case[f"{prefix}dice_at_{rule}"] = dice_at_threshold(score, truth, threshold)
                        case[f"{prefix}hd95_mm_at_{rule}"] = hausdorff95_mm(score >= threshold, truth, spacing)
            if self._figure_counts.get(lesion, 0) < self.figure_cases_per_kind:
                self._figure_counts[lesion] = self._figure_counts.get(lesion, 0) + 1
                volumes = {"input": image, "intact": intact, "truth": truth.float() if truth.any() else None}
                volumes.update({name: output.get(key) for name, key in self.reconstruction_keys.items()})
                volumes.update({name: output.get(key) for name, key in self.maps.items()})
                volumes["wound"] = wound.float()
                save_figure_slices(self.output_dir / FIGURE_SLICES / f"{report['case']}.npz", volumes, truth)
            self.cases.append(case)

    def _reconstruction(
        self, output: Mapping, reference: torch.Tensor, measure: str, lesion: torch.Tensor | None = None
    ) -> dict:
        """Per generator, against ``reference`` (x' of the input for a healthy subject, of the intact map for a lesion
        subject): the MSE (paper section 5.1), the Dice of the teeth and canal (x' > 0.75, the threshold of the
        stage-2 teeth mask, undilated), a sharpness measure that the MSE hides (a blurred tooth loses its edges), and,
        given the ``lesion`` mask, the MSE inside it (how much of the removed tissue is restored; the whole-volume MSE
        dilutes it over the field of view)."""
        reference = convert_to_tensor(reference, track_meta=False)
        teeth = teeth_mask(reference, kernel_size=1)
        measures = {}
        for name, key in self.reconstruction_keys.items():
            if key not in output:
                continue
            reconstruction = convert_to_tensor(output[key], track_meta=False)
            error = (reconstruction - reference) ** 2
            measures[f"{measure}_mse_{name}"] = float(error.mean())
            if teeth.any():
                measures[f"{measure}_teeth_dice_{name}"] = dice_at_threshold(
                    teeth_mask(reconstruction, kernel_size=1), teeth, 0.5
                )
            if lesion is not None and lesion.any():
                measures[f"{measure}_lesion_mse_{name}"] = float(error[lesion].mean())
        return measures

    def _breakdown(self, cases: list[dict]) -> dict:
        sized = [c for c in cases if c.get("lesion_volume_ml", 0.0) >= self.found_min_volume_ml]
        return {
            "n": len(cases),
            "dice": _summary([c["dice"] for c in cases if "dice" in c]),
            "hd95_mm": _summary([c["hd95_mm"] for c in cases if "hd95_mm" in c]),
            "average_precision": _summary([c["average_precision"] for c in cases if "average_precision" in c]),
            "found": sum(c.get("dice", 0.0) > self.found_dice for c in sized),
            "n_at_least_min_volume": len(sized),
        }

    def summary(self) -> dict:
        lesion = [c for c in self.cases if c["lesion"] != "none"]
        normal = [c for c in self.cases if c["lesion"] == "none"]
        result: dict = {"num_lesion_cases": len(lesion), "num_normal_cases": len(normal), **self.settings}
        for score in ("score_two_reconstructions", "score_original_vs_reconstruction", "score_wound_volume"):
            lesion_scores = [c[score] for c in lesion]
            normal_scores = [c[score] for c in normal]
            entry = {"lesion": _summary(lesion_scores), "normal": _summary(normal_scores)}
            if lesion and normal:
                labels = [1] * len(lesion_scores) + [0] * len(normal_scores)
                entry["auroc"] = subject_auroc(lesion_scores + normal_scores, labels)
                entry["average_precision"] = average_precision(
                    torch.tensor(lesion_scores + normal_scores, dtype=torch.float64), torch.tensor(labels)
                )
                entry["every_lesion_above_every_normal"] = min(lesion_scores) > max(normal_scores)
                entry["normals_scoring_zero"] = sum(s == 0 for s in normal_scores)
            result[score] = entry
        for metric in ("dice", "hd95_mm", "average_precision", "best_dice"):
            result[metric] = _summary([c[metric] for c in lesion if metric in c])
        result["voxel_metrics"] = {
            name: {
                "pooled_average_precision": self._pooled_average_precision(name),
                **self._thresholds(name),
                "dice_at_fixed_threshold": {
                    rule: {
                        "threshold": threshold,
                        "dice": self._per_lesion(lesion, name, f"dice_at_{rule}"),
                        "hd95_mm": self._per_lesion(lesion, name, f"hd95_mm_at_{rule}"),
                    }
                    for rule, threshold in self.fixed_thresholds.get(name, {}).items()
                },
                "average_precision": self._per_lesion(lesion, name, "average_precision"),
                "best_dice": self._per_lesion(lesion, name, "best_dice"),
            }
            for name in self.maps
        }
        result["reconstruction_of_healthy_subjects"] = self._reconstruction_summary(
            normal, ("reconstruction_mse", "reconstruction_teeth_dice")
        )
        result["restoration_of_lesion_subjects"] = {
            kind: self._reconstruction_summary(
                [c for c in lesion if c["lesion"] == kind],
                ("restoration_mse", "restoration_teeth_dice", "restoration_lesion_mse"),
            )
            for kind in sorted({c["lesion"] for c in lesion})
        }
        result["by_lesion_kind"] = {
            kind: self._breakdown([c for c in lesion if c["lesion"] == kind])
            for kind in sorted({c["lesion"] for c in lesion})
        }
        result["by_lesion_size"] = {
            name: self._breakdown(
                [c for c in lesion if "lesion_volume_ml" in c and size_class(c["lesion_volume_ml"]) == name]
            )
            for name in SIZE_CLASSES
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

    def _reconstruction_summary(self, cases: list[dict], measures: tuple[str, ...]) -> dict:
        return {
            f"{measure}_{name}": _summary([c[f"{measure}_{name}"] for c in cases if f"{measure}_{name}" in c])
            for name in self.reconstruction_keys
            for measure in measures
        }

    def _per_lesion(self, lesion: list[dict], name: str, measure: str) -> dict:
        """Summary over the lesion cases of one map's per-case measure."""
        key = f"{self._prefix(name)}{measure}"
        return _summary([c[key] for c in lesion if key in c])

    @staticmethod
    def _prefix(name: str) -> str:
        return "" if name == "two_reconstructions" else f"{name}_"

    def _thresholds(self, name: str) -> dict:
        """The two threshold rules measured on this set, for use on another (``fixed_thresholds``): the threshold of
        the best Dice over every voxel of every case ("validation_tuned", needs labelled lesions) and the one that
        only ``healthy_false_positive_rate`` of the healthy subjects' voxels reach ("healthy_calibrated", needs
        healthy subjects only)."""
        result, buffers = {}, self.pooled[name].get_buffer()
        dice, threshold = best_dice(*buffers) if buffers is not None else (math.nan, math.nan)
        if not math.isnan(dice):
            result["pooled_best_dice"], result["validation_tuned_threshold"] = dice, threshold
        if self.healthy_voxels[name]:
            voxels = torch.cat(self.healthy_voxels[name])
            rank = max(1, math.ceil(self.healthy_false_positive_rate * voxels.numel()))
            # the rank-th largest value: thresholding at (and above) it flags about that share of healthy voxels
            result["healthy_calibrated_threshold"] = float(torch.topk(voxels, rank).values[-1])
            result["healthy_false_positive_rate"] = self.healthy_false_positive_rate
        return result

    def _pooled_average_precision(self, name: str) -> float | None:
        metric = self.pooled[name]
        if not metric.get_buffer():
            return None
        value = metric.aggregate()
        return None if math.isnan(value) else value

    def write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.output_dir / "metrics.json", self.summary())
