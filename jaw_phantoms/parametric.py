"""Synthetic jaw phantoms in the DentalSegmentator label convention, simulated ONJ lesions and a matching raw CBCT.

Gap it fills: MONAI has no anatomical phantom of the jaw. The bundle needs healthy label maps to train on, lesioned
ones with known truth to evaluate on, and raw CBCTs for the soft-tissue avoidance step, without shipping patient data.

Geometry is defined in millimetres in a *subject frame* (origin just behind the lower incisors, z = 0 on the
occlusal plane, x towards the subject's right, y anterior, z superior), so that one subject rasterises to the same
anatomy at any spacing. Jaw structures are described in *arch coordinates*: ``s``, the signed arc length along
the mandible's centre curve (0 at the midline, positive on the right), ``d``, the signed distance from that curve
(positive buccal/outwards), and ``z``. The subject frame is rotated by a few degrees and shifted in the world (RAS
millimetres, nibabel convention); the voxel grid is axis-aligned in the world, optionally with flipped axes
(e.g. LPS).

Figures the shapes are tuned to (one real DentalSegmentator map at 2 mm): label 1 22,463 voxels, 2 4,832,
3 1,169, 4 1,000, 5 101; mandible half-thickness at most ~4.8 mm.

Everything is drawn from ``numpy.random.Generator`` streams keyed by an integer seed: anatomy, lesion and CBCT noise
use separate streams, so the lesioned and healthy versions of one seed share the same anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

from jaw_phantoms.anatomy import (
    CANAL,
    FIRST_MOLAR,
    LOWER_TEETH,
    LOWER_TEETH_MM,
    MANDIBLE,
    OTHER,
    THIRD_MOLAR,
    UPPER_SKULL,
    UPPER_TEETH,
    UPPER_TEETH_MM,
)
from jaw_phantoms.primitives import Capsule, Ellipsoid, SmoothNoise, even_power, rotation_matrix

LESION_KINDS = ("none", "onj", "teeth_and_jaw_removed")
LOWER_JAW_LABELS = (MANDIBLE, LOWER_TEETH, CANAL)

# Upper teeth are wider than lower ones; they sit on a slightly compressed copy of the arch so that molars occlude.
_UPPER_ARCH_SCALE = 0.96
_UPPER_OCCLUSAL_Z = 0.5

# Mandible centre curve, right half (x >= 0), from the midline to behind the condyle (mm, before subject scaling).
_ARCH_CONTROL_MM = np.array(
    [
        [0.0, 4.0],
        [9.0, 2.0],
        [16.0, -4.0],
        [21.0, -12.0],
        [25.0, -22.0],
        [29.0, -33.0],
        [33.0, -43.0],
        [37.0, -51.0],
        [41.0, -59.0],
        [44.0, -67.0],
        [46.0, -75.0],
        [47.5, -83.0],
        [48.5, -91.0],
    ]
)

# CBCT intensities (HU-like).
_HU_AIR, _HU_SOFT, _HU_MUSCLE = -1000.0, 30.0, 60.0
_HU_SKULL, _HU_MANDIBLE, _HU_CORTEX = 950.0, 1050.0, 1400.0
_HU_ROOT, _HU_ENAMEL, _HU_CANAL = 1700.0, 2300.0, 250.0


# --------------------------------------------------------------------------------------------------------------------
# arch


class ArchCurve:
    """The mandible's centre curve in the subject's axial plane, with a lookup table for arch coordinates.

    ``project(x, y)`` gives ``(s, d)`` for any points: the nearest curve sample comes from a table over the plane
    (nearest-sample indices by one Euclidean distance transform), then ``s`` and ``d`` are refined by projecting onto
    that sample's tangent and normal, so the table resolution only needs to be a fraction of the voxel size.
    """

    _STEP_MM = 0.1
    _TABLE_LOW = np.array([-95.0, -140.0])
    _TABLE_HIGH = np.array([95.0, 45.0])

    def __init__(self, right_half_control: np.ndarray, table_resolution_mm: float) -> None:
        control = np.concatenate([right_half_control[:0:-1] * [-1.0, 1.0], right_half_control])
        chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(control, axis=0), axis=1))])
        spline = CubicSpline(chord, control, axis=0)
        parameter = np.arange(0.0, chord[-1], self._STEP_MM / 2)
        points = spline(parameter)
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
        arc -= np.interp(chord[len(right_half_control) - 1], parameter, arc)  # s = 0 at the midline
        self.s = np.arange(np.ceil(arc[0] / self._STEP_MM), np.floor(arc[-1] / self._STEP_MM) + 1) * self._STEP_MM
        self.points = np.stack([np.interp(self.s, arc, points[:, i]) for i in range(2)], axis=1)
        tangents = np.gradient(self.points, axis=0)
        self.tangents = tangents / np.linalg.norm(tangents, axis=1, keepdims=True)
        self.normals = np.stack([-self.tangents[:, 1], self.tangents[:, 0]], axis=1)  # points outwards (buccal)
        self.resolution = float(table_resolution_mm)
        size = np.ceil((self._TABLE_HIGH - self._TABLE_LOW) / self.resolution).astype(int) + 1
        cells = np.rint((self.points - self._TABLE_LOW) / self.resolution).astype(int)
        inside = np.all((cells >= 0) & (cells < size), axis=1)
        nearest_sample = np.full(tuple(size), -1, dtype=np.int32)
        nearest_sample[cells[inside, 0], cells[inside, 1]] = np.flatnonzero(inside)
        indices = ndimage.distance_transform_edt(nearest_sample < 0, return_distances=False, return_indices=True)
        self.table = nearest_sample[indices[0], indices[1]]
        self._float32_samples = [
            values.astype(np.float32)
            for values in (self.s, self.points[:, 0], self.points[:, 1], self.tangents[:, 0], self.tangents[:, 1])
        ]

    def point(self, s: float | np.ndarray) -> np.ndarray:
        """Curve position(s) at arc length ``s`` (mm), shape (..., 2)."""
        return np.stack([np.interp(s, self.s, self.points[:, i]) for i in range(2)], axis=-1)

    def normal(self, s: float | np.ndarray) -> np.ndarray:
        return np.stack([np.interp(s, self.s, self.normals[:, i]) for i in range(2)], axis=-1)

    def project(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Arch coordinates ``(s, d)`` in mm of subject-frame points, float32 arrays of the input's shape."""
        size = self.table.shape
        ix = np.clip(np.rint((x - self._TABLE_LOW[0]) / self.resolution).astype(np.int32), 0, size[0] - 1)
        iy = np.clip(np.rint((y - self._TABLE_LOW[1]) / self.resolution).astype(np.int32), 0, size[1] - 1)
        sample = self.table[ix, iy]
        s0, px, py, tx, ty = (values[sample] for values in self._float32_samples)
        dx, dy = x - px, y - py
        s = s0 + dx * tx + dy * ty
        d = dy * tx - dx * ty
        return s, d

    def box(self, s_low: float, s_high: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """Axial bounding box (x, y) of the curve between two arc lengths, widened by ``margin`` mm."""
        points = self.point(np.linspace(s_low, s_high, 64))
        return points.min(axis=0) - margin, points.max(axis=0) + margin


# --------------------------------------------------------------------------------------------------------------------
# subject


@dataclass(frozen=True, eq=False)
class Teeth:
    """Both dental arches; one entry per tooth position (28 or up to 32), in arch coordinates (mm).

    ``fdi``: FDI number (11-18 upper right, 21-28 upper left, 31-38 lower left, 41-48 lower right);
    ``present``: erupted and not missing; ``missing``: lost although a healthy adult would have it (0-3 per subject).
    """

    fdi: np.ndarray
    label: np.ndarray  # UPPER_TEETH or LOWER_TEETH
    position: np.ndarray  # 0 central incisor .. 7 third molar
    s: np.ndarray
    d: np.ndarray
    half_mesiodistal: np.ndarray
    half_buccolingual: np.ndarray
    crown_height: np.ndarray
    root_length: np.ndarray
    present: np.ndarray
    missing: np.ndarray


@dataclass(frozen=True, eq=False)
class JawSubject:
    """Everything that defines one synthetic head, in millimetres; rasterise it with :func:`render_phantom`."""

    seed: int
    rotation: np.ndarray  # (3, 3) subject -> world
    translation: np.ndarray  # (3,) world position of the subject origin
    fov_centre: np.ndarray  # (3,) world
    fov_size: np.ndarray  # (3,) mm, world axes
    arch_control: np.ndarray  # right half of the mandible's centre curve
    teeth: Teeth
    mandible: dict[str, float]
    canal: dict[str, float]
    skull_solids: tuple[Ellipsoid | Capsule, ...]
    skull_cavities: tuple[Ellipsoid, ...]
    air_cavities: tuple[Ellipsoid, ...]  # the subset of cavities that hold air (sinuses, airway, air cells)
    skull_roughness: SmoothNoise
    skull_roughness_mm: float
    maxilla: dict[str, float]
    soft_tissue: tuple[Ellipsoid, ...]
    airway: tuple[Ellipsoid, ...]

    @property
    def missing_teeth(self) -> tuple[int, ...]:
        """FDI numbers of the teeth missing in this healthy subject."""
        return tuple(int(n) for n in self.teeth.fdi[self.teeth.missing])

    def crest_z(self, label: int, s: np.ndarray) -> np.ndarray:
        """Height (subject z, mm) of the alveolar crest of the lower (``LOWER_TEETH``) or upper jaw along the arch."""
        selected = self.teeth.label == label
        order = np.argsort(self.teeth.s[selected])
        crown = np.interp(s, self.teeth.s[selected][order], self.teeth.crown_height[selected][order])
        if label == LOWER_TEETH:
            return -(crown + self.mandible["crest_gap"])
        return _UPPER_OCCLUSAL_Z + crown + self.maxilla["crest_gap"]


def sample_subject(seed: int) -> JawSubject:
    """Draw a healthy subject from ``seed`` (>= 0, its anatomy stream); identical seeds give identical subjects."""
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng([int(seed), 0])
    tooth_scale = rng.uniform(0.93, 1.07)
    arch_scale = np.array([rng.uniform(0.92, 1.08), rng.uniform(0.88, 1.02)]) * tooth_scale
    control = _ARCH_CONTROL_MM * arch_scale
    # the posterior part (rami) flares by a few degrees more or less from one subject to the next
    flare = rng.uniform(-0.08, 0.08) * np.clip(-control[:, 1] - 40.0, 0.0, None)
    control[:, 0] += flare
    teeth = _sample_teeth(rng, tooth_scale)
    arch = ArchCurve(control, table_resolution_mm=0.5)

    last_lower = np.abs(teeth.s[(teeth.label == LOWER_TEETH) & (teeth.position == 6)]).mean()
    half_md_last = teeth.half_mesiodistal[(teeth.label == LOWER_TEETH) & (teeth.position == 6)].mean()
    ramus_front = last_lower + half_md_last + rng.uniform(4.0, 9.0)
    ramus_width = rng.uniform(27.0, 33.0)
    bottom = -rng.uniform(35.0, 40.0)
    notch = rng.uniform(16.0, 22.0)
    mandible = {
        "crest_gap": rng.uniform(0.8, 1.6),
        "bottom": bottom,
        "chin_drop": rng.uniform(1.0, 4.0),
        "half_width": rng.uniform(4.0, 4.7),
        "ramus_front": ramus_front,
        "ramus_width": ramus_width,
        "ramus_tilt": rng.uniform(0.08, 0.2),
        "ramus_half_width": rng.uniform(2.4, 3.0),
        "gonial_rise": rng.uniform(2.0, 6.0),
        "notch": notch,
        "coronoid_height": rng.uniform(8.0, 14.0),
        "condyle_height": rng.uniform(16.0, 22.0),
    }
    canal_low = bottom + rng.uniform(9.0, 12.0)
    foramen_z = rng.uniform(0.0, 6.0)
    canal = {
        "radius": rng.uniform(1.25, 1.5),
        "s_mental": rng.uniform(24.0, 30.0) * tooth_scale,
        "s_bend": ramus_front - rng.uniform(2.0, 6.0),
        "s_foramen": ramus_front + 0.5 * ramus_width + mandible["ramus_tilt"] * (foramen_z - bottom),
        "z_low": canal_low,
        "z_foramen": foramen_z,
    }
    maxilla = {"crest_gap": rng.uniform(0.8, 1.6), "ridge_half_width": rng.uniform(5.0, 5.8)}
    maxilla["ridge_top"] = rng.uniform(28.0, 32.0)
    maxilla["palate_z"] = rng.uniform(19.0, 22.0)
    maxilla["palate_back"] = -rng.uniform(42.0, 48.0) * arch_scale[1]
    maxilla["ridge_end"] = float(np.abs(teeth.s[teeth.label == UPPER_TEETH]).max() + rng.uniform(5.0, 8.0))
    condyle_top = notch + mandible["condyle_height"]
    solids, cavities, air = _sample_skull(rng, arch_scale, condyle_top)

    # the face must cover the condyles, which sit where the tilted ramus's posterior border meets the condyle height
    condyle_xy = arch.point(ramus_front + ramus_width - 5.0 + mandible["ramus_tilt"] * (condyle_top - bottom))
    soft_tissue, airway = _sample_soft_tissue(rng, arch_scale, bottom, condyle_xy)

    rotation = rotation_matrix(rng.uniform(-5.0, 5.0, size=3))
    translation = rng.uniform(-20.0, 20.0, size=3)
    fov_size = rng.uniform([145.0, 145.0, 140.0], [185.0, 185.0, 175.0])
    front = 4.0 * arch_scale[1] + rng.uniform(12.0, 24.0)
    below = bottom - rng.uniform(4.0, 14.0)
    centre_subject = np.array([rng.uniform(-6.0, 6.0), front - fov_size[1] / 2, below + fov_size[2] / 2])
    fov_centre = rotation @ centre_subject + translation
    return JawSubject(
        seed=int(seed),
        rotation=rotation,
        translation=translation,
        fov_centre=fov_centre,
        fov_size=fov_size,
        arch_control=control,
        teeth=teeth,
        mandible=mandible,
        canal=canal,
        skull_solids=solids,
        skull_cavities=cavities,
        air_cavities=air,
        skull_roughness=SmoothNoise.sample(rng, 5, (14.0, 40.0)),
        skull_roughness_mm=rng.uniform(1.5, 3.0),
        maxilla=maxilla,
        soft_tissue=soft_tissue,
        airway=airway,
    )


def _sample_teeth(rng: np.random.Generator, tooth_scale: float) -> Teeth:
    rows = []
    for label, table, quadrants, arch_scale, d_offset in (
        (UPPER_TEETH, UPPER_TEETH_MM, (1, 2), _UPPER_ARCH_SCALE, rng.uniform(1.0, 2.5)),
        (LOWER_TEETH, LOWER_TEETH_MM, (4, 3), 1.0, 0.0),
    ):
        for quadrant, side in zip(quadrants, (1.0, -1.0)):
            sizes = table * tooth_scale * rng.uniform(0.95, 1.05, size=table.shape)
            widths = sizes[:, 0] * arch_scale
            centres = np.cumsum(widths) - widths / 2
            for position in range(len(table)):
                rows.append(
                    (
                        quadrant * 10 + position + 1,
                        label,
                        position,
                        side * (centres[position] + rng.uniform(-0.3, 0.3)),
                        d_offset + rng.uniform(-0.4, 0.4),
                        0.52 * widths[position],
                        0.5 * sizes[position, 1],
                        sizes[position, 2],
                        sizes[position, 3],
                    )
                )
    columns = [np.array(column) for column in zip(*rows)]
    position = columns[2]
    erupted = (position != THIRD_MOLAR) | (rng.random(len(position)) < 0.3)
    missing = np.zeros(len(position), dtype=bool)
    candidates = np.flatnonzero(position != THIRD_MOLAR)
    missing[rng.choice(candidates, size=rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]), replace=False)] = True
    return Teeth(*columns, present=erupted & ~missing, missing=missing)


