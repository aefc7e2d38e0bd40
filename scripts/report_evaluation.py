"""The evaluation report: docs/results.md, docs/acceptance.md and the figures, generated from evaluation runs.

Each run is a folder written by the evaluation overlay (``bundle.evaluation.AnomalyEvaluationHandler``): its
``metrics.json``, case folders and ``figure_slices/``. ``python -m scripts.run_evaluation`` makes the runs and calls
this script; by hand::

    python -m scripts.report_evaluation --run default=runs/evaluation/default --run vqvae=runs/evaluation/vqvae \\
        --title "default=held-out shapes, default configuration" --json docs/evaluation.json --docs_dir docs

The run names that the report knows are ``RUN_NAMES`` (the runs of ``scripts/run_evaluation.py``); ``default`` is
required, the others add their sections. Written: ``--json`` (every run's title and metrics, cases included),
``<docs_dir>/results.md`` and ``<docs_dir>/acceptance.md`` (tables and every sentence with a number generated from
that JSON), and with run folders the figures in ``<docs_dir>/figures/evaluation/``. ``--from_json
docs/evaluation.json`` rewrites the Markdown from a JSON written before (no runs, no figures), so a test can check
that the committed documents are what the committed JSON gives. ``--metadata configs/metadata.json`` replaces its
``eval_metrics`` with the headline figures of every run (keys prefixed by the run's name); ``--model_card
docs/README.md`` replaces the part of the model card between ``<!-- performance:start -->`` and ``<!--
performance:end -->`` with the default run's table.

The targets are those of the real-anatomy issue: every lesion subject above every healthy one (the paper's
two-reconstruction score, and the wound volume that the post-processing of the same map gives), mean Dice >= 0.75,
every lesion of at least 1 cm^3 found (Dice > 0.3), at most 1 in 10 healthy subjects with any wound region.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from bundle.atomic_files import write_json_atomically, write_text_atomically

MEAN_DICE_TARGET = 0.75
HEALTHY_WITH_REGION_SHARE = 0.1
RUN_NAMES = (
    "default",
    "search_region_off",
    "label_map_only",
    "native_05mm",
    "segmentation_errors",
    "segmentation_errors_label_map_only",
    "missing_teeth",
    "missing_teeth_label_map_only",
    "parametric",
    "parametric_search_region_off",
    "mirror",
    "parametric_mirror",
    "vqvae",
)
# paper section 5.1 (cited): reconstruction MSE of the VQ-GAN and the VQ-VAE, stage 1 on healthy test subjects and
# stage 2 on the teeth-and-jaw-removed simulation against the intact original
PAPER_MSE = {"stage 1": (0.009196, 0.009174), "stage 2": (0.012047, 0.009850)}
REMOVAL = "teeth_and_jaw_removed"
# lesion kind of the phantom writer -> its site, for the breakdown
SITES = {
    "onj": "mandible body: ONJ",
    "teeth_and_jaw_removed": "mandible body: teeth and jaw removed",
    "onj_ramus": "ramus: ONJ",
    "onj_maxilla": "maxilla: ONJ",
}
MAP_TITLES = {
    "two_reconstructions": "two reconstructions, (G2 - G1)^2",
    "original_vs_reconstruction": "original vs reconstruction, abs(G2 - x')",
    "latent_disagreement": "latent disagreement (code distance, no decoder)",
}
SCORE_TITLES = {
    "score_two_reconstructions": "two-reconstruction score (voxels, the paper's)",
    "score_original_vs_reconstruction": "original-vs-reconstruction score (voxels)",
    "score_wound_volume": "wound volume (mm^3)",
}
FIGURES = {
    "healthy": "reconstruction_healthy.png",
    "removal": "reconstruction_teeth_and_jaw_removed.png",
    "maps": "anomaly_maps.png",
    "scores": "score_histograms.png",
    "meshes": "wound_meshes.png",
}
FIGURE_FOLDER = "figures/evaluation"
# the 2 mm timing of scripts/benchmark_inference.py, for the maps' times
BENCHMARK = Path(__file__).resolve().parents[1] / "docs" / "benchmark_inference.json"


def _met(condition: bool) -> str:
    return "met" if condition else "**not met**"


def _mean_min(summary: dict, digits: int = 3) -> str:
    return f"{summary['mean']:.{digits}f} ({summary['min']:.{digits}f})" if summary.get("n") else "-"


def _mean_max(summary: dict, digits: int = 3) -> str:
    return f"{summary['mean']:.{digits}f} ({summary['max']:.{digits}f})" if summary.get("n") else "-"


def _optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows] + [""]


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
            (
                "HD95 of the wound segmentation, mm: mean (max) over lesions with a region",
                _mean_max(metrics["hd95_mm"], 1),
                "",
            ),
        ]
        + [
            (f"Dice, {kind}: mean (min) over {entry['n']}", _mean_min(entry["dice"]), "")
            for kind, entry in metrics["by_lesion_kind"].items()
        ]
        + [
            (f"Dice, lesions {size}: mean (min) over {entry['n']}", _mean_min(entry["dice"]), "")
            for size, entry in metrics["by_lesion_size"].items()
            if entry["n"]
        ]
    )


def eval_metrics(runs: dict[str, dict]) -> dict[str, float | None]:
    """Headline figures of every run for ``metadata.json#eval_metrics``."""
    figures: dict[str, float | None] = {}
    for name, run in runs.items():
        metrics = run["metrics"]
        found = metrics["lesions_found"]
        pooled = metrics["voxel_metrics"]["two_reconstructions"]["pooled_average_precision"]
        figures.update(
            {
                f"{name}_subject_auroc_two_reconstructions": round(metrics["score_two_reconstructions"]["auroc"], 4),
                f"{name}_subject_auroc_wound_volume": round(metrics["score_wound_volume"]["auroc"], 4),
                f"{name}_mean_dice": round(metrics["dice"]["mean"], 4),
                f"{name}_min_dice": round(metrics["dice"]["min"], 4),
                f"{name}_share_of_lesions_from_1ml_found": (
                    round(found["found"] / found["n"], 4) if found["n"] else None
                ),
                f"{name}_share_of_healthy_with_a_region": round(
                    metrics["normals_with_any_region"] / metrics["num_normal_cases"], 4
                ),
                f"{name}_pooled_voxel_average_precision": None if pooled is None else round(pooled, 4),
            }
        )
    return figures


