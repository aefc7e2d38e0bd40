"""Segmentation errors of the kinds an automatic segmenter leaves in a label map, applied to a phantom's labels.

A phantom's labels are exact; a DentalSegmentator map is not. The real map of ``shared/real_anatomy.md`` has small
islands of mandible label beside the bone, and automatic segmentations in general have rough boundaries, holes where
bone is thin or of low density, and a canal broken into pieces where it is faint. These errors are in the input
map only: the CBCT, the lesion truth and the intact map of a case stay as they were, so a model can be measured on
imperfect inputs against the same truth. The sizes are stress levels chosen by the user, not measured error rates
of DentalSegmentator.

Every error works on the native grid in millimetres, with whole-volume array operations (one distance transform per
error kind); only the few blobs are placed one by one, each within its own small box.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

from jaw_phantoms.anatomy import CANAL, MANDIBLE, OTHER, UPPER_SKULL

_BONE = (UPPER_SKULL, MANDIBLE)
_JITTER_CORRELATION_MM = 4.0  # boundaries wander over a few millimetres, as a segmenter's do along an edge
_JITTER_CLIP = 2.0  # displacements are cut at this many times their standard deviation


@dataclass(frozen=True)
class SegmentationErrors:
    """Which errors to apply and how large (millimetres at the native grid); the defaults change nothing.

    Args:
        mandible_thinning_mm: the mandible's outer surface moved inwards by this much (mandible voxels within it of
            the background relabelled background; faces on teeth and canal stay), as a segmenter that labels bone
            tightly would. The bank's mandibles are thicker than the real map's (docs/phantoms.md), so this also
            moves a phantom towards it.
        boundary_jitter_mm: standard deviation, along each axis, of a smooth random displacement (correlation length
            4 mm, cut at twice the deviation) through which the whole label map is resampled (nearest label): every
            boundary moves, thin walls may break or merge.
        islands: number of spurious blobs of bone label (that of the nearest bone: upper skull or mandible) in the
            background within ``island_reach_mm`` of the bone.
        island_radius_mm: smallest and largest radius of an island.
        island_reach_mm: how far from the bone an island's centre may lie.
        bone_holes: number of blobs inside the upper skull or the mandible, at least their radius deep, relabelled
            background (bone the segmenter missed).
        hole_radius_mm: smallest and largest radius of a hole.
        canal_gaps: number of pieces of the canal relabelled mandible (a canal broken where it is faint).
        canal_gap_mm: length of canal each gap takes.
    """

    mandible_thinning_mm: float = 0.0
    boundary_jitter_mm: float = 0.0
    islands: int = 0
    island_radius_mm: tuple[float, float] = (1.0, 2.5)
    island_reach_mm: float = 10.0
    bone_holes: int = 0
    hole_radius_mm: tuple[float, float] = (1.5, 3.0)
    canal_gaps: int = 0
    canal_gap_mm: float = 6.0

    def __post_init__(self) -> None:
        for name in (
            "mandible_thinning_mm",
            "boundary_jitter_mm",
            "islands",
            "island_reach_mm",
            "bone_holes",
            "canal_gaps",
            "canal_gap_mm",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"segmentation error {name} must be >= 0, got {getattr(self, name)}")
        for name in ("island_radius_mm", "hole_radius_mm"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"segmentation error {name} must be (min, max) with 0 < min <= max, got {(low, high)}")

    @property
    def changes_labels(self) -> bool:
        return bool(
            self.mandible_thinning_mm or self.boundary_jitter_mm or self.islands or self.bone_holes or self.canal_gaps
        )

    @classmethod
    def parse(cls, settings: list[str]) -> "SegmentationErrors":
        """From ``["islands=10", "island_radius_mm=1,2.5", ...]`` (the command line's form)."""
        types = {field.name: field.type for field in fields(cls)}
        values: dict[str, object] = {}
        for setting in settings:
            name, separator, text = setting.partition("=")
            if not separator or name not in types:
                raise ValueError(f"segmentation error {setting!r}: expected NAME=VALUE with NAME one of {list(types)}")
            try:
                if "tuple" in str(types[name]):
                    values[name] = tuple(float(part) for part in text.split(","))
                    if len(values[name]) != 2:
                        raise ValueError
                elif types[name] == "int":
                    values[name] = int(text)
                else:
                    values[name] = float(text)
            except ValueError:
                raise ValueError(f"segmentation error {setting!r}: {text!r} is not a valid {types[name]}") from None
        return cls(**values)


def apply_segmentation_errors(
    labels: np.ndarray, spacing: np.ndarray, errors: SegmentationErrors, seed: int
) -> np.ndarray:
    """A copy of the int (X, Y, Z) ``labels`` at ``spacing`` mm with ``errors`` applied, drawn from ``seed`` alone.

    Order: mandible thinning, boundary jitter, canal gaps, bone holes, islands (islands last, so they stay where
    they were placed).
    Kinds that find no room (no canal, no bone deep enough) are skipped rather than refused: a field of view may
    lack them."""
    spacing = np.asarray(spacing, dtype=float)
    rng = np.random.default_rng([seed, 20])
    out = labels.copy()
    if errors.mandible_thinning_mm > 0:
        mandible = out == MANDIBLE
        out[
            mandible & (ndimage.distance_transform_edt(out != OTHER, sampling=spacing) <= errors.mandible_thinning_mm)
        ] = OTHER
    if errors.boundary_jitter_mm > 0:
        out = _jitter_boundaries(out, spacing, errors.boundary_jitter_mm, rng)
    if errors.canal_gaps:
        _cut_canal(out, spacing, errors.canal_gaps, errors.canal_gap_mm, rng)
    if errors.bone_holes:
        bone = np.isin(out, _BONE)
        depth = ndimage.distance_transform_edt(bone, sampling=spacing)
        for centre, radius in _blobs(depth, errors.bone_holes, errors.hole_radius_mm, rng, deep=True):
            box, ball = _ball(out.shape, spacing, centre, radius)
            out[box][ball & np.isin(out[box], _BONE)] = OTHER
    if errors.islands:
        bone = np.isin(out, _BONE)
        distance, nearest = ndimage.distance_transform_edt(~bone, sampling=spacing, return_indices=True)
        room = np.where((out == OTHER) & (distance <= errors.island_reach_mm), distance, 0.0)
        for centre, radius in _blobs(room, errors.islands, errors.island_radius_mm, rng, deep=False):
            label = out[tuple(nearest[:, centre[0], centre[1], centre[2]])]
            box, ball = _ball(out.shape, spacing, centre, radius)
            out[box][ball & (out[box] == OTHER)] = label
    return out


def _jitter_boundaries(labels: np.ndarray, spacing: np.ndarray, deviation_mm: float, rng) -> np.ndarray:
    sigma = _JITTER_CORRELATION_MM / spacing
    grid = np.indices(labels.shape, dtype=np.float32)
    for axis in range(3):
        field = ndimage.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), sigma)
        field *= deviation_mm / max(float(field.std()), 1e-12) / spacing[axis]
        limit = _JITTER_CLIP * deviation_mm / spacing[axis]
        grid[axis] += np.clip(field, -limit, limit)
    return ndimage.map_coordinates(labels, grid, order=0, mode="nearest").astype(labels.dtype)


