"""Plot the validation MSE and the training reconstruction loss of one or more training runs, from their TensorBoard
logs (``<run>/tensorboard``, written by the training configs' ``TensorBoardStatsHandler``).

    python scripts/plot_training.py runs/bank/stage1 runs/bank/stage2 --output docs/figures/training_curves.png

The x axis is the epoch (a resumed run continues its parent's epochs). Training loss is averaged per epoch.
``--table docs/x.md`` also writes, per run, the adversarial schedule as logged (``adv_weight``, ``adv_scale``) and the
validation MSE before and during the adversarial phase: the best MSE before the term came in, the final MSE and their
ratio, and the discriminator's loss over the last third of the iterations with the term at full weight: its median
and the share of iterations under 0.01. A discriminator whose loss stays near 0 tells every reconstruction from
every real map, so the adversarial gradient the generator gets carries no information about what looks real.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.atomic_files import write_text_atomically  # noqa: E402

VALIDATION_TAG = "val_mse"
TRAINING_TAG = "loss_recon"
SCHEDULE_TAG = "adv_scale"
WEIGHT_TAG = "adv_weight"
DISCRIMINATOR_TAG = "loss_d"
# a discriminator loss under this is a saturated discriminator (binary cross-entropy of about 0.005 per logit)
SATURATED_LOSS = 0.01


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] over every event file under ``log_dir``."""
    scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars[tag].extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


def per_epoch(points: list[tuple[int, float]], iterations_per_epoch: int) -> tuple[list[float], list[float]]:
    """Iteration-level points averaged within each epoch."""
    sums: dict[int, list[float]] = defaultdict(list)
    for step, value in points:
        sums[int((step - 1) // iterations_per_epoch) + 1].append(value)
    epochs = sorted(sums)
    return epochs, [sum(sums[e]) / len(sums[e]) for e in epochs]


def adversarial_summary(scalars: dict, iterations_per_epoch: int) -> dict:
    """First epoch with the adversarial term on, first at full weight, and the validation MSE around them."""
    # the weight applied, not the schedule: a VQ-VAE logs the schedule but applies no adversarial term
    on = [step for step, value in sorted(scalars.get(WEIGHT_TAG, [])) if value > 0]
    full = [step for step, value in sorted(scalars.get(SCHEDULE_TAG, [])) if value >= 1] if on else []
    validation = sorted(scalars[VALIDATION_TAG])
    first_on = (on[0] - 1) // iterations_per_epoch + 1 if on else None
    before = [value for epoch, value in validation if first_on is None or epoch < first_on]
    full_steps = full[-len(full) // 3 :] if full else []
    discriminator = dict(scalars.get(DISCRIMINATOR_TAG, []))
    last_third = sorted(discriminator[step] for step in full_steps if step in discriminator)
    return {
        "validations": len(validation),
        "last_epoch": validation[-1][0],
        "adversarial_from_epoch": first_on,
        "full_weight_from_epoch": (full[0] - 1) // iterations_per_epoch + 1 if full else None,
        "best_before": min(before) if before else None,
        "best": min(value for _, value in validation),
        "final": validation[-1][1],
        "discriminator_loss_median": last_third[len(last_third) // 2] if last_third else None,
        "discriminator_saturated_share": (
            sum(value < SATURATED_LOSS for value in last_third) / len(last_third) if last_third else None
        ),
    }


def summary_table(rows: dict[str, dict]) -> str:
    """Markdown table of :func:`adversarial_summary` per run."""
    lines = [
        "| run | last epoch | adversarial term from epoch (full weight from) | best val MSE before it | "
        "best val MSE | final val MSE | final / best before | discriminator loss, last third at full weight: median "
        f"(iterations under {SATURATED_LOSS}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run, row in rows.items():
        start = (
            "never"
            if row["adversarial_from_epoch"] is None
            else (f"{row['adversarial_from_epoch']} ({row['full_weight_from_epoch']})")
        )
        before = "-" if row["best_before"] is None else f"{row['best_before']:.5f}"
        ratio = (
            "-"
            if not row["best_before"] or row["adversarial_from_epoch"] is None
            else (f"{row['final'] / row['best_before']:.2f}")
        )
        discriminator = (
            "-"
            if row["discriminator_loss_median"] is None
            else f"{row['discriminator_loss_median']:.3g} ({row['discriminator_saturated_share']:.0%})"
        )
        lines.append(
            f"| {run} | {row['last_epoch']} | {start} | {before} | {row['best']:.5f} | {row['final']:.5f} | "
            f"{ratio} | {discriminator} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with a tensorboard/ folder)")
    parser.add_argument("--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--table", type=Path, help="also write the schedule and MSE table (Markdown) here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    opts = parser.parse_args(argv)
    if opts.output.exists() and not opts.overwrite:
        print(f"error: {opts.output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    figure, (train_axis, val_axis) = plt.subplots(1, 2, figsize=(11, 4))
    rows = {}
    for run in opts.runs:
        scalars = read_scalars(run / "tensorboard")
        if VALIDATION_TAG not in scalars or TRAINING_TAG not in scalars:
            print(f"error: {run}/tensorboard: no '{VALIDATION_TAG}' and '{TRAINING_TAG}' scalars", file=sys.stderr)
            plt.close(figure)
            return 2
        validation = sorted(scalars[VALIDATION_TAG])
        training = sorted(scalars[TRAINING_TAG])
        # the validation handler logs at the epoch, the training handler at the global iteration; a run stopped by
        # hand ends at most one epoch after its last validation, hence the rounding
        iterations_per_epoch = max(1, round(training[-1][0] / validation[-1][0]))
        rows[str(run)] = adversarial_summary(scalars, iterations_per_epoch)
        epochs, losses = per_epoch(training, iterations_per_epoch)
        # the run's folder and its parent: stages of different runs share a folder name
        label = "/".join(run.parts[-2:])
        train_axis.plot(epochs, losses, label=label, linewidth=0.8)
        val_axis.plot(*zip(*validation), marker=".", label=label)
    train_axis.set(title="training reconstruction loss (mean per epoch)", xlabel="epoch", yscale="log")
    val_axis.set(title="validation MSE (whole volumes)", xlabel="epoch", yscale="log")
    for axis in (train_axis, val_axis):
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = opts.output.with_name(opts.output.name + ".tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    temporary.replace(opts.output)
    if opts.table:
        command = " ".join(
            [
                "python scripts/plot_training.py",
                *map(str, opts.runs),
                "--output",
                str(opts.output),
                "--table",
                str(opts.table),
            ]
        )
        write_text_atomically(opts.table, f"<!-- generated by: {command} -->\n\n{summary_table(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
