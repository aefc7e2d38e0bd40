"""Build the mandible shape bank of ``jaw_phantoms`` from the real mandible contours (CC BY 4.0).

Input: the folder of ``<split>_<rater>_<case>_Mandible.nrrd`` masks described in its README (radiotherapy CT,
LPS, about 1 x 1 x 2.5 mm). Output (``jaw_phantoms/data/mandibles`` by default): one ``<case>.nii.gz`` per scan, a
uint8 occupancy (17 levels 0..255; 128 is the surface) at 1 mm in RAS, cropped to the bone with a margin, and
``bank.json`` with the split, provenance and checksums. What is done to each contour:

- only the arbitrated ``oncologist`` contour of each scan is used (the ``radiographer`` one is a near-duplicate);
- the mask is blurred (Gaussian, sigma 1 mm across slices, 0.5 mm in-plane) before linear resampling to 1 mm, so that
  the 2.5 mm slice steps do not print into the phantoms;
- shapes that are not a whole jaw are left out, with the reason in ``bank.json``: one side much smaller than the
  other (a resection), or the bone in several large pieces;
- patients are split into ``training`` and ``held_out`` shapes (seeded, by patient: the two scans of patient
  0522c0727 stay together).

    python scripts/build_shape_bank.py ../shared/data/real_mandibles
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.atomic_files import write_json_atomically  # noqa: E402
from jaw_phantoms.shape_bank import (  # noqa: E402
    BANK_DIR,
    BANK_INDEX,
    SHAPE_SPACING_MM,
    MandibleShape,
    measure_landmarks,
)
from jaw_phantoms.writing import write_nifti  # noqa: E402

_FILE_PATTERN = re.compile(r"^(test|validation)_oncologist_(?P<case>.+)_Mandible\.nrrd$")
_MARGIN_MM = 4
_MIN_SIDE_RATIO = 0.75
_MAX_EXTRA_PIECE_ML = 2.0
_SOURCE = (
    "Segmentations of google-deepmind/tcia-ct-scan-dataset (commit 2edb509), made for Nikolov et al., Clinically "
    "applicable segmentation of head and neck anatomy for radiotherapy, arXiv:1809.04430 (2018); images from TCIA "
    "(Head-Neck Cetuximab, TCGA-HNSC). Licence: CC BY 4.0."
)


def patient_of(case: str) -> str:
    """Patient identifier of a scan name (``0522c0727a`` and ``0522c0727b`` are one patient)."""
    return re.sub(r"(?<=\d)[ab]$", "", case)


def read_ras_occupancy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mask file -> (occupancy in [0, 1] at 1 mm, (X, Y, Z) RAS, float32; its RAS millimetre origin)."""
    import itk

    try:
        image = itk.imread(str(path))
    except Exception as error:  # itk raises RuntimeError subclasses with long C++ messages
        raise ValueError(f"{path}: not a readable image ({str(error).splitlines()[0]})") from None
    direction = np.asarray(image.GetDirection())
    if not np.allclose(direction, np.eye(3)):
        raise ValueError(f"{path}: expected an axis-aligned LPS image, got direction {direction.tolist()}")
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    mask = itk.array_from_image(image).transpose(2, 1, 0) > 0  # (x L, y P, z S)
    if not mask.any():
        raise ValueError(f"{path}: empty mask")
    mask = mask[::-1, ::-1, :]  # LPS -> RAS
    origin_lps = np.asarray(image.GetOrigin(), dtype=float)
    far_corner = origin_lps[:2] + (np.array(mask.shape[:2]) - 1) * spacing[:2]
    origin_ras = np.array([-far_corner[0], -far_corner[1], origin_lps[2]])
    blurred = ndimage.gaussian_filter(mask.astype(np.float32), sigma=np.array([0.5, 0.5, 1.0]) / spacing)
    occupancy = ndimage.zoom(blurred, spacing / SHAPE_SPACING_MM, order=1)
    return np.clip(occupancy, 0.0, 1.0), origin_ras


def crop(occupancy: np.ndarray) -> np.ndarray:
    inside = np.argwhere(occupancy >= 0.5)
    low = np.maximum(inside.min(axis=0) - _MARGIN_MM, 0)
    high = np.minimum(inside.max(axis=0) + _MARGIN_MM + 1, occupancy.shape)
    return occupancy[tuple(slice(a, b) for a, b in zip(low, high))]


