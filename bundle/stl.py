"""Wound regions -> watertight triangle meshes -> STL files in the scan's physical coordinates (method.md section 6,
step 6).

Each region of a label map is padded by empty voxels (so that a region touching the volume border still gives a
closed surface), meshed by marching cubes (scikit-image's classic Lorensen tables, see :func:`region_mesh`) at level
0.5, optionally smoothed for printing, mapped voxel -> world millimetres by the image affine and written with numpy-stl.

Smoothing is Taubin's lambda|mu filter (G. Taubin, "A signal processing approach to fair surface design", SIGGRAPH
1995), the low-pass, volume-preserving family 3D Slicer's closed-surface export also uses (there as the windowed-sinc
filter): alternating shrink (lambda) and inflate (mu) steps of the uniform Laplacian remove the voxel staircase without
the shrinkage of plain Laplacian or Gaussian smoothing. Only vertices move, so the mesh stays closed and its winding
consistent.

Coordinates: MONAI MetaTensors and nibabel give RAS affines; 3D Slicer stores meshes in LPS and reads the
coordinate system from the STL header (``SPACE=LPS`` or ``SPACE=RAS`` anywhere in it, LPS assumed when absent).
The meshes are therefore written in LPS (x and y negated) with the header ``<name> SPACE=LPS``, the tag 3D Slicer
itself writes ("3D Slicer output. SPACE=LPS"): in a binary STL it opens the 80-byte header (space-padded; a binary
header must not begin with ``solid``), in an ASCII STL it follows ``solid`` on the first line.

Faces are wound counter-clockwise seen from outside (right-hand normals point out of the region), also when the
affine flips an axis (negative determinant: the face order is reversed). Files are written under a temporary name in
the output folder and renamed, so a failure leaves no partial mesh.

Gap filled: MONAI has no mesh export.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import MetaKeys, SpaceKeys, convert_to_numpy
from scipy import ndimage, sparse
from skimage.measure import marching_cubes
from stl import Mode
from stl import mesh as stl_mesh

from bundle.outputs import case_name
from bundle.report import crop_to_regions

logger = logging.getLogger(__name__)

HEADER_SIZE = 80
SPACE_TAG = "SPACE=LPS"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def taubin_smooth(
    vertices: np.ndarray, faces: np.ndarray, iterations: int, shrink: float = 0.5, pass_band: float = 0.1
) -> np.ndarray:
    """Taubin lambda|mu smoothing of a triangle mesh; returns new vertices, faces are unchanged.

    Args:
        vertices: (N, 3) float positions.
        faces: (M, 3) vertex indices.
        iterations: number of lambda|mu pairs (0 returns a copy).
        shrink: lambda, the positive step (0 < lambda < 1).
        pass_band: k_PB, the spatial frequency kept; mu = 1 / (k_PB - 1 / lambda) (Taubin 1995, eq. 9).
    """
    if iterations < 0 or not 0 < shrink < 1 or not 0 < pass_band < 1 / shrink:
        raise ValueError(
            f"need iterations >= 0, 0 < shrink < 1, 0 < pass_band < 1/shrink; got {iterations}, {shrink}, "
            f"{pass_band}"
        )
    inflate = 1.0 / (pass_band - 1.0 / shrink)
    count = len(vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    # each undirected edge once in each direction, duplicates (edges shared by two faces) counted once
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    rows, cols = np.concatenate([edges[:, 0], edges[:, 1]]), np.concatenate([edges[:, 1], edges[:, 0]])
    adjacency = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(count, count))
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    mean_of_neighbours = sparse.diags(1.0 / np.maximum(degree, 1)) @ adjacency
    smoothed = np.array(vertices, dtype=np.float64)
    for _ in range(iterations):
        for step in (shrink, inflate):
            smoothed += step * (mean_of_neighbours @ smoothed - smoothed)
    return smoothed


def region_mesh(
    mask: NdarrayOrTensor, affine: NdarrayOrTensor, space: str = "RAS", smoothing_iterations: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Closed, outward-wound triangle mesh of a binary region, in LPS world millimetres.

    Args:
        mask: (X, Y, Z) or (1, X, Y, Z) bool/0-1 array, the region.
        affine: 4x4 voxel-index -> world matrix of the mask's grid.
        space: the world frame of ``affine``: ``"RAS"`` (MONAI and nibabel; converted to LPS) or ``"LPS"``.
        smoothing_iterations: Taubin lambda|mu pairs (:func:`taubin_smooth`) applied in voxel units before the
            mesh is mapped to millimetres; 0 keeps the marching-cubes surface.

    Returns:
        vertices (N, 3) float64 in LPS mm, faces (M, 3) int64 vertex indices (counter-clockwise from outside).
        A region without voxels raises ``ValueError``.
    """
    region = convert_to_numpy(mask).astype(bool)
    if region.ndim == 4 and region.shape[0] == 1:
        region = region[0]
    if region.ndim != 3:
        raise ValueError(f"expected a 3D region mask, got shape {region.shape}")
    if not region.any():
        raise ValueError("the region has no voxels: nothing to mesh")
    matrix = np.asarray(convert_to_numpy(affine), dtype=np.float64)
    if matrix.shape != (4, 4) or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ValueError(f"expected an invertible 4x4 affine, got {matrix.tolist()}")
    if space.upper() not in (SpaceKeys.RAS.value, SpaceKeys.LPS.value):
        raise ValueError(f"space must be 'RAS' or 'LPS', got {space!r}")
    to_lps = RAS_TO_LPS @ matrix if space.upper() == SpaceKeys.RAS.value else matrix

    margin = 1
    # crop to the region's bounding box first: meshing cost then scales with the region, not the scan
    lower = np.argwhere(region).min(axis=0)
    upper = np.argwhere(region).max(axis=0) + 1
    crop = region[tuple(slice(lo, hi) for lo, hi in zip(lower, upper))]
    field = np.pad(crop, margin).astype(np.float32)
    # Not method="lewiner": on a 0/1 field at level 0.5 every ambiguous face (two diagonal voxels in, two out) has its
    # saddle exactly at the level, a tie that Lewiner's face test breaks per cell, so the two cells sharing the face
    # may disagree and leave edges shared by four faces (not watertight, found by tests/test_properties.py, e.g. the
    # voxels (0,0,0), (0,1,1), (1,1,0), (1,2,1)). The classic tables resolve each face by its corner signs alone, the
    # same from both sides: a closed, consistently wound surface for every 2 x 2 x 3 configuration of voxels.
    vertices, faces, _, _ = marching_cubes(field, level=0.5, method="lorensen")
    vertex_index = taubin_smooth(vertices, faces, smoothing_iterations) + (lower - margin)
    # scikit-image winds faces by the left-hand rule; STL wants counter-clockwise seen from outside
    faces = faces[:, ::-1]
    if np.linalg.det(to_lps[:3, :3]) < 0:
        faces = faces[:, ::-1]  # a reflecting affine mirrors the mesh and so reverses its winding
    world = vertex_index @ to_lps[:3, :3].T + to_lps[:3, 3]
    return world, np.ascontiguousarray(faces, dtype=np.int64)


