"""Run the inference command on a battery of bad (and awkward but valid) inputs and write what happened as a table.

Each case builds its input in a temporary folder, runs ``python -m bundle run --config_file configs/inference.json``
(the README's inference command with one-line errors) into a fresh output folder, and records the exit status, the
last stderr line, and whether anything was written. tests/test_bad_inputs.py runs the same cases (one test per row)
and checks each against its expectation; this script writes the table docs/bad_inputs.md shows:

    python scripts/check_bad_inputs.py --markdown docs/bad_inputs.md [--checkpoint models/model.pt]
"""

from __future__ import annotations

import argparse
import gzip
import resource
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.atomic_files import write_text_atomically  # noqa: E402

SAMPLE = ROOT / "docs" / "sample" / "onj_phantom_labels.nii.gz"


def _jaw(shape=(40, 40, 30)) -> np.ndarray:
    labels = np.zeros(shape, np.int16)
    labels[8:32, 8:32, 4:14] = 2
    labels[12:28, 12:28, 14:18] = 4
    labels[10:30, 10:30, 20:26] = 1
    return labels


def _nifti(folder: Path, name: str, array: np.ndarray, affine=None) -> Path:
    path = folder / name
    nib.save(nib.Nifti1Image(array, np.diag([0.5, 0.5, 0.5, 1.0]) if affine is None else affine), path)
    return path


def _with_zooms(folder: Path, name: str, zooms) -> Path:
    image = nib.Nifti1Image(_jaw(), np.eye(4))
    image.header.set_zooms(zooms)
    image.set_qform(None)
    image.set_sform(None)
    path = folder / name
    nib.save(image, path)
    return path


def _patched_header(folder: Path, name: str, **fields) -> Path:
    """An uncompressed NIfTI-1 of ``_jaw()`` whose header fields are overwritten in the file's bytes (nibabel refuses
    to write such headers): ``pixdim`` (x, y, z; with the identity qform, code 1) or ``srow`` (3 x 4, sform code 1,
    qform code 0)."""
    path = _nifti(folder, name, _jaw())
    header = bytearray(path.read_bytes())
    struct.pack_into("<hh", header, 252, 0 if "srow" in fields else 1, 1 if "srow" in fields else 0)
    if "pixdim" in fields:
        struct.pack_into("<3f", header, 80, *fields["pixdim"])
    if "srow" in fields:
        struct.pack_into("<12f", header, 280, *np.ravel(fields["srow"]))
    path.write_bytes(bytes(header))
    return path


def _output_under_a_file(folder: Path) -> Path:
    (folder / "not_a_folder").write_text("a file where the output folder's parent should be\n")
    return folder / "not_a_folder" / "out"


def _truncated(folder: Path) -> Path:
    whole = _nifti(folder, "whole.nii.gz", _jaw())
    path = folder / "truncated.nii.gz"
    path.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    whole.unlink()
    return path


def _corrupt_gzip(folder: Path) -> Path:
    path = folder / "corrupt.nii.gz"
    path.write_bytes(gzip.compress(b"not an image at all" * 100)[:60] + b"\x00" * 100)
    return path


def _not_an_image(folder: Path) -> Path:
    path = folder / "notes.nii.gz"
    path.write_text("these are notes, not a scan")
    return path


def _cbct_elsewhere(folder: Path) -> list[str]:
    labels = _nifti(folder, "jaw.nii.gz", _jaw())
    far = np.diag([0.5, 0.5, 0.5, 1.0])
    far[:3, 3] = 5000.0  # 5 m away: no overlap with the label map
    cbct = _nifti(folder, "cbct.nii.gz", np.zeros((40, 40, 30), np.float32), far)
    return ["--input", str(labels), "--cbct", str(cbct)]


def _nan_cbct(folder: Path) -> list[str]:
    labels = _nifti(folder, "jaw.nii.gz", _jaw())
    values = np.zeros((40, 40, 30), np.float32)
    values[5, 5, 5] = np.nan
    return ["--input", str(labels), "--cbct", str(_nifti(folder, "cbct.nii.gz", values))]


def _oblique(folder: Path) -> Path:
    angle = 0.3
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    ) @ np.diag([0.4, 0.4, 0.4])
    return _nifti(folder, "oblique.nii.gz", _jaw(), affine)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Path | list[str]]  # an input path, or the CLI arguments
    expect: str  # a substring of the one-line error, or "" when the input is valid and must work
    extra: tuple[str, ...] = ()
    output: Callable[[Path], Path] | None = None  # the output folder (default: <folder>/out)
    file_size_limit: int | None = None  # RLIMIT_FSIZE of the run, in bytes: a disk that fills while writing


