"""Shared fixtures: a tiny phantom data set made once per session and a tiny-network training overlay.

The training overlay keeps every config of the bundle as it is and only shrinks what makes a run slow (network
widths, crop size, epochs, worker processes), so that the tests go through the same configs as a real run.
"""

from __future__ import annotations

import json
from pathlib import Path

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