def render_acceptance(runs: dict[str, dict], command: str) -> str:
    """The acceptance table of every run, in the order given."""
    lines = [f"<!-- generated by: {command} -->", ""]
    for run in runs.values():
        lines += [f"### {run['title']}", ""]
        lines += _table(["measure", "value", "target"], [list(row) for row in acceptance_rows(run["metrics"])])
    return "\n".join(lines)


PERFORMANCE_START, PERFORMANCE_END = "<!-- performance:start -->", "<!-- performance:end -->"


def performance_block(runs: dict[str, dict]) -> str:
    """The default run's table, for the model card (the other runs are in acceptance.md and results.md)."""
    run = runs["default"]
    lines = [PERFORMANCE_START, f"Held-out evaluation, {run['title']}:", ""]
    lines += _table(["measure", "value", "target"], [list(row) for row in acceptance_rows(run["metrics"])])
    return "\n".join(lines[:-1] + [PERFORMANCE_END])


def replace_performance_block(card: str, runs: dict[str, dict]) -> str:
    start, end = card.find(PERFORMANCE_START), card.find(PERFORMANCE_END)
    if start < 0 or end < start:
        raise ValueError(f"no '{PERFORMANCE_START}' ... '{PERFORMANCE_END}' block to replace")
    return card[:start] + performance_block(runs) + card[end + len(PERFORMANCE_END) :]


def _compare(better: str, a: float, b: float, names: tuple[str, str], lower_is_better: bool = True) -> str:
    """'lower for the VQ-VAE (0.00434 against 0.00533 for the VQ-GAN)': ``a`` (of names[0]) against ``b``."""
    if a == b:
        return f"equal ({a:.5g})"
    first_wins = (a < b) == lower_is_better
    (winner, winning), (loser, losing) = (
        ((names[0], a), (names[1], b)) if first_wins else ((names[1], b), (names[0], a))
    )
    return f"{better} for the {winner} ({winning:.5g} against {losing:.5g} for the {loser})"


