"""Rasterising a subject (``anatomy``) with an optional lesion (``lesions``) into labels, truth and a raw CBCT."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from jaw_phantoms.anatomy import (
    CANAL,
    CROWN_ABOVE_CREST_MM,
    LOWER_TEETH,
    MANDIBLE,
    OTHER,
    UPPER_SKULL,
    UPPER_TEETH,
    AnatomyOptions,
    JawSubject,
    Solid,
    sample_subject,
)
from jaw_phantoms.lesions import LESION_KINDS, MAX_SCALE, LesionSpec, fit_and_remove, sample_lesion
from jaw_phantoms.shape_bank import SURFACE_LEVEL

_CANAL_INSIDE_LEVEL = 240  # occupancy the canal keeps to: inside the bone, off its cortex
_CORTEX_LEVEL = 250  # bone with a lower occupancy lies within about 1 mm of the surface
_RIDGE_SHOULDER = 1.5  # a resorbing ridge loses this many times its central height at its buccal and lingual edges
# CBCT intensities (HU-like)
_HU_AIR, _HU_SOFT, _HU_MUSCLE = -1000.0, 30.0, 60.0
_HU_SKULL, _HU_MANDIBLE, _HU_CORTEX = 950.0, 1050.0, 1400.0
_HU_ROOT, _HU_ENAMEL, _HU_CANAL = 1700.0, 2300.0, 250.0


@dataclass(eq=False)
class JawPhantom:
    """One rasterised phantom.

    ``labels``: int16 (X, Y, Z) DentalSegmentator labels 0..5, lesion applied; ``healthy_labels``: the same subject
    without it; ``truth``: uint8, 1 exactly where tissue was removed by the lesion; ``cbct``: float32 HU-like raw
    image or None; ``affine``: voxel -> world (RAS mm, nibabel convention).
    """

    labels: np.ndarray
    healthy_labels: np.ndarray
    truth: np.ndarray
    cbct: np.ndarray | None
    affine: np.ndarray
    subject: JawSubject
    lesion: LesionSpec | None

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)


class Grid:
    """The scanner's voxel grid of a subject and the shape-frame millimetres of every voxel."""

    def __init__(self, subject: JawSubject, spacing: np.ndarray, axcodes: str) -> None:
        if len(axcodes) != 3 or any(code not in "RLAPSI" for code in axcodes.upper()):
            raise ValueError(f"axcodes must be three of R/L, A/P, S/I in x, y, z order, got {axcodes!r}")
        signs = np.array([1.0 if code in "RAS" else -1.0 for code in axcodes.upper()])
        self.shape = tuple(int(n) for n in np.maximum(np.rint(subject.fov_size / spacing), 8))
        affine = np.eye(4)
        affine[:3, :3] = np.diag(signs * spacing)
        affine[:3, 3] = subject.fov_centre - signs * spacing * (np.array(self.shape) - 1) / 2
        self.affine = affine
        axes = [np.arange(n, dtype=np.float32) for n in self.shape]
        voxels = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        world = voxels @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)
        posed = (world - subject.translation.astype(np.float32)) @ subject.rotation.astype(np.float32)
        self.points = subject.deformation(posed)
        radial = [(np.arange(n) - (n - 1) / 2) * step for n, step in zip(self.shape[:2], spacing[:2])]
        radius = np.min(np.array(self.shape[:2]) * spacing[:2]) / 2
        self.in_cylinder = (radial[0][:, None] ** 2 + radial[1][None, :] ** 2 <= radius**2)[:, :, None]
        self._reach = float(subject.deformation.amplitude) + 2.0 * float(spacing.max())
        self._scale = subject.deformation.scale
        self._subject = subject

    def box(self, low: np.ndarray, high: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering a shape-frame box (None when it misses the grid)."""
        low = np.asarray(low) * self._scale - self._reach
        high = np.asarray(high) * self._scale + self._reach
        corners = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(3, -1)
        world = self._subject.rotation @ corners + self._subject.translation[:, None]
        voxels = np.linalg.solve(self.affine[:3, :3], world - self.affine[:3, 3:])
        start = np.maximum(np.floor(voxels.min(axis=1)).astype(int), 0)
        stop = np.minimum(np.ceil(voxels.max(axis=1)).astype(int) + 1, self.shape)
        if np.any(stop <= start):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def _paint(solids: Sequence[Solid], grid: Grid, mask: np.ndarray) -> None:
    for solid in solids:
        box = grid.box(*solid.bounds())
        if box is not None:
            mask[box] |= solid.inside(grid.points[box])


def render(
    subject: JawSubject, spacing: float | Sequence[float] = 1.0, axcodes: str = "RAS"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Grid]:
    """Healthy labels (int16), tooth index per voxel (int16, -1 elsewhere), crown mask, mandible occupancy and the
    grid of ``subject`` at ``spacing`` mm."""
    spacing_mm = np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()
    if np.any(~np.isfinite(spacing_mm)) or np.any(spacing_mm <= 0.0) or np.any(spacing_mm > 4.0):
        raise ValueError(f"spacing must be within (0, 4] mm, got {spacing}")
    grid = Grid(subject, spacing_mm, axcodes)
    labels = np.zeros(grid.shape, dtype=np.int16)

    skull = np.zeros(grid.shape, dtype=bool)
    _paint(subject.skull_solids, grid, skull)
    cavities = np.zeros(grid.shape, dtype=bool)
    _paint(subject.skull_cavities, grid, cavities)
    skull &= ~cavities
    _paint(subject.skull_inner, grid, skull)
    labels[skull] = UPPER_SKULL

    occupancy = np.zeros(grid.shape, dtype=np.float32)
    shape = subject.shape
    box = grid.box(shape.origin, shape.origin + np.array(shape.occupancy.shape) - 1.0)
    if box is not None:
        occupancy[box] = shape.sample(grid.points[box])
    labels[occupancy >= SURFACE_LEVEL] = MANDIBLE
    canal = np.zeros(grid.shape, dtype=bool)
    _paint(subject.canal, grid, canal)
    labels[canal & (occupancy >= _CANAL_INSIDE_LEVEL)] = CANAL

    present = set(range(len(subject.teeth))) - set(subject.missing_teeth)
    tooth_ids, crown = _paint_teeth(subject, grid, present)
    has_tooth = tooth_ids >= 0
    teeth_labels = np.array([t.label for t in subject.teeth], dtype=np.int16)
    labels[has_tooth] = teeth_labels[tooth_ids[has_tooth]]
    for bone, lost in _ridge_losses(subject, grid).items():
        labels[lost & (labels == bone)] = OTHER
    _open_joint_space(labels, spacing_mm, subject.joint_space_mm)
    labels[~np.broadcast_to(grid.in_cylinder, grid.shape)] = OTHER
    return labels, tooth_ids, crown, occupancy, grid


def _paint_teeth(subject: JawSubject, grid: Grid, indices: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Index into ``subject.teeth`` per voxel (int16, -1 where none of ``indices`` stands) and the crown mask."""
    tooth_ids = np.full(grid.shape, -1, dtype=np.int16)
    crown = np.zeros(grid.shape, dtype=bool)
    for index in sorted(indices):
        tooth = subject.teeth[index]
        box = grid.box(*tooth.bounds())
        if box is None:
            continue
        inside, in_crown = tooth.inside(grid.points[box])
        tooth_ids[box][inside] = index
        crown[box] |= in_crown
    return tooth_ids, crown


def _ridge_losses(subject: JawSubject, grid: Grid) -> dict[int, np.ndarray]:
    """Where the alveolar crest has resorbed under the missing teeth (``subject.ridge_loss_mm``), per bone label
    (mandible under a lower tooth, upper skull under an upper one): bool (X, Y, Z) masks of a saddle that is deepest
    at the gap's centre and tapers to the neighbouring teeth, with rounded buccal and lingual shoulders (the ridge
    narrows as it lowers). Zones reach 3 mm above the crest, because the bank's crest is not flat."""
    losses: dict[int, np.ndarray] = {}
    for index, loss_mm in zip(subject.missing_teeth, subject.ridge_loss_mm):
        if loss_mm <= 0.0:
            continue
        tooth = subject.teeth[index]
        crest = tooth.cervical + CROWN_ABOVE_CREST_MM * tooth.axis
        half_length, half_width = 0.5 * tooth.width + 1.0, 0.5 * tooth.depth + 2.0
        corners = [
            crest + a * half_length * tooth.tangent + b * half_width * tooth.normal + c * tooth.axis
            for a in (-1, 1)
            for b in (-1, 1)
            for c in (-3.0, _RIDGE_SHOULDER * loss_mm)
        ]
        box = grid.box(np.min(corners, axis=0), np.max(corners, axis=0))
        if box is None:
            continue
        offset = grid.points[box] - crest.astype(np.float32)
        along = np.clip(offset @ tooth.tangent.astype(np.float32) / np.float32(half_length), -1.0, 1.0)
        across = offset @ tooth.normal.astype(np.float32) / np.float32(half_width)
        height = offset @ tooth.axis.astype(np.float32)  # into the jaw
        depth = np.float32(loss_mm) * np.cos(np.float32(np.pi / 2) * along) ** 2
        depth *= 1.0 + np.float32(_RIDGE_SHOULDER - 1.0) * across**2
        bone = MANDIBLE if tooth.label == LOWER_TEETH else UPPER_SKULL
        lost = losses.setdefault(bone, np.zeros(grid.shape, dtype=bool))
        lost[box] |= (np.abs(across) <= 1.0) & (height >= -3.0) & (height < depth)
    return losses


def tooth_gaps(subject: JawSubject, spacing: float | Sequence[float] = 1.0, axcodes: str = "RAS") -> np.ndarray:
    """Bool (X, Y, Z) mask of where the crowns of the teeth that ``subject`` lacks (``missing_teeth``) would stand, on
    the grid that :func:`render` gives for the same ``spacing`` and ``axcodes`` (inside the field of view): the empty
    space a missing tooth leaves above the alveolar crest, which is healthy anatomy, and the bone that the crest's
    resorption took beneath it (``subject.ridge_loss_mm``). (The root's place is left out: :func:`render` keeps the
    jaw's bone there, a healed socket.)"""
    spacing_mm = np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()
    grid = Grid(subject, spacing_mm, axcodes)
    _, gaps = _paint_teeth(subject, grid, set(subject.missing_teeth))
    losses = _ridge_losses(subject, grid)
    if losses:
        intact, *_ = render(dataclasses.replace(subject, ridge_loss_mm=()), spacing_mm, axcodes)
        for bone, lost in losses.items():
            gaps |= lost & (intact == bone)
    return gaps & np.broadcast_to(grid.in_cylinder, grid.shape)


def _open_joint_space(labels: np.ndarray, spacing: np.ndarray, joint_space_mm: float) -> None:
    """Turn the upper-skull voxels with less than ``joint_space_mm`` of empty space between them and the lower jaw
    into ``OTHER`` (in place): the skull solids are placed on the jaw's landmarks and may overlap it."""
    if joint_space_mm <= 0.0:
        return
    jaw = np.isin(labels, (MANDIBLE, LOWER_TEETH, CANAL))
    found = ndimage.find_objects(jaw.astype(np.uint8))
    if not found:
        return
    # the distance runs between voxel centres: one voxel more than the empty space between the two surfaces
    reach = joint_space_mm + float(spacing.mean())
    margin = np.ceil(reach / spacing).astype(int) + 1
    box = tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(found[0], margin, labels.shape))
    near_jaw = ndimage.distance_transform_edt(~jaw[box], sampling=spacing) < reach
    region = labels[box]
    region[near_jaw & (region == UPPER_SKULL)] = OTHER


