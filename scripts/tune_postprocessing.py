"""Choose the inference defaults (sliding-window overlap and blending, post-processing, subject score) on a tuning set.

The tuning set must be labelled phantoms (or real cases with truth masks) that are *not* the held-out evaluation set,
e.g. ``python scripts/make_phantoms.py data/phantoms_tune --train_subjects 0 --val_subjects 0 --test_subjects 20
--lesion_fraction 0.5 --seed 555``. A datalist holding any subject of the held-out sets of
``scripts/run_evaluation.py`` (the same subject seed) is refused. Everything runs through the bundle's own configs:
``configs/inference.json`` with the ``configs/evaluate.json`` overlay gives the preprocessing (truth included), the
network, the inferer and the 2 mm post-processing (``segmentation_steps``), so what is tuned is exactly what
``monai.bundle run`` executes.

1. Inferer: for each overlap x blend mode, both reconstructions of every case, timed; reported with the map's mean
   voxel average precision and the Dice of the current default segmentation.
2. Post-processing: with the config's inferer, the reconstructions are computed once per case and cached; every
   combination of the ``--grid`` values is applied to them and scored by the mean Dice on the lesion cases. Among
   the combinations within ``--dice_tolerance`` of the best mean Dice (differences that small are noise on a
   tuning set of this size), the one with the fewest healthy subjects with any wound region is chosen, then the
   fewest false-positive voxels. The grid includes the anatomical search region's radius ``search_region_mm``
   (``null``: off, the paper's behaviour) and the smallest region kept, ``min_region_mm3``. Each row also says
   whether the total wound volume separates lesion from healthy subjects (the ``wound_volume`` subject score).
3. Subject score: every ``score_threshold`` x ``score_erosion_iterations`` pair, for each ``search_region_mm`` of the
   grid (the score counts only voxels in the region), scored by whether every lesion subject scores above every
   healthy one and by the margin (min lesion + 1) / (max healthy + 1); each row also gives the AUROC and every
   case's score by name, so that the subjects deciding the separation can be followed from one model to the next.
   One radius serves both the wound regions and the score: choose it from both tables.

    python scripts/tune_postprocessing.py data/phantoms_tune/datalist.json --json docs/tuning.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.atomic_files import write_json_atomically  # noqa: E402
from bundle.metrics import average_precision, dice_at_threshold, subject_auroc  # noqa: E402
from bundle.outputs import case_name  # noqa: E402
from bundle.scoring import subject_score  # noqa: E402
from bundle.weights import load_verified_weights  # noqa: E402
from scripts.run_evaluation import held_out_subject_seeds  # noqa: E402

DEFAULT_GRID = {
    "search_region_mm": [None, 10, 15, 20],
    "segmentation_threshold": [0.03, 0.05, 0.1, 0.2],
    "anomaly_erosion_radius": [0, 1],
    "anomaly_dilation_radius": [1],
    "grow_steps": [4, 10],
    "grow_tissue_threshold": [0.25, 0.35, 0.45, 0.55],
    "min_region_mm3": [64, 128, 256, 384],
}
DEFAULT_SCORE_THRESHOLDS = [0.05, 0.1, 0.2, 0.3]
DEFAULT_SCORE_EROSIONS = [1, 2]


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["name=[v1, v2]", ...]`` -> {name: [v1, v2]}; the values are a JSON list."""
    grid = {}
    for item in items:
        name, _, values = item.partition("=")
        try:
            grid[name] = json.loads(values)
        except json.JSONDecodeError:
            grid[name] = None
        if not isinstance(grid[name], list) or not grid[name]:
            raise SystemExit(f"error: --grid item {item!r} is not of the form name=[value, ...]")
    return grid


def parse_overrides(items: list[str]) -> dict:
    """``["name=JSON", ...]`` -> {name: value}."""
    overrides = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError as error:
            raise SystemExit(f"error: --override {item!r}: the value is not JSON ({error})") from None
    return overrides


def evaluation_parser(datalist: str, datalist_key: str, checkpoint: str) -> ConfigParser:
    """The bundle's ``configs/inference.json`` with the ``configs/evaluate.json`` overlay, on a datalist's list."""
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "inference.json"), str(ROOT / "configs" / "evaluate.json")])
    parser["bundle_root"] = str(ROOT)
    parser.update({"datalist": str(Path(datalist).resolve()), "datalist_key": datalist_key, "checkpoint": checkpoint})
    return parser


def load_network(parser: ConfigParser) -> torch.nn.Module:
    """The config's network with the checkpoint's verified weights, in eval mode."""
    network = parser.get_parsed_content("network")
    load_verified_weights(network, parser.get_parsed_content("checkpoint"))
    return network.eval()


