"""Per-case inference outputs, written atomically: anomaly map and wound segmentation (NIfTI, in the input's own
grid), the wound segmentation again as a 3D Slicer segmentation file, one STL per wound region, a JSON report and an
overview figure.

MONAI's ``SaveImaged`` writes one image straight to its final name; a case here is a set of files that belong
together, so they are written into a hidden temporary folder and renamed into place only when all are complete:
an interrupted run leaves no half-written case behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import NibabelWriter
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy
from scipy import ndimage

from bundle.scoring import subject_score
from bundle.slicer_segmentation import write_slicer_segmentation
from bundle.stl import write_region_stls

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def prepare_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check, before any computation, that ``output_dir`` can take the results.

    It is created when missing; an existing folder must be empty unless ``overwrite`` is set. Raises ``ValueError``
    naming the folder otherwise, or when it is not writable.
    """
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: output path exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"{output}: output folder is not empty; pass --overwrite true to replace its cases")
    try:
        output.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output).close()
    except OSError as error:
        raise ValueError(f"{output}: output folder is not writable ({error.strerror})") from error
    return output


def case_name(image: torch.Tensor) -> str:
    """Name of a case: its input file's name without the image extensions."""
    source = Path(str(getattr(image, "meta", {}).get("filename_or_obj", "case")))
    name = source.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return source.stem


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


def _write_nifti(array: torch.Tensor, path: Path, dtype: np.dtype) -> None:
    """``array`` (1, X, Y, Z) MetaTensor as a NIfTI file of ``dtype`` in its own grid, through MONAI's NibabelWriter.

    The affine is handed to the writer as ``set_metadata(meta, resample=False)`` would set it, without calling it:
    that method still passes the data through ``SpatialResample``, which returns a float32 copy even when nothing
    moves (600 MB for a uint8 label map of 150 million voxels, docs/memory.md).
    """
    writer = NibabelWriter(output_dtype=dtype)
    writer.set_data_array(convert_to_numpy(array).astype(dtype, copy=False), channel_dim=0)
    writer.affine = convert_to_numpy(array.affine).astype(np.float64)
    writer.write(path)


class WriteCaseOutputsd(MapTransform):
    """Write one case's outputs to ``output_dir/<case>/``; the last transform of the inference post-processing.

    Keys read (channel-first tensors): ``anomaly_key`` and ``wound_key`` in the input's own grid (after
    :class:`bundle.inversion.SlabwiseInvertd`; the wound map is used in its own integer type, a float one as int32);
    ``image_key`` (x'), ``anomaly_2mm_key``, ``recon1_key``, ``recon2_key``, ``wound_2mm_key`` on the 2 mm model grid
    (scores and the figure are computed there, where the thresholds are defined).
    ``thresholds`` are recorded in the report as given; ``score_threshold``/``score_erosion_iterations`` define the
    subject score (:func:`bundle.scoring.subject_score`). With ``search_region_key`` (the anatomical search region of
    :class:`bundle.search_region.JawSearchRegiond`, on the 2 mm grid) both subject scores count only the voxels inside
    it; the saved anomaly map and the figure show the whole, unmasked map. The report is also stored in the data under
    ``"report"`` for handlers (e.g. :class:`bundle.evaluation.AnomalyEvaluationHandler`).
    ``stl_smoothing_iterations`` Taubin lambda|mu pairs smooth the STL meshes for printing
    (:func:`bundle.stl.taubin_smooth`; 0: the marching-cubes surface); ``slicer_segmentation`` also writes
    ``wound_segmentation.seg.nrrd`` (:mod:`bundle.slicer_segmentation`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        wound_key: str = "pred",
        image_key: str = "image",
        anomaly_2mm_key: str = "anomaly",
        recon1_key: str = "recon1",
        recon2_key: str = "recon2",
        wound_2mm_key: str = "wound",
        search_region_key: str | None = None,
        score_threshold: float = 0.2,
        score_erosion_iterations: int = 2,
        thresholds: Mapping | None = None,
        model_version: str = "",
        model_sha256: str = "",
        figure: bool = True,
        stl_smoothing_iterations: int = 10,
        slicer_segmentation: bool = True,
        overwrite: bool = False,
    ):
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.wound_key, self.image_key = wound_key, image_key
        self.anomaly_2mm_key, self.wound_2mm_key = anomaly_2mm_key, wound_2mm_key
        self.search_region_key = search_region_key
        self.recon1_key, self.recon2_key = recon1_key, recon2_key
        self.score_threshold, self.score_erosion_iterations = score_threshold, score_erosion_iterations
        self.thresholds = dict(thresholds or {})
        self.model_version, self.model_sha256 = model_version, model_sha256
        self.figure, self.overwrite = figure, overwrite
        self.stl_smoothing_iterations, self.slicer_segmentation = stl_smoothing_iterations, slicer_segmentation

    def report(self, data: Mapping[Hashable, torch.Tensor], regions: list[dict]) -> dict:
        image = convert_to_numpy(data[self.image_key])[0]
        recon2 = convert_to_numpy(data[self.recon2_key])[0]
        score = dict(threshold=self.score_threshold, erosion_iterations=self.score_erosion_iterations)
        region = None if self.search_region_key is None else convert_to_numpy(data[self.search_region_key])[0]
        return {
            "case": case_name(data[self.image_key]),
            "input": str(data[self.image_key].meta.get("filename_or_obj", "")),
            "subject_score": {
                "two_reconstructions": subject_score(
                    convert_to_numpy(data[self.anomaly_2mm_key])[0], region=region, **score
                ),
                "original_vs_reconstruction": subject_score(np.abs(recon2 - image), region=region, **score),
                **score,
            },
            "num_regions": len(regions),
            "regions": regions,
            "thresholds": self.thresholds,
            "model": {"version": self.model_version, "sha256": self.model_sha256},
        }

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        name = case_name(d[self.image_key])
        final = self.output_dir / name
        if final.exists() and not self.overwrite:
            raise ValueError(f"{final}: case output exists; pass --overwrite true to replace it")
        partial = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=self.output_dir))
        try:
            wound = d[self.wound_key]
            regions = convert_to_numpy(wound)[0]
            regions = regions if np.issubdtype(regions.dtype, np.integer) else regions.astype(np.int32)
            affine = convert_to_numpy(wound.affine).astype(np.float64)
            for key in self.key_iterator(d):
                _write_nifti(d[key], partial / f"{key}.nii.gz", np.dtype(np.float32))
            _write_nifti(wound, partial / "wound_segmentation.nii.gz", np.dtype(np.uint8))
            if self.slicer_segmentation:
                write_slicer_segmentation(regions, affine, partial / "wound_segmentation.seg.nrrd")
            write_region_stls(regions, affine, partial, prefix=name, smoothing_iterations=self.stl_smoothing_iterations)
            d["report"] = self.report(d, region_statistics(regions, affine))
            (partial / "report.json").write_text(json.dumps(d["report"], indent=4) + "\n")
            if self.figure:
                from bundle.figures import save_overview

                save_overview(
                    partial / "overview.png",
                    *(convert_to_numpy(d[k])[0] for k in (self.image_key, self.recon1_key, self.recon2_key)),
                    convert_to_numpy(d[self.anomaly_2mm_key])[0],
                    convert_to_numpy(d[self.wound_2mm_key])[0],
                    title=name,
                )
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return d
