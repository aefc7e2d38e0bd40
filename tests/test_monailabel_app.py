"""MONAI Label 0.8.5 runs the bundle through its ``BundleInferTask`` (scripts/monailabel_app/jaw_wounds.py).

Needs MONAI Label's own environment (``bash scripts/monailabel_app/setup_env.sh`` makes ``.venv-monailabel``; or
point ``MONAILABEL_PYTHON`` at another interpreter); skipped without it, as in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]
MONAILABEL_PYTHON = Path(os.environ.get("MONAILABEL_PYTHON", ROOT / ".venv-monailabel" / "bin" / "python"))
SAMPLE = ROOT / "docs" / "sample" / "onj_phantom_labels.nii.gz"
# one inference as the MONAI Label server runs it for a request, result file moved out of MONAI Label's temp folder
SCRIPT = """
import json, shutil, sys
sys.path.insert(0, sys.argv[1] + "/scripts/monailabel_app")
from jaw_wounds import JawWoundInferTask
task = JawWoundInferTask(sys.argv[1], output_dir=sys.argv[3])
label_file, result = task({"image": sys.argv[2], "device": "cpu", "result_extension": ".nii.gz",
                           "result_dtype": "uint8"})
shutil.move(label_file, sys.argv[3] + "/result.nii.gz")
print(json.dumps({"labels": task.labels}))
"""

needs_monailabel = pytest.mark.skipif(
    not MONAILABEL_PYTHON.exists(),
    reason=f"no MONAI Label environment at {MONAILABEL_PYTHON} (bash scripts/monailabel_app/setup_env.sh)",
)


def test_configs_hold_every_id_monai_label_reads_or_overrides():
    """BundleInferTask reads inference.json; BundleTrainTask (monailabel/tasks/train/bundle.py) overrides these ids
    of train.json and runs its ``run``; an override of an id the config lacks would have no effect."""
    inference, train = ConfigParser(), ConfigParser()
    inference.read_config(str(ROOT / "configs" / "inference.json"))
    train.read_config(str(ROOT / "configs" / "train.json"))
    for key in ("bundle_root", "device", "network_def", "preprocessing", "postprocessing", "inferer"):
        assert key in inference, key
    for key in (
        "bundle_root",
        "device",
        "network",
        "train#dataset#data",
        "validate#dataset#data",
        "train#handlers",
        "train#trainer#max_epochs",
        "run",
    ):
        assert key in train, key


@needs_monailabel
def test_bundle_infer_task_returns_the_wound_mask_in_the_input_grid(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(MONAILABEL_PYTHON), "-c", SCRIPT, str(ROOT), str(SAMPLE), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["labels"] == {"wound": 1}
    returned = nib.load(tmp_path / "result.nii.gz")
    source = nib.load(SAMPLE)
    assert returned.shape == source.shape and np.allclose(returned.affine, source.affine, atol=1e-3)
    regions = np.asarray(nib.load(tmp_path / "onj_phantom_labels" / "wound_segmentation.nii.gz").dataobj)
    np.testing.assert_array_equal(np.asarray(returned.dataobj), (regions > 0).astype(np.uint8))
    assert regions.max() > 0  # the sample's lesion is found
    assert (tmp_path / "onj_phantom_labels" / "wound_segmentation.seg.nrrd").is_file()