def empty_space_to_lower_jaw_mm(labels: np.ndarray, spacing: np.ndarray) -> float:
    """Narrowest empty space between the upper skull and the lower jaw (mandible, lower teeth, canal) of ``labels``
    in mm: the voxel centres' distance less one voxel, 0 where they touch, NaN without upper skull."""
    skull = labels == UPPER_SKULL
    if not skull.any():
        return float("nan")
    to_jaw = ndimage.distance_transform_edt(~np.isin(labels, (MANDIBLE, LOWER_TEETH, CANAL)), sampling=spacing)
    return float(to_jaw[skull].min() - np.mean(spacing))


def crown_surface_on_bone(labels: np.ndarray, crown: np.ndarray, teeth: int, bone: int) -> float:
    """Fraction of the surface voxels of the crowns (``crown`` mask of :func:`render`) of label ``teeth`` that touch
    label ``bone`` (6-neighbourhood): 0 for crowns that stand free above their crest, NaN without such crowns."""
    crowns = crown & (labels == teeth)
    surface = crowns & ~ndimage.binary_erosion(crowns)
    if not surface.any():
        return float("nan")
    return float((surface & ndimage.binary_dilation(labels == bone)).sum() / surface.sum())


def synthesise_cbct(
    subject: JawSubject, grid: Grid, labels: np.ndarray, crown: np.ndarray, occupancy: np.ndarray, truth: np.ndarray
) -> np.ndarray:
    """HU-like raw CBCT matching ``labels``: soft tissue, tongue, air spaces, bone with cortex, teeth, canal; blur
    and noise inside the reconstructed cylinder, -1000 outside. Removed tissue (``truth``) reads as air: an open
    wound, the space a dressing fills."""
    rng = np.random.default_rng([subject.seed, 9])
    body = np.zeros(grid.shape, dtype=bool)
    _paint(subject.soft_tissue[:2], grid, body)
    tongue = np.zeros(grid.shape, dtype=bool)
    _paint(subject.soft_tissue[2:], grid, tongue)
    air = np.zeros(grid.shape, dtype=bool)
    _paint(subject.air, grid, air)
    _paint(subject.skull_cavities, grid, air)
    cbct = np.full(grid.shape, _HU_AIR, dtype=np.float32)
    cbct[body] = _HU_SOFT
    cbct[tongue & body] = _HU_MUSCLE
    cbct[air] = _HU_AIR
    cbct[labels == UPPER_SKULL] = _HU_SKULL
    mandible = labels == MANDIBLE
    cbct[mandible] = np.where(occupancy[mandible] < _CORTEX_LEVEL, _HU_CORTEX, _HU_MANDIBLE)
    cbct[labels == CANAL] = _HU_CANAL
    teeth = (labels == UPPER_TEETH) | (labels == LOWER_TEETH)
    cbct[teeth] = np.where(crown[teeth], _HU_ENAMEL, _HU_ROOT)
    cbct[truth > 0] = _HU_AIR
    spacing = np.linalg.norm(grid.affine[:3, :3], axis=0)
    ndimage.gaussian_filter(cbct, sigma=0.6 / spacing, output=cbct, truncate=3.0)
    cbct += rng.normal(0.0, 40.0, size=grid.shape).astype(np.float32)
    cbct[~np.broadcast_to(grid.in_cylinder, grid.shape)] = _HU_AIR
    return cbct