def _cut_canal(labels: np.ndarray, spacing: np.ndarray, gaps: int, gap_mm: float, rng) -> None:
    canal = np.argwhere(labels == CANAL)
    if len(canal) == 0:
        return
    centres = canal[rng.choice(len(canal), size=min(gaps, len(canal)), replace=False)] * spacing
    points = canal * spacing
    distance = np.min(np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=-1), axis=1)
    cut = canal[distance <= gap_mm / 2]
    labels[tuple(cut.T)] = MANDIBLE


def _blobs(room: np.ndarray, count: int, radius_range: tuple[float, float], rng, deep: bool):
    """Centres (voxel indices) and radii of ``count`` blobs, each centre drawn among the voxels with ``room > 0``
    (and, if ``deep``, with ``room`` at least the blob's radius)."""
    candidates = np.flatnonzero(room > 0)
    for _ in range(count):
        radius = float(rng.uniform(*radius_range))
        pool = candidates[room.flat[candidates] >= radius] if deep else candidates
        if len(pool) == 0:
            return
        yield np.unravel_index(int(pool[rng.integers(len(pool))]), room.shape), radius


def _ball(shape, spacing: np.ndarray, centre, radius: float):
    """The box around a ball and the ball within it."""
    reach = np.ceil(radius / spacing).astype(int)
    low = np.maximum(np.asarray(centre) - reach, 0)
    high = np.minimum(np.asarray(centre) + reach + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    offsets = np.ogrid[tuple(slice(a - c, b - c) for a, b, c in zip(low, high, centre))]
    squared = sum((offset * step) ** 2 for offset, step in zip(offsets, spacing))
    return box, squared <= radius**2