CASES = (
    Case("missing file", lambda d: d / "absent.nii.gz", "absent.nii.gz"),
    Case("directory instead of a file", lambda d: (d / "folder.nii.gz").mkdir() or d / "folder.nii.gz", "folder"),
    Case("truncated gzip", _truncated, "truncated.nii.gz"),
    Case("corrupt gzip", _corrupt_gzip, "corrupt.nii.gz"),
    Case("not an image", _not_an_image, "notes.nii.gz"),
    Case("2D image", lambda d: _nifti(d, "slice.nii.gz", _jaw()[:, :, 0]), "expected a 3D label map"),
    Case("4D image", lambda d: _nifti(d, "series.nii.gz", np.stack([_jaw()] * 2, -1)), "expected a 3D label map"),
    Case("float values", lambda d: _nifti(d, "float.nii.gz", _jaw() + np.float32(0.3)), "non-integer"),
    Case("negative labels", lambda d: _nifti(d, "negative.nii.gz", -_jaw()), "negative"),
    Case("labels out of range", lambda d: _nifti(d, "range.nii.gz", _jaw() * 4), "outside"),
    Case(
        "all zero",
        lambda d: _nifti(d, "empty.nii.gz", np.zeros((40, 40, 30), np.int16)),
        "empty.nii.gz: label map is empty",
    ),
    Case("zero spacing, no qform/sform", lambda d: _with_zooms(d, "zero.nii.gz", (0.0, 0.5, 0.5)), "zero.nii.gz"),
    Case("absurd spacing (100 mm)", lambda d: _nifti(d, "huge.nii.gz", _jaw(), np.diag([100.0, 100, 100, 1])), "huge"),
    Case(
        "negative voxel size (pixdim) with a qform",
        lambda d: _patched_header(d, "negative_spacing.nii", pixdim=(-0.5, 0.5, 0.5)),
        "negative_spacing.nii",
    ),
    Case(
        "NaN voxel size (pixdim) with a qform",
        lambda d: _patched_header(d, "nan_spacing.nii", pixdim=(float("nan"), 0.5, 0.5)),
        "nan_spacing.nii",
    ),
    Case(
        "singular affine",
        lambda d: _patched_header(d, "singular.nii", srow=[[0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 0, 0]]),
        "singular.nii",
    ),
    Case(
        "non-finite affine",
        lambda d: _patched_header(d, "nan_affine.nii", srow=[[float("nan"), 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 0.5, 0]]),
        "nan_affine.nii",
    ),
    Case("NaN in the CBCT", _nan_cbct, "cbct.nii.gz"),
    Case("CBCT that does not overlap the label map", _cbct_elsewhere, "cbct.nii.gz"),
    Case(
        "more voxels than max_input_voxels",
        lambda d: _nifti(d, "big.nii.gz", _jaw()),
        "max_input_voxels",
        ("--max_input_voxels", "10000"),
    ),
    Case(
        "output folder that cannot be created or written",
        lambda d: _nifti(d, "jaw.nii.gz", _jaw()),
        "not_a_folder/out",
        output=_output_under_a_file,
    ),
    Case(
        "disk full while writing (simulated: 1 kB file size limit)",
        lambda d: _nifti(d, "jaw.nii.gz", _jaw()),
        "jaw",
        file_size_limit=1024,
    ),
    Case("volume smaller than one window (valid)", lambda d: _nifti(d, "small.nii.gz", _jaw((30, 30, 20))), ""),
    Case(
        "anisotropic 0.3 x 0.3 x 1.0 mm (valid)",
        lambda d: _nifti(d, "aniso.nii.gz", _jaw(), np.diag([0.3, 0.3, 1.0, 1.0])),
        "",
    ),
    Case("oblique affine (valid)", _oblique, ""),
)


def run_case(case: Case, folder: Path, checkpoint: Path | None = None) -> dict:
    """Build and run one case in ``folder``; returns rc, the last stderr line and the files written."""
    built = case.build(folder)
    arguments = built if isinstance(built, list) else ["--input", str(built)]
    output = folder / "out" if case.output is None else case.output(folder)
    command = [
        sys.executable,
        "-m",
        "bundle",
        "run",
        "--config_file",
        "configs/inference.json",
        *arguments,
        "--output_dir",
        str(output),
        "--write_figure",
        "false",
        *case.extra,
    ]
    if checkpoint is not None:
        command += ["--checkpoint", str(checkpoint)]
    limit = case.file_size_limit
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        preexec_fn=None if limit is None else lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    lines = result.stderr.strip().splitlines()
    written = sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file()) if output.exists() else []
    return {
        "returncode": result.returncode,
        "last_line": lines[-1] if lines else "",
        "written": written,
        "output_folder_created": output.exists(),
    }


def table_row(case: Case, outcome: dict, scratch: str) -> str:
    """The Markdown row of one case (temporary paths shown as ``<tmp>``)."""
    message = outcome["last_line"].replace(scratch, "<tmp>").replace("|", "\\|")
    expected, shown = ("refused", message) if case.expect else ("works", "-")
    return f"| {case.name} | {expected} | {outcome['returncode']} | {shown} | {len(outcome['written'])} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--checkpoint", type=Path, help="weights (default: the config's models/model.pt)")
    args = parser.parse_args(argv)
    rows = ["| input | expected | exit status | last line of stderr | files written |", "|---|---|---|---|---|"]
    for case in CASES:
        with tempfile.TemporaryDirectory() as scratch:
            rows.append(table_row(case, run_case(case, Path(scratch), args.checkpoint), scratch))
        print(rows[-1], flush=True)
    if args.markdown:
        header = (
            f"<!-- generated by: python scripts/check_bad_inputs.py --markdown {args.markdown} -->\n\n"
            "# What the inference command does with bad input\n\n"
            "`python -m bundle run --config_file configs/inference.json` on each input, into a fresh output "
            "folder (temporary paths shown as `<tmp>`). Refused inputs end in one line naming the file and the "
            "problem, exit status 2, and write nothing; valid ones write their case folder.\n\n"
        )
        write_text_atomically(args.markdown, header + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