HEALTHY, RESTORATION = "reconstruction_of_healthy_subjects", "restoration_of_lesion_subjects"
# (row label, measure key, section of metrics.json, the paper's (VQ-GAN, VQ-VAE) figure or None)
EXPERIMENT_1_ROWS = (
    ("stage 1, healthy subjects: MSE against the input", "reconstruction_mse_stage1", HEALTHY, PAPER_MSE["stage 1"]),
    ("stage 1, healthy subjects: teeth/canal Dice (x' > 0.75)", "reconstruction_teeth_dice_stage1", HEALTHY, None),
    ("stage 2, removal: MSE against the intact map", "restoration_mse_stage2", RESTORATION, PAPER_MSE["stage 2"]),
    ("stage 2, removal: MSE inside the removed tissue", "restoration_lesion_mse_stage2", RESTORATION, None),
    ("stage 2, removal: teeth/canal Dice against the intact map", "restoration_teeth_dice_stage2", RESTORATION, None),
    ("stage 1, removal: MSE inside the removed tissue", "restoration_lesion_mse_stage1", RESTORATION, None),
)


def _reconstruction_entry(metrics: dict | None, key: str, section: str) -> dict:
    """The summary of one reconstruction measure: over healthy subjects, or over the teeth-and-jaw removals."""
    if metrics is None:
        return {}
    entries = metrics[section].get(REMOVAL, {}) if section == RESTORATION else metrics[section]
    return entries.get(key, {})


def _experiment_1(runs: dict[str, dict]) -> list[str]:
    gan = runs["default"]["metrics"]
    vae = runs.get("vqvae", {}).get("metrics")
    table = [
        [label, _mean_max(_reconstruction_entry(gan, key, section), 5)]
        + [_mean_max(_reconstruction_entry(vae, key, section), 5)]
        + ([f"{paper[0]:g}", f"{paper[1]:g}"] if paper else ["-", "-"])
        for label, key, section, paper in EXPERIMENT_1_ROWS
    ]
    removals = _reconstruction_entry(gan, "restoration_mse_stage2", RESTORATION).get("n", 0)
    lines = [
        "## Experiment 1: reconstruction (paper section 5.1)",
        "",
        f"Stage 1 on the {gan['num_normal_cases']} healthy held-out subjects; stage 2 on the {removals} subjects of "
        "the paper's teeth-and-jaw removal, against the intact map of the same subject (kept by the phantom writer). "
        "Mean (max) over subjects; the paper's figures are cited for reference (real CBCT, another model size).",
        "",
    ]
    lines += _table(["measure", "VQ-GAN (shipped)", "VQ-VAE", "paper VQ-GAN", "paper VQ-VAE"], table)
    if vae is None:
        return lines + ["No VQ-VAE run: `--vqvae_checkpoint` was absent (docs/demo_weights.md makes it).", ""]
    gan_model, vae_model = (run.get("model", {}) for run in (gan, vae))
    gan_weights, vae_weights = (
        f"version {model.get('version', '?')}, sha256 {model.get('sha256', '?')[:12]}..."
        for model in (gan_model, vae_model)
    )
    training = (
        "both trained on the same phantoms"
        if gan_model.get("version") == vae_model.get("version")
        else f"the VQ-GAN's fine-tunes after version {vae_model.get('version', '?')} were not repeated for the VQ-VAE"
    )
    lines += [
        f"Weights: VQ-GAN {gan_weights}; VQ-VAE {vae_weights} ({training}; how each was trained, and where their "
        "schedules differ: [demo_weights.md](demo_weights.md)).",
        "",
    ]
    for label, key, section, _ in EXPERIMENT_1_ROWS[:3] + EXPERIMENT_1_ROWS[4:5]:
        a, b = _reconstruction_entry(gan, key, section), _reconstruction_entry(vae, key, section)
        if a.get("n") and b.get("n"):
            dice = "Dice" in label
            phrase = _compare("higher" if dice else "lower", a["mean"], b["mean"], ("VQ-GAN", "VQ-VAE"), not dice)
            lines.append(f"- {label}: {phrase}.")
    return lines + [""]


