"""The evaluation report: verdicts from the metrics, experiment 1 from both generators' runs, and the committed
documents (results.md, acceptance.md, metadata, model card) equal to what the committed JSON gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.evaluation import AnomalyEvaluationHandler
from scripts.report_evaluation import (
    acceptance_rows,
    eval_metrics,
    performance_block,
    render_results,
    replace_performance_block,
)
from tests.test_evaluation_summary import _case

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "evaluation.json"
committed_run = pytest.mark.skipif(not COMMITTED.exists(), reason="no committed evaluation")


def _metrics(tmp_path, healthy_regions: int, weak_dice: float, mse: float = 0.005) -> dict:
    handler = AnomalyEvaluationHandler(tmp_path)
    handler.cases = [_case(f"l{i}", "onj", 20 + i, 1, dice=0.9, volume=2.0) for i in range(9)]
    handler.cases.append(_case("weak", "onj", 15, 1, dice=weak_dice, volume=1.5))
    handler.cases.append(
        dict(_case("r", "teeth_and_jaw_removed", 30, 1, dice=0.6, volume=4.0), restoration_mse_stage2=2 * mse)
    )
    handler.cases += [
        dict(_case(f"h{i}", "none", 0, int(i < healthy_regions)), reconstruction_mse_stage1=mse) for i in range(10)
    ]
    return handler.summary()


def _verdicts(metrics: dict) -> dict:
    return {measure: verdict for measure, _, verdict in acceptance_rows(metrics) if verdict}


def _report(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "scripts.report_evaluation", *argv]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_verdicts_follow_the_targets(tmp_path):
    good = _verdicts(_metrics(tmp_path, healthy_regions=1, weak_dice=0.5))
    assert set(good.values()) == {"met"}
    bad = _verdicts(_metrics(tmp_path, healthy_regions=2, weak_dice=0.1))
    assert bad["healthy subjects with any wound region"] == "**not met**"
    assert bad["lesions >= 1 cm^3 with Dice > 0.3"] == "**not met**"
    assert bad["Dice of the wound segmentation: mean (min, max)"] == "met"  # (9 * 0.9 + 0.1 + 0.6) / 11 = 0.80


def test_experiment_1_compares_both_generators_with_the_numbers_of_their_runs(tmp_path):
    runs = {
        "default": {"title": "VQ-GAN run", "metrics": _metrics(tmp_path, 0, 0.5, mse=0.006)},
        "vqvae": {"title": "VQ-VAE run", "metrics": _metrics(tmp_path, 0, 0.5, mse=0.004)},
    }
    results = render_results(runs, "test", timing=None)
    row = next(line for line in results.splitlines() if line.startswith("| stage 1, healthy subjects: MSE"))
    assert row.split(" | ")[1:5] == ["0.00600 (0.00600)", "0.00400 (0.00400)", "0.009196", "0.009174 |"]
    assert "stage 1, healthy subjects: MSE against the input: lower for the VQ-VAE (0.004 against 0.006" in results
    assert "stage 2, removal: MSE against the intact map: lower for the VQ-VAE (0.008 against 0.012" in results
    assert "both trained on the same phantoms" in results
    alone = render_results({"default": runs["default"]}, "test", timing=None)
    assert "No VQ-VAE run" in alone and "lower for the" not in alone


def test_experiment_1_says_when_the_vqvae_is_an_older_version(tmp_path):
    runs = {
        "default": {
            "title": "VQ-GAN run",
            "metrics": {**_metrics(tmp_path, 0, 0.5), "model": {"version": "2.0", "sha256": "a" * 64}},
        },
        "vqvae": {
            "title": "VQ-VAE run",
            "metrics": {**_metrics(tmp_path, 0, 0.5), "model": {"version": "1.0", "sha256": "b" * 64}},
        },
    }
    results = render_results(runs, "test", timing=None)
    assert "VQ-GAN version 2.0, sha256 aaaaaaaaaaaa...; VQ-VAE version 1.0" in results
    assert "fine-tunes after version 1.0 were not repeated for the VQ-VAE" in results
    assert "same phantoms" not in results


def test_run_without_json_is_refused(tmp_path):
    result = _report("--run", f"default={tmp_path}", "--docs_dir", str(tmp_path / "docs"))
    assert result.returncode != 0 and "--json" in result.stderr
    assert not (tmp_path / "docs").exists()


def test_unknown_run_name_is_refused(tmp_path):
    result = _report("--run", f"mine={tmp_path}", "--json", str(tmp_path / "e.json"), "--docs_dir", str(tmp_path))
    assert result.returncode != 0 and "unknown run 'mine'" in result.stderr
    assert not (tmp_path / "e.json").exists()


@committed_run
def test_committed_documents_are_generated_from_the_committed_json(tmp_path):
    result = _report("--from_json", "docs/evaluation.json", "--docs_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in ("results.md", "acceptance.md"):
        generated = (tmp_path / name).read_text().splitlines()
        committed = (ROOT / "docs" / name).read_text().splitlines()
        assert generated[1:] == committed[1:], name  # line 0 names the output folder


@committed_run
def test_committed_results_link_only_existing_figures():
    results = (ROOT / "docs" / "results.md").read_text()
    figures = [part.split(")")[0] for part in results.split("](figures/")[1:]]
    assert figures and all((ROOT / "docs" / "figures" / name).is_file() for name in figures)


@committed_run
def test_metadata_eval_metrics_are_generated_from_the_committed_json():
    runs = json.loads(COMMITTED.read_text())
    metadata = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert metadata["eval_metrics"] == eval_metrics(runs)


@committed_run
def test_model_card_performance_block_is_generated_from_the_committed_json():
    runs = json.loads(COMMITTED.read_text())
    card = (ROOT / "docs" / "README.md").read_text()
    assert performance_block(runs) in card
    assert replace_performance_block(card, runs) == card


@committed_run
def test_model_card_without_a_performance_block_is_refused(tmp_path):
    card = tmp_path / "card.md"
    card.write_text("# card\n")
    result = _report("--from_json", str(COMMITTED), "--docs_dir", str(tmp_path), "--model_card", str(card))
    assert result.returncode != 0 and "performance:start" in result.stderr
    assert card.read_text() == "# card\n" and not (tmp_path / "results.md").exists()