def _sample_skull(
    rng: np.random.Generator, arch_scale: np.ndarray, condyle_top: float
) -> tuple[tuple[Ellipsoid | Capsule, ...], tuple[Ellipsoid, ...], tuple[Ellipsoid, ...]]:
    """Maxilla body, zygomas, pterygoid plates, skull base/cranium and temporal blocks, with their cavities."""
    sx, sy = arch_scale

    def jitter(values: Sequence[float], spread: float = 0.06) -> tuple[float, ...]:
        return tuple(float(v) for v in np.asarray(values) * rng.uniform(1 - spread, 1 + spread, size=len(values)))

    def mirrored(centre: Sequence[float], radii: Sequence[float], exponent: int = 2) -> list[Ellipsoid]:
        radii = jitter(radii)
        return [Ellipsoid((side * centre[0], centre[1], centre[2]), radii, exponent) for side in (1.0, -1.0)]

    cranium_centre = (0.0, -62.0 * sy, rng.uniform(108.0, 114.0))
    cranium_radii = jitter((72.0 * sx, 88.0 * sy, 58.0), 0.04)
    wall = rng.uniform(2.5, 3.5)
    floor = rng.uniform(3.0, 5.0)
    solids: list[Ellipsoid | Capsule] = [
        Ellipsoid((0.0, -18.0 * sy, 40.0), jitter((37.0 * sx, 27.0 * sy, 13.5)), 4),  # maxilla body
        Ellipsoid(cranium_centre, cranium_radii),
        *mirrored((46.0 * sx, -20.0 * sy, 42.0), (9.0, 13.0, 11.0)),  # zygomas
        *mirrored((17.0 * sx, -50.0 * sy, 34.0), (5.0, 7.0, 14.0)),  # pterygoid plates
        *mirrored((50.0 * sx, -82.0 * sy, condyle_top + 11.0), (12.0, 13.0, 9.0)),  # temporal blocks
    ]
    for side in (1.0, -1.0):  # zygomatic arches
        solids.append(
            Capsule((side * 50.0 * sx, -28.0 * sy, 40.0), (side * 56.0 * sx, -75.0 * sy, 40.0), rng.uniform(4.0, 5.0))
        )
    endocranium = Ellipsoid(
        (0.0, cranium_centre[1], cranium_centre[2] + floor - wall),
        (cranium_radii[0] - wall, cranium_radii[1] - wall, cranium_radii[2] - floor),
    )
    sinuses = mirrored((22.0 * sx, -20.0 * sy, 40.0), (12.0, 14.0, 11.0))
    nasal = Ellipsoid((0.0, -22.0 * sy, 47.0), jitter((10.0 * sx, 30.0 * sy, 20.0)), 4)
    orbits = mirrored((33.0 * sx, -8.0 * sy, 72.0), (16.0, 20.0, 16.0))
    air_cells = [
        Ellipsoid(
            (rng.choice([-1.0, 1.0]) * rng.uniform(25.0, 55.0), rng.uniform(-100.0, -55.0), rng.uniform(45.0, 62.0)),
            (r := float(rng.uniform(3.0, 6.0)), r, r),
        )
        for _ in range(rng.integers(4, 9))
    ]
    air = (*sinuses, nasal, *air_cells)
    return tuple(solids), (*air, *orbits, endocranium), air


