"""Write the acceptance table of one or more evaluation runs: a JSON of their summaries and a Markdown table from it.

Each run is the ``metrics.json`` written by the evaluation overlay (``bundle.evaluation.AnomalyEvaluationHandler``)::

    python -m monai.bundle run --config_file "['configs/inference.json','configs/evaluate.json']" \\
        --datalist data/phantoms_eval/datalist.json --output_dir eval/bank
    python scripts/report_evaluation.py --run "bank phantoms=eval/bank/metrics.json" \\
        --run "bank phantoms, no search region=eval/bank_off/metrics.json" \\
        --json docs/acceptance.json --markdown docs/acceptance.md

``--metadata configs/metadata.json`` also replaces its ``eval_metrics`` with the headline figures of every run (keys
prefixed by the run's label in snake case); ``--model_card docs/README.md`` replaces the part of the model card between
``<!-- performance:start -->`` and ``<!-- performance:end -->`` with the first run's table. ``--from_json
docs/acceptance.json`` rewrites the Markdown from a JSON written before (no evaluation needed), so a test can check
that the committed table is what the committed JSON gives.
The targets are those of the real-anatomy issue: every lesion subject above every healthy one (the paper's
two-reconstruction score, and the wound volume that the post-processing of the same map gives), mean Dice >= 0.75,
every lesion of at least 1 cm^3 found (Dice > 0.3), at most 1 in 10 healthy subjects with any wound region.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

MEAN_DICE_TARGET = 0.75
HEALTHY_WITH_REGION_SHARE = 0.1


def _load_run(item: str) -> tuple[str, dict]:
    label, sep, path = item.partition("=")
    if not sep or not label or not path:
        raise SystemExit(f"report_evaluation: error: --run {item!r} is not of the form 'label=path/to/metrics.json'")
    try:
        return label, json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SystemExit(f"report_evaluation: error: {path}: metrics file not found") from None
    except json.JSONDecodeError as error:
        raise SystemExit(f"report_evaluation: error: {path}: not valid JSON ({error})") from None


def _met(condition: bool) -> str:
    return "met" if condition else "**not met**"


def acceptance_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(measure, value, verdict against the target) rows for one run's ``metrics.json``."""
    two = metrics["score_two_reconstructions"]
    other = metrics["score_original_vs_reconstruction"]
    wound = metrics["score_wound_volume"]
    dice, found = metrics["dice"], metrics["lesions_found"]
    normals, with_region = metrics["num_normal_cases"], metrics["normals_with_any_region"]
    volume = metrics["lesion_volume_ml"]
    return (
        [
            ("subjects: healthy / lesion", f"{normals} / {metrics['num_lesion_cases']}", ""),
            (
                "lesion volume, cm^3: min / mean / max",
                f"{volume['min']:.2f} / {volume['mean']:.2f} / {volume['max']:.2f}",
                "",
            ),
            (
                "two-reconstruction score: lowest lesion / highest healthy",
                f"{two['lesion']['min']:g} / {two['normal']['max']:g}",
                _met(two["every_lesion_above_every_normal"]),
            ),
            ("AUROC, two-reconstruction score", f"{two['auroc']:.3f}", ""),
            (
                "wound-volume score, mm^3: lowest lesion / highest healthy",
                f"{wound['lesion']['min']:g} / {wound['normal']['max']:g}",
                _met(wound["every_lesion_above_every_normal"]),
            ),
            ("AUROC, wound-volume score", f"{wound['auroc']:.3f}", ""),
            ("AUROC, original-vs-reconstruction score", f"{other['auroc']:.3f}", ""),
            (
                "Dice of the wound segmentation: mean (min, max)",
                f"{dice['mean']:.3f} ({dice['min']:.3f}, {dice['max']:.3f})",
                _met(dice["mean"] >= MEAN_DICE_TARGET),
            ),
            (
                f"lesions >= {found['min_volume_ml']:g} cm^3 with Dice > {found['dice_above']:g}",
                f"{found['found']} of {found['n']}",
                _met(found["found"] == found["n"]),
            ),
            (
                "healthy subjects with any wound region",
                f"{with_region} of {normals}",
                _met(with_region <= HEALTHY_WITH_REGION_SHARE * normals),
            ),
            (
                "false-positive wound voxels per healthy subject (2 mm): mean (max)",
                f"{metrics['false_positive_voxels_in_normals']['mean']:.1f} "
                f"({metrics['false_positive_voxels_in_normals']['max']:g})",
                "",
            ),
        ]
        + [
            (f"Dice, {kind}: mean (min) over {entry['n']}", f"{entry['mean']:.3f} ({entry['min']:.3f})", "")
            for kind, entry in metrics["dice_by_lesion_kind"].items()
            if entry["n"]
        ]
        + voxel_rows(metrics)
    )


