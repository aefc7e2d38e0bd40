"""Measure phantoms against the real anatomy: per-label volume, extent and components, mandible thickness, teeth
(count, crowns free of bone) and canal, for phantoms on the real mandible bank, for the parametric (0.2) phantoms and
for the bank's own shapes; draw their sum projections at 2 mm (the view of ../shared/real_anatomy.md).

    python scripts/phantom_realism.py --count 8 --markdown docs/phantom_realism.md \\
        --figure docs/figures/phantom_projections.png --segmentation_errors mandible_thinning_mm=1.0

``--segmentation_errors`` adds a column: the same bank phantoms with those errors in their labels
(``jaw_phantoms/segmentation_errors.py``).

The real DentalSegmentator map's figures are cited from shared/real_anatomy.md (the map itself is not shipped).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.atomic_files import write_text_atomically  # noqa: E402
from jaw_phantoms import parametric  # noqa: E402
from jaw_phantoms.anatomy import (  # noqa: E402
    CANAL,
    LOWER_TEETH,
    MANDIBLE,
    UPPER_SKULL,
    UPPER_TEETH,
    AnatomyOptions,
    JawSubject,
    sample_subject,
)
from jaw_phantoms.phantom import crown_surface_on_bone, empty_space_to_lower_jaw_mm, make_phantom, render  # noqa: E402
from jaw_phantoms.segmentation_errors import SegmentationErrors, apply_segmentation_errors  # noqa: E402
from jaw_phantoms.shape_bank import SURFACE_LEVEL, bank_entries, load_shape, measure_landmarks  # noqa: E402

LABEL_NAMES = {UPPER_SKULL: "upper skull", MANDIBLE: "mandible", UPPER_TEETH: "upper teeth", LOWER_TEETH: "lower teeth"}
LABEL_NAMES[CANAL] = "canal"
# shared/real_anatomy.md: volume (cm^3), extent L-R x A-P x S-I (mm), connected components
REAL_MAP = {
    UPPER_SKULL: (180.8, (145, 151, 98), "1"),
    MANDIBLE: (38.7, (114, 84, 84), "1 + islands"),
    UPPER_TEETH: (9.4, (56, 44, 33), "1"),
    LOWER_TEETH: (7.9, (65, 46, 30), "2"),
    CANAL: (0.8, (84, 50, 40), "2"),
}
REAL_MANDIBLE_HALF_THICKNESS_MM = 4.8
SPACING_MM = 1.0


def measure(labels: np.ndarray, affine: np.ndarray) -> dict:
    """Per-label volume (cm^3), world extent (mm), components; mandible half-thickness (mm); the narrowest empty space
    between the lower jaw (mandible, lower teeth, canal) and the upper skull (mm, voxel centres' distance less one
    voxel; 0 where they touch)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    result = {}
    for label in LABEL_NAMES:
        mask = labels == label
        if not mask.any():
            result[label] = (0.0, (0, 0, 0), 0)
            continue
        corners = np.argwhere(mask)
        extent = (corners.max(axis=0) - corners.min(axis=0) + 1) * spacing
        _, components = ndimage.label(mask)
        result[label] = (mask.sum() * voxel_ml, tuple(np.round(extent).astype(int)), components)
    thickness = ndimage.distance_transform_edt(labels == MANDIBLE, sampling=spacing)
    result["half_thickness"] = float(thickness.max())
    result["jaw_to_skull"] = empty_space_to_lower_jaw_mm(labels, spacing)
    return result


def summarise(measures: list[dict]) -> dict:
    summary = {}
    for label in LABEL_NAMES:
        volumes = [m[label][0] for m in measures]
        extents = np.array([m[label][1] for m in measures])
        components = [m[label][2] for m in measures]
        summary[label] = (
            f"{np.min(volumes):.1f}-{np.max(volumes):.1f}",
            " x ".join(f"{lo}-{hi}" for lo, hi in zip(extents.min(axis=0), extents.max(axis=0))),
            f"{min(components)}-{max(components)}",
        )
    thickness = [m["half_thickness"] for m in measures]
    summary["half_thickness"] = f"{min(thickness):.1f}-{max(thickness):.1f}"
    spaces = [m["jaw_to_skull"] for m in measures]
    summary["jaw_to_skull"] = f"{min(spaces):.1f}-{max(spaces):.1f}"
    return summary


