"""Per-case inference outputs, written atomically: anomaly map and wound segmentation (NIfTI, in the input's own
grid), the wound segmentation again as a 3D Slicer segmentation file, one STL per wound region, a JSON report and an
overview figure.

MONAI's ``SaveImaged`` writes one image straight to its final name; a case here is a set of files that belong
together, so they are written into a hidden temporary folder, ``.<case>.<random>.partial``, and renamed into place
only when all are complete: an interrupted run leaves no half-written case behind. A run killed while writing leaves
that hidden folder; it is never read, its name never collides with another run's, and :func:`prepare_output_dir` does
not count it as content. It is not removed automatically: a killed run's temporary folder looks like the one a
concurrent run is writing into.

Several runs may write into one output folder at once. A case that already exists (an earlier run's, or a concurrent
run's of the same case) is replaced only with ``overwrite``: it is first renamed aside to a hidden
``.<case>.<random>.replaced`` folder, the new case is renamed into place, and the old one is deleted. A case folder
is therefore always one run's complete output, never a mix, and of two runs writing the same case at once the last
to finish wins; without ``overwrite`` the first wins and the other fails with a ``ValueError``. A run killed between
the two renames leaves the earlier output in its ``.replaced`` folder, which is not removed automatically either.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import NibabelWriter
from monai.transforms import MapTransform
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import convert_to_numpy
from scipy import ndimage

from bundle.scoring import subject_score
from bundle.slicer_segmentation import write_slicer_segmentation
from bundle.stl import write_region_stls

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


TEMPORARY_SUFFIXES = (".partial", ".replaced")


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a hidden temporary of this module: ``.<case>.<random>.partial`` (a case folder being
    written, or a file of :func:`write_text_atomically`) or ``.<case>.<random>.replaced`` (an earlier output of a
    case, being deleted)."""
    return path.name.startswith(".") and path.name.endswith(TEMPORARY_SUFFIXES)


def _hidden_name(parent: Path, stem: str, suffix: str) -> Path:
    return parent / f".{stem}.{secrets.token_hex(4)}{suffix}"


def _make_partial_folder(parent: Path, case: str) -> Path:
    """Create ``parent/.<case>.<random>.partial`` with the permissions of any new folder (``tempfile.mkdtemp`` makes
    it 0700, and the case folder it becomes would be unreadable to everyone else)."""
    while True:
        folder = _hidden_name(parent, case, ".partial")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a hidden ``.<name>.<random>.partial`` file beside ``path`` (with the permissions of any new
    file), then rename it to ``path``: a reader, or a killed run, never sees a half-written file."""
    path = Path(path)
    while True:
        temporary = _hidden_name(path.parent, path.name, ".partial")
        try:
            stream = open(temporary, "x")
            break
        except FileExistsError:
            continue
    try:
        with stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _give_default_permissions(folder: Path) -> None:
    """Give every file of ``folder`` the permissions of a new file (the STL and Slicer files are written through
    ``tempfile.mkstemp``, which makes them 0600): the folder's own, created under the umask, without execute bits."""
    mode = folder.stat().st_mode & 0o666
    for path in folder.iterdir():
        os.chmod(path, mode)


def _publish(partial: Path, final: Path, overwrite: bool) -> None:
    """Rename the complete case folder ``partial`` to ``final``, atomically.

    An existing ``final`` (an earlier run's, or one a concurrent run renamed into place meanwhile) raises
    ``ValueError`` without ``overwrite``; with it, it is renamed aside to a hidden ``.replaced`` folder, then deleted
    once ``partial`` is in place (kept if that fails). ``final`` is never deleted file by file, so it never holds a
    mix of two outputs; a reader may find it missing for the instant between the two renames.
    """
    replaced: list[Path] = []
    while True:
        try:
            os.rename(partial, final)
            break
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if not overwrite:
                raise ValueError(
                    f"{final}: case output exists (written meanwhile by another run?); pass --overwrite true to "
                    "replace it"
                ) from None
        aside = _hidden_name(final.parent, final.name, ".replaced")
        try:
            os.rename(final, aside)
            replaced.append(aside)
        except FileNotFoundError:  # another run moved it aside first: try again
            continue
    for folder in replaced:
        shutil.rmtree(folder, ignore_errors=True)


def prepare_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check, before any computation, that ``output_dir`` can take the results.

    It is created when missing; an existing folder must be empty unless ``overwrite`` is set (the hidden temporary
    folders of this module, left by a killed run or being written by a concurrent one, do not count: see
    :func:`is_temporary`). Raises ``ValueError`` naming the folder otherwise, or when it is not writable.
    """
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: output path exists and is not a folder")
    if output.is_dir() and any(not is_temporary(entry) for entry in output.iterdir()) and not overwrite:
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


def _write_nifti(array: torch.Tensor, path: Path, dtype: np.dtype) -> None:
    """``array`` (1, X, Y, Z) MetaTensor as a NIfTI file of ``dtype`` in its own grid, through MONAI's NibabelWriter.

    The affine is handed to the writer as ``set_metadata(meta, resample=False)`` would set it, without calling it:
    that method still passes the data through ``SpatialResample``, which returns a float32 copy even when nothing
    moves (600 MB for a uint8 label map of 150 million voxels, docs/memory.md), and in MONAI 1.6.1 reads the
    channel-last 3D array as 2D, failing ("Affine ... is not invertible") for inputs stored with permuted axes such as
    voxel axes (x, z, y) (found by tests/test_properties.py).
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
    paper's subject scores (:func:`bundle.scoring.subject_score`) of the two-reconstruction and the
    original-vs-reconstruction maps. With ``search_region_key`` (the anatomical search region of
    :class:`bundle.search_region.JawSearchRegiond`, on the 2 mm grid) both count only the voxels inside it; the saved
    anomaly map and the figure show the whole, unmasked map. A third subject score, ``wound_volume_mm3``, is the total
    volume of the wound regions (0 when none survives the post-processing): the two-reconstruction map after the
    whole post-processing rather than after one threshold and erosion. The report is also stored in the data under
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
                "wound_volume_mm3": round(sum(r["volume_mm3"] for r in regions), 3),
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
        partial = _make_partial_folder(self.output_dir, name)
        try:
            wound = d[self.wound_key]
            regions = convert_to_numpy(wound)[0]
            regions = regions if np.issubdtype(regions.dtype, np.integer) else regions.astype(np.int32)
            affine = convert_to_numpy(wound.affine).astype(np.float64)
            for key in self.key_iterator(d):
                _write_nifti(d[key], partial / f"{key}.nii.gz", np.dtype(np.float32))
            _write_nifti(wound, partial / "wound_segmentation.nii.gz", np.dtype(np.uint8))
            box, box_affine = crop_to_regions(regions, affine)
            if self.slicer_segmentation:
                write_slicer_segmentation(regions, affine, partial / "wound_segmentation.seg.nrrd", regions_box=box)
            smoothing = self.stl_smoothing_iterations
            write_region_stls(regions[box], box_affine, partial, prefix=name, smoothing_iterations=smoothing)
            d["report"] = self.report(d, region_statistics(regions[box], box_affine))
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
            _give_default_permissions(partial)
            _publish(partial, final, self.overwrite)
        except OSError as error:  # a full disk, a quota: the writers' errors do not name the case
            shutil.rmtree(partial, ignore_errors=True)
            raise OSError(
                error.errno, f"{final}: writing the case outputs failed, nothing kept ({error.strerror or error})"
            ) from None
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return d