def _subject_scores(metrics: dict) -> list[str]:
    rows = []
    for key, title in SCORE_TITLES.items():
        entry = metrics[key]
        lesion_scores = [c[key] for c in metrics["cases"] if c["lesion"] != "none"]
        normals = entry["normal"].get("n", 0)
        rows.append(
            [
                title,
                f"{normals - entry.get('normals_scoring_zero', 0)} of {normals}",
                f"{entry['normal'].get('max', 0):g}",
                f"{min(lesion_scores):g} / {statistics.median(lesion_scores):g} / {max(lesion_scores):g}",
                f"{entry['auroc']:.3f}",
                f"{entry['average_precision']:.3f}",
                "yes" if entry["every_lesion_above_every_normal"] else "no",
            ]
        )
    header = ["score", "healthy above 0", "largest healthy", "lesion min / median / max", "AUROC", "AP", "separates"]
    return _table(header, rows)


def _at_threshold(fixed: dict | None) -> str:
    if fixed is None:
        return "-"
    hd95 = fixed.get("hd95_mm", {})
    distance = f"{hd95['mean']:.1f}" if hd95.get("n") else "-"
    return f"{_mean_min(fixed['dice'])}; {distance} (at {fixed['threshold']:.3g})"


def _voxel_level(metrics: dict) -> list[str]:
    rows = []
    for name, entry in metrics["voxel_metrics"].items():
        pooled = entry["pooled_average_precision"]
        fixed = entry.get("dice_at_fixed_threshold", {})
        rows.append(
            [
                MAP_TITLES.get(name, name),
                _optional(pooled),
                _mean_min(entry["average_precision"]),
                _mean_min(entry["best_dice"]),
            ]
            + [_at_threshold(fixed.get(rule)) for rule in ("validation_tuned", "healthy_calibrated")]
        )
    header = [
        "map",
        "AP pooled over all voxels",
        "AP per lesion: mean (min)",
        "best Dice per lesion: mean (min)",
        "at the validation-tuned threshold: Dice mean (min); HD95 mm mean",
        "at the healthy-calibrated threshold: Dice mean (min); HD95 mm mean",
    ]
    return _table(header, rows)


def _breakdown(metrics: dict) -> list[str]:
    rows = []
    for group in ("by_lesion_size", "by_lesion_kind"):
        for name, entry in metrics[group].items():
            if entry["n"]:
                found = (
                    f"{entry['found']} of {entry['n_at_least_min_volume']}" if entry["n_at_least_min_volume"] else "-"
                )
                label = SITES.get(name, name) if group == "by_lesion_kind" else name
                rows.append([label, entry["n"], _mean_min(entry["dice"]), _mean_max(entry["hd95_mm"], 1), found])
    found = metrics["lesions_found"]
    header = [
        "lesions",
        "n",
        "Dice: mean (min)",
        "HD95 mm: mean (max)",
        f"found (>= {found['min_volume_ml']:g} cm^3, Dice > {found['dice_above']:g})",
    ]
    return _table(header, rows)


def _variants(runs: dict[str, dict]) -> list[str]:
    names = [name for name in RUN_NAMES if name in runs]
    rows = []
    for label, measure in (
        (
            "healthy subjects with any wound region",
            lambda m: f"{m['normals_with_any_region']} of {m['num_normal_cases']}",
        ),
        (
            "false-positive voxels per healthy subject: mean",
            lambda m: f"{m['false_positive_voxels_in_normals']['mean']:.1f}",
        ),
        ("Dice: mean (min)", lambda m: _mean_min(m["dice"])),
        ("lesions >= 1 cm^3 found", lambda m: f"{m['lesions_found']['found']} of {m['lesions_found']['n']}"),
        ("AUROC, two-reconstruction score", lambda m: f"{m['score_two_reconstructions']['auroc']:.3f}"),
        ("AUROC, wound volume", lambda m: f"{m['score_wound_volume']['auroc']:.3f}"),
        (
            "AP of the two-reconstruction map, pooled over all voxels",
            lambda m: _optional(m["voxel_metrics"]["two_reconstructions"]["pooled_average_precision"]),
        ),
    ):
        rows.append([label] + [measure(runs[name]["metrics"]) for name in names])
    return _table(["measure"] + [runs[name]["title"] for name in names], rows)