def load_cases(parser: ConfigParser) -> list[dict]:
    """Preprocessed cases of the datalist (name, image, optional cbct and truth, lesion kind), one dict each."""
    dataset = parser.get_parsed_content("dataset")
    cases = []
    for item in dataset:
        truth = item.get("truth")
        image = item[parser["image_key"]]
        cases.append(
            {
                "name": case_name(image),
                "image": image,
                "cbct": item.get("cbct"),
                "truth": None if truth is None else np.asarray(truth[0]) > 0,
                "lesion": item.get("lesion", "none"),
            }
        )
    return cases


def has_lesion(case: dict) -> bool:
    return case["truth"] is not None and bool(case["truth"].any())


def reconstruct(network: torch.nn.Module, inferer, cases: list[dict], device: torch.device) -> float:
    """Run ``inferer`` on every case (writes ``case["pred"]``); returns the mean seconds per case."""
    start = time.perf_counter()
    with torch.inference_mode():
        for case in cases:
            case["pred"] = inferer(case["image"].unsqueeze(0).to(device), network)[0].cpu()
    return (time.perf_counter() - start) / len(cases)


def segment(steps: Compose, case: dict, image_key: str) -> np.ndarray:
    data = {"pred": case["pred"], image_key: case["image"]}
    if case["cbct"] is not None:
        data["cbct"] = case["cbct"]
    return np.asarray(steps(data)["wound"][0]) > 0


def segmentation_metrics(parser: ConfigParser, cases: list[dict]) -> dict:
    """Wound-segmentation figures for the parser's current values: mean Dice on lesion cases, healthy subjects with
    any region and their mean false-positive voxels, and whether the wound volume alone separates the two groups
    (every lesion subject's total wound volume above every healthy one's)."""
    steps = Compose(parser.get_parsed_content("segmentation_steps"))
    dice, false_positives, lesion_volumes = [], [], []
    for case in cases:
        wound = segment(steps, case, parser["image_key"])
        if has_lesion(case):
            truth = case["truth"]
            dice.append(dice_at_threshold(wound, truth, 0.5))
            lesion_volumes.append(int(wound.sum()))
        else:
            false_positives.append(int(wound.sum()))
    return {
        "mean_dice": float(np.mean(dice)) if dice else float("nan"),
        "min_dice": float(np.min(dice)) if dice else float("nan"),
        "healthy_with_region": sum(v > 0 for v in false_positives),
        "mean_false_positive_voxels": float(np.mean(false_positives)) if false_positives else 0.0,
        "wound_volume_separates": bool(lesion_volumes) and min(lesion_volumes) > max(false_positives, default=0),
    }


def choose_postprocessing(rows: list[dict], dice_tolerance: float) -> dict:
    """Among the rows within ``dice_tolerance`` of the best mean Dice: fewest healthy subjects with a region, then
    fewest false-positive voxels (a false alarm is counted per subject first, as a user meets it)."""
    best_dice = max(r["mean_dice"] for r in rows)
    close = [r for r in rows if r["mean_dice"] >= best_dice - dice_tolerance]
    return min(close, key=lambda r: (r["healthy_with_region"], r["mean_false_positive_voxels"], -r["mean_dice"]))


def search_regions(parser: ConfigParser, cases: list[dict], radius_mm: float | None) -> list[torch.Tensor]:
    """The config's anatomical search region of every case (from its input and cached G2) for one radius."""
    parser["search_region_mm"] = radius_mm
    step = parser.get_parsed_content("search_region_step")
    image_key = parser["image_key"]
    return [step({image_key: case["image"], "pred_recon2": case["pred"][2:3]})["search_region"] for case in cases]


def score_metrics(cases: list[dict], regions: list[torch.Tensor], threshold: float, erosions: int) -> dict:
    """Subject scores of every case by name, the lowest lesion and highest healthy score, and their AUROC (``None``
    without both groups); the per-case scores say which subjects decide the separation."""
    scores = [
        subject_score(case["pred"][0], threshold, erosions, region=region) for case, region in zip(cases, regions)
    ]
    labels = [int(has_lesion(case)) for case in cases]
    lesion = [score for score, label in zip(scores, labels) if label]
    normal = [score for score, label in zip(scores, labels) if not label]
    lesion_min = min(lesion) if lesion else 0
    normal_max = max(normal) if normal else 0
    return {
        "score_threshold": threshold,
        "score_erosion_iterations": erosions,
        "lesion_min": lesion_min,
        "normal_max": normal_max,
        "normals_zero": sum(s == 0 for s in normal),
        "separated": lesion_min > normal_max,
        "margin": (lesion_min + 1) / (normal_max + 1),
        "auroc": subject_auroc(scores, labels) if lesion and normal else None,
        "scores": {case["name"]: score for case, score in zip(cases, scores)},
    }