def voxel_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """Voxel-level rows (HD95, average precision of both maps, breakdown by lesion size) of a ``metrics.json`` that
    has them (evaluations since version 0.6.0)."""
    if "voxel_metrics" not in metrics:
        return []
    hd95 = metrics["hd95_mm"]
    rows = [
        (
            "HD95 of the wound segmentation, mm: mean (max) over lesions with a region",
            f"{hd95['mean']:.1f} ({hd95['max']:.1f})" if hd95["n"] else "-",
            "",
        )
    ]
    for name, entry in metrics["voxel_metrics"].items():
        label = name.replace("_", "-")
        pooled = entry["pooled_average_precision"]
        rows.append(
            (
                f"voxel average precision, {label} map: pooled over all cases",
                "-" if pooled is None else f"{pooled:.3f}",
                "",
            )
        )
        for measure in ("average_precision", "best_dice"):
            summary = entry[measure]
            if summary["n"]:
                rows.append(
                    (
                        f"{measure.replace('_', ' ')}, {label} map: mean (min) per lesion",
                        f"{summary['mean']:.3f} ({summary['min']:.3f})",
                        "",
                    )
                )
        for rule, fixed in entry.get("dice_at_fixed_threshold", {}).items():
            if fixed["dice"]["n"]:
                rows.append(
                    (
                        f"Dice of the {label} map at the {rule.replace('_', '-')} threshold ({fixed['threshold']:.3g}, "
                        "from the validation run): mean (min)",
                        f"{fixed['dice']['mean']:.3f} ({fixed['dice']['min']:.3f})",
                        "",
                    )
                )
    for name, entry in metrics.get("reconstruction_of_healthy_subjects", {}).items():
        if entry["n"]:
            measure, _, stage = name.rpartition("_")
            label = "reconstruction MSE" if measure == "reconstruction_mse" else "Dice of teeth and canal (x' > 0.75)"
            rows.append(
                (
                    f"{label}, {stage.replace('stage', 'stage ')} on healthy subjects: mean (max)",
                    f"{entry['mean']:.5f} ({entry['max']:.5f})",
                    "",
                )
            )
    for size, entry in metrics["by_lesion_size"].items():
        if entry["n"]:
            dice = entry["dice"]
            rows.append(
                (f"lesions {size}: Dice mean (min) over {entry['n']}", f"{dice['mean']:.3f} ({dice['min']:.3f})", "")
            )
    return rows


def eval_metrics(runs: dict[str, dict]) -> dict[str, float]:
    """Headline figures of every run for ``metadata.json#eval_metrics``."""
    figures = {}
    for label, metrics in runs.items():
        prefix = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
        found = metrics["lesions_found"]
        figures.update(
            {
                f"{prefix}_subject_auroc_two_reconstructions": round(metrics["score_two_reconstructions"]["auroc"], 4),
                f"{prefix}_subject_auroc_wound_volume": round(metrics["score_wound_volume"]["auroc"], 4),
                f"{prefix}_mean_dice": round(metrics["dice"]["mean"], 4),
                f"{prefix}_min_dice": round(metrics["dice"]["min"], 4),
                f"{prefix}_share_of_lesions_from_1ml_found": (
                    round(found["found"] / found["n"], 4) if found["n"] else None
                ),
                f"{prefix}_share_of_healthy_with_a_region": round(
                    metrics["normals_with_any_region"] / metrics["num_normal_cases"], 4
                ),
            }
        )
    return figures


def render_markdown(runs: dict[str, dict], command: str) -> str:
    """The acceptance tables of every run, in the order given."""
    lines = [f"<!-- generated by: {command} -->", ""]
    for label, metrics in runs.items():
        lines += [f"### {label}", "", "| measure | value | target |", "|---|---|---|"]
        lines += [f"| {measure} | {value} | {verdict} |" for measure, value, verdict in acceptance_rows(metrics)]
        lines.append("")
    return "\n".join(lines)


PERFORMANCE_START, PERFORMANCE_END = "<!-- performance:start -->", "<!-- performance:end -->"


def performance_block(runs: dict[str, dict]) -> str:
    """The first run's table, for the model card (the runs after it are variants, in acceptance.md)."""
    label, metrics = next(iter(runs.items()))
    lines = [PERFORMANCE_START, f"Held-out evaluation, {label}:", "", "| measure | value | target |", "|---|---|---|"]
    lines += [f"| {measure} | {value} | {verdict} |" for measure, value, verdict in acceptance_rows(metrics)]
    return "\n".join(lines + [PERFORMANCE_END])


def replace_performance_block(card: str, runs: dict[str, dict]) -> str:
    start, end = card.find(PERFORMANCE_START), card.find(PERFORMANCE_END)
    if start < 0 or end < start:
        raise ValueError(f"no '{PERFORMANCE_START}' ... '{PERFORMANCE_END}' block to replace")
    return card[:start] + performance_block(runs) + card[end + len(PERFORMANCE_END) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", action="append", help="'label=path/to/metrics.json'; repeat for several runs")
    source.add_argument("--from_json", type=Path, help="a JSON written by --json before")
    parser.add_argument("--json", type=Path, help="write the runs' metrics (cases included) here (needed with --run)")
    parser.add_argument("--markdown", type=Path, required=True, help="write the tables here")
    parser.add_argument("--metadata", type=Path, help="bundle metadata.json whose eval_metrics to replace")
    parser.add_argument("--model_card", type=Path, help="model card whose performance block to replace")
    args = parser.parse_args(argv)
    if args.run and not args.json:
        parser.error("--run needs --json, the file the table is generated from")
    if args.from_json:
        try:
            runs = json.loads(args.from_json.read_text())
        except (FileNotFoundError, json.JSONDecodeError) as error:
            raise SystemExit(f"report_evaluation: error: {args.from_json}: {error}") from None
    else:
        runs = dict(_load_run(item) for item in args.run)
    try:
        source_json = args.from_json or args.json
        command = f"python scripts/report_evaluation.py --from_json {source_json} --markdown {args.markdown}"
        markdown = render_markdown(runs, command)
        card = replace_performance_block(args.model_card.read_text(), runs) if args.model_card else None
    except ValueError as error:
        raise SystemExit(f"report_evaluation: error: {args.model_card}: {error}") from None
    except KeyError as error:
        raise SystemExit(f"report_evaluation: error: a run lacks {error} (metrics.json of an older bundle?)") from None
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
    args.markdown.write_text(markdown)
    if args.metadata:
        metadata = json.loads(args.metadata.read_text())
        metadata["eval_metrics"] = eval_metrics(runs)
        args.metadata.write_text(json.dumps(metadata, indent=4) + "\n")
    if card is not None:
        args.model_card.write_text(card)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
