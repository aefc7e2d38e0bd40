"""Simulated lesions on a rendered subject, with exact truth.

- ``onj``: osteonecrosis of the mandible body (premolar to retromolar region), a rough blob from the crest down that
  removes bone and canal, and the teeth whose necks it reaches (extraction is a main trigger of ONJ);
- ``onj_ramus``: the same in the ramus, behind the last tooth, between the angle and the mandibular notch (a common
  site of osteoradionecrosis after radiotherapy of the oral cavity), 0.5 to 4 cm^3 by default (the ramus is thin);
- ``onj_maxilla``: the same in the maxillary alveolar process above the upper premolars and molars;
- ``teeth_and_jaw_removed``: the paper's simulation, a full-height segment of the mandible body removed with its teeth.

ONJ lesions take a target volume (0.5 to 10 cm^3 by default) and are scaled to it on the phantom's own grid; the
truth is exactly the tissue (label > 0) the lesion removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaw_phantoms.anatomy import CANAL, LOWER_TEETH, MANDIBLE, UPPER_SKULL, UPPER_TEETH, JawSubject
from jaw_phantoms.primitives import SmoothNoise, even_power

LESION_KINDS = ("none", "onj", "onj_ramus", "onj_maxilla", "teeth_and_jaw_removed")
ONJ_VOLUME_ML = (0.5, 10.0)
RAMUS_VOLUME_ML = (0.5, 4.0)
_REMOVABLE = {
    "onj": (MANDIBLE, CANAL),
    "onj_ramus": (MANDIBLE, CANAL),
    "onj_maxilla": (UPPER_SKULL,),
    "teeth_and_jaw_removed": (MANDIBLE, CANAL, LOWER_TEETH),
}
_VOLUME_TOLERANCE = 0.1
MAX_SCALE = 2.5  # largest growth of the drawn radii while fitting the volume (bounds the search box)


@dataclass(frozen=True, eq=False)
class LesionSpec:
    """A lesion in the subject's shape frame: a superellipsoid with ``radii`` along ``axes`` (rows: mesio-distal,
    bucco-lingual, vertical) around ``centre``, roughened by ``noise``; ``target_volume_ml`` is what the removed
    tissue should measure (None: take the radii as they are)."""

    kind: str
    centre: np.ndarray
    axes: np.ndarray
    radii: np.ndarray
    exponent: int
    noise: SmoothNoise
    roughness: float
    target_volume_ml: float | None

    def inside(self, points: np.ndarray, scale: float = 1.0) -> np.ndarray:
        offset = points - self.centre.astype(np.float32)
        level = np.zeros(points.shape[:-1], dtype=np.float32)
        for axis, radius in zip(self.axes.astype(np.float32), self.radii):
            level += even_power((offset @ axis) / np.float32(radius * scale), self.exponent)
        level += np.float32(self.roughness) * self.noise(points[..., 0], points[..., 1], points[..., 2])
        return level <= 1.0

    def bounds(self, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        reach = float(np.max(self.radii)) * scale * 1.3 + 2.0
        return self.centre - reach, self.centre + reach


def check_volume_range(volume_range_ml: tuple[float, float]) -> None:
    """Refuse an ONJ volume range that no lesion can be drawn from."""
    if len(volume_range_ml) != 2 or not 0.0 < volume_range_ml[0] <= volume_range_ml[1]:
        raise ValueError(f"lesion volume range must be (min, max) with 0 < min <= max, got {tuple(volume_range_ml)} ml")


def sample_lesion(
    subject: JawSubject,
    kind: str,
    seed: int,
    volume_ml: float | None = None,
    volume_range_ml: tuple[float, float] | None = None,
) -> LesionSpec:
    """Draw a lesion of ``kind`` for ``subject``. ``volume_ml``: the ONJ target volume; when None it is drawn
    log-uniformly in ``volume_range_ml`` (default :data:`RAMUS_VOLUME_ML` for the ramus, :data:`ONJ_VOLUME_ML`
    otherwise). The teeth-and-jaw removal has no target volume and ignores both."""
    if kind not in LESION_KINDS or kind == "none":
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {LESION_KINDS[1:]}")
    if volume_range_ml is not None:
        check_volume_range(volume_range_ml)
    rng = np.random.default_rng([seed, 1])
    landmarks = subject.landmarks
    side = int(rng.choice((-1, 1)))
    end = landmarks.teeth_end[0 if side < 0 else 1]
    noise = SmoothNoise.sample(rng, 5, (8.0, 20.0))
    if kind == "teeth_and_jaw_removed":
        s = side * rng.uniform(20.0, max(end - 12.0, 22.0))
        point, tangent, normal = landmarks.at(s)
        base, crest = float(landmarks.base(s)), float(landmarks.crest(s))
        centre = np.array([*point, 0.5 * (base + crest) + 6.0])
        axes = _axes(tangent, normal)
        radii = np.array([rng.uniform(6.0, 15.0), 14.0, 0.5 * (crest - base) + 16.0])
        return LesionSpec(kind, centre, axes, radii, 8, noise, 0.1, None)
    if volume_ml is None:
        volume_range = volume_range_ml or (RAMUS_VOLUME_ML if kind == "onj_ramus" else ONJ_VOLUME_ML)
        volume_ml = float(np.exp(rng.uniform(*np.log(volume_range))))
    if not volume_ml > 0.0:
        raise ValueError(f"lesion volume must be positive, got {volume_ml} ml")
    if kind == "onj_ramus":
        # beyond the last tooth the arch runs up the ramus; its crest and base there bound the ramus's height
        far = float(landmarks.s[-1] if side > 0 else -landmarks.s[0])
        s = side * rng.uniform(end + 8.0, max(far - 8.0, end + 10.0))
    else:
        s = side * rng.uniform(18.0, max(end - 4.0, 20.0))
    point, tangent, normal = landmarks.at(s)
    if kind == "onj_ramus":
        base, crest = float(landmarks.base(s)), float(landmarks.crest(s))
        centre = np.array([*point, base + rng.uniform(0.2, 0.55) * (crest - base)])
    elif kind == "onj":
        crest = float(landmarks.crest(s))
        centre = np.array([*(point + rng.uniform(-2.0, 2.0) * normal), crest - rng.uniform(2.0, 8.0)])
    else:
        upper = [t for t in subject.teeth if t.label == UPPER_TEETH and t.side == side and t.position >= 3]
        tooth = upper[int(rng.integers(len(upper)))]
        centre = tooth.cervical + np.array([0.0, 0.0, rng.uniform(2.0, 6.0)])
    shape = rng.uniform([0.9, 0.6, 0.8], [1.4, 0.9, 1.3])
    radii = shape * (3.0 * volume_ml * 1000.0 / (4.0 * np.pi * shape.prod())) ** (1.0 / 3.0)
    return LesionSpec(kind, centre, _axes(tangent, normal), radii, 2, noise, 0.25, volume_ml)


def _axes(tangent: np.ndarray, normal: np.ndarray) -> np.ndarray:
    return np.array([[*tangent, 0.0], [*normal, 0.0], [0.0, 0.0, 1.0]])


def fit_and_remove(
    spec: LesionSpec,
    labels: np.ndarray,
    tooth_ids: np.ndarray,
    points: np.ndarray,
    voxel_ml: float,
    subject: JawSubject,
) -> np.ndarray:
    """The voxels the lesion removes (bool, ``labels``' shape): tissue of the removable labels inside the lesion,
    plus whole teeth whose neck it reaches, scaled so that their volume meets ``spec.target_volume_ml`` within 10 %.

    ``labels``: healthy labels; ``tooth_ids``: index into ``subject.teeth`` per voxel (-1 elsewhere); ``points``:
    the shape-frame millimetres of every voxel (X, Y, Z, 3); ``voxel_ml``: volume of one voxel.
    """
    removable = np.isin(labels, _REMOVABLE[spec.kind])
    tooth_label = LOWER_TEETH if spec.kind in ("onj", "teeth_and_jaw_removed") else UPPER_TEETH

    def removed(scale: float) -> np.ndarray:
        inside = spec.inside(points, scale) & removable
        necks = [
            i
            for i, t in enumerate(subject.teeth)
            if t.label == tooth_label and spec.inside(t.cervical.astype(np.float32)[None], scale)[0]
        ]
        if necks:
            inside |= np.isin(tooth_ids, necks)
        return inside

    if spec.target_volume_ml is None:
        result = removed(1.0)
        if not result.any():
            raise ValueError("the lesion misses the jaw: no tissue removed")
        return result
    target = spec.target_volume_ml
    available = removable.sum() * voxel_ml
    if target > 0.8 * available:
        raise ValueError(
            f"a {target:.1f} cm^3 lesion does not fit: the tissue it may remove holds {available:.1f} cm^3"
        )
    low, high = 0.2, 1.0
    while removed(high).sum() * voxel_ml < target:
        if high >= MAX_SCALE:
            raise ValueError(f"a {target:.1f} cm^3 lesion does not fit at this site (the jaw is too thin there)")
        low, high = high, min(high * 1.5, MAX_SCALE)
    best = removed(high)
    for _ in range(20):
        middle = 0.5 * (low + high)
        candidate = removed(middle)
        volume = candidate.sum() * voxel_ml
        if abs(volume - target) <= _VOLUME_TOLERANCE * target:
            return candidate
        if volume < target:
            low = middle
        else:
            high, best = middle, candidate
    return best
