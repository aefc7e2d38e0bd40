"""MONAI's own bundle checks through the real CLI: ``verify_net_in_out`` and ``ckpt_export`` (TorchScript).

``verify_metadata`` (offline schema) is in test_metadata.py. These run from the bundle root, as MONAI's utility
commands need: unlike ``run``, they do not execute ``initialize``, so the ``bundle`` package must be importable from
the working folder (or ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from bundle.weights import load_verified_weights

ROOT = Path(__file__).resolve().parents[1]
SINGLE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
METADATA = json.loads((ROOT / "configs" / "metadata.json").read_text())


def _monai_bundle(*arguments: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *arguments],
        cwd=ROOT,
        env=SINGLE_THREAD_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _inference_parser() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser["bundle_root"] = str(ROOT)
    return parser


def test_verify_net_in_out_passes_for_network_def():
    result = _monai_bundle(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--device",
        "cpu",
    )
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


def test_generator_data_format_describes_generator_def():
    fmt = METADATA["generator_data_format"]
    image = fmt["inputs"]["image"]
    generator = _inference_parser().get_parsed_content("generator_def").eval()
    with torch.no_grad():
        output = generator(torch.rand(1, image["num_channels"], *image["spatial_shape"]))
    assert output.shape[1] == fmt["outputs"]["pred"]["num_channels"] == len(fmt["outputs"]["pred"]["channel_def"])
    assert list(output.shape[2:]) == fmt["outputs"]["pred"]["spatial_shape"]
    assert output.dtype == getattr(torch, fmt["outputs"]["pred"]["dtype"])


def test_ckpt_export_scripts_a_module_that_matches_eager_on_another_input_size(tmp_path):
    exported = tmp_path / "model.ts"
    _monai_bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        "models/model.pt",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
    )
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(exported), map_location="cpu", _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == METADATA["version"]
    eager = _inference_parser().get_parsed_content("network_def")
    load_verified_weights(eager, ROOT / "models" / "model.pt")
    eager.eval()
    torch.manual_seed(0)
    # not the 48^3 window of the metadata: the scripted graph must not have baked in a shape
    x = torch.rand(1, 1, 40, 48, 56)
    with torch.no_grad():
        expected, actual = eager(x), scripted(x)
    assert actual.shape == expected.shape == (1, 3, 40, 48, 56)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    # a raw label map (0..5) instead of x' is refused by the exported module too, with the reason
    with pytest.raises(Exception, match="not x'.*LabelToIntensityd"):
        scripted(torch.randint(0, 6, (1, 1, 48, 48, 48)).float())
    with pytest.raises(Exception, match="NaN"):
        scripted(torch.full((1, 1, 48, 48, 48), float("nan")))