def render_results(runs: dict[str, dict], command: str, timing: dict | None) -> str:
    """docs/results.md: both experiments of the paper and the additions, from the runs' metrics alone."""
    default = runs["default"]["metrics"]
    model = default.get("model", {})
    volume = default["lesion_volume_ml"]
    figure = f"{FIGURE_FOLDER}/"
    parametric = ""
    if "parametric" in runs:
        other = runs["parametric"]["metrics"]
        parametric = (
            f", and {other['num_normal_cases']} healthy and {other['num_lesion_cases']} lesion version-0.2 "
            "parametric phantoms"
        )
    score = default.get("subject_score_parameters", {})
    lines = [
        f"<!-- generated by: {command} -->",
        "",
        "# Evaluation of the shipped weights on held-out phantoms",
        "",
        f"Weights `models/model.pt` version {model.get('version', '?')} (sha256 {model.get('sha256', '?')[:12]}...). "
        f"Default set: {default['num_normal_cases']} healthy and {default['num_lesion_cases']} lesion subjects "
        f"(lesions of {volume['min']:.2f}-{volume['max']:.2f} cm^3) built on real mandible shapes that no model "
        f"trained on{parametric}. **These are synthetic phantoms: the weights are not for clinical use.** How the "
        "weights were trained and the defaults tuned: [demo_weights.md](demo_weights.md). Every table comes from "
        "[evaluation.json](evaluation.json), which also holds every case; the full table of each run: "
        "[acceptance.md](acceptance.md).",
        "",
        "## Targets of the real-anatomy issue (default configuration)",
        "",
    ]
    lines += _table(["measure", "value", "target"], [list(row) for row in acceptance_rows(default) if row[2]])
    lines += _experiment_1(runs)
    lines += [
        f"![stage 1 on a healthy subject]({figure}{FIGURES['healthy']})",
        "",
        f"![stage 2 on a teeth-and-jaw removal]({figure}{FIGURES['removal']})",
        "",
        "## Experiment 2: anomaly detection (paper section 5.2)",
        "",
        "### Subject level",
        "",
        f"The paper's score counts the voxels of a map above {score.get('threshold', '?')} after "
        f"{score.get('erosion_iterations', '?')} erosion(s); the wound volume is the total volume of the final wound "
        "regions (`wound_volume_mm3` of each report). AP: average precision of the subject scores, lesion subjects "
        "positive.",
        "",
    ]
    lines += _subject_scores(default)
    lines += [f"![subject score histograms]({figure}{FIGURES['scores']})", "", "### Voxel level", ""]
    # the handler's rule, the same in the validation run that fixed the thresholds
    rate = next(iter(default["voxel_metrics"].values()), {}).get("healthy_false_positive_rate")
    share = f"1 in {round(1 / rate):,}" if rate else "a fixed share"
    lines += [
        "Against the truth masks on the 2 mm grid. AP pooled over every voxel of every case (healthy ones "
        "included, as the MOOD challenge counts it) and per lesion; the best Dice over all thresholds per lesion; "
        "the Dice at two thresholds fixed on the validation run (the tuning set): the pooled best Dice's (needs "
        f"labelled lesions) and the value that only {share} healthy voxels reach there (needs healthy "
        "scans only).",
        "",
    ]
    lines += _voxel_level(default)
    wound = default["dice"]
    lines += [
        f"Final wound segmentation (the post-processed two-reconstruction map): Dice mean (min) {_mean_min(wound)}; "
        f"HD95 mean (max) {_mean_max(default['hd95_mm'], 1)} mm over the lesions with a region.",
        "",
    ]
    if timing:
        seconds = timing["median_seconds"]
        lines += [
            f"Time at 2 mm ({'x'.join(str(s) for s in timing['grid'])} voxels, {timing['threads']} threads, "
            "[benchmark_inference_table.md](benchmark_inference_table.md)): both reconstructions "
            f"{seconds['reconstructions']:.2f} s; the latent disagreement map alone "
            f"{seconds['latent_disagreement_only']:.2f} s.",
            "",
        ]
    lines += [f"![anomaly maps]({figure}{FIGURES['maps']})", "", "### By lesion size and site", ""]
    lines += _breakdown(default)
    lines += ["### Other inputs and settings: search region, CBCT, resolution, segmentation errors, 0.2 phantoms", ""]
    if "native_05mm" in runs or "segmentation_errors" in runs:
        lines += [
            "The 0.5 mm and segmentation-error runs take the held-out subjects of the default run again: the same "
            "anatomy and lesions, rendered at the real maps' resolution, or with a mandible 1 mm thinner (towards the "
            "real map's thickness) and an automatic segmenter's kinds of error in the label map (stress levels, not "
            "measured error rates; docs/phantoms.md). Truth, CBCT and intact maps are those of the exact phantoms.",
            "",
        ]
    if "missing_teeth" in runs:
        lines += [
            "The missing-teeth runs take the held-out subjects' seeds again with 1-3 premolars or molars missing in "
            "every subject, lesion subjects included (a quarter of the default run's subjects lack teeth): a healed "
            "socket leaves an empty crown space over a resorbed crest, which a label map cannot tell from bone lost "
            "to a small alveolar lesion. The subjects keep their mandible shapes and teeth, but the "
            "missing-teeth draw takes random numbers that the skull, field of view and pose drew before, so these "
            "differ for most subjects.",
            "",
        ]
    if "vqvae" in runs:
        lines += [
            "The VQ-VAE run uses the post-processing defaults tuned for the shipped VQ-GAN (demo_weights.md).",
            "",
        ]
    lines += _variants(runs)
    lines += [
        "### Exported STL meshes",
        "",
        f"![wound meshes over the jaw]({figure}{FIGURES['meshes']})",
        "",
        "## Regenerate",
        "",
        "```bash",
        "python -m scripts.run_evaluation   # phantom sets when missing, every run, this page, figures, metadata",
        "```",
        "",
    ]
    return "\n".join(lines)


