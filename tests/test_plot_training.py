"""scripts/plot_training.py on the TensorBoard log of a real (tiny) training run."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import plot_training  # noqa: E402


def test_plots_a_run_and_refuses_to_overwrite(tiny_training_overlay, tmp_path, capsys):
    overlay = tiny_training_overlay(tmp_path)
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
               f"['configs/train.json','{overlay}']"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "stage1"
    scalars = plot_training.read_scalars(run / "tensorboard")
    assert [step for step, _ in scalars["val_mse"]] == [1, 2]  # max_epochs 2, validation every epoch
    iterations = [step for step, _ in scalars["loss_recon"]]
    assert iterations == list(range(1, len(iterations) + 1))
    epochs, losses = plot_training.per_epoch(scalars["loss_recon"], len(iterations) // 2)
    assert epochs == [1, 2] and all(loss > 0 for loss in losses)

    figure = tmp_path / "curves.png"
    assert plot_training.main([str(run), "--output", str(figure)]) == 0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_training.main([str(run), "--output", str(figure)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert plot_training.main([str(tmp_path), "--output", str(tmp_path / "other.png")]) == 2
    assert not (tmp_path / "other.png").exists()
