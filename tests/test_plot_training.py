"""scripts/plot_training.py on the TensorBoard log of a real (tiny) training run."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import plot_training  # noqa: E402


def test_plots_a_run_and_refuses_to_overwrite(tiny_training_overlay, tmp_path, capsys):
    overlay = tiny_training_overlay(tmp_path)
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        f"['configs/train.json','{overlay}']",
    ]
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


def test_adversarial_summary_splits_validation_at_the_first_adversarial_epoch():
    # 10 iterations per epoch; the term comes in at iteration 41 (epoch 5) and reaches full weight at 60 (epoch 6)
    schedule = [(step, min(1.0, max(0.0, (step - 40) / 20))) for step in range(1, 101)]
    validation = [(2, 0.05), (4, 0.02), (6, 0.03), (8, 0.025), (10, 0.022)]
    weight = [(step, 1e-3 * value) for step, value in schedule]
    # full weight over iterations 60-100; the discriminator saturates from iteration 90 on
    discriminator = [(step, 0.6 if step < 90 else 1e-6) for step in range(1, 101)]
    scalars = {"adv_scale": schedule, "adv_weight": weight, "val_mse": validation, "loss_d": discriminator}
    row = plot_training.adversarial_summary(scalars, 10)
    assert (row["adversarial_from_epoch"], row["full_weight_from_epoch"]) == (5, 6)
    assert (row["best_before"], row["best"], row["final"], row["last_epoch"]) == (0.02, 0.02, 0.022, 10)
    # the last third of the 41 full-weight iterations is 87-100: 3 at 0.6, 11 saturated
    assert row["discriminator_loss_median"] == 1e-6 and row["discriminator_saturated_share"] == 11 / 14
    table = plot_training.summary_table({"s1": row})
    assert "| s1 | 10 | 5 (6) | 0.02000 | 0.02000 | 0.02200 | 1.10 | 1e-06 (79%) |" in table
    # a VQ-VAE logs the schedule but applies no adversarial weight
    vqvae = {"adv_scale": schedule, "adv_weight": [(step, 0.0) for step, _ in schedule], "val_mse": validation}
    never = plot_training.adversarial_summary(vqvae, 10)
    assert never["adversarial_from_epoch"] is None and never["best_before"] == 0.02
