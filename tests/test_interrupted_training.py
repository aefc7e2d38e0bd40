"""A training run killed mid-run (SIGKILL) and resumed from its last checkpoint ends where an uninterrupted run ends,
bit for bit on CPU; checkpoints are never left half-written; the random generators travel in the checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandSpatialCropd

from bundle.checkpointing import AtomicCheckpointSaver, RandomStates

ROOT = Path(__file__).resolve().parents[1]
SINGLE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
EPOCHS = 6


def _command(overlay: Path, *extra: str) -> list[str]:
    configs = json.dumps([str(ROOT / "configs" / "train.json"), str(overlay)])
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", configs, *extra]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_identical(first, second, where: str = "") -> None:
    if isinstance(first, torch.Tensor):
        assert torch.equal(first, second), where
    elif isinstance(first, dict):
        assert first.keys() == second.keys(), where
        for key in first:
            _assert_identical(first[key], second[key], f"{where}/{key}")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second)):
            _assert_identical(a, b, f"{where}/{index}")
    else:
        assert first == second, where


@pytest.mark.slow
def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, tiny_training_overlay):
    settings = dict(max_epochs=EPOCHS, val_interval=2, checkpoint_interval=1)
    reference = tiny_training_overlay(tmp_path / "reference", **settings)
    done = subprocess.run(_command(reference), cwd=ROOT, env=SINGLE_THREAD_ENV, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    overlay = tiny_training_overlay(tmp_path / "killed", **settings)
    output = tmp_path / "killed" / "runs" / "stage1"
    run = subprocess.Popen(
        _command(overlay),
        cwd=ROOT,
        env=SINGLE_THREAD_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (output / "checkpoint_epoch=2.pt").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not (output / "checkpoint_final.pt").exists(), "the run finished before it could be killed"
    saved = sorted(output.glob("checkpoint_epoch=*.pt"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
    latest = saved[-1]
    trainer_state = _load(latest)["trainer"]  # every checkpoint left behind loads: none is half-written
    assert trainer_state["iteration"] < EPOCHS * trainer_state["epoch_length"]

    resumed = subprocess.run(
        _command(overlay, "--resume_checkpoint", str(latest)),
        cwd=ROOT,
        env=SINGLE_THREAD_ENV,
        capture_output=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = _load(tmp_path / "reference" / "runs" / "stage1" / "checkpoint_final.pt")
    actual = _load(output / "checkpoint_final.pt")
    assert actual["trainer"]["iteration"] == expected["trainer"]["iteration"]
    for name in ("generator", "discriminator", "generator_optimizer", "discriminator_optimizer", "random_states"):
        _assert_identical(actual[name], expected[name], name)


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    crop = RandSpatialCropd("image", roi_size=(4, 4, 4), random_size=False)
    pipeline = Compose([Compose([crop])])
    states = RandomStates(pipeline)
    torch.manual_seed(1)
    np.random.seed(1)
    crop.set_random_state(7)
    torch.save({"random_states": states.state_dict()}, tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), crop.R.rand(3))
    torch.manual_seed(2)
    np.random.seed(2)
    crop.set_random_state(8)
    states.load_state_dict(_load(tmp_path / "c.pt")["random_states"])
    actual = (torch.rand(3), np.random.rand(3), crop.R.rand(3))
    torch.testing.assert_close(actual[0], expected[0])
    np.testing.assert_array_equal(actual[1], expected[1])
    np.testing.assert_array_equal(actual[2], expected[2])


def test_random_states_refuse_a_different_pipeline():
    state = RandomStates(Compose([RandSpatialCropd("image", roi_size=(4, 4, 4))])).state_dict()
    with pytest.raises(ValueError, match="not the pipeline"):
        RandomStates(Compose([])).load_state_dict(state)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"net": torch.nn.Linear(2, 2)}, save_final=True)
    handler = saver._final_checkpoint.save_handler
    handler({"net": {"w": torch.ones(2)}}, "checkpoint_final.pt")
    before = (tmp_path / "checkpoint_final.pt").read_bytes()

    def fail_midway(obj, stream, **kwargs):
        stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        handler({"net": {"w": torch.zeros(2)}}, "checkpoint_final.pt")
    assert (tmp_path / "checkpoint_final.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_final.pt"]  # the temporary file is removed
