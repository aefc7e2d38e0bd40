"""Where each subject's two-reconstruction score comes from: its scored voxels by nearest tissue, in the lesion, in a
tooth gap.

The paper's subject score counts the voxels of the anomaly map that pass the threshold and the erosion (inside the
anatomical search region, :func:`bundle.scoring.scored_voxels`). When it fails to separate lesion from healthy
subjects, the question is which anatomy the deciding voxels belong to. For every case of a datalist, with the bundle's
own preprocessing, network, inferer, search region and score settings (``configs/inference.json`` with the
``configs/evaluate.json`` overlay, as ``scripts/tune_postprocessing.py``), this counts the scored voxels

- by the tissue of the nearest non-background voxel of the input on the model's grid (upper skull, mandible, upper
  teeth, lower teeth, canal), with the median distance to it;
- inside the lesion truth mask (on the model grid), when the case has one;
- in a tooth gap (``--tooth_gaps``, phantoms of ``scripts/make_phantoms.py``'s default real-mandible style only):
  within one model voxel (2 mm) of where the crown of a tooth that the subject lacks would stand, the empty space a
  missing tooth leaves. The subject is drawn again from the datalist's ``seed``
  (:func:`jaw_phantoms.phantom.tooth_gaps`), so this needs the phantom's own generator revision.

    python scripts/score_sources.py data/phantoms_tune_small/datalist.json --tooth_gaps \\
        --json docs/experiments/score_sources_tune_small.json --markdown docs/experiments/score_sources_tune_small.md

The markdown table lists the cases with a score above 0: healthy subjects from the highest score down, then lesion
subjects from the lowest up, so that the subjects deciding the separation come first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.atomic_files import write_json_atomically, write_text_atomically  # noqa: E402
from bundle.scoring import scored_voxels  # noqa: E402
from jaw_phantoms.anatomy import sample_subject  # noqa: E402
from jaw_phantoms.phantom import tooth_gaps  # noqa: E402
from jaw_phantoms.writing import ANATOMY_OPTIONS_KEY, anatomy_options  # noqa: E402
from scripts.tune_postprocessing import (  # noqa: E402
    evaluation_parser,
    has_lesion,
    load_cases,
    load_network,
    parse_overrides,
    reconstruct,
    search_regions,
)

TISSUES = ("upper_skull", "mandible", "upper_teeth", "lower_teeth", "canal")  # labels 1..5, x' = (label + 5) / 10
TOOTH_GAP_MM = 2.0  # one voxel of the model's grid


def labels_of(x: np.ndarray) -> np.ndarray:
    """DentalSegmentator labels 0..5 of a normalised input x' (0, or (label + 5) / 10)."""
    return np.where(x > 0, np.rint(x * 10 - 5), 0).astype(np.int16)


def score_sources(
    scored: np.ndarray,
    x: np.ndarray,
    spacing: tuple[float, float, float],
    truth: np.ndarray | None = None,
    tooth_gap: np.ndarray | None = None,
) -> dict:
    """Breakdown of one subject's scored voxels.

    Args:
        scored: (X, Y, Z) bool, the voxels the score counts (:func:`bundle.scoring.scored_voxels`).
        x: (X, Y, Z) input x' on the same grid.
        spacing: voxel size in mm, for the distances.
        truth: optional (X, Y, Z) bool lesion mask.
        tooth_gap: optional (X, Y, Z) bool mask of voxels in a gap the subject's missing teeth leave.

    Returns ``score``, ``by_nearest_tissue`` (counts per tissue of :data:`TISSUES`; they sum to the score when the
    input holds any tissue), ``median_distance_to_tissue_mm``, ``in_lesion`` and ``in_tooth_gap`` (``None`` when the
    mask is not given).
    """
    labels = labels_of(x)
    points = tuple(np.nonzero(scored))
    sources: dict = {"score": int(scored.sum()), "by_nearest_tissue": dict.fromkeys(TISSUES, 0)}
    sources["median_distance_to_tissue_mm"] = None
    if scored.any() and labels.any():
        distance, nearest = ndimage.distance_transform_edt(labels == 0, sampling=spacing, return_indices=True)
        nearest_labels = labels[tuple(index[points] for index in nearest)]
        counts = np.bincount(nearest_labels, minlength=len(TISSUES) + 1)[1:]
        sources["by_nearest_tissue"] = {tissue: int(n) for tissue, n in zip(TISSUES, counts)}
        sources["median_distance_to_tissue_mm"] = round(float(np.median(distance[points])), 2)
    sources["in_lesion"] = None if truth is None else int((scored & truth).sum())
    sources["in_tooth_gap"] = None if tooth_gap is None else int((scored & tooth_gap).sum())
    return sources


