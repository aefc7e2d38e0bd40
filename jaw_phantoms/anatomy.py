"""A head built on a real mandible: teeth, canal and an upper skull placed on the mandible's own landmarks.

A subject takes one shape of the bank (``shape_bank``), possibly mirrored, and measures its landmarks: the dental arch
on the alveolar crest, crest and base heights, where the teeth end, the condyles and the mandibular foramina. On them:

- **lower teeth** stand on the crest along the arch (crowns above it, roots replacing bone; widths scaled so that the
  row ends where the ramus begins; third molars only where there is room); healthy subjects may miss a few teeth;
- **the canal** runs from each foramen on the inner face of the ramus down and forward inside the body, to below
  the premolars, and is kept inside the bone;
- **upper teeth** occlude with the lower ones (crowns meeting on the occlusal surface, 1.5 mm buccal overjet);
- **the upper skull** (label 1) is a union of solids placed relative to the occlusal plane, the upper arch and the
  condyles: alveolar process, hard palate, maxillary sinuses (cavities), nasal cavity with septum and turbinates,
  orbits with their rims, zygomatic bones and arches, pterygoid plates, temporal bones with the glenoid fossae over
  the condyles, mastoids, sphenoid body, clivus, cranial floor and vault. The field of view decides how much of it a
  phantom shows (``FIELDS_OF_VIEW``): from the lower jaw alone to the whole face;
- **a joint space** keeps the lower jaw off the upper skull: the mandible meets the skull only across the
  temporomandibular joint, so no upper-skull voxel lies within the subject's ``joint_space_mm`` of the mandible, its
  teeth or canal (rasterisation removes the skull there).

The subject frame is the shape's own millimetre frame (x right, y anterior, z superior). A random rigid pose puts the
subject in the world (RAS millimetres); the voxel grid is axis-aligned in the world, as a scanner's is; a smooth
random deformation and a per-axis scale act on all structures together, so that teeth, canal and skull follow the
deformed mandible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.interpolate import CubicSpline

from jaw_phantoms.primitives import Capsule, Ellipsoid, SmoothNoise, even_power, rotation_matrix
from jaw_phantoms.shape_bank import (
    BANK_DIR,
    MandibleLandmarks,
    MandibleShape,
    bank_entries,
    load_shape,
    measure_landmarks,
)

OTHER, UPPER_SKULL, MANDIBLE, UPPER_TEETH, LOWER_TEETH, CANAL = range(6)
FIELDS_OF_VIEW = ("lower_jaw", "jaws", "face")
_FIELD_OF_VIEW_WEIGHTS = (0.2, 0.35, 0.45)

# Per tooth from the central incisor backwards: mesio-distal width, bucco-lingual width, crown height, root length (mm;
# textbook averages). Index 5 and up are molars (two roots); index 7 is the third molar.
LOWER_TEETH_MM = np.array(
    [
        [5.4, 6.0, 9.0, 12.5],
        [5.9, 6.4, 9.0, 13.5],
        [6.9, 7.7, 11.0, 16.0],
        [7.0, 7.7, 8.5, 14.0],
        [7.1, 8.2, 8.0, 14.5],
        [11.2, 10.3, 7.5, 14.0],
        [10.5, 10.0, 7.0, 13.0],
        [10.0, 9.6, 6.5, 11.0],
    ]
)
UPPER_TEETH_MM = np.array(
    [
        [8.6, 7.0, 10.5, 13.0],
        [6.6, 6.0, 9.0, 13.0],
        [7.6, 8.0, 10.0, 17.0],
        [7.1, 9.0, 8.5, 14.0],
        [6.6, 9.0, 7.8, 14.0],
        [10.4, 11.0, 7.5, 13.0],
        [9.8, 11.0, 7.0, 12.5],
        [8.5, 10.0, 6.5, 11.0],
    ]
)
FIRST_MOLAR, THIRD_MOLAR = 5, 7
CROWN_ABOVE_CREST_MM = 1.5  # enamel-cement junction above the alveolar crest
_OVERJET_MM = 1.5
# more would reach the canal of a low mandible body; the crest heights of the bank shapes are not known per subject
MAX_RIDGE_RESORPTION_MM = 6.0


@dataclass(frozen=True)
class AnatomyOptions:
    """What varies between subjects, and how much.

    ``shape_split``: bank shapes to draw from (``training`` or ``held_out``); ``field_of_view``: one of
    :data:`FIELDS_OF_VIEW`, or None to draw one per subject; ``missing_teeth_probability``: chance that a healthy
    subject lacks 1-3 teeth (healed sockets); ``pose_degrees`` / ``shift_mm``: largest rotation about each axis and
    shift of the subject in the scanner; ``deformation_mm``: largest amplitude of the smooth random deformation;
    ``scale_range``: per-axis scale of the whole head; ``mirror_probability``: chance of reflecting the mandible;
    ``joint_space_mm``: range of the narrowest empty space between the lower jaw and the upper skull, drawn per
    subject. CBCT studies of healthy joints measure mean anterior, superior and posterior joint spaces of about 1.3,
    2.5 and 2.1 mm (Ikeda and Kawamura, Am J Orthod Dentofacial Orthop 2009; 135:495-501); elsewhere muscle lies
    between the two bones. ``(0, 0)`` lets the two labels touch, as the phantoms of generator revision 1 did.
    ``ridge_resorption_mm``: largest loss of alveolar crest height at a healed extraction site (each missing tooth
    draws its own, 0.5 to 1 times this); 0 keeps the full crest under a gap, as the phantoms did before generator
    revision 3. Extraction sockets heal with about 1.2 mm of vertical and 3.8 mm of horizontal bone loss within six
    months (Tan et al., Clin Oral Implants Res 2012; 23 Suppl 5:1-21), and the ridge keeps resorbing over the years
    that a gap stays unrestored.
    """

    shape_split: str = "training"
    field_of_view: str | None = None
    missing_teeth_probability: float = 0.25
    pose_degrees: float = 8.0
    shift_mm: float = 10.0
    deformation_mm: float = 2.5
    scale_range: tuple[float, float] = (0.93, 1.07)
    mirror_probability: float = 0.5
    joint_space_mm: tuple[float, float] = (1.0, 3.0)
    ridge_resorption_mm: float = 3.0
    bank_dir: Path = BANK_DIR

    def __post_init__(self) -> None:
        if self.field_of_view is not None and self.field_of_view not in FIELDS_OF_VIEW:
            raise ValueError(f"unknown field of view {self.field_of_view!r}; expected one of {FIELDS_OF_VIEW}")
        for name in ("missing_teeth_probability", "mirror_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        for name in ("pose_degrees", "shift_mm", "deformation_mm"):
            if not 0.0 <= getattr(self, name) < 45.0:
                raise ValueError(f"{name} must be within [0, 45), got {getattr(self, name)}")
        if not 0.0 <= self.ridge_resorption_mm <= MAX_RIDGE_RESORPTION_MM:
            raise ValueError(
                f"ridge_resorption_mm must be within [0, {MAX_RIDGE_RESORPTION_MM}], got {self.ridge_resorption_mm}"
            )
        low, high = self.scale_range
        if not 0.5 <= low <= high <= 2.0:
            raise ValueError(f"scale_range must satisfy 0.5 <= low <= high <= 2, got {self.scale_range}")
        low, high = self.joint_space_mm
        if not 0.0 <= low <= high <= 10.0:
            raise ValueError(f"joint_space_mm must satisfy 0 <= low <= high <= 10, got {self.joint_space_mm}")


@dataclass(frozen=True, eq=False)
class Tooth:
    """One tooth in the subject frame: ``cervical`` is the centre of its neck, ``axis`` points from the crown into
    the jaw (down for lower teeth, up for upper ones), ``tangent`` / ``normal`` are the arch directions there."""

    label: int
    position: int  # 0 central incisor ... 7 third molar
    side: int  # -1 left, +1 right
    cervical: np.ndarray
    axis: np.ndarray
    tangent: np.ndarray
    normal: np.ndarray
    width: float
    depth: float
    crown_height: float
    root_length: float

    @property
    def occlusal(self) -> np.ndarray:
        return self.cervical - self.crown_height * self.axis

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = 0.5 * float(np.hypot(self.width, self.depth)) + 1.0
        ends = np.array([self.occlusal, self.cervical + self.root_length * self.axis])
        return ends.min(axis=0) - reach, ends.max(axis=0) + reach

    def inside(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(in tooth, in crown) for ``points`` (..., 3): a rounded crown tapering to the neck, then one root (two
        diverging roots for molars) tapering to the apex."""
        offset = points - self.occlusal.astype(np.float32)
        u = offset @ self.tangent.astype(np.float32)
        v = offset @ self.normal.astype(np.float32)
        depth = offset @ self.axis.astype(np.float32)
        crown_height, root_length = np.float32(self.crown_height), np.float32(self.root_length)
        in_crown = depth <= crown_height
        cusp = np.sqrt(np.clip(depth / np.float32(0.22) / crown_height, 0.0, 1.0))
        crown_radius = cusp * (1.0 - np.float32(0.2) * depth / crown_height)
        root_t = np.clip((depth - crown_height) / root_length, 0.0, 1.0)
        root_radius = np.float32(0.72) * (1.0 - root_t) ** np.float32(0.6)
        radius = np.where(in_crown, crown_radius, root_radius)
        half_u = np.float32(self.width / 2) * radius
        if self.position >= FIRST_MOLAR:
            split = np.clip((root_t - np.float32(0.25)) / np.float32(0.2), 0.0, 1.0) * ~in_crown
            u = np.abs(u) - np.float32(0.3 * self.width) * radius * split
            half_u = half_u * (1.0 - np.float32(0.6) * split)
        with np.errstate(divide="ignore", invalid="ignore"):
            inside = even_power(u / half_u, 4) + even_power(v / (np.float32(self.depth / 2) * radius), 4) <= 1.0
        inside &= (depth >= 0.0) & (depth <= crown_height + root_length) & (radius > 0.0)
        return inside, inside & in_crown


