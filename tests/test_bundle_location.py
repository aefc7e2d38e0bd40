"""The bundle runs from any working directory, as MONAI Label and MONAI Deploy run it.

Every path goes through ``bundle_root``; no config reaches into another file by a path relative to the working
directory. train.json and inference.json each hold their own copy of what they share (label preprocessing, the
generator), so that a tool that loads inference.json alone gets all of it; the copies must stay equal.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SINGLE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def _config(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def _strings(config):
    if isinstance(config, str):
        yield config
    elif isinstance(config, dict):
        for value in config.values():
            yield from _strings(value)
    elif isinstance(config, list):
        for value in config:
            yield from _strings(value)


def test_training_and_inference_share_label_preprocessing_and_generator():
    train, inference = _config("train.json"), _config("inference.json")
    assert train["preprocessing"] == inference["label_preprocessing"]
    assert train["network_def"] == inference["generator_def"]
    for key in ("image_key", "spacing", "remap_preset"):
        assert train[key] == inference[key], key


def test_no_config_value_depends_on_the_working_directory():
    for path in sorted(set(CONFIGS.glob("*.json")) - {CONFIGS / "metadata.json"}):
        for value in _strings(_config(path.name)):
            # a macro with a file part ("%file::id") reads that file relative to the cwd; "%id" copies an id of the
            # same config
            assert not (value.startswith("%") and "::" in value), f"{path.name}: '{value}' reads another file"
            literals = [a or b for a, b in QUOTED.findall(value)] if value.startswith("$") else [value]
            for literal in literals:
                # a path literal is only ever appended to a reference (@bundle_root, @run_dir, ...)
                relative = "/" in literal and not literal.startswith(("/", "@"))
                assert not relative, f"{path.name}: '{value}' holds a path relative to the working directory"


def _bundle_run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *command, "--bundle_root", str(ROOT)],
        cwd=cwd,
        env=SINGLE_THREAD_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_inference_from_another_directory_with_bundle_root(tmp_path):
    elsewhere, output = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    _bundle_run(["--config_file", str(CONFIGS / "inference.json"), "--output_dir", str(output)], cwd=elsewhere)
    report = json.loads((output / "onj_phantom_labels" / "report.json").read_text())
    assert report["model"]["version"] == _config("metadata.json")["version"]
    assert Path(report["cbct"]).resolve() == ROOT / "docs" / "sample" / "onj_phantom_cbct.nii.gz"  # the sample's own
    assert (output / "onj_phantom_labels" / "wound_segmentation.nii.gz").is_file()
    assert list(elsewhere.iterdir()) == []


def test_one_training_iteration_from_another_directory_with_bundle_root(tmp_path, tiny_training_overlay):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # 3 training phantoms in one batch: one iteration
    overlay = tiny_training_overlay(tmp_path, batch_size=3, max_epochs=1)
    configs = json.dumps([str(CONFIGS / "train.json"), str(overlay)])
    _bundle_run(["training", "--config_file", configs], cwd=elsewhere)
    final = tmp_path / "runs" / "stage1" / "checkpoint_final.pt"
    assert torch.load(final, map_location="cpu", weights_only=True)["trainer"]["iteration"] == 1
    assert list(elsewhere.iterdir()) == []


def test_configs_are_pretty_printed_with_4_spaces():
    for path in sorted(CONFIGS.glob("*.json")):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4, ensure_ascii=False) + "\n", path.name
