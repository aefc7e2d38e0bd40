"""The bank of real mandible shapes (``data/mandibles``) and the landmarks the phantoms are built on.

Each shape is a uint8 occupancy at 1 mm in RAS (128 = bone surface), derived from real CT contours (CC BY 4.0; see
``data/mandibles/README.md``) by ``scripts/build_shape_bank.py``. ``bank.json`` lists the shapes with their split
(``training`` or ``held_out``, by patient) and sha256.

Landmarks are measured on the shape itself, in its millimetre frame (x right, y anterior, z superior):
the dental arch (the centre curve of the alveolar crest, parametrised by arc length ``s``, 0 at the midline,
positive on the right), the crest and base heights along it, where the tooth-bearing crest ends at each side, the
condyle heads and the ramus centre at the height of the mandibular foramen.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

BANK_DIR = Path(__file__).resolve().parent / "data" / "mandibles"
BANK_INDEX = "bank.json"
SHAPE_SPACING_MM = 1.0
SPLITS = ("training", "held_out")
SURFACE_LEVEL = 128


@dataclass(frozen=True)
class BankEntry:
    case: str
    split: str
    path: Path
    sha256: str


def bank_entries(split: str, bank_dir: Path = BANK_DIR) -> list[BankEntry]:
    """The shapes of ``split`` listed in ``bank_dir/bank.json`` (a clear error when it is missing or corrupt)."""
    if split not in SPLITS:
        raise ValueError(f"unknown shape split {split!r}; expected one of {SPLITS}")
    index_path = Path(bank_dir) / BANK_INDEX
    try:
        index = json.loads(index_path.read_text())
        entries = [
            BankEntry(item["case"], item["split"], Path(bank_dir) / item["file"], item["sha256"])
            for item in index["shapes"]
        ]
    except FileNotFoundError:
        raise FileNotFoundError(f"{index_path}: mandible shape bank index not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{index_path}: not a valid shape bank index ({error!r})") from None
    chosen = [entry for entry in entries if entry.split == split]
    if not chosen:
        raise ValueError(f"{index_path}: no shapes in split {split!r}")
    return chosen


@dataclass(frozen=True, eq=False)
class MandibleShape:
    """One bank shape: ``occupancy`` uint8 (X, Y, Z) at 1 mm, ``origin`` the millimetre position of voxel 0."""

    case: str
    occupancy: np.ndarray
    origin: np.ndarray

    def mirrored(self) -> MandibleShape:
        """The same jaw reflected left-right about the frame's x = 0 plane."""
        far = self.origin[0] + (self.occupancy.shape[0] - 1) * SHAPE_SPACING_MM
        return MandibleShape(self.case + "_mirrored", self.occupancy[::-1].copy(), np.array([-far, *self.origin[1:]]))

    def sample(self, points: np.ndarray) -> np.ndarray:
        """Occupancy (0..255, float32) at millimetre ``points`` (..., 3), trilinear, 0 outside the shape's box."""
        voxel = (points - self.origin.astype(np.float32)) / np.float32(SHAPE_SPACING_MM)
        flat = voxel.reshape(-1, 3).T
        values = ndimage.map_coordinates(self.occupancy, flat, order=1, mode="constant", cval=0.0, output=np.float32)
        return values.reshape(points.shape[:-1])


@lru_cache(maxsize=64)
def load_shape(path: Path, sha256: str) -> MandibleShape:
    """Read and check one shape file (cached: phantoms of one set reuse a few dozen shapes)."""
    import nibabel as nib

    path = Path(path)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: mandible shape file not found") from None
    if hashlib.sha256(content).hexdigest() != sha256:
        raise ValueError(f"{path}: checksum does not match the shape bank index (corrupt or replaced file)")
    try:
        image = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(content))
        occupancy = np.asarray(image.dataobj, dtype=np.uint8)
    except Exception as error:  # nibabel and gzip raise many types for a damaged file
        raise ValueError(f"{path}: not a readable NIfTI shape ({error})") from None
    if occupancy.ndim != 3 or not (occupancy >= SURFACE_LEVEL).any():
        raise ValueError(f"{path}: expected a 3D occupancy with bone, got shape {occupancy.shape}")
    return MandibleShape(path.name.split(".")[0], occupancy, image.affine[:3, 3].astype(np.float64))


