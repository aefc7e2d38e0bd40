"""Time phantom generation at the model's 2 mm spacing (target: 100 phantoms in under 60 s on 2 CPU cores), and
summarise what was generated: label volumes against the real DentalSegmentator map, lesion sizes, grid shapes.

Each phantom is a full one: healthy label map, a lesion for two subjects in three (ONJ and "teeth and jaw removed"
alternately), its truth mask and the raw CBCT, all in memory (no files). Example::

    python scripts/benchmark_phantoms.py --count 100 --workers 2 --output benchmark_phantoms.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.atomic_files import write_json_atomically  # noqa: E402
from jaw_phantoms.parametric import LESION_KINDS, make_phantom  # noqa: E402

# voxel counts per label of the real DentalSegmentator map resampled to 2 mm (shared/real_anatomy.md)
REAL_VOXELS_AT_2MM = {1: 22463, 2: 4832, 3: 1169, 4: 1000, 5: 101}


def generate(seed: int, spacing: float, with_cbct: bool) -> dict:
    """Make phantom ``seed`` and return its grid shape, healthy label counts and lesion size."""
    kind = LESION_KINDS[seed % len(LESION_KINDS)]
    phantom = make_phantom(seed, spacing, kind, with_cbct=with_cbct)
    counts = np.bincount(phantom.healthy_labels.ravel(), minlength=6)
    return {"shape": phantom.labels.shape, "counts": counts.tolist(), "lesion": kind, "truth": int(phantom.truth.sum())}


def summarise(phantoms: list[dict], spacing: float) -> dict:
    """Label volumes (as 2 mm voxel counts) against the real map, lesion truth sizes and grid shapes."""
    to_2mm_voxels = spacing**3 / 8.0
    counts = np.array([p["counts"] for p in phantoms], dtype=float) * to_2mm_voxels
    labels = {}
    for label, real in REAL_VOXELS_AT_2MM.items():
        ratio = counts[:, label] / real
        labels[str(label)] = {
            "mean_voxels_2mm": int(round(counts[:, label].mean())),
            "real_voxels_2mm": real,
            "ratio_min": round(float(ratio.min()), 2),
            "ratio_max": round(float(ratio.max()), 2),
        }
    lesions = {}
    for kind in LESION_KINDS[1:]:
        sizes = np.array([p["truth"] for p in phantoms if p["lesion"] == kind]) * to_2mm_voxels
        if len(sizes):
            lesions[kind] = {"count": len(sizes), "min": int(sizes.min()), "median": int(np.median(sizes))}
            lesions[kind]["max"] = int(sizes.max())
    shapes = np.array([p["shape"] for p in phantoms])
    return {
        "label_voxels_vs_real": labels,
        "lesion_truth_voxels_2mm": lesions,
        "shape_min": shapes.min(axis=0).tolist(),
        "shape_max": shapes.max(axis=0).tolist(),
    }


def run_benchmark(count: int, spacing: float, workers: int, with_cbct: bool) -> dict:
    """Generate ``count`` phantoms (seeds 0..count-1) and return the timing figures."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not spacing > 0.0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    seeds = list(range(count))
    start = time.perf_counter()
    if workers == 1:
        phantoms = [generate(seed, spacing, with_cbct) for seed in seeds]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            phantoms = list(
                pool.map(generate, seeds, [spacing] * count, [with_cbct] * count, chunksize=max(1, count // workers))
            )
    seconds = time.perf_counter() - start
    return {
        "phantoms": count,
        "spacing_mm": spacing,
        "with_cbct": with_cbct,
        "workers": workers,
        "seconds": round(seconds, 2),
        "ms_per_phantom": round(1000.0 * seconds / count, 1),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        **summarise(phantoms, spacing),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="phantoms to generate (default 100)")
    parser.add_argument("--spacing", type=float, default=2.0, help="spacing in mm (default 2.0)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--no_cbct", action="store_true", help="label maps and truth only, no raw CBCT")
    parser.add_argument("--output", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        result = run_benchmark(args.count, args.spacing, args.workers, not args.no_cbct)
        if args.output:
            write_json_atomically(args.output, result)
    except (ValueError, OSError) as error:
        print(f"benchmark_phantoms: error: {error}", file=sys.stderr)
        return 2
    print(
        f"{result['phantoms']} phantoms at {result['spacing_mm']} mm"
        f"{' with CBCT' if result['with_cbct'] else ''} in {result['seconds']} s "
        f"({result['ms_per_phantom']} ms each, {result['workers']} worker(s))"
    )
    print(json.dumps(result, indent=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
