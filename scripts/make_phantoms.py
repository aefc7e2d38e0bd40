"""Write a synthetic phantom data set: label maps, raw CBCTs, lesion truth masks, a MONAI datalist and a preview.

Layout of the output folder (paths in the datalist are relative to it, as ``load_decathlon_datalist`` expects)::

    datalist.json            {"training": [...], "validation": [...], "test": [...]}
    labels/case_000.nii.gz   int16 DentalSegmentator labels 0..5
    cbct/case_000.nii.gz     int16 HU-like raw CBCT
    truth/case_021.nii.gz    uint8 lesion truth (lesion cases only)
    preview.png              slices of a few subjects

Training and validation subjects are healthy; a fraction of the test subjects carry a simulated lesion, alternating
ONJ and the paper's "teeth and jaw removed". Subjects are written at a native spacing other than the model's 2 mm
(some anisotropic, some with LPS voxel axes) so that the preprocessing chain is exercised. The same ``--seed``
gives byte-identical files. Example::

    python scripts/make_phantoms.py data/phantoms --train_subjects 20 --val_subjects 5 --test_subjects 5
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaw_phantoms.parametric import JawPhantom, make_phantom  # noqa: E402

DATALIST_NAME = "datalist.json"
PREVIEW_NAME = "preview.png"
ANISOTROPIC_FACTORS = (0.8, 0.8, 1.2)
_GZIP_LEVEL = 6
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
) -> list[CasePlan]:
    """Decide name, split, subject seed, lesion kind, spacing and voxel axes of every case, from ``seed`` alone."""
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
                lesion = ("onj", "teeth_and_jaw_removed")[lesion_number % 2]
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


def write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI-1 ``.nii.gz`` whose bytes depend only on the data (gzip header without time stamp or name)."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0))


def write_case(phantom: JawPhantom, plan: CasePlan, root: Path) -> dict:
    """Write one case's files under ``root`` and return its datalist entry."""
    entry = {"image": f"labels/{plan.name}.nii.gz", "cbct": f"cbct/{plan.name}.nii.gz"}
    write_nifti(phantom.labels, phantom.affine, root / entry["image"])
    cbct = np.clip(np.rint(phantom.cbct), np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(np.int16)
    write_nifti(cbct, phantom.affine, root / entry["cbct"])
    if plan.lesion != "none":
        entry["truth"] = f"truth/{plan.name}.nii.gz"
        write_nifti(phantom.truth, phantom.affine, root / entry["truth"])
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
    for kind in ("onj", "teeth_and_jaw_removed"):
        chosen += [p.name for p in plans if p.lesion == kind][:1]
    chosen += [p.name for p in plans if p.lesion == "none"][: _PREVIEW_SUBJECTS - len(chosen)]
    return set(chosen[:_PREVIEW_SUBJECTS])


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
    preview: bool = True,
    overwrite: bool = False,
    log=print,
) -> Path:
    """Generate the data set into ``output_dir`` and return the path of its ``datalist.json``.

    Files are written into a temporary sibling folder that is renamed at the end, so an interrupted or failed run
    leaves ``output_dir`` as it was. A non-empty ``output_dir`` is refused unless ``overwrite`` is set.
    """
    output = Path(output_dir).resolve()
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"{output}: folder is not empty; pass --overwrite to replace it")
    plans = plan_cases(
        train_subjects, val_subjects, test_subjects, lesion_fraction, spacing, anisotropic_fraction, lps_fraction, seed
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for folder in ("labels", "cbct", "truth"):
            (staging / folder).mkdir(parents=True)
        datalist: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
        shown = _preview_choice(plans) if preview else set()
        preview_cases = []
        for plan in plans:
            phantom = make_phantom(plan.seed, plan.spacing, plan.lesion, plan.axcodes)
            datalist[plan.split].append(write_case(phantom, plan, staging))
            if plan.name in shown:
                preview_cases.append((plan, phantom))
            log(f"{plan.name} {plan.split:<10} {plan.lesion:<22} shape {phantom.labels.shape} {plan.axcodes}")
        if not any(p.lesion != "none" for p in plans):
            (staging / "truth").rmdir()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="folder to create (must be empty or absent unless --overwrite)")
    parser.add_argument("--train_subjects", type=int, default=20, help="healthy training subjects (default 20)")
    parser.add_argument("--val_subjects", type=int, default=5, help="healthy validation subjects (default 5)")
    parser.add_argument("--test_subjects", type=int, default=5, help="test subjects (default 5)")
    parser.add_argument(
        "--lesion_fraction", type=float, default=0.6, help="fraction of test subjects with a lesion (default 0.6)"
    )
    parser.add_argument(
        "--spacing",
        type=float,
        default=1.0,
        help="native isotropic spacing in mm (default 1.0; 0.5 works but takes ~4 s and ~40 MB per subject)",
    )
    parser.add_argument(
        "--anisotropic_fraction",
        type=float,
        default=0.25,
        help=f"fraction of subjects written at spacing x {ANISOTROPIC_FACTORS} instead (default 0.25)",
    )
    parser.add_argument(
        "--lps_fraction", type=float, default=0.25, help="fraction of subjects with LPS voxel axes (default 0.25)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole set (default 0)")
    parser.add_argument("--no_preview", action="store_true", help="skip preview.png")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="print only the datalist path")
    args = parser.parse_args(argv)
    # a terminated run unwinds like an interrupted one, so the staging folder is removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        datalist = make_phantom_set(
            args.output_dir,
            train_subjects=args.train_subjects,
            val_subjects=args.val_subjects,
            test_subjects=args.test_subjects,
            lesion_fraction=args.lesion_fraction,
            spacing=args.spacing,
            anisotropic_fraction=args.anisotropic_fraction,
            lps_fraction=args.lps_fraction,
            seed=args.seed,
            preview=not args.no_preview,
            overwrite=args.overwrite,
            log=(lambda message: None) if args.quiet else print,
        )
    except (ValueError, OSError) as error:
        print(f"make_phantoms: error: {error}", file=sys.stderr)
        return 2
    print(datalist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