@dataclass(frozen=True, eq=False)
class MandibleLandmarks:
    """Measured anatomy of one shape, in its millimetre frame.

    ``arch``: (N, 2) x, y of the crest centre curve sampled every 1 mm of arc length from ``s[0]`` (left end) to
    ``s[-1]`` (right end); ``crest_z`` / ``base_z``: (N,) top and bottom of the bone under each arch point;
    ``teeth_end``: (left, right) |s| where the tooth-bearing crest ends (the ramus begins); ``condyles``: (2, 3) top
    of the left and right condyle heads; ``foramina``: (2, 3) the ramus centre at the height of the mandibular
    foramen, on its inner (lingual) face.
    """

    s: np.ndarray
    arch: np.ndarray
    crest_z: np.ndarray
    base_z: np.ndarray
    teeth_end: tuple[float, float]
    condyles: np.ndarray
    foramina: np.ndarray

    def at(self, s: float | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y) point, unit tangent (towards +s) and unit buccal normal of the arch at arc length ``s``."""
        s = np.clip(s, self.s[0], self.s[-1])
        point = np.stack([np.interp(s, self.s, self.arch[:, i]) for i in range(2)], axis=-1)
        tangent = np.stack([np.interp(s, self.s, self._tangent[:, i]) for i in range(2)], axis=-1)
        tangent /= np.linalg.norm(tangent, axis=-1, keepdims=True)
        # the arch is a U opening backwards, run from left to right: outwards is the tangent turned clockwise
        normal = np.stack([tangent[..., 1], -tangent[..., 0]], axis=-1)
        return point, tangent, normal

    def crest(self, s: float | np.ndarray) -> np.ndarray:
        return np.interp(s, self.s, self.crest_z)

    def base(self, s: float | np.ndarray) -> np.ndarray:
        return np.interp(s, self.s, self.base_z)

    @property
    def _tangent(self) -> np.ndarray:
        return np.gradient(self.arch, axis=0)


def measure_landmarks(shape: MandibleShape) -> MandibleLandmarks:
    """Find the arch, crest, base, condyles and foramina of ``shape`` (see :class:`MandibleLandmarks`)."""
    bone = shape.occupancy >= SURFACE_LEVEL
    points = np.argwhere(bone) * SHAPE_SPACING_MM + shape.origin
    x_mid = float(np.median(points[:, 0]))
    y_front, y_back = points[:, 1].max(), points[:, 1].min()
    depth = y_front - y_back

    condyles = []
    for side in (-1, 1):
        lateral = points[(side * (points[:, 0] - x_mid) > 15.0) & (points[:, 1] < y_back + 0.25 * depth)]
        if len(lateral) == 0:
            raise ValueError(f"{shape.case}: no ramus on the {'left' if side < 0 else 'right'} side")
        top = lateral[lateral[:, 2] >= lateral[:, 2].max() - 3.0]
        condyles.append(top.mean(axis=0))
    condyles = np.array(condyles)

    # the body's outline in an axial projection of the bone below the rami's upper half
    low = points[points[:, 2] < condyles[:, 2].mean() - 30.0]
    centre = np.array([x_mid, y_back + 0.45 * depth])
    angles = np.deg2rad(np.arange(-110.0, 110.5, 2.0))
    relative = low[:, :2] - centre
    point_angles = np.arctan2(relative[:, 0], relative[:, 1])  # 0 = anterior, positive towards the right
    radii = np.linalg.norm(relative, axis=1)
    arch_points = []
    for angle in angles:
        near = np.abs(point_angles - angle) < np.deg2rad(2.0)
        if near.sum() >= 10:
            radius = np.median(radii[near])
            arch_points.append(centre + radius * np.array([np.sin(angle), np.cos(angle)]))
    arch_points = np.array(arch_points)
    arch_points = ndimage.uniform_filter1d(arch_points, size=5, axis=0, mode="nearest")
    steps = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(arch_points, axis=0), axis=1))]
    midline = np.interp(x_mid, arch_points[:, 0], steps)
    s_dense = np.arange(np.ceil(steps[0] - midline), np.floor(steps[-1] - midline) + 1.0)
    spline = CubicSpline(steps - midline, arch_points, axis=0)
    arch = spline(s_dense)

    # crest and base: the bone's top and bottom within 6 mm of each arch point, and the crest centre (the mean x, y
    # of the top 8 mm of bone there), so that teeth stand on the ridge rather than on the body's midline
    crest_z, base_z, crest_xy = [], [], []
    for point in arch:
        column = points[np.linalg.norm(points[:, :2] - point, axis=1) < 6.0]
        if len(column) == 0:
            crest_z.append(np.nan), base_z.append(np.nan), crest_xy.append(point)
            continue
        crest_z.append(column[:, 2].max())
        base_z.append(column[:, 2].min())
        crest_xy.append(column[column[:, 2] > column[:, 2].max() - 8.0, :2].mean(axis=0))
    valid = ~np.isnan(crest_z)
    s_dense, arch = s_dense[valid], np.asarray(crest_xy)[valid]
    crest_z, base_z = np.asarray(crest_z)[valid], np.asarray(base_z)[valid]
    arch = ndimage.uniform_filter1d(arch, size=9, axis=0, mode="nearest")
    crest_z = ndimage.median_filter(crest_z, size=7, mode="nearest")
    base_z = ndimage.median_filter(base_z, size=7, mode="nearest")

    # the tooth-bearing crest ends where the bone under the arch rises into the ramus
    teeth_end = []
    for side in (-1, 1):
        on_side = side * s_dense > 0
        s_side, crest_side = side * s_dense[on_side], crest_z[on_side]
        order = np.argsort(s_side)
        s_side, crest_side = s_side[order], crest_side[order]
        body = (s_side > 15.0) & (s_side < 35.0)
        if not body.any():
            raise ValueError(f"{shape.case}: no tooth-bearing crest on the {'left' if side < 0 else 'right'} side")
        reference = np.median(crest_side[body])
        rising = np.nonzero((s_side > 30.0) & (crest_side > reference + 8.0))[0]
        teeth_end.append(float(s_side[rising[0]] - 4.0 if len(rising) else s_side[-1] - 10.0))

    foramina = []
    for side, end in zip((-1, 1), teeth_end):
        height = np.median(crest_z[np.abs(s_dense) < 35.0]) + 2.0
        ramus = points[
            (side * (points[:, 0] - x_mid) > 15.0)
            & (np.abs(points[:, 2] - height) < 2.0)
            & (points[:, 1] < np.interp(side * end, s_dense, arch[:, 1]) - 5.0)
        ]
        if len(ramus) == 0:
            raise ValueError(f"{shape.case}: no ramus found at the height of the mandibular foramen")
        centre_xyz = ramus.mean(axis=0)
        inner = np.percentile(side * (ramus[:, 0] - x_mid), 20.0)  # towards the midline: the lingual face
        foramina.append(np.array([x_mid + side * (inner + 1.5), centre_xyz[1], height]))
    return MandibleLandmarks(s_dense, arch, crest_z, base_z, (teeth_end[0], teeth_end[1]), condyles, np.array(foramina))