def tooth_gap_on_grid(
    seed: int,
    split: str,
    label_file: Path,
    model_affine: np.ndarray,
    model_shape: tuple[int, ...],
    anatomy_overrides: dict[str, float] | None = None,
) -> np.ndarray:
    """(X, Y, Z) bool on the model grid: voxel centres within :data:`TOOTH_GAP_MM` of the crown of a tooth that the
    phantom subject ``seed`` of datalist list ``split`` lacks, located on the grid of its label file ``label_file``;
    ``anatomy_overrides``: the set's own (:func:`jaw_phantoms.writing.anatomy_options`), when its datalist records
    them."""
    image = nib.load(label_file)
    spacing = tuple(float(s) for s in image.header.get_zooms()[:3])
    subject = sample_subject(seed, anatomy_options(split, anatomy_overrides))
    axcodes = "".join(nib.aff2axcodes(image.affine))
    gap = tooth_gaps(subject, spacing, axcodes)
    centre = image.affine[:3, :3] @ ((np.array(image.shape[:3]) - 1) / 2) + image.affine[:3, 3]
    if gap.shape != image.shape[:3] or not np.allclose(centre, subject.fov_centre, atol=1e-3):
        raise ValueError(
            f"{label_file}: not the grid of subject {seed} of the real-mandible generator (shape {image.shape[:3]}, "
            f"expected {gap.shape}); --tooth_gaps needs phantoms of scripts/make_phantoms.py's default style"
        )
    if not gap.any():
        return np.zeros(model_shape, dtype=bool)
    distance = ndimage.distance_transform_edt(~gap, sampling=spacing)
    voxels = np.stack(np.meshgrid(*[np.arange(n) for n in model_shape], indexing="ij"), axis=-1).reshape(-1, 3)
    to_labels = np.linalg.inv(image.affine) @ model_affine
    label_voxels = np.rint(voxels @ to_labels[:3, :3].T + to_labels[:3, 3]).astype(int)
    inside = np.all((label_voxels >= 0) & (label_voxels < np.array(gap.shape)), axis=1)
    near = np.zeros(len(voxels), dtype=bool)
    near[inside] = distance[tuple(label_voxels[inside].T)] <= TOOTH_GAP_MM
    return near.reshape(model_shape)


def markdown_table(rows: list[dict]) -> str:
    """Cases with a score above 0: healthy from the highest score down, then lesions from the lowest up."""
    scored = [r for r in rows if r["score"] > 0]
    healthy = sorted((r for r in scored if r["lesion"] == "none"), key=lambda r: -r["score"])
    lesions = sorted((r for r in scored if r["lesion"] != "none"), key=lambda r: r["score"])
    header = ["case", "lesion", "score", *TISSUES, "median mm to tissue", "in lesion", "in tooth gap"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in healthy + lesions:
        cells = [r["case"], r["lesion"], r["score"], *(r["by_nearest_tissue"][t] for t in TISSUES)]
        cells += [r["median_distance_to_tissue_mm"], r["in_lesion"], r["in_tooth_gap"]]
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


@torch.no_grad()  # for this call only: the tests run main in-process
def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("datalist", help="datalist JSON (its --datalist_key list)")
    args.add_argument("--datalist_key", default="test")
    args.add_argument("--checkpoint", default="models/model.pt")
    args.add_argument(
        "--override",
        nargs="*",
        default=[],
        help="name=JSON config values to set first (e.g. a generator_def matching --checkpoint)",
    )
    args.add_argument("--tooth_gaps", action="store_true", help="count scored voxels in tooth gaps (phantoms only)")
    args.add_argument("--json", type=Path, help="write every case's breakdown here")
    args.add_argument("--markdown", type=Path, help="write the table of the cases with a score here")
    args.add_argument("--overwrite", action="store_true", help="replace existing --json / --markdown files")
    opts = args.parse_args(argv)
    datalist = Path(opts.datalist)
    try:
        content = json.loads(datalist.read_text())
        entries = content[opts.datalist_key]
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"error: datalist {datalist}: cannot read its '{opts.datalist_key}' list ({error!r})", file=sys.stderr)
        return 2
    for output in (opts.json, opts.markdown):
        if output is not None and output.exists() and not opts.overwrite:
            print(f"error: {output} exists; pass --overwrite to replace it", file=sys.stderr)
            return 2
    if opts.tooth_gaps and not all(isinstance(e, dict) and "seed" in e for e in entries):
        print(f"error: datalist {datalist}: --tooth_gaps needs a 'seed' for every case (phantoms)", file=sys.stderr)
        return 2

    parser = evaluation_parser(str(datalist), opts.datalist_key, opts.checkpoint)
    for name, value in parse_overrides(opts.override).items():
        parser[name] = value
    network = load_network(parser)
    cases = load_cases(parser)
    reconstruct(network, parser.get_parsed_content("inferer"), cases, parser.get_parsed_content("device"))
    regions = search_regions(parser, cases, parser["search_region_mm"])
    threshold, erosions = parser["score_threshold"], parser["score_erosion_iterations"]
    rows = []
    for case, region, entry in zip(cases, regions, entries):
        scored = scored_voxels(case["pred"][0], threshold, erosions, region=region).cpu().numpy()
        image = case["image"]
        spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0))
        gap = None
        if opts.tooth_gaps:
            label_file = datalist.parent / entry["image"]
            gap = tooth_gap_on_grid(
                entry["seed"],
                opts.datalist_key,
                label_file,
                np.asarray(image.affine),
                scored.shape,
                content.get(ANATOMY_OPTIONS_KEY),
            )
        truth = case["truth"] if has_lesion(case) else None
        sources = score_sources(scored, np.asarray(image[0]), spacing, truth, gap)
        rows.append({"case": case["name"], "lesion": case["lesion"], **sources})
        print(json.dumps(rows[-1]))
    if opts.json is not None:
        settings = {"score_threshold": threshold, "score_erosion_iterations": erosions}
        settings["search_region_mm"] = parser["search_region_mm"]
        result = {"datalist": opts.datalist, "checkpoint": opts.checkpoint, **settings, "cases": rows}
        write_json_atomically(opts.json, result, indent=2)
    if opts.markdown is not None:
        command = " ".join(["python scripts/score_sources.py", *(argv if argv is not None else sys.argv[1:])])
        write_text_atomically(opts.markdown, f"<!-- generated by: {command} -->\n\n{markdown_table(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
