"""Shared fixtures: a tiny phantom data set made once per session, a tiny-network training overlay, and three
inference cases with the outputs of one sequential inference run over them.

The training overlay keeps every config of the bundle as it is and only shrinks what makes a run slow (network
widths, crop size, epochs, worker processes), so that the tests go through the same configs as a real run.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.networks import AnomalyDetector, VQGANGenerator
from bundle.weights import write_checksum
from jaw_phantoms.writing import make_phantom_set

ROOT = Path(__file__).resolve().parents[1]

# Three levels, so that the self-attention at the lowest level sees 8^3 tokens of a 32^3 crop (not 16^3).
TINY_GENERATOR = {
    "_target_": "bundle.networks.VQGANGenerator",
    "channels": [4, 8, 16],
    "num_embeddings": 16,
    "embedding_dim": 4,
}
TINY_CROP = [32, 32, 32]
# Three levels here too: with two, the attention of a 64^3 inference window would span 32^3 tokens (minutes on CPU).
INFERENCE_GENERATOR = {
    "_target_": "bundle.networks.VQGANGenerator",
    "channels": [4, 8, 16],
    "num_embeddings": 16,
    "embedding_dim": 4,
}


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """Folder with 3 training and 1 validation phantom (written at the model's 2 mm) and their ``datalist.json``."""
    folder = tmp_path_factory.mktemp("phantoms") / "data"
    datalist = make_phantom_set(
        folder, train_subjects=3, val_subjects=1, test_subjects=0, spacing=2.0, preview=False, log=lambda *_: None
    )
    return Path(datalist).parent


@pytest.fixture(scope="session")
def lesion_and_healthy_set(tmp_path_factory) -> Path:
    """``datalist.json`` of one lesion and one healthy test subject on held-out shapes, written at 2 mm."""
    folder = tmp_path_factory.mktemp("lesion_and_healthy") / "data"
    return Path(
        make_phantom_set(
            folder,
            train_subjects=0,
            val_subjects=0,
            test_subjects=2,
            lesion_fraction=0.5,
            spacing=2.0,
            seed=11,
            preview=False,
            log=lambda *_: None,
        )
    )


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Random weights of the ``INFERENCE_GENERATOR`` anomaly detector, saved with their checksum."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    detector = AnomalyDetector(VQGANGenerator(**{k: v for k, v in INFERENCE_GENERATOR.items() if k != "_target_"}))
    with torch.no_grad():  # two different encoders, so that the anomaly map is not identically zero
        for weight in detector.encoder2.parameters():
            weight.add_(0.5 * torch.randn_like(weight))
    path = folder / "model.pt"
    torch.save(detector.state_dict(), path)
    write_checksum(path)
    return path


@pytest.fixture
def tiny_generator_def() -> dict:
    """Config definition of the tiny generator the training overlay uses."""
    return dict(TINY_GENERATOR)


@pytest.fixture(scope="session")
def tiny_training_overlay(phantom_dataset):
    """Factory: ``tiny_training_overlay(folder, **extra)`` writes a tiny-network training overlay (plus ``extra`` ids)
    into ``folder`` and returns its path; runs then write under ``folder / "runs"`` (``run_dir``)."""

    def write(folder: Path, **extra) -> Path:
        content = {
            "dataset_dir": str(phantom_dataset),
            "run_dir": str(folder / "runs"),
            "network_def": TINY_GENERATOR,
            "discriminator_channels": 4,
            "discriminator_layers": 2,
            "pad_size": TINY_CROP,
            "crop_size": TINY_CROP,
            "batch_size": 2,
            "num_workers": 0,
            "max_epochs": 2,
            "val_interval": 1,
            "checkpoint_interval": 1,
            "sw_batch_size": 4,
            **extra,
        }
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "tiny_training.json"
        path.write_text(json.dumps(content, indent=4))
        return path

    return write


# One thread per process (tests run side by side on a shared machine); the thread count also changes float rounding,
# so runs whose outputs are compared bit for bit must use the same count.
SINGLE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# a low threshold and no tissue or size filter, so that random weights produce regions (and STL files) to export,
# with or without a CBCT
PERMISSIVE = (
    *("--segmentation_threshold", "1e-6", "--max_tissue_fraction", "1.0", "--min_region_mm3", "0"),
    *("--label_map_only_segmentation_threshold", "1e-6", "--label_map_only_min_region_mm3", "0"),
)
CASES = ("jaw_a", "jaw_b", "jaw_c")


def inference_command(weights: Path, output_dir: Path, *overrides: str) -> list[str]:
    """``python -m monai.bundle run`` of configs/inference.json with the tiny generator, ``PERMISSIVE`` thresholds,
    ``weights`` and ``output_dir``; ``overrides`` give the input (``--input`` or ``--datalist``) and anything else."""
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(ROOT / "configs" / "inference.json"),
        "--bundle_root",
        str(ROOT),
        "--generator_def",
        json.dumps(INFERENCE_GENERATOR),
        "--checkpoint",
        str(weights),
        "--output_dir",
        str(output_dir),
        *PERMISSIVE,
        *overrides,
    ]


def jaw_label_map() -> tuple[np.ndarray, np.ndarray]:
    """(labels, affine): a jaw-like DentalSegmentator map at 0.6 x 0.6 x 0.8 mm with flipped (LPS) axes and a tilt."""
    labels = np.zeros((110, 100, 70), np.int16)
    labels[10:100, 10:90, 40:70] = 1
    labels[20:90, 20:40, 5:30] = 2
    labels[30:80, 22:30, 28:40] = 4
    labels[30:80, 22:30, 40:50] = 3
    labels[25:85, 28:31, 10:13] = 5
    return labels, np.array([[-0.6, 0.05, 0, 60], [0, -0.6, 0, 50], [0, 0, 0.8, -20], [0, 0, 0, 1]], float)


@pytest.fixture(scope="session")
def inference_cases(tmp_path_factory) -> Path:
    """``datalist.json`` whose ``test`` list holds ``CASES``: a jaw-like label map at 0.6 x 0.6 x 0.8 mm with flipped
    (LPS) axes and a tilt, shifted by 3 voxels from one case to the next so that each case has its own outputs."""
    folder = tmp_path_factory.mktemp("inference_cases")
    labels, affine = jaw_label_map()
    for shift, case in enumerate(CASES):
        nib.save(nib.Nifti1Image(np.roll(labels, 3 * shift, axis=0), affine), folder / f"{case}.nii.gz")
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": f"{case}.nii.gz"} for case in CASES]}, indent=4))
    return datalist


@pytest.fixture(scope="session")
def reference_outputs(inference_cases, tiny_weights, tmp_path_factory) -> Path:
    """Output folder of one inference run over ``inference_cases``, one case after the other."""
    output = tmp_path_factory.mktemp("reference_inference") / "out"
    command = inference_command(tiny_weights, output, "--datalist", str(inference_cases))
    result = subprocess.run(command, env=SINGLE_THREAD_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in output.iterdir()) == list(CASES)
    return output


def assert_same_case(actual: Path, expected: Path) -> None:
    """``actual`` holds the same files as the case folder ``expected``, each byte for byte."""
    names = sorted(p.name for p in expected.iterdir())
    assert sorted(p.name for p in actual.iterdir()) == names, actual
    _, mismatch, errors = filecmp.cmpfiles(expected, actual, names, shallow=False)
    assert mismatch == errors == [], f"{actual}: {mismatch + errors} differ from {expected}"