def _sample_soft_tissue(
    rng: np.random.Generator, arch_scale: np.ndarray, bottom: float, condyle_xy: np.ndarray
) -> tuple[tuple[Ellipsoid, ...], tuple[Ellipsoid, ...]]:
    """Face, cranium skin, neck and tongue ellipsoids (soft tissue), and the pharyngeal airway."""
    sx, sy = arch_scale
    half_face = max(abs(condyle_xy[0]) + 14.0, 62.0 * sx)
    tissue = (
        Ellipsoid((0.0, -40.0 * sy, 5.0), (half_face, rng.uniform(58.0, 64.0) * sy, 75.0), 4),
        Ellipsoid((0.0, -62.0 * sy, 100.0), (80.0 * sx, 96.0 * sy, 66.0)),
        Ellipsoid((0.0, -62.0 * sy, bottom - 40.0), (48.0 * sx, 55.0 * sy, 70.0)),
        Ellipsoid((0.0, -30.0 * sy, -12.0), (rng.uniform(17.0, 21.0) * sx, 30.0 * sy, 11.0)),  # tongue
    )
    airway = (Ellipsoid((0.0, -68.0 * sy, -5.0), (rng.uniform(6.0, 9.0), rng.uniform(5.0, 8.0), 45.0)),)
    return tissue, airway