@dataclass(frozen=True, eq=False)
class Solid:
    """A skull part: an ellipsoid or capsule, or the shell of an ellipsoid (``shell`` mm thick), optionally kept only
    on one side of some planes (``keep``: (axis, value, sign) each, points with sign * (p[axis] - value) >= 0)."""

    shape: Ellipsoid | Capsule
    shell: float = 0.0
    keep: tuple[tuple[int, float, int], ...] = ()

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.shape.bounds()

    def inside(self, points: np.ndarray) -> np.ndarray:
        distance = self.shape.distance(points[..., 0], points[..., 1], points[..., 2])
        inside = np.abs(distance) <= self.shell / 2 if self.shell > 0 else distance <= 0.0
        for axis, value, sign in self.keep:
            inside &= sign * (points[..., axis] - np.float32(value)) >= 0.0
        return inside


@dataclass(frozen=True, eq=False)
class Deformation:
    """Per-axis scale and a smooth displacement: subject point p -> shape point p / scale + amplitude * noise(p)."""

    scale: np.ndarray
    amplitude: float
    fields: tuple[SmoothNoise, SmoothNoise, SmoothNoise]

    def __call__(self, points: np.ndarray) -> np.ndarray:
        x, y, z = points[..., 0], points[..., 1], points[..., 2]
        moved = points / self.scale.astype(np.float32)
        for axis, noise in enumerate(self.fields):
            moved[..., axis] += np.float32(self.amplitude) * noise(x, y, z)
        return moved