def _first_cases(metrics: dict, folder: Path) -> dict[str, list[str]]:
    """Case names with figure slices, per lesion kind, in run order."""
    from bundle.evaluation import FIGURE_SLICES

    saved = {path.stem for path in (folder / FIGURE_SLICES).glob("*.npz")}
    kinds: dict[str, list[str]] = {}
    for case in metrics["cases"]:
        if case["case"] in saved:
            kinds.setdefault(case["lesion"], []).append(case["case"])
    return kinds


def write_figures(runs: dict[str, dict], folders: dict[str, Path], output: Path) -> list[Path]:
    """The figures of results.md from the run folders (paper figures 3, 4, 5, score histograms, STL render)."""
    # imported here: torch, MONAI and matplotlib are needed for figures only, not to rewrite the tables
    from bundle.evaluation import FIGURE_SLICES
    from scripts import evaluation_figures as figures

    default, folder = runs["default"]["metrics"], folders["default"]
    kinds = _first_cases(default, folder)
    vae_folder = folders.get("vqvae")
    if vae_folder is not None and not (vae_folder / FIGURE_SLICES).is_dir():
        # a baseline given by its metrics.json alone (weights not at hand) has no slices to draw
        vae_folder = None

    def slices(run_folder: Path, case: str):
        return np.load(run_folder / FIGURE_SLICES / f"{case}.npz")

    written = []
    if kinds.get("none"):
        case = kinds["none"][0]
        columns = [("input", slices(folder, case), "input"), ("VQ-GAN stage 1", slices(folder, case), "stage1")]
        if vae_folder:
            columns.append(("VQ-VAE stage 1", slices(vae_folder, case), "stage1"))
        written.append(figures.reconstruction_figure(columns, output / FIGURES["healthy"], f"{case}, healthy"))
    if kinds.get(REMOVAL):
        case = kinds[REMOVAL][0]
        columns = [
            ("intact original", slices(folder, case), "intact"),
            ("input: teeth and jaw removed", slices(folder, case), "input"),
            ("VQ-GAN stage 2", slices(folder, case), "stage2"),
        ]
        if vae_folder:
            columns.append(("VQ-VAE stage 2", slices(vae_folder, case), "stage2"))
        written.append(figures.reconstruction_figure(columns, output / FIGURES["removal"], f"{case}, {REMOVAL}"))
    rows = [(f"{cases[0]} {kind}", slices(folder, cases[0])) for kind, cases in kinds.items() if kind != "none"]
    if rows:
        written.append(figures.anomaly_maps_figure(rows, output / FIGURES["maps"], list(default["voxel_metrics"])))
    written.append(figures.score_histograms(default["cases"], output / FIGURES["scores"]))
    with_regions = [c for c in default["cases"] if c["lesion"] != "none" and c["num_regions"] > 0]
    if with_regions:
        best = max(with_regions, key=lambda c: c.get("dice", 0.0))["case"]
        report = json.loads((folder / best / "report.json").read_text())
        meshes = sorted((folder / best).glob("*.stl"))
        written.append(figures.mesh_figure(report["input"], meshes, output / FIGURES["meshes"], best))
    return written


