"""Batch inference benchmark: a datalist of cases through the real command line, per-case time and start-up apart.

Writes ``--cases`` lesion phantoms (held-out bank mandibles, whole face; the scan of scripts/benchmark_inference.py
with a different seed per case) at ``--input_spacing`` into a temporary folder with a datalist, then runs, for each
``--num_workers`` value, ``python -m monai.bundle run --config_file configs/inference.json --datalist ...`` (overview
figure off) twice: on the first case alone and on all cases. The difference of the two wall times divided by the
extra cases is the time per case in a batch; what the one-case run takes beyond that is the start-up (interpreter,
imports, config parsing, weights, the first case's one-off costs); the imports are also timed apart (torch, MONAI,
the bundle's own modules). The child's stderr shows the datalist progress bar
(``ignite.handlers.ProgressBar``); the script checks it reached the last case. From the bundle root:

    python -m scripts.benchmark_batch [--cases 20] [--input_spacing 0.5] [--num_workers 0 1] \
        [--json docs/benchmark_batch.json] [--markdown docs/benchmark_batch_table.md]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bundle.atomic_files import write_json_atomically, write_text_atomically
from scripts.benchmark_inference import write_scan
from scripts.benchmarking import ROOT


def write_cases(folder: Path, cases: int, spacing_mm: float) -> list[Path]:
    """``cases`` scans, ``case_00.nii.gz``, ..., each a different phantom (seed 4242 + index)."""
    paths = []
    for index in range(cases):
        case_folder = folder / f"case_{index:02d}"
        case_folder.mkdir()
        path = write_scan(case_folder, spacing_mm, seed=4242 + index)
        paths.append(path.rename(folder / f"case_{index:02d}.nii.gz"))
        case_folder.rmdir()
    return paths


def run_datalist(paths: list[Path], folder: Path, num_workers: int) -> tuple[float, str]:
    """Wall time of one ``monai.bundle run`` over a datalist of ``paths``, and its stderr."""
    datalist = folder / f"datalist_{len(paths)}.json"
    datalist.write_text(json.dumps({"test": [{"image": path.name} for path in paths]}))
    output = folder / f"out_{len(paths)}_{num_workers}"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "configs" / "inference.json")]
    command += ["--bundle_root", str(ROOT), "--datalist", str(datalist), "--output_dir", str(output)]
    command += ["--write_figure", "false", "--num_workers", str(num_workers)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"inference failed ({result.returncode}):\n{result.stderr[-3000:]}")
    written = sorted(p.name for p in output.iterdir())
    if written != sorted(path.name[: -len(".nii.gz")] for path in paths):
        raise RuntimeError(f"{output}: expected one folder per case, found {written}")
    return seconds, result.stderr


# run in a fresh interpreter: each import timed in turn, the bundle's modules after torch and MONAI
IMPORT_TIMER = """import json, sys, time
times = {}
for group, modules in json.loads(sys.argv[1]).items():
    start = time.perf_counter()
    for module in modules:
        __import__(module)
    times[group] = time.perf_counter() - start
print(json.dumps(times))
"""


def bundle_modules() -> list[str]:
    """The modules of this bundle that configs/inference.json instantiates components from."""
    text = (ROOT / "configs" / "inference.json").read_text()
    targets = re.findall(r'"_target_": "(bundle\.[\w.]+)\.\w+"', text)
    return sorted(set(targets))


def import_seconds(repeats: int = 3) -> dict[str, float]:
    """Import time of torch, then MONAI, then the bundle's modules, in a fresh interpreter (the bundle root on its
    path): the median of ``repeats`` interpreters per group (on a shared host single runs vary by a second)."""
    groups = {"torch": ["torch"], "monai": ["monai"], "bundle": bundle_modules()}
    command = [sys.executable, "-c", IMPORT_TIMER, json.dumps(groups)]
    runs = [
        json.loads(subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout)
        for _ in range(repeats)
    ]
    return {group: statistics.median(run[group] for run in runs) for group in groups}


def run(cases: int, spacing_mm: float, workers: list[int]) -> dict:
    if cases < 2:
        raise ValueError(f"--cases must be at least 2 (one case alone, then all), got {cases}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        paths = write_cases(folder, cases, spacing_mm)
        rows = []
        for num_workers in workers:
            one, _ = run_datalist(paths[:1], folder, num_workers)
            all_cases, stderr = run_datalist(paths, folder, num_workers)
            if f"{cases}/{cases}" not in stderr:
                raise RuntimeError(f"no progress bar reaching {cases}/{cases} on stderr:\n{stderr[-2000:]}")
            per_case = (all_cases - one) / (cases - 1)
            rows.append(
                {
                    "num_workers": num_workers,
                    "one_case_seconds": one,
                    "all_cases_seconds": all_cases,
                    "per_case_seconds": per_case,
                    "start_up_seconds": one - per_case,
                }
            )
        return {"cases": cases, "input_spacing_mm": spacing_mm, "runs": rows, "import_seconds": import_seconds()}


def markdown_table(result: dict) -> str:
    lines = [
        f"| data loader workers | {result['cases']} cases, s | per case, s | one case alone, s | start-up, s |",
        "|---|---|---|---|---|",
    ]
    for row in result["runs"]:
        lines.append(
            f"| {row['num_workers']} | {row['all_cases_seconds']:.1f} | {row['per_case_seconds']:.2f} | "
            f"{row['one_case_seconds']:.1f} | {row['start_up_seconds']:.1f} |"
        )
    imports = result["import_seconds"]
    lines += [
        "",
        f"Imports in a fresh interpreter (median of 3): torch {imports['torch']:.2f} s, then MONAI "
        f"{imports['monai']:.2f} s, then the bundle's modules {imports['bundle']:.2f} s.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20, help="cases in the datalist (at least 2)")
    parser.add_argument("--input_spacing", type=float, default=0.5, help="voxel size, 2 mm divided by a whole number")
    parser.add_argument("--num_workers", type=int, nargs="+", default=[0, 1], help="data loader workers to compare")
    parser.add_argument("--json", type=Path, help="also write the result to this JSON file")
    parser.add_argument("--markdown", type=Path, help="also write the table (Markdown) to this file")
    args = parser.parse_args()
    result = run(args.cases, args.input_spacing, args.num_workers)
    table = markdown_table(result)
    print(table)
    if args.json:
        write_json_atomically(args.json, result)
    if args.markdown:
        workers = " ".join(str(w) for w in args.num_workers)
        command = (
            f"python -m scripts.benchmark_batch --cases {args.cases} --input_spacing {args.input_spacing:g} "
            f"--num_workers {workers} --json {args.json} --markdown {args.markdown}"
        )
        write_text_atomically(args.markdown, f"<!-- generated by: {command} -->\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