def bank_figures() -> dict:
    """Volume, extent, half-thickness and symphysis height of the bank's shapes (bone, no teeth)."""
    volumes, extents, thickness, symphysis = [], [], [], []
    for split in ("training", "held_out"):
        for entry in bank_entries(split):
            shape = load_shape(entry.path, entry.sha256)
            bone = shape.occupancy >= SURFACE_LEVEL
            volumes.append(bone.sum() / 1000.0)
            corners = np.argwhere(bone)
            extents.append(corners.max(axis=0) - corners.min(axis=0) + 1)
            thickness.append(ndimage.distance_transform_edt(bone).max())
            landmarks = measure_landmarks(shape)
            symphysis.append(float(landmarks.crest(0.0) - landmarks.base(0.0)))
    extents = np.array(extents)
    return {
        "count": len(volumes),
        "volume": f"{min(volumes):.1f}-{max(volumes):.1f} (median {np.median(volumes):.1f})",
        "extent": " x ".join(f"{lo}-{hi}" for lo, hi in zip(extents.min(axis=0), extents.max(axis=0))),
        "half_thickness": f"{min(thickness):.1f}-{max(thickness):.1f}",
        "symphysis": f"{min(symphysis):.0f}-{max(symphysis):.0f} (median {np.median(symphysis):.0f})",
    }


def canal_length_mm(subject: JawSubject) -> float:
    """Length of both canals along the generator's own path (the capsule chain), in the shape frame."""
    return float(sum(np.linalg.norm(np.subtract(c.shape.end, c.shape.start)) for c in subject.canal))