def exclusion_reason(occupancy: np.ndarray) -> str | None:
    """Why a shape is not a whole jaw (or its landmarks cannot be found), or None."""
    bone = occupancy >= 0.5
    pieces, count = ndimage.label(bone)
    sizes_ml = np.bincount(pieces.ravel())[1:] * SHAPE_SPACING_MM**3 / 1000.0
    if count > 1 and np.sort(sizes_ml)[-2] > _MAX_EXTRA_PIECE_ML:
        return f"bone in several large pieces ({', '.join(f'{s:.1f}' for s in sorted(sizes_ml)[::-1][:3])} ml)"
    centre = int(round(np.argwhere(bone)[:, 0].mean()))
    left, right = bone[:centre].sum(), bone[centre:].sum()
    if min(left, right) / max(left, right) < _MIN_SIDE_RATIO:
        return f"one side much smaller than the other (left {left / 1000:.1f} ml, right {right / 1000:.1f} ml)"
    try:
        measure_landmarks(MandibleShape("candidate", _quantised(occupancy), np.zeros(3)))
    except ValueError as error:
        return f"landmarks not found: {error}"
    return None


def _quantised(occupancy: np.ndarray) -> np.ndarray:
    """17 occupancy levels (multiples of 16, 128 = surface): the surface stays sub-voxel, the files stay small."""
    return np.minimum(np.rint(occupancy * 16) * 16, 255).astype(np.uint8)


def build(source: Path, output: Path, held_out_fraction: float, seed: int) -> dict:
    files = sorted(p for p in source.iterdir() if _FILE_PATTERN.match(p.name))
    if not files:
        raise ValueError(f"{source}: no '<split>_oncologist_<case>_Mandible.nrrd' files")
    patients = sorted({patient_of(_FILE_PATTERN.match(p.name)["case"]) for p in files})
    order = np.random.default_rng(seed).permutation(len(patients))
    held_out = {patients[i] for i in order[: int(round(held_out_fraction * len(patients)))]}
    output.mkdir(parents=True, exist_ok=True)
    shapes, excluded = [], []
    for path in files:
        case = _FILE_PATTERN.match(path.name)["case"]
        occupancy, _ = read_ras_occupancy(path)
        occupancy = crop(occupancy)
        reason = exclusion_reason(occupancy)
        if reason is not None:
            excluded.append({"case": case, "source_file": path.name, "reason": reason})
            print(f"{case}: left out: {reason}")
            continue
        stored = _quantised(occupancy)
        affine = np.diag([SHAPE_SPACING_MM] * 3 + [1.0])
        affine[:3, 3] = -(np.array(stored.shape) - 1) / 2 * SHAPE_SPACING_MM  # centred on the crop
        target = output / f"{case}.nii.gz"
        write_nifti(stored, affine, target)
        shapes.append(
            {
                "case": case,
                "patient": patient_of(case),
                "split": "held_out" if patient_of(case) in held_out else "training",
                "file": target.name,
                "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
                "source_file": path.name,
                "shape": list(stored.shape),
                "volume_ml": round(float((occupancy >= 0.5).sum()) * SHAPE_SPACING_MM**3 / 1000.0, 2),
            }
        )
        print(f"{case}: {shapes[-1]['split']:<9} {stored.shape} {shapes[-1]['volume_ml']} ml")
    index = {
        "description": "Real mandible shapes for jaw_phantoms: uint8 occupancy at 1 mm, RAS, 128 = bone surface.",
        "source": _SOURCE,
        "licence": "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)",
        "changes": (
            "oncologist contour only; blurred (sigma 0.5 mm in-plane, 1 mm across slices) and linearly resampled to "
            "1 mm; reoriented LPS -> RAS; cropped to the bone with a 4 mm margin; stored as 8-bit occupancy in 17 "
            "levels; shapes that are not a whole jaw left out (see 'excluded')"
        ),
        "split_seed": seed,
        "shapes": shapes,
        "excluded": excluded,
    }
    write_json_atomically(output / BANK_INDEX, index)
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="folder of the real mandible contours (.nrrd)")
    parser.add_argument("--output", type=Path, default=BANK_DIR, help=f"bank folder (default {BANK_DIR})")
    parser.add_argument("--held_out_fraction", type=float, default=0.3, help="patients kept for evaluation (0.3)")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the patient split (2026)")
    args = parser.parse_args(argv)
    try:
        index = build(args.source, args.output, args.held_out_fraction, args.seed)
    except (ValueError, OSError) as error:
        print(f"build_shape_bank: error: {error}", file=sys.stderr)
        return 2
    counts = {split: sum(s["split"] == split for s in index["shapes"]) for split in ("training", "held_out")}
    print(f"{args.output / BANK_INDEX}: {counts['training']} training, {counts['held_out']} held-out shapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