def mesh_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume enclosed by a closed triangle mesh (divergence theorem): positive when normals point out."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


class _TaggedMesh(stl_mesh.Mesh):
    """numpy-stl mesh whose binary header is the solid name itself (numpy-stl writes its own banner there)."""

    def get_header(self, name: str) -> str:
        return name[:HEADER_SIZE].ljust(HEADER_SIZE)


def _solid_name(name: str) -> str:
    """``<name> SPACE=LPS`` as one ASCII line that fits the 80-byte binary header and does not begin with ``solid``
    (readers take such a file for ASCII STL): other characters become ``_``, a long name is cut before the tag."""
    safe = "".join(c if c.isascii() and c.isprintable() else "_" for c in name).strip() or "mesh"
    if safe.lower().startswith("solid"):
        safe = f"mesh {safe}"
    return f"{safe[: HEADER_SIZE - len(SPACE_TAG) - 1]} {SPACE_TAG}"


def _write_temporary(path: Path, vertices: np.ndarray, faces: np.ndarray, name: str, binary: bool) -> Path:
    """Write the STL to a hidden temporary file beside ``path`` and return that file's path."""
    solid = _solid_name(name)
    data = np.zeros(len(faces), dtype=stl_mesh.Mesh.dtype)
    data["vectors"] = vertices[faces]
    mesh = _TaggedMesh(data, remove_empty_areas=False, name=solid)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            mesh.save(str(path), fh=stream, mode=Mode.BINARY if binary else Mode.ASCII)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def write_stl(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray, name: str, binary: bool = True) -> Path:
    """Write one mesh as an STL (binary by default) with the header ``<name> SPACE=LPS``, atomically.

    ``vertices`` (N, 3) must already be LPS millimetres and ``faces`` (M, 3) vertex indices (see :func:`region_mesh`).
    """
    path = Path(path)
    os.replace(_write_temporary(path, vertices, faces, name, binary), path)
    return path