@dataclass(frozen=True, eq=False)
class JawSubject:
    """Everything that defines one healthy subject (all in the shape frame, millimetres)."""

    seed: int
    shape: MandibleShape
    landmarks: MandibleLandmarks
    teeth: tuple[Tooth, ...]
    missing_teeth: tuple[int, ...]  # indices into ``teeth`` of teeth this subject lacks
    ridge_loss_mm: tuple[float, ...]  # crest height lost at each missing tooth's healed socket
    canal: tuple[Solid, ...]
    skull_solids: tuple[Solid, ...]
    skull_cavities: tuple[Solid, ...]
    skull_inner: tuple[Solid, ...]  # parts inside cavities (nasal septum, turbinates)
    soft_tissue: tuple[Solid, ...]
    air: tuple[Solid, ...]
    occlusal_z: float
    deformation: Deformation
    rotation: np.ndarray  # (3, 3) subject -> world
    translation: np.ndarray
    field_of_view: str
    fov_centre: np.ndarray  # world millimetres
    fov_size: np.ndarray  # world millimetres (x, y, z); the scanner reconstructs the inscribed vertical cylinder
    joint_space_mm: float  # narrowest empty space between the lower jaw and the upper skull
    options: AnatomyOptions = field(default_factory=AnatomyOptions)

    @property
    def present_teeth(self) -> tuple[Tooth, ...]:
        return tuple(t for i, t in enumerate(self.teeth) if i not in self.missing_teeth)