def projections(phantoms: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> None:
    """Sum projections at 2 mm (RAS), all labels and the lower jaw (mandible, lower teeth, canal), three views."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from monai.transforms import Orientation, Spacing

    views = ((2, "axial"), (1, "coronal"), (0, "sagittal"))
    figure, axes = plt.subplots(len(phantoms), 6, figsize=(15, 2.6 * len(phantoms)), squeeze=False)
    for row, (title, labels, affine) in enumerate(phantoms):
        image = torch.as_tensor(labels[None].astype(np.float32))
        from monai.data import MetaTensor

        image = Spacing(pixdim=2.0, mode="nearest")(Orientation(axcodes="RAS")(MetaTensor(image, affine=affine)))
        lab = np.asarray(image[0]).astype(int)
        for group, (labels_shown, name) in enumerate((((1, 2, 3, 4, 5), "all labels"), ((2, 4, 5), "lower jaw"))):
            mask = np.isin(lab, labels_shown).astype(float)
            for column, (axis, view) in enumerate(views):
                ax = axes[row, group * 3 + column]
                ax.imshow(mask.sum(axis).T, origin="lower", cmap="gray")
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(
                    f"{title}\n{name}: {view}" if column == 0 and group == 0 else f"{name}: {view}", fontsize=7
                )
    figure.tight_layout()
    figure.savefig(path, dpi=60, metadata={"Software": None})
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=8, help="phantoms of each style (default 8)")
    parser.add_argument("--markdown", type=Path, required=True, help="table to write (Markdown)")
    parser.add_argument("--figure", type=Path, required=True, help="projection figure to write (PNG)")
    parser.add_argument(
        "--segmentation_errors",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="also measure the bank phantoms with these errors (as make_phantoms.py --segmentation_errors)",
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        print("phantom_realism: error: --count must be >= 1", file=sys.stderr)
        return 2
    try:
        errors = SegmentationErrors.parse(args.segmentation_errors)
    except ValueError as error:
        print(f"phantom_realism: error: {error}", file=sys.stderr)
        return 2
    new, old, with_errors, teeth, canal, crowns_on_bone, shown = [], [], [], [], [], [], []
    for seed in range(args.count):
        subject = sample_subject(seed, AnatomyOptions(field_of_view="face"))
        labels, _, crown, _, grid = render(subject, SPACING_MM)
        new.append(measure(labels, grid.affine))
        if errors.changes_labels:
            erroneous = apply_segmentation_errors(labels, np.full(3, SPACING_MM), errors, seed)
            with_errors.append(measure(erroneous, grid.affine))
        teeth.append(len(subject.present_teeth))
        canal.append(canal_length_mm(subject))
        crowns_on_bone.append(
            [
                crown_surface_on_bone(labels, crown, t, b)
                for t, b in ((UPPER_TEETH, UPPER_SKULL), (LOWER_TEETH, MANDIBLE))
            ]
        )
        legacy = parametric.make_phantom(seed, SPACING_MM, with_cbct=False)
        old.append(measure(legacy.labels, legacy.affine))
        if seed < 3:
            shown.append((f"bank phantom, seed {seed} ({subject.shape.case})", labels, grid.affine))
    for fov in ("lower_jaw", "jaws"):
        phantom = make_phantom(3, SPACING_MM, options=AnatomyOptions(field_of_view=fov), with_cbct=False)
        shown.append((f"bank phantom, seed 3, field of view {fov}", phantom.labels, phantom.affine))
    shown.append(
        ("parametric (0.2) phantom, seed 0", *(lambda p: (p.labels, p.affine))(parametric.make_phantom(0, 1.0)))
    )
    projections(shown, args.figure)

    ours, legacy, bank = summarise(new), summarise(old), bank_figures()
    columns = [ours] + ([summarise(with_errors)] if with_errors else []) + [legacy]
    errors_heading = [f"bank phantoms with {' '.join(args.segmentation_errors)}"] if with_errors else []
    errors_option = f" --segmentation_errors {' '.join(args.segmentation_errors)}" if with_errors else ""
    headings = ["label", "measure", "real map (real_anatomy.md)", "bank phantoms"]
    headings += errors_heading + ["parametric (0.2) phantoms"]
    lines = [
        f"<!-- generated by: python scripts/phantom_realism.py --count {args.count} --markdown {args.markdown} "
        f"--figure {args.figure}{errors_option} -->",
        "",
        f"{args.count} phantoms of each style, seeds 0-{args.count - 1}, face field of view, at {SPACING_MM:g} mm "
        "(ranges over the phantoms; extents along the scanner's axes, L-R x A-P x S-I).",
        "",
        "| " + " | ".join(headings) + " |",
        "|" + "---|" * len(headings),
    ]

    def row(first: str, measure_name: str, real, cells: list) -> str:
        return "| " + " | ".join([first, measure_name, str(real)] + [str(cell) for cell in cells]) + " |"

    for label, name in LABEL_NAMES.items():
        volume, extent, components = REAL_MAP[label]
        lines.append(row(name, "volume (cm^3)", volume, [column[label][0] for column in columns]))
        lines.append(row("", "extent (mm)", " x ".join(map(str, extent)), [column[label][1] for column in columns]))
        lines.append(row("", "components", components, [column[label][2] for column in columns]))
    thickness = [column["half_thickness"] for column in columns]
    lines.append(row("mandible", "largest half-thickness (mm)", REAL_MANDIBLE_HALF_THICKNESS_MM, thickness))
    spaces = [column["jaw_to_skull"] for column in columns]
    lines.append(row("lower jaw to upper skull", "narrowest empty space (mm)", "not measured", spaces))
    blanks = [""] * (len(columns) - 1)
    lines.append(row("teeth", "teeth per subject (generator)", "", [f"{min(teeth)}-{max(teeth)}"] + blanks))
    lines.append(
        row("canal", "length of both canals (mm, generator path)", "", [f"{min(canal):.0f}-{max(canal):.0f}"] + blanks)
    )
    upper, lower = (100.0 * np.array(crowns_on_bone)).T
    lines.append(
        row(
            "teeth",
            "crown surface on alveolar bone, upper / lower (%, generator crowns)",
            "",
            [f"{upper.min():.0f}-{upper.max():.0f} / {lower.min():.0f}-{lower.max():.0f}"] + blanks,
        )
    )
    lines += [
        "",
        f"The mandible bank itself ({bank['count']} shapes, bone only, at 1 mm): volume {bank['volume']} cm^3, extent "
        f"{bank['extent']} mm, largest half-thickness {bank['half_thickness']} mm, symphysis height (crest to base "
        f"at the midline) {bank['symphysis']} mm.",
        "",
    ]
    write_text_atomically(args.markdown, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
