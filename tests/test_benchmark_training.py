"""Smoke test of ``python -m scripts.benchmark_training`` on a tiny problem: the table, the JSON and the error exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "scripts.benchmark_training"]
TINY = ["--size", "16", "--channels", "4", "8", "--discriminator-channels", "4", "--discriminator-layers", "2"]
TINY += ["--iterations", "1", "--warmup", "0", "--threads", "1"]


@pytest.mark.slow
def test_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([*COMMAND, *TINY, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "bundle: gan_training_step" in run.stdout and "speed-up over the peer" in run.stdout
    result = json.loads(out.read_text())
    assert set(result["seconds"]) == {"matmul", "conv", "ours", "naive", "peer", "inference"}
    assert result["gflop"]["ours"] < result["gflop"]["naive"], "the bundle step must do less work than the plain one"
    assert all(value > 0 for value in result["gflops_per_s"].values())
    assert result["generator"]["channels"] == [4, 8]


def test_benchmark_refuses_to_overwrite(tmp_path):
    out = tmp_path / "bench.json"
    out.write_text("keep me")
    run = subprocess.run(
        [*COMMAND, *TINY, "--no-peer", "--no-inference", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "--overwrite" in run.stderr
    assert out.read_text() == "keep me"