def sample_subject(seed: int, options: AnatomyOptions | None = None) -> JawSubject:
    """Draw subject ``seed``: a bank shape of ``options.shape_split``, teeth, canal, skull, pose and field of view."""
    options = options or AnatomyOptions()
    rng = np.random.default_rng([seed, 0])
    entries = bank_entries(options.shape_split, options.bank_dir)
    entry = entries[int(rng.integers(len(entries)))]
    shape = load_shape(entry.path, entry.sha256)
    if rng.random() < options.mirror_probability:
        shape = shape.mirrored()
    landmarks = _landmarks(shape)

    teeth = _place_teeth(rng, landmarks)
    missing: tuple[int, ...] = ()
    if rng.random() < options.missing_teeth_probability:
        candidates = [i for i, t in enumerate(teeth) if t.position >= 3]
        missing = tuple(sorted(rng.choice(candidates, size=int(rng.integers(1, 4)), replace=False).tolist()))
    lower_occlusal = np.array([t.occlusal for t in teeth if t.label == LOWER_TEETH])
    occlusal_z = float(np.median(lower_occlusal[:, 2]))
    solids, cavities, inner, soft, air = _sample_skull(rng, landmarks, teeth, occlusal_z)

    field_of_view = options.field_of_view or str(rng.choice(FIELDS_OF_VIEW, p=_FIELD_OF_VIEW_WEIGHTS))
    rotation = rotation_matrix(rng.uniform(-options.pose_degrees, options.pose_degrees, size=3))
    translation = rng.uniform(-options.shift_mm, options.shift_mm, size=3)
    deformation = Deformation(
        scale=rng.uniform(*options.scale_range, size=3),
        amplitude=float(rng.uniform(0.3, 1.0) * options.deformation_mm),
        fields=tuple(SmoothNoise.sample(rng, 4, (60.0, 140.0)) for _ in range(3)),
    )
    centre, size = _field_of_view(rng, field_of_view, landmarks, occlusal_z)
    # the field of view is placed on the (scaled) subject, then the subject is posed in the scanner
    centre = centre * deformation.scale
    return JawSubject(
        seed=seed,
        shape=shape,
        landmarks=landmarks,
        teeth=teeth,
        missing_teeth=missing,
        # its own stream too: sets made without resorption keep every other draw
        ridge_loss_mm=tuple(
            float(loss) * options.ridge_resorption_mm
            for loss in np.random.default_rng([seed, 3]).uniform(0.5, 1.0, size=len(missing))
        ),
        canal=_canal(landmarks),
        skull_solids=solids,
        skull_cavities=cavities,
        skull_inner=inner,
        soft_tissue=soft,
        air=air,
        occlusal_z=occlusal_z,
        deformation=deformation,
        rotation=rotation,
        translation=translation,
        field_of_view=field_of_view,
        fov_centre=rotation @ centre + translation,
        fov_size=size,
        # its own stream, so that the other draws of a seed stay as they were before the joint space
        joint_space_mm=float(np.random.default_rng([seed, 2]).uniform(*options.joint_space_mm)),
        options=options,
    )


