"""Writing phantom sets: label maps, raw CBCTs, lesion truth, a MONAI datalist and a preview.

Layout of an output folder (paths in the datalist are relative to it, as ``load_decathlon_datalist`` expects)::

    datalist.json            {"training": [...], "validation": [...], "test": [...]}
    labels/case_000.nii.gz   int16 DentalSegmentator labels 0..5
    cbct/case_000.nii.gz     int16 HU-like raw CBCT
    truth/case_021.nii.gz    uint8 lesion truth (lesion cases only)
    intact/case_021.nii.gz   int16 labels of the same subject without its lesion (lesion cases only)
    preview.png              slices of a few subjects

A test entry reads {"image", "cbct", "lesion": kind or "none", "seed"}, plus "truth", "intact" and
"lesion_volume_ml" (the removed tissue in cm^3, at the native grid) for lesion cases. The intact map is what stage 2
should restore: the evaluation measures its reconstructions against it (the paper's section 5.1, second part).

Training and validation subjects are healthy; a fraction of the test subjects carry a simulated lesion. With the
``real_mandible`` style, training and validation subjects are built on the bank's training shapes and test subjects
on its held-out shapes. Subjects are written at a native spacing other than the model's 2 mm (some anisotropic, some
with LPS voxel axes) so that the preprocessing chain is exercised. The same seed gives byte-identical files.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from jaw_phantoms import lesions, parametric
from jaw_phantoms.anatomy import AnatomyOptions
from jaw_phantoms.phantom import JawPhantom, make_phantom
from jaw_phantoms.segmentation_errors import SegmentationErrors, apply_segmentation_errors

_GZIP_LEVEL = 6


def write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI-1 ``.nii.gz`` whose bytes depend only on the data (gzip header without time stamp or name)."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    Path(path).write_bytes(gzip.compress(image.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0))


STYLES = ("real_mandible", "parametric")
# lesion kinds of the test subjects, in turn; the parametric (0.2) phantoms know only the first two
LESION_CYCLE = {
    "real_mandible": ("onj", "teeth_and_jaw_removed", "onj", "onj_maxilla"),
    "parametric": ("onj", "teeth_and_jaw_removed"),
}
DATALIST_NAME = "datalist.json"
SEGMENTATION_ERRORS_KEY = "segmentation_errors"
# AnatomyOptions fields a set may override (recorded under ANATOMY_OPTIONS_KEY only when it does, so that its subjects
# can be drawn again): how often teeth are missing, and how far the pose and shape of a subject vary
ANATOMY_OPTIONS_KEY = "anatomy_options"
ANATOMY_OVERRIDES = (
    "missing_teeth_probability",
    "mirror_probability",
    "pose_degrees",
    "shift_mm",
    "deformation_mm",
    "ridge_resorption_mm",
)
# what a seed draws, per style: raised whenever the same seed and options give another phantom, so that sets made
# before are known to be stale. A datalist without the key is of revision 1; real_mandible 2: the joint space
# between the lower jaw and the upper skull; 3: upper crowns free of the alveolar bone, and resorbed crests under the
# gaps of missing teeth.
GENERATOR_REVISION_KEY = "generator_revision"
GENERATOR_REVISIONS = {"real_mandible": 3, "parametric": 1}
PREVIEW_NAME = "preview.png"
ANISOTROPIC_FACTORS = (0.8, 0.8, 1.2)
_PREVIEW_SUBJECTS = 4


@dataclass(frozen=True)
class CasePlan:
    """What to generate for one subject."""

    name: str
    split: str
    seed: int
    lesion: str
    spacing: tuple[float, float, float]
    axcodes: str


def plan_cases(
    train_subjects: int,
    val_subjects: int,
    test_subjects: int,
    lesion_fraction: float,
    spacing: float,
    anisotropic_fraction: float,
    lps_fraction: float,
    seed: int,
    style: str = "real_mandible",
    lesion_kinds: tuple[str, ...] | None = None,
) -> list[CasePlan]:
    """Decide name, split, subject seed, lesion kind, spacing and voxel axes of every case, from ``seed`` alone.

    Lesion subjects take the kinds of ``lesion_kinds`` in turn (default: ``LESION_CYCLE[style]``)."""
    cycle = tuple(lesion_kinds or LESION_CYCLE[style])
    known = lesions.LESION_KINDS if style == "real_mandible" else parametric.LESION_KINDS
    unknown = [kind for kind in cycle if kind not in known[1:]]
    if unknown:
        raise ValueError(f"unknown lesion kind(s) {unknown} for {style} phantoms; expected some of {known[1:]}")
    counts = {"training": train_subjects, "validation": val_subjects, "test": test_subjects}
    for name, count in counts.items():
        if count < 0:
            raise ValueError(f"the number of {name} subjects must be >= 0, got {count}")
    if sum(counts.values()) == 0:
        raise ValueError("nothing to generate: all subject counts are 0")
    for name, fraction in (
        ("lesion_fraction", lesion_fraction),
        ("anisotropic_fraction", anisotropic_fraction),
        ("lps_fraction", lps_fraction),
    ):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {fraction}")
    if not spacing > 0.0:
        raise ValueError(f"spacing must be positive, got {spacing}")

    rng = np.random.default_rng(seed)
    lesion_count = int(round(lesion_fraction * test_subjects))
    lesion_cases = set(rng.permutation(test_subjects)[:lesion_count].tolist())
    total = sum(counts.values())
    subject_seeds = rng.choice(2**31 - 1, size=total, replace=False)
    anisotropic = rng.random(total) < anisotropic_fraction
    lps = rng.random(total) < lps_fraction
    plans, index, lesion_number = [], 0, 0
    for split, count in counts.items():
        for number in range(count):
            lesion = "none"
            if split == "test" and number in lesion_cases:
                lesion = cycle[lesion_number % len(cycle)]
                lesion_number += 1
            factors = ANISOTROPIC_FACTORS if anisotropic[index] else (1.0, 1.0, 1.0)
            plans.append(
                CasePlan(
                    name=f"case_{index:03d}",
                    split=split,
                    seed=int(subject_seeds[index]),
                    lesion=lesion,
                    spacing=tuple(round(spacing * f, 6) for f in factors),
                    axcodes="LPS" if lps[index] else "RAS",
                )
            )
            index += 1
    return plans


def write_case(phantom: JawPhantom, plan: CasePlan, root: Path) -> dict:
    """Write one case's files under ``root`` and return its datalist entry."""
    entry = {"image": f"labels/{plan.name}.nii.gz", "cbct": f"cbct/{plan.name}.nii.gz"}
    write_nifti(phantom.labels, phantom.affine, root / entry["image"])
    cbct = np.clip(np.rint(phantom.cbct), np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(np.int16)
    write_nifti(cbct, phantom.affine, root / entry["cbct"])
    if plan.lesion != "none":
        entry["truth"] = f"truth/{plan.name}.nii.gz"
        write_nifti(phantom.truth, phantom.affine, root / entry["truth"])
        entry["intact"] = f"intact/{plan.name}.nii.gz"
        write_nifti(phantom.healthy_labels, phantom.affine, root / entry["intact"])
        voxel_ml = float(np.prod(np.linalg.norm(phantom.affine[:3, :3], axis=0))) / 1000.0
        entry["lesion_volume_ml"] = round(float(np.count_nonzero(phantom.truth)) * voxel_ml, 4)
    entry.update({"lesion": plan.lesion, "seed": plan.seed})
    return entry


def _canonical(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Flip voxel axes that run against RAS, for display (the grids here are never permuted)."""
    flipped = tuple(axis for axis in range(3) if affine[axis, axis] < 0)
    return np.flip(array, flipped) if flipped else array


def write_preview(cases: list[tuple[CasePlan, JawPhantom]], path: Path) -> None:
    """Axial, coronal and sagittal slices of labels, CBCT and lesion truth (over the healthy labels) per subject."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    label_colours = ListedColormap(["black", "tab:olive", "tab:blue", "white", "gold", "tab:red"])
    views = (("axial", 2), ("coronal", 1), ("sagittal", 0))
    figure, axes = plt.subplots(len(cases), 9, figsize=(22, 2.6 * len(cases)), squeeze=False)
    for row, (plan, phantom) in enumerate(cases):
        labels = _canonical(phantom.labels, phantom.affine)
        healthy = _canonical(phantom.healthy_labels, phantom.affine)
        cbct = _canonical(phantom.cbct, phantom.affine)
        truth = _canonical(phantom.truth, phantom.affine)
        focus = truth > 0 if truth.any() else labels == 4
        centre = np.argwhere(focus).mean(axis=0).round().astype(int)
        spacing = phantom.spacing
        for view, (view_name, axis) in enumerate(views):
            shown = [a for a in range(3) if a != axis]
            aspect = spacing[shown[1]] / spacing[shown[0]]
            index = [slice(None)] * 3
            index[axis] = centre[axis]
            index = tuple(index)
            panels = (
                (labels[index], dict(cmap=label_colours, vmin=-0.5, vmax=5.5), "labels"),
                (cbct[index], dict(cmap="gray", vmin=-1000, vmax=2500), "CBCT"),
                (healthy[index], dict(cmap=label_colours, vmin=-0.5, vmax=5.5, alpha=0.5), "truth"),
            )
            for group, (image, style, title) in enumerate(panels):
                ax = axes[row, group * 3 + view]
                ax.imshow(image.T, origin="lower", interpolation="nearest", aspect=aspect, **style)
                if title == "truth":
                    ax.contour(truth[index].T.astype(float), levels=[0.5], colors="red", linewidths=0.8)
                heading = f"{plan.name} ({plan.lesion})\n" if group == view == 0 else "\n"
                ax.set_title(f"{heading}{title} {view_name}", fontsize=7)
                ax.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=60, metadata={"Software": None})
    plt.close(figure)


def _preview_choice(plans: list[CasePlan]) -> set[str]:
    """Up to four subjects for the preview: lesion cases of both kinds first, then healthy ones."""
    chosen = []
    for kind in ("onj", "teeth_and_jaw_removed", "onj_maxilla", "onj_ramus"):
        chosen += [p.name for p in plans if p.lesion == kind][:1]
    chosen += [p.name for p in plans if p.lesion == "none"][: _PREVIEW_SUBJECTS - len(chosen)]
    return set(chosen[:_PREVIEW_SUBJECTS])


def anatomy_options(split: str, overrides: Mapping[str, float] | None = None) -> AnatomyOptions:
    """Anatomy options of a real-mandible subject of ``split``: the bank's held-out shapes for test subjects, its
    training shapes otherwise, and ``overrides`` of the fields named in :data:`ANATOMY_OVERRIDES` (e.g.
    ``{"missing_teeth_probability": 1.0}``), checked by :class:`AnatomyOptions`."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(ANATOMY_OVERRIDES))
    if unknown:
        raise ValueError(f"anatomy options {unknown} cannot be overridden; expected some of {ANATOMY_OVERRIDES}")
    values = {name: float(value) for name, value in overrides.items()}
    return AnatomyOptions(shape_split="held_out" if split == "test" else "training", **values)


def generate(
    plan: CasePlan,
    style: str = "real_mandible",
    lesion_volume_range_ml: tuple[float, float] | None = None,
    anatomy_overrides: Mapping[str, float] | None = None,
) -> JawPhantom | parametric.JawPhantom:
    """The phantom of one planned case: training and validation subjects on the bank's training shapes, test subjects
    on its held-out shapes (``real_mandible``, ONJ volumes drawn in ``lesion_volume_range_ml`` when given, with the
    ``anatomy_overrides`` of :func:`anatomy_options`), or a version-0.2 parametric phantom (``parametric``)."""
    if style == "parametric":
        return parametric.make_phantom(plan.seed, plan.spacing, plan.lesion, plan.axcodes)
    options = anatomy_options(plan.split, anatomy_overrides)
    return make_phantom(
        plan.seed, plan.spacing, plan.lesion, plan.axcodes, options, lesion_volume_range_ml=lesion_volume_range_ml
    )


def make_phantom_set(
    output_dir: str | os.PathLike,
    train_subjects: int = 20,
    val_subjects: int = 5,
    test_subjects: int = 5,
    lesion_fraction: float = 0.6,
    spacing: float = 1.0,
    anisotropic_fraction: float = 0.25,
    lps_fraction: float = 0.25,
    seed: int = 0,
    style: str = "real_mandible",
    lesion_kinds: tuple[str, ...] | None = None,
    lesion_volume_range_ml: tuple[float, float] | None = None,
    segmentation_errors: SegmentationErrors | None = None,
    anatomy_overrides: Mapping[str, float] | None = None,
    preview: bool = True,
    overwrite: bool = False,
    log=print,
) -> Path:
    """Generate the data set into ``output_dir`` and return the path of its ``datalist.json``.

    With ``segmentation_errors``, every label map (the model's input) carries them, drawn from the subject's seed;
    CBCT, truth and intact map are those of the exact phantom. The datalist records them under
    ``SEGMENTATION_ERRORS_KEY``, ``anatomy_overrides`` (:func:`anatomy_options`) under ``ANATOMY_OPTIONS_KEY``, and
    the generator's revision of ``style`` under ``GENERATOR_REVISION_KEY`` (keys ``load_decathlon_datalist`` never
    reads).

    Files are written into a temporary sibling folder that is renamed at the end, so an interrupted or failed run
    leaves ``output_dir`` as it was. A non-empty ``output_dir`` is refused unless ``overwrite`` is set.
    """
    output = Path(output_dir).resolve()
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"{output}: folder is not empty; pass --overwrite to replace it")
    if style not in STYLES:
        raise ValueError(f"unknown phantom style {style!r}; expected one of {STYLES}")
    if lesion_volume_range_ml is not None:
        if style != "real_mandible":
            raise ValueError("a lesion volume range is an option of the real_mandible style only")
        lesions.check_volume_range(lesion_volume_range_ml)
    if anatomy_overrides:
        if style != "real_mandible":
            raise ValueError("anatomy options are options of the real_mandible style only")
        anatomy_options("test", anatomy_overrides)  # validates them before anything is written
    plans = plan_cases(
        train_subjects,
        val_subjects,
        test_subjects,
        lesion_fraction,
        spacing,
        anisotropic_fraction,
        lps_fraction,
        seed,
        style,
        lesion_kinds,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for folder in ("labels", "cbct", "truth", "intact"):
            (staging / folder).mkdir(parents=True)
        datalist: dict = {"training": [], "validation": [], "test": []}
        shown = _preview_choice(plans) if preview else set()
        preview_cases = []
        for plan in plans:
            phantom = generate(plan, style, lesion_volume_range_ml, anatomy_overrides)
            if segmentation_errors is not None and segmentation_errors.changes_labels:
                phantom.labels = apply_segmentation_errors(
                    phantom.labels, phantom.spacing, segmentation_errors, plan.seed
                )
            datalist[plan.split].append(write_case(phantom, plan, staging))
            if plan.name in shown:
                preview_cases.append((plan, phantom))
            log(f"{plan.name} {plan.split:<10} {plan.lesion:<22} shape {phantom.labels.shape} {plan.axcodes}")
        if not any(p.lesion != "none" for p in plans):
            (staging / "truth").rmdir()
            (staging / "intact").rmdir()
        if segmentation_errors is not None and segmentation_errors.changes_labels:
            datalist[SEGMENTATION_ERRORS_KEY] = asdict(segmentation_errors)
        if anatomy_overrides:
            datalist[ANATOMY_OPTIONS_KEY] = {name: float(value) for name, value in anatomy_overrides.items()}
        datalist[GENERATOR_REVISION_KEY] = GENERATOR_REVISIONS[style]
        (staging / DATALIST_NAME).write_text(json.dumps(datalist, indent=4) + "\n")
        if preview_cases:
            write_preview(preview_cases, staging / PREVIEW_NAME)
        if output.exists():
            retired = output.parent / f".{output.name}.replaced-{os.getpid()}"
            output.rename(retired)
            staging.rename(output)
            shutil.rmtree(retired)
        else:
            staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output / DATALIST_NAME