def write_region_stls(
    regions: NdarrayOrTensor,
    affine: NdarrayOrTensor | None,
    output_dir: str | os.PathLike,
    prefix: str,
    space: str | None = None,
    binary: bool = True,
    smoothing_iterations: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """One STL per region of a label map: ``<output_dir>/<prefix>_<i>.stl`` for regions i = 1..K.

    Args:
        regions: (1, X, Y, Z) or (X, Y, Z) region label map (0 background); a MetaTensor carries its own affine.
        affine: 4x4 voxel -> world matrix; None takes the MetaTensor's.
        output_dir: created if missing.
        prefix: file name prefix and STL solid name stem, e.g. ``"case01_wound"``.
        space: frame of the affine, ``"RAS"`` or ``"LPS"``; defaults to the MetaTensor's ``space`` or RAS.
        binary: binary STL (default) or ASCII.
        smoothing_iterations: see :func:`region_mesh`.
        overwrite: replace this prefix's existing meshes (including stale ones from an earlier run with more
            regions); without it an existing file raises ``FileExistsError`` before anything is written.

    Returns the written paths in label order; an empty label map writes nothing and returns [].
    """
    if affine is None:
        affine = getattr(regions, "affine", None)
        if affine is None:
            raise ValueError("the region map has no affine: pass `affine` (voxel -> world, 4x4)")
    if space is None:
        space = str(getattr(regions, "meta", {}).get(MetaKeys.SPACE, SpaceKeys.RAS.value))
    labels = convert_to_numpy(regions)
    labels = labels[0] if labels.ndim == 4 and labels.shape[0] == 1 else labels
    if labels.ndim != 3:
        raise ValueError(f"expected a (1, X, Y, Z) region label map, got shape {labels.shape}")
    labels = labels if np.issubdtype(labels.dtype, np.integer) else labels.astype(np.int64)
    present = np.unique(labels[labels > 0])
    output = Path(output_dir)
    width = max(2, len(str(int(present.max())))) if present.size else 2
    paths = [output / f"{prefix}_{int(label):0{width}d}.stl" for label in present]
    existing = sorted(output.glob(f"{prefix}_[0-9]*.stl")) if output.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]}: mesh already exists (pass overwrite to replace this case's meshes)")
    # one pass over the volume for all bounding boxes; each region is then meshed from its box alone, with the
    # affine shifted to the box corner, so the cost does not grow with (regions x scan size)
    boxes = ndimage.find_objects(labels)
    matrix = np.asarray(convert_to_numpy(affine), dtype=np.float64)
    meshes = []
    for label in present:
        box = boxes[int(label) - 1]
        corner = np.eye(4)
        corner[:3, 3] = [axis.start for axis in box]
        meshes.append(region_mesh(labels[box] == label, matrix @ corner, space, smoothing_iterations))
    output.mkdir(parents=True, exist_ok=True)
    temporaries: list[Path] = []
    try:
        for path, (vertices, faces) in zip(paths, meshes):
            temporaries.append(_write_temporary(path, vertices, faces, path.stem, binary))
    except BaseException:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        raise
    for temporary, path in zip(temporaries, paths):
        os.replace(temporary, path)
    for stale in set(existing) - set(paths):
        stale.unlink()
    return paths


class SaveRegionMeshesd(MapTransform):
    """Write the STL meshes of each key's region label map (:func:`write_region_stls`, each region meshed within its
    own box after one pass over the map), named ``<stem>_<output_postfix>_<i>.stl`` (``<stem>_<i>.stl`` without a
    postfix), ``<stem>`` being the source file name from the MetaTensor's meta data
    (:func:`bundle.outputs.case_name`). They go to the folder under ``folder_key`` when given (the case folder of
    :class:`bundle.outputs.WriteCaseFolderd`, as the inference config does), else to ``<output_dir>/<stem>/`` (or
    ``output_dir`` itself when ``separate_folder`` is False), as ``SaveImaged`` places images.

    Args:
        keys: region label map(s), (1, X, Y, Z) MetaTensors with an affine. The data are passed through unchanged.
        output_dir, binary, smoothing_iterations, overwrite: see :func:`write_region_stls`; the smoothing default,
            10 Taubin pairs, is the bundle's (configs/inference.json ``stl_smoothing_iterations``).
        output_postfix: part of the file names after the stem.
        separate_folder: one folder per case (default, as ``SaveImaged``).
        folder_key: key of the folder to write into, overriding ``output_dir``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike = "./outputs",
        output_postfix: str = "",
        separate_folder: bool = True,
        folder_key: str | None = None,
        binary: bool = True,
        smoothing_iterations: int = 10,
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.separate_folder = separate_folder
        self.folder_key = folder_key
        self.binary = binary
        self.smoothing_iterations = smoothing_iterations
        self.overwrite = overwrite

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            regions = d[key]
            if not isinstance(regions, torch.Tensor) or not hasattr(regions, "affine"):
                raise ValueError(f"'{key}': expected a MetaTensor with an affine to place the meshes in the scan")
            stem = case_name(regions)
            if self.folder_key is not None:
                folder = Path(d[self.folder_key])
            else:
                folder = self.output_dir / stem if self.separate_folder else self.output_dir
            labels = convert_to_numpy(regions)[0]
            labels = labels if np.issubdtype(labels.dtype, np.integer) else labels.astype(np.int64)
            box, box_affine = crop_to_regions(labels, convert_to_numpy(regions.affine).astype(np.float64))
            paths = write_region_stls(
                labels[box],
                box_affine,
                folder,
                f"{stem}_{self.output_postfix}" if self.output_postfix else stem,
                space=str(regions.meta.get(MetaKeys.SPACE, SpaceKeys.RAS.value)),
                binary=self.binary,
                smoothing_iterations=self.smoothing_iterations,
                overwrite=self.overwrite,
            )
            if self.folder_key is None:
                logger.info("%s: %d wound mesh(es) written to %s", stem, len(paths), folder)
            else:  # the case folder is still the hidden one here; WriteCaseFolderd logs the published folder
                logger.info("%s: %d wound mesh(es)", stem, len(paths))
        return d