_LANDMARK_CACHE: dict[str, MandibleLandmarks] = {}


def _landmarks(shape: MandibleShape) -> MandibleLandmarks:
    if shape.case not in _LANDMARK_CACHE:
        _LANDMARK_CACHE[shape.case] = measure_landmarks(shape)
    return _LANDMARK_CACHE[shape.case]


def _place_teeth(rng: np.random.Generator, landmarks: MandibleLandmarks) -> tuple[Tooth, ...]:
    """Lower teeth on the crest from the midline to where the ramus begins, upper teeth occluding with them."""
    scale = rng.uniform(0.92, 1.08)
    teeth = []
    for side, end in zip((-1, 1), landmarks.teeth_end):
        widths = LOWER_TEETH_MM[:, 0] * scale
        room = end - 1.0
        count = THIRD_MOLAR + 1 if widths.sum() <= room * 1.05 and rng.random() < 0.6 else THIRD_MOLAR
        # squeeze or spread the row (within 12 %) so that it ends at the ramus, as real arches do
        stretch = float(np.clip(room / widths[:count].sum(), 0.88, 1.12))
        widths = widths[:count] * stretch
        centres = np.cumsum(widths) - widths / 2
        for position, (s_centre, width) in enumerate(zip(centres, widths)):
            size = LOWER_TEETH_MM[position] * scale
            point, tangent, normal = landmarks.at(side * s_centre)
            tangent = tangent * side  # mesio-distal direction pointing backwards on both sides
            crest = float(landmarks.crest(side * s_centre))
            lower = Tooth(
                label=LOWER_TEETH,
                position=position,
                side=side,
                cervical=np.array([*point, crest + CROWN_ABOVE_CREST_MM]),
                axis=np.array([0.0, 0.0, -1.0]),
                tangent=np.array([*tangent, 0.0]),
                normal=np.array([*normal, 0.0]),
                width=float(width),
                depth=float(size[1]),
                crown_height=float(size[2]),
                root_length=float(size[3]),
            )
            teeth.append(lower)
            upper_size = UPPER_TEETH_MM[position] * scale
            upper_point = point + normal * (_OVERJET_MM + 0.5 * (upper_size[1] - size[1]))
            occlusal_top = lower.occlusal[2]
            teeth.append(
                Tooth(
                    label=UPPER_TEETH,
                    position=position,
                    side=side,
                    cervical=np.array([*upper_point, occlusal_top + upper_size[2]]),
                    axis=np.array([0.0, 0.0, 1.0]),
                    tangent=lower.tangent,
                    normal=lower.normal,
                    width=float(width * upper_size[0] / size[0]),
                    depth=float(upper_size[1]),
                    crown_height=float(upper_size[2]),
                    root_length=float(upper_size[3]),
                )
            )
    return tuple(teeth)


def _canal(landmarks: MandibleLandmarks) -> tuple[Solid, ...]:
    """Each canal as a chain of capsules: foramen -> angle -> under the molars -> mental foramen (below the
    premolars), at a third of the body's height above its base."""
    capsules = []
    for side, end, foramen in zip((-1, 1), landmarks.teeth_end, landmarks.foramina):
        stations = np.array([end + 4.0, end - 8.0, 0.55 * end, 24.0])
        heights = np.array([0.38, 0.3, 0.3, 0.42])
        points = [foramen]
        for s, fraction in zip(stations, heights):
            point, _, normal = landmarks.at(side * s)
            base, crest = landmarks.base(side * s), landmarks.crest(side * s)
            points.append(np.array([*(point - 1.0 * normal), base + fraction * (crest - base)]))
        points = np.array(points)
        knots = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]
        path = CubicSpline(knots, points, axis=0, bc_type="natural")(np.arange(0.0, knots[-1], 2.0))
        capsules += [Solid(Capsule(tuple(a), tuple(b), 1.3)) for a, b in zip(path[:-1], path[1:])]
    return tuple(capsules)


