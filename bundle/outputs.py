"""A case's output folder, written atomically: :class:`WriteCaseFolderd` runs the writer transforms of the inference
config (:class:`SaveNiftid` here, :class:`bundle.slicer_segmentation.SaveSlicerSegmentationd`,
:class:`bundle.stl.SaveRegionMeshesd`, :class:`SaveJSONd`, :class:`bundle.figures.SaveOverviewd`) into one hidden
folder and publishes it whole.

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
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import NibabelWriter
from monai.transforms import MapTransform, Transform
from monai.utils import ImageMetaKey, convert_to_numpy, ensure_tuple_rep

from bundle.atomic_files import hidden_name

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
TEMPORARY_SUFFIXES = (".partial", ".replaced")

logger = logging.getLogger(__name__)


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a hidden temporary of this module: ``.<case>.<random>.partial`` (a case folder being
    written, or a file of :func:`bundle.atomic_files.write_text_atomically`) or ``.<case>.<random>.replaced`` (an
    earlier output of a case, being deleted)."""
    return path.name.startswith(".") and path.name.endswith(TEMPORARY_SUFFIXES)


def _make_partial_folder(parent: Path, case: str) -> Path:
    """Create ``parent/.<case>.<random>.partial`` with the permissions of any new folder (``tempfile.mkdtemp`` makes
    it 0700, and the case folder it becomes would be unreadable to everyone else)."""
    while True:
        folder = hidden_name(parent, case, ".partial")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


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
        aside = hidden_name(final.parent, final.name, ".replaced")
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


def case_name(image: torch.Tensor | Mapping) -> str:
    """Name of a case: its input file's name without the image extension, from a MetaTensor or its meta data
    (``/data/case01.nii.gz`` -> ``case01``; ``case`` when the file is unknown)."""
    meta = image if isinstance(image, Mapping) else getattr(image, "meta", {})
    name = Path(str(meta.get(ImageMetaKey.FILENAME_OR_OBJ, "case"))).name
    for extension in IMAGE_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


def write_nifti(array: torch.Tensor, path: Path, dtype: np.dtype) -> None:
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


class SaveNiftid(MapTransform):
    """Write each key's (1, X, Y, Z) MetaTensor as ``<folder>/<file name>.nii.gz`` in its own grid
    (:func:`write_nifti`), ``<folder>`` being the case folder that :class:`WriteCaseFolderd` puts under
    ``folder_key``. Gap filled: ``SaveImaged`` names files after the input and its own output folder, and resamples
    through ``set_metadata`` (see :func:`write_nifti`).

    Args:
        keys: images to write; passed through unchanged.
        folder_key: key of the folder to write into.
        file_names: per key, the file name without ``.nii.gz``; default the key.
        output_dtype: per key, the file's data type (e.g. ``"uint8"`` for a label map; float32 by default).
    """

    def __init__(
        self,
        keys: KeysCollection,
        folder_key: str = "case_folder",
        file_names: Sequence[str] | str | None = None,
        output_dtype: Sequence[str] | str = "float32",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.folder_key = folder_key
        self.file_names = ensure_tuple_rep(file_names, len(self.keys)) if file_names else self.keys
        self.output_dtypes = tuple(np.dtype(d) for d in ensure_tuple_rep(output_dtype, len(self.keys)))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, name, dtype in self.key_iterator(d, self.file_names, self.output_dtypes):
            write_nifti(d[key], Path(d[self.folder_key]) / f"{name}.nii.gz", dtype)
        return d


class SaveJSONd(MapTransform):
    """Write each key's JSON-serialisable value (e.g. the report of :class:`bundle.report.CaseReportd`) as
    ``<folder>/<key>.json``, ``<folder>`` being the case folder under ``folder_key``."""

    def __init__(self, keys: KeysCollection, folder_key: str = "case_folder", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.folder_key = folder_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            (Path(d[self.folder_key]) / f"{key}.json").write_text(json.dumps(d[key], indent=4) + "\n")
        return d


class WriteCaseFolderd(Transform):
    """Write one case's outputs to ``output_dir/<case>/`` atomically; the last transform of the inference
    post-processing.

    ``writers`` are transforms that each write files into the folder found under ``folder_key`` (the writer transforms
    of this package). They run in order on the data with ``folder_key`` set to a new hidden ``.<case>.<random>.partial``
    folder, which is renamed to ``output_dir/<case>`` only when all have succeeded (see the module docstring for
    concurrent runs and ``overwrite``); on any failure the folder is deleted and nothing is kept, and an ``OSError``
    (a full disk, a quota) is raised again naming the case folder. ``<case>`` is :func:`case_name` of ``image_key``.
    Returns the data as the writers left it, with ``folder_key`` set to the published folder.
    """

    def __init__(
        self,
        writers: Sequence[Callable],
        output_dir: str | os.PathLike,
        image_key: str = "image",
        folder_key: str = "case_folder",
        overwrite: bool = False,
    ) -> None:
        self.writers = list(writers)
        self.output_dir = Path(output_dir)
        self.image_key, self.folder_key = image_key, folder_key
        self.overwrite = overwrite

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        name = case_name(d[self.image_key])
        final = self.output_dir / name
        if final.exists() and not self.overwrite:
            raise ValueError(f"{final}: case output exists; pass --overwrite true to replace it")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        partial = _make_partial_folder(self.output_dir, name)
        try:
            d[self.folder_key] = partial
            for writer in self.writers:
                d = dict(writer(d))
            _give_default_permissions(partial)
            _publish(partial, final, self.overwrite)
        except OSError as error:  # a full disk, a quota: the writers' errors do not name the case
            shutil.rmtree(partial, ignore_errors=True)
            # a write cut short (Python's buffered writer reports it without an errno) is a full disk or a quota too
            reason = error.strerror or f"a write was cut short ({error}): disk full or over a quota?"
            message = f"{final}: writing the case outputs failed, nothing kept ({reason})"
            raise (OSError(error.errno, message) if error.errno else OSError(message)) from None
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        d[self.folder_key] = final
        logger.info("%s: outputs written to %s", name, final)
        return d