@torch.no_grad()  # for this call only: the tests run main in-process
def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("datalist", help="datalist JSON of the tuning set (its 'test' list)")
    args.add_argument("--datalist_key", default="test")
    args.add_argument("--checkpoint", default="models/model.pt")
    args.add_argument("--overlaps", type=float, nargs="*", default=[0.0, 0.25, 0.5])
    args.add_argument("--blend_modes", nargs="*", default=["constant", "gaussian"])
    args.add_argument(
        "--grid",
        nargs="*",
        default=[],
        help="name=[v1,v2] post-processing values to try " "(replaces that parameter's default list)",
    )
    args.add_argument(
        "--dice_tolerance",
        type=float,
        default=0.005,
        help="mean-Dice margin within which fewer false positives win (default 0.005)",
    )
    args.add_argument("--score_thresholds", type=float, nargs="*", default=DEFAULT_SCORE_THRESHOLDS)
    args.add_argument("--score_erosions", type=int, nargs="*", default=DEFAULT_SCORE_EROSIONS)
    args.add_argument(
        "--override",
        nargs="*",
        default=[],
        help="name=JSON config values to set first, as "
        "`monai.bundle run --name value` would (e.g. a generator_def matching --checkpoint)",
    )
    args.add_argument("--json", type=Path, help="write all results here")
    args.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    opts = args.parse_args(argv)
    if not Path(opts.datalist).is_file():
        print(f"error: datalist {opts.datalist}: no such file", file=sys.stderr)
        return 2
    try:
        entries = json.loads(Path(opts.datalist).read_text())[opts.datalist_key]
    except (ValueError, KeyError, TypeError) as error:
        print(f"error: datalist {opts.datalist}: no '{opts.datalist_key}' list ({error!r})", file=sys.stderr)
        return 2
    held_out = held_out_subject_seeds()
    shared = [entry["image"] for entry in entries if isinstance(entry, dict) and entry.get("seed") in held_out]
    if shared:
        print(
            f"error: datalist {opts.datalist}: {len(shared)} subject(s) are subjects of the held-out evaluation sets "
            f"(the same subject seed), e.g. {shared[0]}; tune on a set made with another --seed",
            file=sys.stderr,
        )
        return 2
    if opts.json is not None and opts.json.exists() and not opts.overwrite:
        print(f"error: {opts.json} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    grid = {**DEFAULT_GRID, **parse_grid(opts.grid)}

    parser = evaluation_parser(opts.datalist, opts.datalist_key, opts.checkpoint)
    overrides = parse_overrides(opts.override)
    for name, value in overrides.items():
        parser[name] = value
    unknown = sorted(set(grid) - set(parser.get()))
    if unknown:
        print(f"error: --grid names {unknown} are not inference.json parameters", file=sys.stderr)
        return 2
    cases = load_cases(parser)
    if not any(map(has_lesion, cases)):
        print(
            f"error: datalist {opts.datalist}: no case with a lesion; the settings are chosen by the Dice on lesion "
            "cases (for a healthy-only set run the configs/evaluate.json overlay, or scripts/score_sources.py)",
            file=sys.stderr,
        )
        return 2
    print(f"{len(cases)} cases, {sum(map(has_lesion, cases))} with a lesion")
    device = parser.get_parsed_content("device")
    network = load_network(parser)
    inferer = parser.get_parsed_content("inferer")

    results: dict = {
        "datalist": opts.datalist,
        "checkpoint": opts.checkpoint,
        "overrides": overrides,
        "inferer": [],
        "postprocessing": [],
    }
    defaults = {name: parser[name] for name in grid}
    for overlap, mode in itertools.product(opts.overlaps, opts.blend_modes):
        inferer.overlap, inferer.mode = overlap, mode
        seconds = reconstruct(network, inferer, cases, device)
        lesions = [c for c in cases if has_lesion(c)]
        ap = float(np.mean([average_precision(c["pred"][0], torch.from_numpy(c["truth"])) for c in lesions]))
        row = {"overlap": overlap, "mode": mode, "seconds_per_case": seconds, "mean_average_precision": ap}
        row.update(segmentation_metrics(parser, cases))
        results["inferer"].append(row)
        print(json.dumps(row))

    inferer = parser.get_parsed_content("inferer")  # back to the config's own overlap and mode
    reconstruct(network, inferer, cases, device)
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        for name, value in setting.items():
            parser[name] = value
        row = {**setting, **segmentation_metrics(parser, cases)}
        results["postprocessing"].append(row)
        print(json.dumps(row))
    for name, value in defaults.items():
        parser[name] = value
    results["best_postprocessing"] = best = choose_postprocessing(results["postprocessing"], opts.dice_tolerance)

    results["score"] = []
    for radius in grid["search_region_mm"]:
        regions = search_regions(parser, cases, radius)
        for threshold, erosions in itertools.product(opts.score_thresholds, opts.score_erosions):
            results["score"].append({"search_region_mm": radius, **score_metrics(cases, regions, threshold, erosions)})
    parser["search_region_mm"] = defaults["search_region_mm"]
    results["best_score"] = max(results["score"], key=lambda r: (r["separated"], r["margin"]))
    print("best post-processing:", json.dumps(best))
    print("best subject score:", json.dumps(results["best_score"]))
    if opts.json is not None:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(opts.json, results, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