# --------------------------------------------------------------------------------------------------------------------
# lesions


@dataclass(frozen=True, eq=False)
class LesionSpec:
    """A simulated lesion of the lower jaw in arch coordinates (mm).

    Lower-jaw tissue (mandible, canal and, for ``teeth_and_jaw_removed``, lower teeth) inside the superellipsoid
    ``|(s - s_centre) / s_half|^p + |(d - d_centre) / d_half|^p + |(z - z_top) / depth|^p + roughness * noise <= 1``
    is removed, and so are the whole teeth listed in ``removed_teeth`` (indices into ``JawSubject.teeth``).
    """

    kind: str
    s_centre: float
    s_half: float
    d_centre: float
    d_half: float
    z_top: float
    depth: float
    exponent: int
    roughness: float
    noise: SmoothNoise | None
    removed_teeth: tuple[int, ...]


def sample_lesion(subject: JawSubject, kind: str, seed: int | None = None) -> LesionSpec:
    """Draw a lesion for ``subject``.

    ``"onj"``: irregular bone loss in the posterior mandible body (premolar-molar region in 80 %, retromolar/angle in
    20 %), from ~10 mm alveolar defects to full-height segmental loss; teeth whose sockets lie in it are lost and their
    neighbours sometimes too. ``"teeth_and_jaw_removed"``: the paper's simulated patient, 3-6 adjacent lower teeth
    and the jaw under them cut away with planar faces, down to below the root apices or through the whole body.
    """
    if kind not in LESION_KINDS[1:]:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {LESION_KINDS[1:]}")
    seed = subject.seed if seed is None else seed
    rng = np.random.default_rng([int(seed), 1 + LESION_KINDS.index(kind)])
    teeth = subject.teeth
    side = rng.choice([-1.0, 1.0])
    lower = np.flatnonzero((teeth.label == LOWER_TEETH) & (np.sign(teeth.s) == side))
    lower = lower[np.argsort(np.abs(teeth.s[lower]))]
    s_abs = np.abs(teeth.s[lower])
    apex = -(teeth.crown_height[lower] + teeth.root_length[lower])
    m = subject.mandible
    if kind == "teeth_and_jaw_removed":
        count = int(rng.integers(3, 7))
        start = int(rng.integers(1, 7 - count + 2))
        group = lower[start : start + count]
        low = np.abs(teeth.s[group]) - teeth.half_mesiodistal[group]
        high = np.abs(teeth.s[group]) + teeth.half_mesiodistal[group]
        z_top = 4.0
        z_cut = rng.uniform(m["bottom"] - 3.0, apex[start : start + count].min() - 2.0)
        return LesionSpec(
            kind=kind,
            s_centre=float(side * (low.min() + high.max()) / 2),
            s_half=float((high.max() - low.min()) / 2 + 0.5),
            d_centre=0.0,
            d_half=14.0,
            z_top=z_top,
            depth=float(z_top - z_cut),
            exponent=8,
            roughness=0.0,
            noise=None,
            removed_teeth=tuple(int(i) for i in group[teeth.present[group]]),
        )

    molar_end = s_abs[6] + teeth.half_mesiodistal[lower[6]]
    if rng.random() < 0.8:
        centre = rng.uniform(s_abs[3], molar_end - 4.0)
    else:
        centre = rng.uniform(molar_end, m["ramus_front"] + 10.0)
    crest = float(subject.crest_z(LOWER_TEETH, np.array(side * centre)))
    size = rng.choice(["alveolar", "extended", "segmental"], p=[0.45, 0.35, 0.2])
    if size == "alveolar":
        s_half, depth = rng.uniform(5.5, 9.0), rng.uniform(10.0, 14.0)
    elif size == "extended":
        s_half, depth = rng.uniform(8.0, 14.0), rng.uniform(13.0, 20.0)
    else:
        s_half, depth = rng.uniform(7.0, 15.0), crest - m["bottom"] + rng.uniform(4.0, 8.0)
    if size == "alveolar" and rng.random() < 0.3:  # buccal or lingual plate only
        d_centre, d_half = rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 3.5), rng.uniform(4.0, 5.5)
    else:
        d_centre, d_half = rng.uniform(-0.5, 0.5), rng.uniform(6.5, 9.0)
    in_socket = lower[np.abs(s_abs - centre) < 0.8 * s_half]
    neighbours = lower[(np.abs(s_abs - centre) >= 0.8 * s_half) & (np.abs(s_abs - centre) < 0.8 * s_half + 9.0)]
    lost = np.concatenate([in_socket, neighbours[rng.random(len(neighbours)) < 0.35]]).astype(int)
    return LesionSpec(
        kind=kind,
        s_centre=float(side * centre),
        s_half=float(s_half),
        d_centre=float(d_centre),
        d_half=float(d_half),
        z_top=crest + rng.uniform(-1.0, 1.0),
        depth=float(depth),
        exponent=4,
        roughness=float(rng.uniform(0.15, 0.3)),
        noise=SmoothNoise.sample(rng, 6, (6.0, 16.0)),
        removed_teeth=tuple(sorted(int(i) for i in lost[teeth.present[lost]])),
    )