def _sample_skull(
    rng: np.random.Generator, landmarks: MandibleLandmarks, teeth: Sequence[Tooth], occlusal_z: float
) -> tuple[tuple[Solid, ...], ...]:
    """Upper skull solids, cavities and inner parts, soft tissue and air spaces, placed on the landmarks."""

    def jitter(values: Sequence[float], spread: float = 0.08) -> tuple[float, ...]:
        return tuple(float(v) * rng.uniform(1.0 - spread, 1.0 + spread) for v in values)

    z0 = occlusal_z
    condyles = landmarks.condyles
    x_mid = float(condyles[:, 0].mean())
    upper = [t for t in teeth if t.label == UPPER_TEETH]
    incisor_y = max(t.cervical[1] for t in upper)
    molars = [t for t in upper if t.position == FIRST_MOLAR]
    molar_y = float(np.mean([t.cervical[1] for t in molars]))
    molar_half_width = float(np.mean([abs(t.cervical[0] - x_mid) for t in molars]))
    last = [max((t for t in upper if t.side == side), key=lambda t: t.position) for side in (-1, 1)]
    tuberosity_y = float(np.mean([t.cervical[1] for t in last])) - 6.0
    condyle_y, condyle_z = float(condyles[:, 1].mean()), float(condyles[:, 2].mean())
    solids: list[Solid] = []
    cavities: list[Solid] = []
    inner: list[Solid] = []

    # alveolar process: a ridge along the upper arch around the roots, and a sleeve around each root, both cut flat
    # at the crest of the nearest tooth, so that the crowns stand free of bone as the lower ones do
    s_end = [end + 6.0 for end in landmarks.teeth_end]
    s_values = np.linspace(-s_end[0], s_end[1], 40)
    points, _, normals = landmarks.at(s_values)
    ridge = points + normals * _OVERJET_MM
    necks = np.array([t.cervical for t in upper])
    for height, radius in ((9.0, 5.0), (15.0, 6.5)):
        chain = np.column_stack([ridge, np.full(len(ridge), z0 + height)])
        for a, b in zip(chain[:-1], chain[1:]):
            nearest = int(np.argmin(np.linalg.norm(necks[:, :2] - 0.5 * (a + b)[:2], axis=1)))
            crest = float(necks[nearest, 2]) + CROWN_ABOVE_CREST_MM
            solids.append(Solid(Capsule(tuple(a), tuple(b), radius), keep=((2, crest, 1),)))
    for tooth in upper:
        top = tooth.cervical + (tooth.root_length + 2.0) * tooth.axis
        crest = float(tooth.cervical[2]) + CROWN_ABOVE_CREST_MM
        sleeve = Capsule(tuple(tooth.cervical), tuple(top), 0.5 * tooth.depth + 1.5)
        solids.append(Solid(sleeve, keep=((2, crest, 1),)))
    # hard palate: a plate vaulting inside the arch
    palate_y = 0.5 * (incisor_y - 6.0 + tuberosity_y)
    palate_radii = (molar_half_width - 2.0, 0.5 * (incisor_y - 6.0 - tuberosity_y), 2.2)
    solids.append(Solid(Ellipsoid((x_mid, palate_y, z0 + 17.0 + rng.uniform(-2, 2)), palate_radii, 4)))
    # anterior maxilla under the nose, and the maxillary bodies whose sinuses are cavities
    solids.append(Solid(Ellipsoid((x_mid, incisor_y - 5.0, z0 + 24.0), jitter((17.0, 7.0, 9.0)), 2)))
    for side in (-1, 1):
        centre = (x_mid + side * (molar_half_width + 2.0), molar_y + 2.0, z0 + 33.0)
        radii = jitter((14.0, 18.0, 15.0))
        solids.append(Solid(Ellipsoid(centre, radii, 4)))
        cavities.append(Solid(Ellipsoid(centre, tuple(r - 1.8 for r in radii), 4)))
    # nasal cavity: air between the sinuses above the palate, with a septum and turbinates inside
    nasal_centre = (x_mid, molar_y + 6.0, z0 + 46.0)
    nasal_radii = jitter((12.0, 28.0, 24.0), 0.05)
    solids.append(Solid(Ellipsoid(nasal_centre, tuple(r + 1.5 for r in nasal_radii), 4)))
    cavities.append(Solid(Ellipsoid(nasal_centre, nasal_radii, 4)))
    inner.append(Solid(Ellipsoid((x_mid, nasal_centre[1], nasal_centre[2] + 2.0), (1.2, 23.0, 18.0), 4)))
    for side in (-1, 1):
        for height in (32.0, 43.0):
            start = (x_mid + side * 9.5, nasal_centre[1] - 20.0, z0 + height)
            inner.append(Solid(Capsule(start, (x_mid + side * 8.5, nasal_centre[1] + 12.0, z0 + height), 2.2)))
        nasal_bone = Capsule(
            (x_mid + side * 4.0, incisor_y - 12.0, z0 + 80.0), (x_mid + side * 7.0, incisor_y - 4.0, z0 + 62.0), 2.5
        )
        solids.append(Solid(nasal_bone))
    # orbits: shells open to the front, with a rim of capsules
    orbit_y, orbit_z = incisor_y - 22.0, z0 + 70.0 + rng.uniform(-4.0, 4.0)
    for side in (-1, 1):
        centre = (x_mid + side * 33.0, orbit_y, orbit_z)
        radii = jitter((18.0, 22.0, 17.0), 0.05)
        solids.append(Solid(Ellipsoid(centre, radii, 2), shell=3.0, keep=((1, orbit_y + 8.0, -1),)))
        angles = np.linspace(0.0, 2.0 * np.pi, 13)
        rim = np.column_stack(
            [centre[0] + 19.0 * np.cos(angles), np.full(13, orbit_y + 10.0), centre[2] + 16.0 * np.sin(angles)]
        )
        solids += [Solid(Capsule(tuple(a), tuple(b), 2.8)) for a, b in zip(rim[:-1], rim[1:])]
        # zygomatic bone and arch, back to the articular eminence in front of the condyle
        condyle = condyles[0 if side < 0 else 1]
        zygoma = (x_mid + side * 47.0, molar_y + 6.0, z0 + 46.0)
        solids.append(Solid(Ellipsoid(zygoma, jitter((7.0, 10.0, 12.0)), 2)))
        eminence = (condyle[0] + side * 4.0, condyle[1] + 11.0, condyle[2] + 1.0)
        solids.append(Solid(Capsule((zygoma[0] + side * 3.0, zygoma[1] - 8.0, zygoma[2] - 2.0), eminence, 3.0)))
        # pterygoid plates behind the maxillary tuberosity, from the palate's level up to the skull base
        plate_height = 0.5 * (condyle_z + 8.0 - (z0 + 14.0))
        for offset in (4.0, 11.0):
            plate_centre = (x_mid + side * (molar_half_width - offset), tuberosity_y - 8.0, z0 + 14.0 + plate_height)
            solids.append(Solid(Ellipsoid(plate_centre, (1.5, 7.0, plate_height), 4)))
        # temporal bone over the condyle (the glenoid fossa), the mastoid behind it
        solids.append(Solid(Ellipsoid((condyle[0], condyle[1] - 2.0, condyle[2] + 9.0), jitter((13.0, 15.0, 6.0)), 2)))
        mastoid = (condyle[0] + side * 6.0, condyle[1] - 18.0, condyle[2] - 6.0)
        solids.append(Solid(Ellipsoid(mastoid, jitter((8.0, 9.0, 13.0)), 2)))
    # skull base: middle cranial floor, sphenoid body (with its sinus), clivus, anterior cranial floor
    solids.append(Solid(Ellipsoid((x_mid, condyle_y + 8.0, condyle_z + 18.0), jitter((50.0, 24.0, 3.0)), 2)))
    sphenoid = (x_mid, condyle_y + 22.0, condyle_z + 22.0)
    solids.append(Solid(Ellipsoid(sphenoid, (15.0, 14.0, 12.0), 4)))
    cavities.append(Solid(Ellipsoid(sphenoid, (11.0, 10.0, 8.0), 4)))
    solids.append(
        Solid(Capsule((x_mid, condyle_y + 16.0, condyle_z + 24.0), (x_mid, condyle_y - 14.0, condyle_z - 6.0), 6.0))
    )
    solids.append(Solid(Ellipsoid((x_mid, orbit_y - 8.0, orbit_z + 19.0), jitter((36.0, 24.0, 2.5)), 2)))
    # cranial vault and occiput: a shell, cut away where the face is
    vault_centre = (x_mid, condyle_y + 2.0, condyle_z + 42.0)
    vault_radii = jitter((72.0, 92.0, 78.0), 0.05)
    vault = Ellipsoid(vault_centre, vault_radii, 2)
    solids.append(Solid(vault, shell=5.0, keep=((2, orbit_z + 6.0, 1),)))
    solids.append(Solid(vault, shell=5.0, keep=((1, condyle_y + 15.0, -1), (2, condyle_z - 28.0, 1))))

    # soft tissue and air (for the CBCT): head and lower face, tongue, pharynx, oral vestibule
    arch_centre_y = 0.5 * (incisor_y + condyle_y)
    base = float(np.min(landmarks.base_z))
    soft = (
        Solid(Ellipsoid((x_mid, condyle_y + 10.0, condyle_z + 30.0), (80.0, 102.0, 100.0), 2)),
        Solid(Ellipsoid((x_mid, arch_centre_y + 8.0, base + 25.0), (66.0, 62.0, 48.0), 2)),
        Solid(Ellipsoid((x_mid, molar_y - 2.0, z0 - 10.0), (molar_half_width - 6.0, 30.0, 12.0), 2)),
    )
    air = (
        Solid(Capsule((x_mid, condyle_y + 2.0, base - 30.0), (x_mid, condyle_y + 6.0, z0 + 22.0), 8.0)),
        Solid(Ellipsoid((x_mid, incisor_y + 4.0, z0), (30.0, 3.0, 10.0), 2)),
    )
    return tuple(solids), tuple(cavities), tuple(inner), soft, air


def _field_of_view(
    rng: np.random.Generator, kind: str, landmarks: MandibleLandmarks, occlusal_z: float
) -> tuple[np.ndarray, np.ndarray]:
    """Centre (subject frame) and size (x, y, z) of the scanned box for a field of view of ``kind``."""
    base = float(np.min(landmarks.base_z))
    bottom = base - rng.uniform(4.0, 12.0)
    top = occlusal_z + rng.uniform(*{"lower_jaw": (15.0, 30.0), "jaws": (45.0, 65.0), "face": (90.0, 115.0)}[kind])
    diameter = rng.uniform(*{"lower_jaw": (100.0, 140.0), "jaws": (120.0, 170.0), "face": (150.0, 190.0)}[kind])
    front = float(np.max(landmarks.arch[:, 1]))
    back = float(landmarks.condyles[:, 1].mean())
    centre_y = 0.5 * (front + back) + rng.uniform(-5.0, 5.0)
    x_mid = float(landmarks.condyles[:, 0].mean())
    centre = np.array([x_mid + rng.uniform(-4.0, 4.0), centre_y, 0.5 * (bottom + top)])
    return centre, np.array([diameter, diameter, top - bottom])
