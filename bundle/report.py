"""A case's report: the wound regions measured in the input's grid, the subject scores and every setting used.

:class:`RegionStatisticsd` measures the regions of the final label map; :class:`CaseReportd` gathers them with the
subject scores that :class:`bundle.scoring.SubjectScored` put in the data into the ``report`` dictionary that
:class:`bundle.outputs.SaveJSONd` writes as ``report.json`` and that evaluation handlers read
(:class:`bundle.evaluation.AnomalyEvaluationHandler`). Gap filled: MONAI has no per-case report of labelled regions.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import convert_to_numpy
from scipy import ndimage

from bundle.outputs import case_name

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def cbct_source(cbct: Any) -> str | None:
    """Source file of a case's CBCT (a MetaTensor's ``filename_or_obj`` or a path); ``""`` for an array without
    one, ``None`` when the case has no CBCT."""
    if cbct is None:
        return None
    if isinstance(cbct, (str, Path)):
        return str(cbct)
    return str(getattr(cbct, "meta", {}).get("filename_or_obj", ""))


def crop_to_regions(regions: np.ndarray, affine: np.ndarray) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """The bounding box of the nonzero voxels of a (X, Y, Z) region map (MONAI's ``generate_spatial_bounding_box``;
    the first voxel when there are none, so that the box is never empty) and the voxel -> world affine of that box:
    one pass over a full-resolution map, after which region statistics, meshes and segment fields cost the size of
    the regions, not of the scan."""
    start, end = generate_spatial_bounding_box(regions[None])
    end = [max(int(b), int(a) + 1) for a, b in zip(start, end)]
    box = tuple(slice(int(a), b) for a, b in zip(start, end))
    corner = np.eye(4)
    corner[:3, 3] = start
    return box, affine @ corner


def region_statistics(regions: np.ndarray, affine: np.ndarray) -> list[dict]:
    """Volume (mm^3) and world bounding box (LPS mm, voxel corners included) of each label 1..K of ``regions``."""
    voxel_volume = float(abs(np.linalg.det(affine[:3, :3])))
    stats = []
    for label, box in enumerate(ndimage.find_objects(regions), start=1):
        if box is None:
            continue
        count = int(np.count_nonzero(regions[box] == label))  # within its box: no full-size copy as bincount makes
        low = np.array([s.start for s in box]) - 0.5
        high = np.array([s.stop for s in box]) - 0.5
        corners = np.stack(np.meshgrid(*zip(low, high), indexing="ij"), axis=-1).reshape(-1, 3)
        world = (corners @ affine[:3, :3].T + affine[:3, 3]) @ RAS_TO_LPS.T
        stats.append(
            {
                "label": label,
                "voxels": count,
                "volume_mm3": round(float(count) * voxel_volume, 3),
                "bounding_box_lps_mm": {
                    "min": [round(float(v), 3) for v in world.min(axis=0)],
                    "max": [round(float(v), 3) for v in world.max(axis=0)],
                },
            }
        )
    return stats


class RegionStatisticsd(MapTransform):
    """Store :func:`region_statistics` of each key's (1, X, Y, Z) region map (a MetaTensor, its affine giving the
    voxel size) under ``f"{key}{postfix}"``, computed within the regions' bounding box (:func:`crop_to_regions`).
    A float map is read as integer labels."""

    def __init__(self, keys: KeysCollection, postfix: str = "_regions", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.postfix = postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            regions = convert_to_numpy(d[key])[0]
            regions = regions if np.issubdtype(regions.dtype, np.integer) else regions.astype(np.int32)
            box, box_affine = crop_to_regions(regions, convert_to_numpy(d[key].affine).astype(np.float64))
            d[f"{key}{self.postfix}"] = region_statistics(regions[box], box_affine)
        return d


class CaseReportd(MapTransform):
    """Gather one case's report under ``report_key``: case name and input file (from ``keys``, the input image),
    the CBCT file (``null`` for a case given only its label map, which then gets the ``label_map_only_*``
    settings), the subject scores, the regions, the settings and the model.

    Args:
        keys: the input image (its meta data name the case).
        cbct_key: the optional raw CBCT; its source file is recorded under ``cbct``.
        scores: report name -> data key of each subject score (python numbers, e.g. written by
            :class:`bundle.scoring.SubjectScored`).
        score_settings: recorded beside the scores (the paper's score threshold and erosion).
        regions_key: the list of :class:`RegionStatisticsd`; their total volume is the subject score
            ``wound_volume_mm3`` (0 when no region survives the post-processing).
        settings: every post-processing setting, recorded as given under ``thresholds``.
        model_version, model_sha256: recorded under ``model``.
        report_key: where the report goes.
    """

    def __init__(
        self,
        keys: KeysCollection,
        scores: Mapping[str, str],
        regions_key: str = "pred_regions",
        score_settings: Mapping | None = None,
        settings: Mapping | None = None,
        model_version: str = "",
        model_sha256: str = "",
        report_key: str = "report",
        cbct_key: str = "cbct",
    ) -> None:
        super().__init__(keys)
        self.cbct_key = cbct_key
        self.scores, self.regions_key = dict(scores), regions_key
        self.score_settings, self.settings = dict(score_settings or {}), dict(settings or {})
        self.model = {"version": model_version, "sha256": model_sha256}
        self.report_key = report_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            regions = d[self.regions_key]
            d[self.report_key] = {
                "case": case_name(d[key]),
                "input": str(d[key].meta.get("filename_or_obj", "")),
                "cbct": cbct_source(d.get(self.cbct_key)),
                "subject_score": {
                    **{name: d[score_key] for name, score_key in self.scores.items()},
                    **self.score_settings,
                    "wound_volume_mm3": round(sum(r["volume_mm3"] for r in regions), 3),
                },
                "num_regions": len(regions),
                "regions": regions,
                "thresholds": self.settings,
                "model": self.model,
            }
        return d