# --------------------------------------------------------------------------------------------------------------------
# rasterisation


class _Grid:
    """Voxel grid of a phantom: world affine plus the voxel -> subject-frame map, and box helpers."""

    def __init__(self, subject: JawSubject, spacing: np.ndarray, axcodes: str) -> None:
        flips = _axis_flips(axcodes)
        self.shape = tuple(int(n) for n in np.maximum(np.rint(subject.fov_size / spacing), 8))
        signs = np.where(flips, -1.0, 1.0)
        affine = np.eye(4)
        affine[:3, :3] = np.diag(signs * spacing)
        affine[:3, 3] = subject.fov_centre - signs * spacing * (np.array(self.shape) - 1) / 2
        self.affine = affine
        subject_from_world = np.eye(4)
        subject_from_world[:3, :3] = subject.rotation.T
        subject_from_world[:3, 3] = -subject.rotation.T @ subject.translation
        self.subject_from_voxel = subject_from_world @ affine
        self.voxel_from_subject = np.linalg.inv(self.subject_from_voxel)

    def box(self, low: Sequence[float], high: Sequence[float]) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering a subject-frame box (None when it misses the grid)."""
        corners = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(3, -1)
        voxels = self.voxel_from_subject[:3, :3] @ corners + self.voxel_from_subject[:3, 3:]
        start = np.maximum(np.floor(voxels.min(axis=1)).astype(int), 0)
        stop = np.minimum(np.ceil(voxels.max(axis=1)).astype(int) + 1, self.shape)
        if np.any(stop <= start):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))

    def coordinates(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Subject-frame coordinates (mm, float32) of the voxels in ``box``."""
        axes = [np.arange(b.start, b.stop, dtype=np.float32) for b in box]
        grids = (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
        result = []
        for row in self.subject_from_voxel[:3]:
            coordinate = np.float32(row[3]) + sum(np.float32(m) * g for m, g in zip(row[:3], grids))
            result.append(np.broadcast_to(coordinate, tuple(b.stop - b.start for b in box)).astype(np.float32))
        return result[0], result[1], result[2]


def _axis_flips(axcodes: str) -> np.ndarray:
    codes = axcodes.upper()
    if len(codes) != 3 or any(c not in pair for c, pair in zip(codes, ("RL", "AP", "SI"))):
        raise ValueError(f"axcodes must be three letters from R/L, A/P, S/I in this order, e.g. 'RAS'; got {axcodes!r}")
    return np.array([c in "LPI" for c in codes])


def _inner(outer: tuple[slice, ...], inner: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """``inner`` clipped to ``outer`` and expressed relative to ``outer``'s start."""
    if inner is None:
        return None
    start = [max(i.start, o.start) for i, o in zip(inner, outer)]
    stop = [min(i.stop, o.stop) for i, o in zip(inner, outer)]
    if any(b <= a for a, b in zip(start, stop)):
        return None
    return tuple(slice(a - o.start, b - o.start) for a, b, o in zip(start, stop, outer))


@dataclass(eq=False)
class _JawFields:
    """Arrays over the jaw box: subject and arch coordinates, per-voxel tooth index and structure masks."""

    box: tuple[slice, slice, slice]
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    s: np.ndarray
    d: np.ndarray
    tooth: np.ndarray  # int16 index into JawSubject.teeth, -1 elsewhere
    crown: np.ndarray  # bool: tooth voxels above the cemento-enamel junction
    mandible: np.ndarray
    cortex: np.ndarray
    canal: np.ndarray
    maxilla: np.ndarray


def _jaw_fields(subject: JawSubject, grid: _Grid, arch: ArchCurve) -> _JawFields:
    m, c, mx = subject.mandible, subject.canal, subject.maxilla
    s_end = m["ramus_front"] + m["ramus_width"] + m["ramus_tilt"] * 90.0 + 8.0
    xy_low, xy_high = arch.box(-s_end, s_end, 12.0)
    box = grid.box((*xy_low, m["bottom"] - m["chin_drop"] - 3.0), (*xy_high, m["notch"] + m["condyle_height"] + 8.0))
    if box is None:
        raise ValueError(f"subject {subject.seed}: the jaw lies outside the field of view")
    x, y, z = grid.coordinates(box)
    s, d = arch.project(x, y)
    abs_s = np.abs(s)

    # body: a rounded-rectangle cross-section between the inferior border and the alveolar crest
    crest = subject.crest_z(LOWER_TEETH, s).astype(np.float32)
    ramus_start = m["ramus_front"] + 0.5 * m["ramus_width"]
    bottom = (
        m["bottom"]
        - m["chin_drop"] * np.exp(-((s / 15.0) ** 2))
        + m["gonial_rise"] * np.clip((abs_s - m["ramus_front"]) / m["ramus_width"], 0.0, 1.0)
    ).astype(np.float32)
    # the alveolar part is narrower than the basal part
    half_width = np.float32(m["half_width"]) * (1.0 - np.float32(0.2) * np.clip((z - bottom) / (crest - bottom), 0, 1))
    level = even_power(d / half_width, 4) + even_power((z - (crest + bottom) / 2) / ((crest - bottom) / 2), 4)
    body_end = m["ramus_front"] + 0.45 * m["ramus_width"]
    body = (level <= 1.0) & (abs_s <= body_end)
    cortex = body & (level > 0.55)

    # rami: tilted plates from the angle up to the coronoid process and the condyle
    s_ramus = abs_s - np.float32(m["ramus_tilt"]) * (z - np.float32(m["bottom"]))
    ramus_low, ramus_high = m["bottom"] + m["gonial_rise"], m["notch"] + m["condyle_height"]
    top = (
        m["notch"]
        + m["coronoid_height"] * np.exp(-(((s_ramus - m["ramus_front"] - 4.0) / 5.0) ** 2))
        + m["condyle_height"] * np.exp(-(((s_ramus - m["ramus_front"] - m["ramus_width"] + 5.0) / 5.5) ** 2))
    )
    ramus_outline = even_power((s_ramus - np.float32(ramus_start)) / np.float32(0.5 * m["ramus_width"]), 4)
    ramus_middle, ramus_half_height = (ramus_low + ramus_high) / 2, (ramus_high - ramus_low) / 2
    ramus_outline += even_power((z - np.float32(ramus_middle)) / np.float32(ramus_half_height), 4)
    ramus = (ramus_outline <= 1.0) & (z <= top) & (np.abs(d) <= np.float32(m["ramus_half_width"]))
    condyle_centre_s = m["ramus_front"] + m["ramus_width"] - 5.0
    condyle = (
        ((s_ramus - np.float32(condyle_centre_s)) / np.float32(4.5)) ** 2
        + ((d + np.float32(1.0)) / np.float32(8.0)) ** 2
        + ((z - np.float32(m["notch"] + m["condyle_height"] - 4.0)) / np.float32(4.5)) ** 2
    ) <= 1.0
    mandible = body | ramus | condyle

    # canal: a tube from the mandibular foramen in the ramus, down and forward below the roots to the mental region
    knots_s = [c["s_mental"], c["s_bend"], c["s_foramen"]]
    knots_z = [c["z_low"], c["z_low"] + 2.0, c["z_foramen"]]
    canal_z = np.interp(abs_s, knots_s, knots_z).astype(np.float32)
    slope = (knots_z[2] - knots_z[1]) / (knots_s[2] - knots_s[1])
    vertical_scale = np.where(abs_s > c["s_bend"], np.float32(1.0 / np.hypot(1.0, slope)), np.float32(1.0))
    canal = (
        (d * d + ((z - canal_z) * vertical_scale) ** 2 <= np.float32(c["radius"] ** 2))
        & (abs_s >= c["s_mental"])
        & (abs_s <= c["s_foramen"])
        & mandible
    )

    # maxilla: alveolar ridge around the upper roots, and the palate inside the arch
    upper_crest = subject.crest_z(UPPER_TEETH, s).astype(np.float32)
    upper_d = np.float32(subject.teeth.d[subject.teeth.label == UPPER_TEETH].mean())
    ridge = (
        (z >= upper_crest)
        & (z <= np.float32(mx["ridge_top"]))
        & (np.abs(d - upper_d) <= np.float32(mx["ridge_half_width"]))
        & (abs_s <= np.float32(mx["ridge_end"]))
    )
    palate_z = np.float32(mx["palate_z"]) + np.float32(3.0) * np.exp(-((x / np.float32(14.0)) ** 2))
    palate = (d < upper_d) & (y > np.float32(mx["palate_back"])) & (np.abs(z - palate_z) <= 2.5)

    tooth = np.full(x.shape, -1, dtype=np.int16)
    crown = np.zeros(x.shape, dtype=bool)
    _draw_teeth(subject, grid, arch, box, (s, d, z), tooth, crown)
    return _JawFields(box, x, y, z, s, d, tooth, crown, mandible, cortex, canal, ridge | palate)


def _draw_teeth(
    subject: JawSubject,
    grid: _Grid,
    arch: ArchCurve,
    box: tuple[slice, slice, slice],
    arch_coordinates: tuple[np.ndarray, np.ndarray, np.ndarray],
    tooth: np.ndarray,
    crown: np.ndarray,
) -> None:
    """Paint each present tooth (crown + one root, two diverging roots for molars) into ``tooth``/``crown``."""
    s, d, z = arch_coordinates
    t = subject.teeth
    for index in np.flatnonzero(t.present):
        a, b = t.half_mesiodistal[index], t.half_buccolingual[index]
        crown_height, root_length = t.crown_height[index], t.root_length[index]
        upward = t.label[index] == UPPER_TEETH
        occlusal = _UPPER_OCCLUSAL_Z if upward else 0.0
        centre = arch.point(t.s[index]) + t.d[index] * arch.normal(t.s[index])
        reach = float(np.hypot(a, b)) + 1.0
        z_span = sorted((occlusal, occlusal + (1 if upward else -1) * (crown_height + root_length)))
        local = _inner(box, grid.box((*(centre - reach), z_span[0] - 1.0), (*(centre + reach), z_span[1] + 1.0)))
        if local is None:
            continue
        u = s[local] - np.float32(t.s[index])
        v = d[local] - np.float32(t.d[index])
        depth = (z[local] - np.float32(occlusal)) * np.float32(-1.0 if not upward else 1.0)  # into the jaw
        in_crown = depth <= crown_height
        # radius profile: rounded cusps, a slight taper to the neck, then a root tapering to the apex
        cusp = np.sqrt(np.clip(depth / np.float32(0.22 * crown_height), 0.0, 1.0))
        crown_radius = cusp * (1.0 - np.float32(0.2) * depth / np.float32(crown_height))
        root_t = np.clip((depth - np.float32(crown_height)) / np.float32(root_length), 0.0, 1.0)
        root_radius = np.float32(0.72) * (1.0 - root_t) ** np.float32(0.6)
        radius = np.where(in_crown, crown_radius, root_radius)
        if t.position[index] >= FIRST_MOLAR:
            split = np.clip((root_t - np.float32(0.25)) / np.float32(0.2), 0.0, 1.0) * ~in_crown
            offset = np.float32(0.6 * a) * radius * split
            half_u = np.float32(a) * radius * (1.0 - np.float32(0.6) * split)
            u = np.abs(u) - offset
        else:
            half_u = np.float32(a) * radius
        half_v = np.float32(b) * radius
        with np.errstate(divide="ignore", invalid="ignore"):
            inside = even_power(u / half_u, 4) + even_power(v / half_v, 4) <= 1.0
        inside &= (depth >= 0.0) & (depth <= crown_height + root_length) & (radius > 0.0)
        tooth[local][inside] = index
        crown[local][inside] = in_crown[inside]


def _skull_distance(subject: JawSubject, grid: _Grid) -> np.ndarray:
    """Signed distance-like field (mm, float32, negative inside) of the skull solids, over the whole grid."""
    field = np.full(grid.shape, np.inf, dtype=np.float32)
    for solid in subject.skull_solids:
        low, high = solid.bounds()
        box = grid.box(low - 8.0, high + 8.0)
        if box is not None:
            np.minimum(field[box], solid.distance(*grid.coordinates(box)), out=field[box])
    return field


def _union_mask(shapes: Sequence[Ellipsoid], grid: _Grid) -> np.ndarray:
    """Voxels inside any of ``shapes`` (bool, grid shape)."""
    mask = np.zeros(grid.shape, dtype=bool)
    for shape in shapes:
        box = grid.box(*shape.bounds())
        if box is not None:
            mask[box] |= shape.distance(*grid.coordinates(box)) <= 0.0
    return mask


@dataclass(eq=False)
class JawPhantom:
    """One rasterised phantom.

    ``labels``: int16 (X, Y, Z), DentalSegmentator labels 0..5, lesion applied; ``healthy_labels``: the same subject
    without the lesion; ``truth``: uint8 (X, Y, Z), 1 exactly where tissue (label > 0) was removed by the lesion (all
    zero for healthy phantoms); ``cbct``: float32 (X, Y, Z) HU-like raw image or None; ``affine``: 4x4 voxel -> world
    (RAS mm, nibabel convention).
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
        """Voxel size in mm along the three array axes."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def render_phantom(
    subject: JawSubject,
    spacing: float | Sequence[float] = 2.0,
    lesion: LesionSpec | None = None,
    axcodes: str = "RAS",
    with_cbct: bool = True,
) -> JawPhantom:
    """Rasterise ``subject`` on a grid of ``spacing`` mm (one value or three) with voxel axes along ``axcodes``,
    applying ``lesion`` when given (None: healthy).

    Returns a :class:`JawPhantom`; the CBCT noise comes from the subject's own seed stream, so the result is a pure
    function of its arguments.
    """
    spacing_mm = np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()
    if np.any(spacing_mm <= 0.0) or not np.all(np.isfinite(spacing_mm)):
        raise ValueError(f"spacing must be positive, got {spacing}")
    grid = _Grid(subject, spacing_mm, axcodes)
    arch = ArchCurve(subject.arch_control, table_resolution_mm=float(np.clip(spacing_mm.min() / 2, 0.2, 0.5)))
    jaw = _jaw_fields(subject, grid, arch)

    skull_distance = _skull_distance(subject, grid)
    rough_box = grid.box(*_skull_bounds(subject))
    if rough_box is not None:
        skull_distance[rough_box] += np.float32(subject.skull_roughness_mm) * subject.skull_roughness(
            *grid.coordinates(rough_box)
        )
    skull = skull_distance <= 0.0
    skull[jaw.box] |= jaw.maxilla
    cavities = _union_mask(subject.skull_cavities, grid)

    labels = np.zeros(grid.shape, dtype=np.int16)
    labels[skull & ~cavities] = UPPER_SKULL
    jaw_labels = labels[jaw.box]
    jaw_labels[jaw.mandible] = MANDIBLE
    jaw_labels[jaw.canal] = CANAL
    teeth_labels = subject.teeth.label.astype(np.int16)
    has_tooth = jaw.tooth >= 0
    jaw_labels[has_tooth] = teeth_labels[jaw.tooth[has_tooth]]

    healthy = labels
    truth = np.zeros(grid.shape, dtype=np.uint8)
    if lesion is not None:
        labels = healthy.copy()
        lesioned = labels[jaw.box]
        removed = _lesion_region(lesion, grid, arch, jaw, lesioned)
        lesioned[removed] = OTHER
        truth[jaw.box] = (healthy[jaw.box] > 0) & (lesioned == OTHER)

    cbct = _synthesise_cbct(subject, grid, jaw, labels, skull_distance, truth) if with_cbct else None
    return JawPhantom(labels, healthy, truth, cbct, grid.affine, subject, lesion)


def _skull_bounds(subject: JawSubject) -> tuple[np.ndarray, np.ndarray]:
    """Subject-frame box around all skull solids, with room for the surface roughness."""
    lows, highs = zip(*(solid.bounds() for solid in subject.skull_solids))
    return np.min(lows, axis=0) - 8.0, np.max(highs, axis=0) + 8.0


def _lesion_region(
    lesion: LesionSpec, grid: _Grid, arch: ArchCurve, jaw: _JawFields, jaw_labels: np.ndarray
) -> np.ndarray:
    """Voxels of the jaw box that the lesion removes (bool, jaw-box shape), given the healthy ``jaw_labels``."""
    removed = np.isin(jaw.tooth, np.asarray(lesion.removed_teeth, dtype=np.int16))
    xy_low, xy_high = arch.box(lesion.s_centre - lesion.s_half, lesion.s_centre + lesion.s_half, 2.0 + lesion.d_half)
    local = _inner(jaw.box, grid.box((*xy_low, lesion.z_top - lesion.depth - 1.0), (*xy_high, lesion.z_top + 1.0)))
    if local is None:
        return removed
    p = lesion.exponent
    level = (
        even_power((jaw.s[local] - np.float32(lesion.s_centre)) / np.float32(lesion.s_half), p)
        + even_power((jaw.d[local] - np.float32(lesion.d_centre)) / np.float32(lesion.d_half), p)
        + even_power((jaw.z[local] - np.float32(lesion.z_top)) / np.float32(lesion.depth), p)
    )
    if lesion.noise is not None:
        level += np.float32(lesion.roughness) * lesion.noise(jaw.x[local], jaw.y[local], jaw.z[local])
    # an ONJ lesion takes bone (and the canal in it); whole teeth go only through ``removed_teeth``
    removable = LOWER_JAW_LABELS if lesion.kind == "teeth_and_jaw_removed" else (MANDIBLE, CANAL)
    removed[local] |= (level <= 1.0) & np.isin(jaw_labels[local], removable)
    return removed


def _synthesise_cbct(
    subject: JawSubject,
    grid: _Grid,
    jaw: _JawFields,
    labels: np.ndarray,
    skull_distance: np.ndarray,
    truth: np.ndarray,
) -> np.ndarray:
    """HU-like raw CBCT matching ``labels``: air, soft tissue envelope, airways, bone, teeth, canal; blur and noise
    inside the reconstructed cylinder, -1000 outside it.

    Voxels removed by a lesion (``truth``) read as air: an open wound communicating with the oral cavity, the
    space a dressing fills (so that soft-tissue avoidance trims only what grows past the defect).
    """
    rng = np.random.default_rng([subject.seed, 9])
    body = _union_mask(subject.soft_tissue[:3], grid) | (skull_distance <= 6.0)
    tongue = _union_mask(subject.soft_tissue[3:], grid)
    air = _union_mask(subject.air_cavities, grid) | _union_mask(subject.airway, grid)
    cbct = np.full(grid.shape, _HU_AIR, dtype=np.float32)
    cbct[body] = _HU_SOFT
    cbct[tongue & body] = _HU_MUSCLE
    cbct[air] = _HU_AIR
    cbct[labels == UPPER_SKULL] = _HU_SKULL
    jaw_cbct = cbct[jaw.box]
    jaw_labels = labels[jaw.box]
    jaw_cbct[jaw_labels == MANDIBLE] = np.where(jaw.cortex, _HU_CORTEX, _HU_MANDIBLE)[jaw_labels == MANDIBLE]
    jaw_cbct[jaw_labels == CANAL] = _HU_CANAL
    is_tooth = (jaw_labels == UPPER_TEETH) | (jaw_labels == LOWER_TEETH)
    jaw_cbct[is_tooth] = np.where(jaw.crown, _HU_ENAMEL, _HU_ROOT)[is_tooth]
    cbct[truth > 0] = _HU_AIR
    spacing = np.linalg.norm(grid.affine[:3, :3], axis=0)
    ndimage.gaussian_filter(cbct, sigma=0.6 / spacing, output=cbct, truncate=3.0)
    cbct += rng.normal(0.0, 40.0, size=grid.shape).astype(np.float32)
    # a CBCT reconstructs a cylinder around the vertical axis; scanners fill the corners with a constant
    extent = np.array(grid.shape[:2]) * spacing[:2]
    radial = [(np.arange(n) - (n - 1) / 2) * step for n, step in zip(grid.shape[:2], spacing[:2])]
    cbct[radial[0][:, None] ** 2 + radial[1][None, :] ** 2 > (extent.min() / 2) ** 2] = _HU_AIR
    return cbct


def make_phantom(
    seed: int,
    spacing: float | Sequence[float] = 2.0,
    lesion: str = "none",
    axcodes: str = "RAS",
    with_cbct: bool = True,
) -> JawPhantom:
    """Sample subject ``seed``, optionally a lesion of kind ``lesion`` (see :data:`LESION_KINDS`), and rasterise.

    The anatomy depends only on ``seed``: ``make_phantom(7, lesion="onj").healthy_labels`` equals
    ``make_phantom(7).labels``.
    """
    if lesion not in LESION_KINDS:
        raise ValueError(f"unknown lesion kind {lesion!r}; expected one of {LESION_KINDS}")
    subject = sample_subject(seed)
    spec = None if lesion == "none" else sample_lesion(subject, lesion)
    return render_phantom(subject, spacing, spec, axcodes, with_cbct)
