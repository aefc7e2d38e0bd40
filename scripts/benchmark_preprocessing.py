"""Time the label preprocessing of configs/train.json (inference.json repeats it) on a full-size synthetic
DentalSegmentator label map.

Writes a jaw-like int16 label map (default 600 x 600 x 416 voxels at 0.25 mm, the size of the paper's CBCTs: upper
skull with sinuses, mandible with rami, 28 teeth, both canals) in each requested format, then, for each format and
run, starts a fresh Python process that loads the file and applies the whole chain of
``configs/train.json#preprocessing`` (input size check -> LoadImaged -> ValidateLabelsd -> EnsureChannelFirstd ->
Orientationd RAS -> Spacingd 2 mm nearest -> LabelToIntensityd) and reports the time of each step and its peak
resident memory (VmHWM). Prints a Markdown table of medians over the runs; targets: under 10 s and under 3 GB per
volume. From the bundle root:

    python -m scripts.benchmark_preprocessing                      # .nii.gz, .nrrd, .mha; 3 runs each
    python -m scripts.benchmark_preprocessing --formats nii.gz nii --runs 5 --workdir /tmp/bench --keep
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from monai.transforms import LoadImaged

from scripts.benchmarking import ROOT, peak_rss_bytes, read_config

TARGET_SECONDS = 10.0
TARGET_GIB = 3.0
FORMATS = ("nii.gz", "nii", "nrrd", "mha")


def synthetic_jaw(shape: tuple[int, int, int], spacing: float, slab: int = 32) -> np.ndarray:
    """A DentalSegmentator-like int16 label map (x: left-right, y: front-back, z: up), values 0..5.

    Structures follow a dental arch (an ellipse in the axial plane) with wavy boundaries, so that the file compresses
    about as a real segmentation does, unlike a few axis-aligned boxes. Built one slab of ``slab`` slices at a time to
    keep the generator's own memory low.
    """
    size = np.asarray(shape) * spacing  # field of view in mm
    x = (np.arange(shape[0], dtype=np.float32) * spacing)[:, None, None]
    y = (np.arange(shape[1], dtype=np.float32) * spacing)[None, :, None]
    centre_x, centre_y = size[0] / 2, size[1] * 0.62
    half_width, half_depth = size[0] * 0.3, size[1] * 0.33
    ellipse = np.sqrt(((x - centre_x) / half_width) ** 2 + ((y - centre_y) / half_depth) ** 2)
    angle = np.arctan2(y - centre_y, x - centre_x)  # -pi/2 at the front teeth, 0 and -pi at the back
    to_arch = np.abs(ellipse - 1.0) * (half_width + half_depth) / 2  # ~ mm from the arch's centre line
    in_front = y < centre_y + 6.0
    labels = np.zeros(shape, np.int16)
    tooth_angles = np.linspace(-np.pi + 0.3, -0.3, 14)
    tooth_radii = 2.4 + 1.6 * np.abs(np.cos(tooth_angles))  # incisors narrow, molars wide (mm)
    occlusal = size[2] * 0.55
    for start in range(0, shape[2], slab):
        z = (np.arange(start, min(start + slab, shape[2]), dtype=np.float32) * spacing)[None, None, :]
        wave = 0.8 * np.sin(7 * angle + z / 4.0) + 0.4 * np.cos(13 * angle - z / 3.0)
        block = np.zeros((shape[0], shape[1], z.shape[2]), np.int16)
        # upper skull: alveolar ridge, palate, then maxilla and skull with sinuses and nasal cavity cut out
        skull = (z > occlusal + 16) & (ellipse < 1.15 + 0.03 * wave)
        ridge = (z > occlusal + 4) & (to_arch < 5.0 + wave) & in_front
        palate = (z > occlusal + 10) & (z < occlusal + 14) & (ellipse < 1.0)
        sinuses = ((np.abs(x - centre_x) - 20) / 11) ** 2 + ((y - centre_y + 8) / 14) ** 2
        sinuses = sinuses + ((z - occlusal - 30) / 12) ** 2
        nose = (np.abs(x - centre_x) < 7 + wave) & (z > occlusal + 18) & (y < centre_y)
        block[(skull | ridge | palate) & (sinuses > 1) & ~nose] = 1
        # mandible: body along the arch, thinner towards the crest, and two rami rising at the back
        body_bottom, body_top = occlusal - 38, occlusal - 4
        thickness = 4.0 + 3.0 * np.clip((body_top - z) / (body_top - body_bottom), 0, 1) + 0.5 * wave
        body = (z > body_bottom + 2 * np.abs(np.cos(angle))) & (z < body_top) & (to_arch < thickness) & in_front
        ramus = (
            (np.abs(np.abs(x - centre_x) - half_width) < 4.5 + wave)
            & (y > centre_y - 4)
            & (y < centre_y + 18)
            & (z > body_bottom)
            & (z < occlusal + 20)
        )
        block[body | ramus] = 2
        # canal: a tube inside the body, from the ramus to the premolars
        canal = (np.hypot(to_arch, z - (body_bottom + 12)) < 1.4) & (np.abs(np.cos(angle)) > 0.45) & in_front
        block[canal] = 5
        # teeth: crowns meet at the occlusal plane, roots taper into the bone
        for tooth_angle, radius in zip(tooth_angles, tooth_radii):
            tooth_x = centre_x + half_width * np.cos(tooth_angle)
            tooth_y = centre_y + half_depth * np.sin(tooth_angle)
            distance = np.hypot(x - tooth_x, y - tooth_y)
            height = np.abs(z - occlusal)
            profile = radius * np.where(height < 8, 1.0, np.clip(1.0 - (height - 8) / 16, 0, 1))
            inside = (distance < profile + 0.3 * wave) & (height > 0.6) & (height < 24)
            block[inside & (z < occlusal)] = 4
            block[inside & (z > occlusal)] = 3
        labels[:, :, start : start + block.shape[2]] = block
    return labels


def write_label_map(labels: np.ndarray, spacing: float, path: Path) -> None:
    """Write ``labels`` as NIfTI (nibabel) or NRRD/MHA (ITK, compressed), all with the same LPS-aligned geometry that
    DICOM-derived CBCTs have, so that Orientationd has the same flip to do for every format."""
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        nib.save(nib.Nifti1Image(labels, np.diag([-spacing, -spacing, spacing, 1.0])), path)
        return
    import itk

    image = itk.image_from_array(np.ascontiguousarray(labels.transpose(2, 1, 0)))  # ITK arrays are (z, y, x)
    image.SetSpacing([spacing] * 3)
    itk.imwrite(image, str(path), compression=True)


def measure(path: Path) -> dict:
    """Run in a fresh process: time each transform of the shared preprocessing on ``path``."""
    parser = read_config("train.json")
    chain = parser.get_parsed_content("preprocessing")
    key = parser.get_parsed_content("image_key")
    start = time.perf_counter()
    if not path.name.endswith((".nii", ".nii.gz")):
        import itk

        # ITK loads its wrapped modules and IO factories on first use (about 3 s): a once-per-process cost, apart
        itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
        itk.array_view_from_image(itk.image_from_array(np.zeros((2, 2, 2), np.int16)))

    reader_import = time.perf_counter() - start
    baseline = peak_rss_bytes()
    data, steps, load = {key: str(path)}, {}, 0.0
    for transform in chain:
        start = time.perf_counter()
        data = transform(data)
        steps[type(transform).__name__] = time.perf_counter() - start
        load += steps[type(transform).__name__] if isinstance(transform, LoadImaged) else 0.0
    return {
        "seconds": sum(steps.values()),
        "load_seconds": load,
        "reader_import_seconds": reader_import,
        "steps": steps,
        "peak_rss": peak_rss_bytes(),
        "baseline_rss": baseline,
        "output_shape": list(data[key].shape),
    }


def run_once(path: Path) -> dict:
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.benchmark_preprocessing", "--measure", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{path}: measuring process failed:\n{completed.stderr.strip()}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    return result


def table(rows: list[dict], runs: int) -> str:
    gib = 1024**3
    lines = [
        f"| format | file MB | load s | chain s, median of {runs} | min-max s | reader import s | process s "
        "| peak RSS GB | RSS after imports GB | output shape | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        results = row["results"]
        median = {
            name: statistics.median(r[name] for r in results)
            for name in ("seconds", "reader_import_seconds", "process_seconds")
        }
        load = statistics.median(r["load_seconds"] for r in results)
        seconds = [r["seconds"] for r in results]
        peak = max(r["peak_rss"] for r in results) / gib
        met = median["seconds"] < TARGET_SECONDS and peak < TARGET_GIB
        lines.append(
            f"| {row['format']} | {row['megabytes']:.1f} | {load:.2f} | {median['seconds']:.2f} "
            f"| {min(seconds):.2f}-{max(seconds):.2f} | {median['reader_import_seconds']:.2f} "
            f"| {median['process_seconds']:.1f} | {peak:.2f} | {max(r['baseline_rss'] for r in results) / gib:.2f} "
            f"| {'x'.join(map(str, results[0]['output_shape']))} | {'met' if met else 'MISSED'} |"
        )
    steps = list(rows[0]["results"][0]["steps"])
    lines += ["", f"Median seconds per step (`{'` -> `'.join(steps)}`):", ""]
    lines += ["| format | " + " | ".join(steps) + " |", "|---|" + "---|" * len(steps)]
    for row in rows:
        medians = [statistics.median(r["steps"][step] for r in row["results"]) for step in steps]
        lines.append(f"| {row['format']} | " + " | ".join(f"{value:.2f}" for value in medians) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[600, 600, 416], help="voxels (default: 600 600 416)")
    parser.add_argument("--spacing", type=float, default=0.25, help="voxel size in mm (default: 0.25)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per format (default: 3)")
    parser.add_argument(
        "--formats", nargs="+", choices=FORMATS, default=["nii.gz", "nrrd", "mha"], help="default: nii.gz nrrd mha"
    )
    parser.add_argument("--workdir", type=Path, help="folder for the synthetic files (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files in --workdir")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the per-run child process
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure)))
        return 0
    if args.runs < 1 or min(args.shape) < 1 or args.spacing <= 0:
        print("benchmark_preprocessing: --runs, --shape and --spacing must be positive", file=sys.stderr)
        return 2
    if args.keep and args.workdir is None:
        print("benchmark_preprocessing: --keep needs --workdir", file=sys.stderr)
        return 2

    if args.workdir is not None and any((args.workdir / f"synthetic_jaw.{suffix}").exists() for suffix in FORMATS):
        print(f"benchmark_preprocessing: {args.workdir} already holds synthetic_jaw.* files", file=sys.stderr)
        return 2
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="benchmark_preprocessing_"))
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        start = time.perf_counter()
        labels = synthetic_jaw(tuple(args.shape), args.spacing)
        counts = np.bincount(labels.ravel(), minlength=6)
        print(
            f"synthetic map {tuple(args.shape)} at {args.spacing} mm in {time.perf_counter() - start:.1f} s; "
            f"voxels per label 0..5: {counts.tolist()}",
            file=sys.stderr,
        )
        rows = []
        for suffix in args.formats:
            path = folder / f"synthetic_jaw.{suffix}"
            start = time.perf_counter()
            write_label_map(labels, args.spacing, path)
            written.append(path)
            megabytes = path.stat().st_size / 1e6
            print(f"{path.name}: {megabytes:.1f} MB written in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            results = []
            for run in range(args.runs):
                results.append(run_once(path))
                print(
                    f"  run {run + 1}: {results[-1]['seconds']:.2f} s, " f"{results[-1]['peak_rss'] / 1024**3:.2f} GB",
                    file=sys.stderr,
                )
            rows.append({"format": suffix, "megabytes": megabytes, "results": results})
    finally:
        if not args.keep:
            for path in written:
                path.unlink()
            if args.workdir is None:
                folder.rmdir()
    print(
        f"CPU threads: torch default on {os.cpu_count()} cores; targets: < {TARGET_SECONDS:g} s, "
        f"< {TARGET_GIB:g} GB peak RSS per volume"
    )
    print(table(rows, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
