"""Write a synthetic phantom data set: label maps, raw CBCTs, lesion truth masks, a MONAI datalist and a preview.

Healthy training and validation subjects, and test subjects of which a fraction carry a simulated lesion (ONJ of the
mandible or maxilla, or the paper's "teeth and jaw removed"). The default style builds each head on a real mandible
of the shape bank (training shapes for training and validation, held-out shapes for test subjects); ``--style
parametric`` writes the version-0.2 phantoms. Layout and conventions: ``jaw_phantoms/writing.py`` and
docs/phantoms.md. The same ``--seed`` gives byte-identical files. Example::

    python scripts/make_phantoms.py data/phantoms --train_subjects 20 --val_subjects 5 --test_subjects 5
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaw_phantoms.segmentation_errors import SegmentationErrors  # noqa: E402
from jaw_phantoms.writing import ANATOMY_OVERRIDES, ANISOTROPIC_FACTORS, STYLES, make_phantom_set  # noqa: E402


def parse_anatomy(items: list[str]) -> dict[str, float]:
    """``NAME=VALUE`` items of ``--anatomy`` as numbers (the names are checked by ``anatomy_options``)."""
    overrides = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            overrides[name] = float(value)
        except ValueError:
            raise ValueError(f"--anatomy {item!r}: expected NAME=NUMBER") from None
    return overrides


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
    parser.add_argument(
        "--style",
        choices=STYLES,
        default="real_mandible",
        help="real_mandible: heads built on the real mandible bank (default); parametric: the version-0.2 phantoms",
    )
    parser.add_argument(
        "--lesion_kinds",
        nargs="+",
        help="lesion kinds the lesion subjects take in turn (default: onj teeth_and_jaw_removed onj onj_maxilla; "
        "parametric: onj teeth_and_jaw_removed); real-mandible kinds: onj onj_ramus onj_maxilla teeth_and_jaw_removed",
    )
    parser.add_argument(
        "--lesion_volume_ml",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="draw every ONJ lesion's volume log-uniformly in [MIN, MAX] cm^3 (real-mandible style; default 0.5-10, "
        "ramus 0.5-4), e.g. a tuning set of small lesions",
    )
    parser.add_argument(
        "--segmentation_errors",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="segmentation errors in every label map (not in CBCT, truth or intact map), e.g. islands=10 "
        "boundary_jitter_mm=0.5 bone_holes=5 canal_gaps=4 island_radius_mm=1,2.5; names and meaning: "
        "jaw_phantoms/segmentation_errors.py (default: none)",
    )
    parser.add_argument(
        "--anatomy",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help=f"override how subjects vary (real-mandible style; AnatomyOptions fields {', '.join(ANATOMY_OVERRIDES)}), "
        "e.g. missing_teeth_probability=1 for a set in which every subject has tooth gaps, or pose_degrees=0 for the "
        "same subjects unrotated (default: none)",
    )
    parser.add_argument("--no_preview", action="store_true", help="skip preview.png")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="print only the datalist path")
    args = parser.parse_args(argv)
    # a terminated run unwinds like an interrupted one, so the staging folder is removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        segmentation_errors = SegmentationErrors.parse(args.segmentation_errors)
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
            style=args.style,
            lesion_kinds=tuple(args.lesion_kinds) if args.lesion_kinds else None,
            lesion_volume_range_ml=tuple(args.lesion_volume_ml) if args.lesion_volume_ml else None,
            segmentation_errors=segmentation_errors,
            anatomy_overrides=parse_anatomy(args.anatomy),
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
