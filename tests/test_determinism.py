"""One seed, one result on CPU: two separate training runs of the tiny config end with bit-identical checkpoints,
and two inference runs of the same inputs write byte-identical files.

tests/test_interrupted_training.py compares a run killed and resumed with an uninterrupted one (same process count,
no worker processes). Here two separate, uninterrupted runs are compared, with the data loaded by worker processes as
in the default config, and with different Python hash seeds, so that nothing may depend on the iteration order of a
set of strings. Both runs use one thread: the thread count changes the rounding of CPU reductions, so runs are
reproducible for a given count, not across counts (docs/training.md, "Reproducibility").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import CASES, SINGLE_THREAD_ENV, assert_same_case, inference_command

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(max_epochs=2, val_interval=1, checkpoint_interval=1, num_workers=2)
SAVED = ("generator", "discriminator", "generator_optimizer", "discriminator_optimizer")


def _train(folder: Path, overlay_factory, hash_seed: int, *extra: str) -> Path:
    overlay = overlay_factory(folder, **SETTINGS)
    configs = json.dumps([str(ROOT / "configs" / "train.json"), str(overlay)])
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", configs, *extra]
    env = {**SINGLE_THREAD_ENV, "PYTHONHASHSEED": str(hash_seed)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder / "runs" / "stage1"


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _differences(first, second, where: str = "") -> list[str]:
    """Where two loaded checkpoints differ: tensors by ``torch.equal``, everything else by ``==``."""
    if isinstance(first, torch.Tensor):
        return [] if torch.equal(first, second) else [where]
    if isinstance(first, dict):
        if first.keys() != second.keys():
            return [f"{where}: keys {sorted(first)} != {sorted(second)}"]
        return [d for key in first for d in _differences(first[key], second[key], f"{where}/{key}")]
    if isinstance(first, (list, tuple)):
        if len(first) != len(second):
            return [f"{where}: lengths {len(first)} != {len(second)}"]
        return [d for i, (a, b) in enumerate(zip(first, second)) for d in _differences(a, b, f"{where}/{i}")]
    return [] if first == second else [f"{where}: {first!r} != {second!r}"]


@pytest.fixture(scope="module")
def seed0_runs(tmp_path_factory, tiny_training_overlay) -> tuple[Path, Path]:
    """Output folders of two stage-1 runs with the config's seed (0), Python hash seeds 1 and 2."""
    folder = tmp_path_factory.mktemp("determinism")
    return tuple(_train(folder / f"run{i}", tiny_training_overlay, hash_seed=i) for i in (1, 2))


@pytest.mark.slow
def test_two_training_runs_with_one_seed_end_bit_identical(seed0_runs):
    first, second = seed0_runs
    names = sorted(p.name for p in first.glob("*.pt"))
    assert names == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "checkpoint_final.pt", "model.pt"]
    assert sorted(p.name for p in second.glob("*.pt")) == names
    for name in names:
        expected, actual = _load(first / name), _load(second / name)
        assert set(SAVED) <= set(expected), name
        assert _differences(expected, actual, name) == []
    final = _load(first / "checkpoint_final.pt")
    assert {"trainer", "random_states"} <= set(final) and final["trainer"]["iteration"] == 4


@pytest.mark.slow
def test_the_configs_seed_is_what_fixes_the_run(seed0_runs, tmp_path, tiny_training_overlay):
    other = _train(tmp_path / "seed1", tiny_training_overlay, 1, "--seed", "1")
    expected, actual = _load(seed0_runs[0] / "checkpoint_final.pt"), _load(other / "checkpoint_final.pt")
    for name in ("generator", "discriminator"):
        assert _differences(expected[name], actual[name], name) != [], f"{name}: --seed 1 changed nothing"


@pytest.mark.slow
def test_deterministic_algorithms_run_on_cpu_and_change_nothing(seed0_runs, tmp_path, tiny_training_overlay):
    """``--deterministic_algorithms true`` (``torch.use_deterministic_algorithms``, meant for GPU) neither stops a CPU
    run on an operation without a deterministic variant nor changes its result."""
    strict = _train(tmp_path / "strict", tiny_training_overlay, 3, "--deterministic_algorithms", "true")
    name = "checkpoint_final.pt"
    assert _differences(_load(seed0_runs[0] / name), _load(strict / name), name) == []


@pytest.mark.slow
def test_two_inference_runs_write_byte_identical_outputs(reference_outputs, inference_cases, tiny_weights, tmp_path):
    """Every file of every case, byte for byte: the NIfTI images (voxels, header and gzip stream), the Slicer file,
    the STL meshes, the overview figure and report.json (which holds no time, output path or other per-run field:
    its ``input`` is the same input path in both runs)."""
    output = tmp_path / "out"
    command = inference_command(tiny_weights, output, "--datalist", str(inference_cases))
    result = subprocess.run(command, env=SINGLE_THREAD_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in output.iterdir()) == list(CASES)
    for case in CASES:
        assert len(list((output / case).glob("*.stl"))) > 0
        assert_same_case(output / case, reference_outputs / case)
