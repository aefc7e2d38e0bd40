"""The acceptance table: verdicts from the metrics, and the committed table equal to what its JSON gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.evaluation import AnomalyEvaluationHandler
from tests.test_evaluation_summary import _case

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from report_evaluation import (  # noqa: E402
    acceptance_rows,
    eval_metrics,
    performance_block,
    replace_performance_block,
)


def _metrics(tmp_path, healthy_regions: int, weak_dice: float) -> dict:
    handler = AnomalyEvaluationHandler(tmp_path)
    handler.cases = [_case(f"l{i}", "onj", 20 + i, 1, dice=0.9, volume=2.0) for i in range(9)]
    handler.cases.append(_case("weak", "onj", 15, 1, dice=weak_dice, volume=1.5))
    handler.cases += [_case(f"h{i}", "none", 0, int(i < healthy_regions)) for i in range(10)]
    return handler.summary()


def _verdicts(metrics: dict) -> dict:
    return {measure: verdict for measure, _, verdict in acceptance_rows(metrics) if verdict}


def test_verdicts_follow_the_targets(tmp_path):
    good = _verdicts(_metrics(tmp_path, healthy_regions=1, weak_dice=0.5))
    assert set(good.values()) == {"met"}
    bad = _verdicts(_metrics(tmp_path, healthy_regions=2, weak_dice=0.1))
    assert bad["healthy subjects with any wound region"] == "**not met**"
    assert bad["lesions >= 1 cm^3 with Dice > 0.3"] == "**not met**"
    assert bad["Dice of the wound segmentation: mean (min, max)"] == "met"  # (9 * 0.9 + 0.1) / 10 = 0.82


def test_run_without_json_is_refused(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "report_evaluation.py"),
            "--run",
            f"x={tmp_path / 'missing.json'}",
            "--markdown",
            str(tmp_path / "t.md"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "--json" in result.stderr
    assert not (tmp_path / "t.md").exists()


@pytest.mark.skipif(not (ROOT / "docs" / "acceptance.json").exists(), reason="no committed acceptance run")
def test_committed_table_is_generated_from_the_committed_json(tmp_path):
    output = tmp_path / "acceptance.md"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "report_evaluation.py"),
            "--from_json",
            "docs/acceptance.json",
            "--markdown",
            str(output),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    generated, committed = output.read_text().splitlines(), (ROOT / "docs" / "acceptance.md").read_text().splitlines()
    assert generated[1:] == committed[1:]  # line 0 names the output file


@pytest.mark.skipif(not (ROOT / "docs" / "acceptance.json").exists(), reason="no committed acceptance run")
def test_metadata_eval_metrics_are_generated_from_the_committed_json():
    runs = json.loads((ROOT / "docs" / "acceptance.json").read_text())
    metadata = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert metadata["eval_metrics"] == eval_metrics(runs)


@pytest.mark.skipif(not (ROOT / "docs" / "acceptance.json").exists(), reason="no committed acceptance run")
def test_model_card_performance_block_is_generated_from_the_committed_json():
    runs = json.loads((ROOT / "docs" / "acceptance.json").read_text())
    card = (ROOT / "docs" / "README.md").read_text()
    assert performance_block(runs) in card
    assert replace_performance_block(card, runs) == card


@pytest.mark.skipif(not (ROOT / "docs" / "acceptance.json").exists(), reason="no committed acceptance run")
def test_model_card_without_a_performance_block_is_refused(tmp_path):
    card = tmp_path / "card.md"
    card.write_text("# card\n")
    json_path = ROOT / "docs" / "acceptance.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "report_evaluation.py"),
            "--from_json",
            str(json_path),
            "--markdown",
            str(tmp_path / "t.md"),
            "--model_card",
            str(card),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "performance:start" in result.stderr
    assert card.read_text() == "# card\n" and not (tmp_path / "t.md").exists()
