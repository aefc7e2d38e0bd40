"""``python -m bundle``: MONAI's bundle CLI with a failure reported as one line naming the file, and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from bundle.errors import innermost
from tests.conftest import INFERENCE_GENERATOR

ROOT = Path(__file__).resolve().parents[1]


def _run(*arguments: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "bundle",
        "run",
        "--config_file",
        "configs/inference.json",
        "--generator_def",
        json.dumps(INFERENCE_GENERATOR),
        *arguments,
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_bad_input_ends_in_one_error_line_naming_the_file(tiny_weights, tmp_path):
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20), np.int16), np.eye(4)), flat)
    result = _run("--input", str(flat), "--checkpoint", str(tiny_weights), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: ValueError: {flat}: expected a 3D label map, got an image of shape (20, 20)"


def test_a_good_run_behaves_as_monai_bundle_run(tiny_weights, tmp_path):
    labels = np.zeros((40, 40, 30), np.int16)
    labels[5:35, 5:20, 2:12] = 2
    labels[10:30, 8:12, 12:16] = 4
    path = tmp_path / "jaw.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([1.0, 1.0, 1.0, 1.0])), path)
    result = _run("--input", str(path), "--checkpoint", str(tiny_weights), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "jaw" / "report.json").is_file()


def test_innermost_follows_causes_and_contexts():
    try:
        try:
            raise ValueError("scan.nii.gz: the problem")
        except ValueError as first:
            raise RuntimeError("applying transform") from first
    except RuntimeError as wrapped:
        try:
            raise KeyError("outer") from wrapped
        except KeyError as outer:
            assert str(innermost(outer)) == "scan.nii.gz: the problem"
