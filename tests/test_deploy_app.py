"""The MONAI Deploy App SDK example app (scripts/deploy_app) runs the bundle through ``MonaiBundleInferenceOperator``.

Needs the SDK's own environment (``bash scripts/deploy_app/setup_env.sh`` makes ``.venv-deploy``; or point
``DEPLOY_PYTHON`` at another interpreter); skipped without it, as in CI, whose environment is the bundle's alone.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_PYTHON = Path(os.environ.get("DEPLOY_PYTHON", ROOT / ".venv-deploy" / "bin" / "python"))
SAMPLE = ROOT / "docs" / "sample" / "onj_phantom_labels.nii.gz"

pytestmark = pytest.mark.skipif(
    not DEPLOY_PYTHON.exists(),
    reason=f"no MONAI Deploy App SDK environment at {DEPLOY_PYTHON} (bash scripts/deploy_app/setup_env.sh)",
)


def _app(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HOLOSCAN_MODEL_PATH", None)
    command = [str(DEPLOY_PYTHON), str(ROOT / "scripts" / "deploy_app" / "app.py"), *arguments]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_app_writes_the_label_map_it_receives_and_the_bundle_case_outputs(tmp_path):
    output = tmp_path / "out"
    result = _app("-i", str(SAMPLE), "-o", str(output), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    received = nib.load(output / "wound_segmentation.nii.gz")
    case = output / "onj_phantom_labels"
    written = nib.load(case / "wound_segmentation.nii.gz")
    source = nib.load(SAMPLE)
    # what passed through the SDK (first output only, cast to uint8) is the bundle's label map, in the input's grid
    np.testing.assert_array_equal(np.asarray(received.dataobj), np.asarray(written.dataobj))
    assert received.shape == source.shape and np.allclose(received.affine, source.affine, atol=1e-4)
    assert nib.load(case / "anomaly_map.nii.gz").get_data_dtype() == np.float32  # written by the bundle, as float
    report = json.loads((case / "report.json").read_text())
    assert report["num_regions"] == len(np.unique(np.asarray(received.dataobj))) - 1
    assert (case / "wound_segmentation.seg.nrrd").is_file()


def test_bad_label_map_gives_the_cli_error_in_one_line_and_leaves_nothing(tmp_path):
    bad = tmp_path / "float_map.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4)), bad)
    output = tmp_path / "out"
    result = _app("-i", str(bad), "-o", str(output), cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ValueError: ") and str(bad) in last and "non-integer" in last
    assert not output.exists()
