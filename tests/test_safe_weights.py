"""Safe weights: a checkpoint that would run code when unpickled is refused at every entry point that loads one,
even with a matching checksum file, and the code never runs; a checksum mismatch is one clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle.networks import VQGANGenerator
from bundle.trainer import init_stage2
from bundle.weights import load_checkpoint, load_verified_weights, write_checksum
from tests.conftest import ROOT, SINGLE_THREAD_ENV, TINY_GENERATOR, inference_command


class _CreatesAFileWhenUnpickled:
    """Unpickling calls ``open(marker, "w")``: any function could stand there."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def booby_trapped(tmp_path) -> tuple[Path, Path]:
    """(checkpoint, marker): a training-checkpoint-shaped file with a matching ``.sha256`` whose unpickling creates
    ``marker``."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "weights" / "model.pt"
    path.parent.mkdir()
    torch.save({"generator": {"w": torch.zeros(1)}, "trap": _CreatesAFileWhenUnpickled(marker)}, path)
    write_checksum(path)
    return path, marker


def _one_line_refusal(result: subprocess.CompletedProcess, path: Path) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]  # after MONAI's config warning: the error, in one line
    assert last.startswith("error: ValueError: ") and str(path) in last and "refused" in last, result.stderr[-2000:]


def test_the_trap_runs_code_when_loaded_without_weights_only(booby_trapped):
    path, marker = booby_trapped
    torch.load(path, weights_only=False)
    assert marker.exists()  # so the refusals below are what keeps it from running


def test_load_checkpoint_refuses_it_with_a_matching_checksum(booby_trapped):
    path, marker = booby_trapped
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=str(path)):
        load_verified_weights(torch.nn.Linear(1, 1), path)
    assert not marker.exists()


def test_inference_refuses_it_before_writing_anything(booby_trapped, tmp_path):
    path, marker = booby_trapped
    output = tmp_path / "out"
    command = inference_command(path, output)
    command[1:3] = ["-m", "bundle"]  # the one-line error reporter, same arguments
    result = subprocess.run(command, cwd=ROOT, env=SINGLE_THREAD_ENV, capture_output=True, text=True, timeout=300)
    _one_line_refusal(result, path)
    assert not marker.exists() and not output.exists()


def test_training_resume_refuses_it_before_creating_the_run_folder(booby_trapped, tmp_path, tiny_training_overlay):
    path, marker = booby_trapped
    overlay = tiny_training_overlay(tmp_path / "train")
    config = json.dumps([str(ROOT / "configs" / "train.json"), str(overlay)])
    command = [sys.executable, "-m", "bundle", "run", "training", "--config_file", config]
    result = subprocess.run(
        command + ["--resume_checkpoint", str(path)],
        cwd=ROOT,
        env=SINGLE_THREAD_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _one_line_refusal(result, path)
    assert not marker.exists() and not (tmp_path / "train" / "runs").exists()


def test_stage2_refuses_it_as_stage1_checkpoint(booby_trapped, tmp_path):
    path, marker = booby_trapped
    with pytest.raises(ValueError, match="refused"):
        init_stage2(VQGANGenerator(**{k: v for k, v in TINY_GENERATOR.items() if k != "_target_"}), path)
    assert not marker.exists()


def test_package_model_refuses_it(booby_trapped, tmp_path):
    path, marker = booby_trapped
    output = tmp_path / "model.pt"
    script = ROOT / "scripts" / "package_model.py"
    result = subprocess.run(
        [sys.executable, str(script), "--stage1", str(path), "--stage2", str(path), "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "refused" in result.stderr, result.stderr[-2000:]
    assert not marker.exists() and not output.exists()


def test_a_checksum_mismatch_is_one_clear_error(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(1, 1).state_dict(), path)
    write_checksum(path)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(
        ValueError, match=r"model\.pt: sha256 [0-9a-f]{64} does not match [0-9a-f]{64} in model\.pt\.sha256"
    ):
        load_verified_weights(torch.nn.Linear(1, 1), path)
