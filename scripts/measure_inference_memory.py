"""Peak memory and time of one whole inference (``configs/inference.json``) on a full-size synthetic label map.

Writes the synthetic DentalSegmentator-like map of scripts/benchmark_preprocessing.py (default 600 x 600 x 416 voxels
at 0.25 mm, the paper's CBCT size) into a temporary folder, runs ``python -m monai.bundle run --config_file
configs/inference.json`` on it in a child process (overview figure off) and reports the child's peak resident set
size (its own ``VmHWM``, so Python, torch and MONAI are included; Linux) and wall time, as a Markdown row
that also names the code measured (the bundle's commit). From the bundle root:

    python -m scripts.measure_inference_memory [--shape 600 600 416] [--spacing 0.25] [--markdown docs/memory.md]
    python -m scripts.measure_inference_memory --shape 600 600 832   # about max_input_voxels, the largest accepted
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.benchmark_preprocessing import synthetic_jaw, write_label_map
from scripts.benchmarking import ROOT

# ``python -m monai.bundle`` that reports its own peak resident memory (VmHWM, Linux) last on stderr. The child's
# ``getrusage`` figures would not do: a process started by ``subprocess`` (vfork) starts from its parent's peak, and
# the parent has held the whole synthetic map.
CHILD = """import runpy, sys
try:
    runpy.run_module("monai.bundle", run_name="__main__")
finally:
    print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")), file=sys.stderr)
"""


def measure(shape: tuple[int, int, int], spacing: float) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "full.nii.gz"
        write_label_map(synthetic_jaw(shape, spacing), spacing, path)
        command = [
            sys.executable,
            "-c",
            CHILD,
            "run",
            "--config_file",
            str(ROOT / "configs" / "inference.json"),
            "--bundle_root",
            str(ROOT),
            "--input",
            str(path),
            "--output_dir",
            str(Path(scratch) / "out"),
            "--write_figure",
            "False",  # capitalised: the command line reads it as a bool; "false" would be a (true) string
        ]
        start = time.perf_counter()
        result = subprocess.run(command, cwd=scratch, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"inference failed:\n{result.stderr[-3000:]}")
    peak_kb = int(result.stderr.rsplit("VmHWM:", 1)[1].split()[0])
    return {
        "shape": list(shape),
        "spacing_mm": spacing,
        "voxels": shape[0] * shape[1] * shape[2],
        "peak_rss_gb": round(peak_kb / 2**20, 2),
        "seconds": round(seconds, 1),
    }


def code_version() -> str:
    """The bundle's commit, ``-dirty`` with uncommitted changes outside docs/ (where the rows go), or ``-`` outside a
    git checkout."""

    def git(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=False)

    commit = git("rev-parse", "--short", "HEAD")
    if commit.returncode != 0 or not commit.stdout.strip():
        return "-"
    changes = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs").stdout.strip()
    return commit.stdout.strip() + ("-dirty" if changes else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[600, 600, 416])
    parser.add_argument("--spacing", type=float, default=0.25)
    parser.add_argument("--markdown", type=Path, help="append the result row to this Markdown table")
    args = parser.parse_args(argv)
    row = {**measure(tuple(args.shape), args.spacing), "code": code_version()}
    print(json.dumps(row))
    line = (
        f"| {' x '.join(map(str, row['shape']))} | {row['spacing_mm']} | {row['voxels']:,} | "
        f"{row['peak_rss_gb']} | {row['seconds']} | {row['code']} |"
    )
    if args.markdown:
        with open(args.markdown, "a") as stream:
            stream.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
