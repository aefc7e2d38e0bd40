"""Write the embedded sample case of the README's main command: a phantom with a simulated ONJ lesion.

A head built on a held-out mandible of the shape bank (``jaw_phantoms``; no model trains on these shapes), the
"jaws" field of view (mandible, maxilla and the lower midface, as in a typical dental CBCT), with an ONJ lesion of
2.5 cm^3 in the mandible body. Labels at 1 mm (so that inference exercises the resampling to 2 mm), its raw CBCT at
2 mm to keep the repository small (inference resamples the CBCT onto the model grid anyway), and the lesion truth
mask. Fixed seed and lesion volume: running it again gives byte-identical files.

    python scripts/make_sample.py [--output_dir docs/sample] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaw_phantoms.anatomy import AnatomyOptions  # noqa: E402
from jaw_phantoms.phantom import make_phantom  # noqa: E402
from jaw_phantoms.writing import write_nifti  # noqa: E402

SAMPLE_SEED = 90002
SAMPLE_LESION_ML = 2.5
SAMPLE_ANATOMY = AnatomyOptions(shape_split="held_out", field_of_view="jaws")
FILES = ("onj_phantom_labels.nii.gz", "onj_phantom_cbct.nii.gz", "onj_phantom_truth.nii.gz")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=ROOT / "docs" / "sample")
    parser.add_argument("--overwrite", action="store_true", help="replace existing sample files")
    args = parser.parse_args()
    existing = [name for name in FILES if (args.output_dir / name).exists()]
    if existing and not args.overwrite:
        print(f"make_sample.py: {args.output_dir / existing[0]}: exists; pass --overwrite", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)

    def phantom(spacing: float, with_cbct: bool):
        return make_phantom(
            SAMPLE_SEED, spacing, "onj", options=SAMPLE_ANATOMY, lesion_volume_ml=SAMPLE_LESION_ML, with_cbct=with_cbct
        )

    labels, scan = phantom(1.0, with_cbct=False), phantom(2.0, with_cbct=True)
    cbct = np.clip(np.rint(scan.cbct), -32768, 32767).astype(np.int16)
    write_nifti(labels.labels, labels.affine, args.output_dir / FILES[0])
    write_nifti(cbct, scan.affine, args.output_dir / FILES[1])
    write_nifti(labels.truth, labels.affine, args.output_dir / FILES[2])
    print(
        f"{args.output_dir}: sample seed {SAMPLE_SEED}, labels {labels.labels.shape} at 1 mm, lesion "
        f"{int(labels.truth.sum())} voxels ({labels.truth.sum() / 1000:.2f} cm^3), shape {labels.subject.shape.case}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