def _load_run(folder: Path) -> dict:
    path = folder / "metrics.json" if folder.is_dir() else folder
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"report_evaluation: error: {path}: metrics file not found") from None
    except json.JSONDecodeError as error:
        raise SystemExit(f"report_evaluation: error: {path}: not valid JSON ({error})") from None


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"report_evaluation: error: {option} {item!r} is not of the form 'name=value'")
        if name not in RUN_NAMES:
            raise SystemExit(f"report_evaluation: error: {option} {item!r}: unknown run {name!r}; one of {RUN_NAMES}")
        pairs[name] = value
    return pairs


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when inside it, for the generated-by line of the documents."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", action="append", help="'name=run folder (or its metrics.json)'; repeat per run")
    source.add_argument("--from_json", type=Path, help="a JSON written by --json before")
    parser.add_argument("--title", action="append", help="'name=title' of a run (default: its name)")
    parser.add_argument("--json", type=Path, help="write the runs' metrics (cases included) here (needed with --run)")
    parser.add_argument("--docs_dir", type=Path, required=True, help="results.md, acceptance.md and figures go here")
    parser.add_argument("--benchmark", type=Path, help=f"the maps' times (default {BENCHMARK.name} of docs/)")
    parser.add_argument("--metadata", type=Path, help="bundle metadata.json whose eval_metrics to replace")
    parser.add_argument("--model_card", type=Path, help="model card whose performance block to replace")
    args = parser.parse_args(argv)
    if args.run and not args.json:
        parser.error("--run needs --json, the file the tables are generated from")
    folders = {name: Path(value) for name, value in _pairs(args.run, "--run").items()}
    if args.from_json:
        try:
            runs = json.loads(args.from_json.read_text())
        except (FileNotFoundError, json.JSONDecodeError) as error:
            raise SystemExit(f"report_evaluation: error: {args.from_json}: {error}") from None
    else:
        titles = _pairs(args.title, "--title")
        runs = {
            name: {"title": titles.get(name, name), "metrics": _load_run(folder)} for name, folder in folders.items()
        }
    if "default" not in runs:
        raise SystemExit("report_evaluation: error: no 'default' run")
    source_json = args.from_json or args.json
    benchmark = args.benchmark or BENCHMARK
    timing = json.loads(benchmark.read_text()) if benchmark.is_file() else None
    command = (
        f"python -m scripts.report_evaluation --from_json {_shown(source_json)} --docs_dir {_shown(args.docs_dir)}"
    )
    try:
        results = render_results(runs, command, timing)
        acceptance = render_acceptance(runs, command)
        card = replace_performance_block(args.model_card.read_text(), runs) if args.model_card else None
    except ValueError as error:
        raise SystemExit(f"report_evaluation: error: {args.model_card}: {error}") from None
    except KeyError as error:
        raise SystemExit(f"report_evaluation: error: a run lacks {error} (metrics.json of an older bundle?)") from None
    args.docs_dir.mkdir(parents=True, exist_ok=True)
    if args.json:
        write_json_atomically(args.json, runs, indent=1)
    if folders:
        write_figures(runs, folders, args.docs_dir / FIGURE_FOLDER)
    write_text_atomically(args.docs_dir / "results.md", results)
    write_text_atomically(args.docs_dir / "acceptance.md", acceptance)
    if args.metadata:
        metadata = json.loads(args.metadata.read_text())
        metadata["eval_metrics"] = eval_metrics(runs)
        write_json_atomically(args.metadata, metadata)
    if card is not None:
        write_text_atomically(args.model_card, card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