def make_phantom(
    seed: int,
    spacing: float | Sequence[float] = 1.0,
    lesion: str = "none",
    axcodes: str = "RAS",
    options: AnatomyOptions | None = None,
    lesion_volume_ml: float | None = None,
    with_cbct: bool = True,
    lesion_volume_range_ml: tuple[float, float] | None = None,
) -> JawPhantom:
    """Subject ``seed`` (see :func:`jaw_phantoms.anatomy.sample_subject`) rasterised at ``spacing`` mm with voxel axes
    along ``axcodes``, with a lesion of kind ``lesion`` (:data:`jaw_phantoms.lesions.LESION_KINDS`) of
    ``lesion_volume_ml``, or drawn in ``lesion_volume_range_ml`` (:func:`jaw_phantoms.lesions.sample_lesion`).

    Lesions are drawn only on held-out shapes (``options.shape_split == "held_out"``), so that no shape a model trains
    on is ever seen with a lesion. The anatomy depends only on ``seed`` and ``options``: the healthy labels of a
    lesioned phantom equal the labels of the healthy one.
    """
    options = options or AnatomyOptions()
    if lesion not in LESION_KINDS:
        raise ValueError(f"unknown lesion kind {lesion!r}; expected one of {LESION_KINDS}")
    if lesion != "none" and options.shape_split != "held_out":
        raise ValueError("lesions are simulated on held-out shapes only: use AnatomyOptions(shape_split='held_out')")
    subject = sample_subject(seed, options)
    healthy, tooth_ids, crown, occupancy, grid = render(subject, spacing, axcodes)
    labels, truth, spec = healthy, np.zeros(grid.shape, dtype=np.uint8), None
    if lesion != "none":
        spec = sample_lesion(subject, lesion, seed, lesion_volume_ml, lesion_volume_range_ml)
        box = grid.box(*spec.bounds(MAX_SCALE))
        if box is None:
            raise ValueError(f"subject {seed}: the lesion site lies outside the field of view")
        voxel_ml = float(np.prod(grid_spacing(grid))) / 1000.0
        removed = fit_and_remove(spec, healthy[box], tooth_ids[box], grid.points[box], voxel_ml, subject)
        labels = healthy.copy()
        labels[box][removed] = OTHER
        truth[box] = removed & (healthy[box] > 0)
    cbct = synthesise_cbct(subject, grid, labels, crown, occupancy, truth) if with_cbct else None
    return JawPhantom(labels, healthy, truth, cbct, grid.affine, subject, spec)


def grid_spacing(grid: Grid) -> np.ndarray:
    return np.linalg.norm(grid.affine[:3, :3], axis=0)
