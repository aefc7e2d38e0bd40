"""Regenerate the whole evaluation of the shipped weights with one command: phantom sets, runs, tables, figures.

    python -m scripts.run_evaluation

Every run is ``python -m monai.bundle run`` of the evaluation overlay (``configs/inference.json`` +
``configs/evaluate.json``, with its progress bar), in this order:

1. the phantom sets, made when missing or not current (``PhantomSet.is_current``), with fixed seeds: the evaluation
   set on held-out mandible shapes with lesions at every site (``data/phantoms_eval``), the same count of version-0.2
   parametric phantoms (``data/phantoms_eval_parametric``), the evaluation set's subjects at 0.5 mm, with
   segmentation errors in their label maps and with 1-3 teeth missing in every subject, and the tuning set of the
   post-processing defaults (``data/phantoms_tune40``);
2. ``validation``: the tuning set (never the evaluation set), whose ``metrics.json`` fixes both threshold rules of
   every map (``bundle.evaluation.read_fixed_thresholds``);
3. the held-out runs with those thresholds (``RUNS``): the default configuration, the anatomical search region off,
   the label map alone (the CBCT left out, as a user without the raw scan runs the bundle), 0.5 mm, segmentation
   errors and missing teeth each with and without the CBCT, the first two again on the parametric phantoms; then
   left-right mirror averaging (``mirror_axes``, off by default) on both sets;
4. ``vqvae``: the VQ-VAE baseline trained on the same data (paper section 5.1), when its packaged weights exist
   (``--vqvae_checkpoint``; docs/demo_weights.md says how they are made). Its thresholds would need its own
   validation run, so none are applied. Without the weights, ``--keep_vqvae`` reports the ``vqvae`` run of the
   existing ``docs/evaluation.json`` again, under its recorded model version;
5. the report (:mod:`scripts.report_evaluation`): ``docs/evaluation.json`` (every run's metrics, cases included),
   ``docs/results.md`` and ``docs/acceptance.md`` generated from it, the figures in ``docs/figures/evaluation/``,
   ``configs/metadata.json#eval_metrics`` and the model card's performance block.

Run folders go to ``runs/evaluation/<run>/`` and are replaced (``--reuse_runs`` keeps those that finished, to resume
an interrupted evaluation). About 28 minutes on 2 CPU cores for the validation run and the twelve held-out runs of
40-44 subjects (the sets, when missing, take longer: the 0.5 mm set about 20 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from jaw_phantoms.segmentation_errors import SegmentationErrors
from jaw_phantoms.writing import (
    ANATOMY_OPTIONS_KEY,
    DATALIST_NAME,
    GENERATOR_REVISION_KEY,
    GENERATOR_REVISIONS,
    SEGMENTATION_ERRORS_KEY,
    make_phantom_set,
    plan_cases,
)
from scripts import report_evaluation

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = "['configs/inference.json','configs/evaluate.json']"


@dataclass(frozen=True)
class PhantomSet:
    """A held-out phantom set: ``scripts/make_phantoms.py <folder> --train_subjects 0 --val_subjects 0
    --test_subjects <subjects> --lesion_fraction 0.5 --seed <seed> --style <style> --spacing <spacing>
    [--lesion_kinds ...] [--segmentation_errors ...] [--anatomy name=value ...]``; ``anatomy``: the
    ``AnatomyOptions`` overrides as ``(name, value)`` pairs (a tuple, so that the set stays hashable)."""

    folder: str
    subjects: int
    seed: int
    style: str = "real_mandible"
    lesion_kinds: tuple[str, ...] | None = None
    spacing: float = 1.0
    segmentation_errors: SegmentationErrors = SegmentationErrors()
    anatomy: tuple[tuple[str, float], ...] = ()

    def datalist(self, root: Path) -> Path:
        return root / self.folder / DATALIST_NAME

    def plan(self) -> dict:
        """The arguments of ``plan_cases`` and ``make_phantom_set`` (make_phantoms.py's defaults otherwise)."""
        return dict(
            train_subjects=0,
            val_subjects=0,
            test_subjects=self.subjects,
            lesion_fraction=0.5,
            spacing=self.spacing,
            anisotropic_fraction=0.25,
            lps_fraction=0.25,
            seed=self.seed,
            style=self.style,
            lesion_kinds=self.lesion_kinds,
        )

    def is_current(self, root: Path) -> bool:
        """Whether the set on disk is this one: the same subjects, lesion kinds, spacings and segmentation errors,
        with the intact maps that the reconstruction experiment needs (a set made by an older generator, or with other
        options, is not)."""
        try:
            datalist = json.loads(self.datalist(root).read_text())
            entries = datalist["test"]
        except (OSError, ValueError, KeyError):
            return False
        if datalist.get(GENERATOR_REVISION_KEY, 1) != GENERATOR_REVISIONS[self.style]:
            return False
        errors = asdict(self.segmentation_errors) if self.segmentation_errors.changes_labels else None
        if _as_recorded(datalist.get(SEGMENTATION_ERRORS_KEY)) != errors:
            return False
        if datalist.get(ANATOMY_OPTIONS_KEY) != (dict(self.anatomy) or None):
            return False
        plans = plan_cases(**self.plan())
        expected = [(plan.seed, plan.lesion, plan.lesion != "none") for plan in plans]
        if [(entry.get("seed"), entry.get("lesion"), "intact" in entry) for entry in entries] != expected:
            return False
        try:  # the spacing, from the headers alone
            spacings = [nib.load(self.datalist(root).parent / entry["image"]).header.get_zooms() for entry in entries]
        except (OSError, ValueError, KeyError):
            return False
        return all(np.allclose(found, plan.spacing, atol=1e-4) for found, plan in zip(spacings, plans))

    def make(self, root: Path) -> Path:
        return make_phantom_set(
            root / self.folder,
            **self.plan(),
            segmentation_errors=self.segmentation_errors,
            anatomy_overrides=dict(self.anatomy),
            preview=False,
            overwrite=True,
        )


def _as_recorded(errors: dict | None) -> dict | None:
    """Segmentation errors as read back from a datalist (JSON has lists where the dataclass has tuples)."""
    return None if errors is None else {name: tuple(v) if isinstance(v, list) else v for name, v in errors.items()}


# every site of the breakdown: mandible body (ONJ, the paper's removal), ramus, maxilla
EVALUATION_SET = PhantomSet(
    "data/phantoms_eval", 44, 777, lesion_kinds=("onj", "teeth_and_jaw_removed", "onj_ramus", "onj_maxilla")
)
PARAMETRIC_SET = PhantomSet("data/phantoms_eval_parametric", 44, 778, "parametric")
# the evaluation set's subjects again, at the real maps' resolution (0.5 mm; 0.4 x 0.4 x 0.6 mm for a quarter) ...
EVALUATION_SET_05MM = PhantomSet(
    "data/phantoms_eval_05mm", 44, 777, lesion_kinds=EVALUATION_SET.lesion_kinds, spacing=0.5
)
# ... and with an automatic segmenter's errors in their label maps (stress levels, jaw_phantoms/segmentation_errors.py),
# the mandible thinned towards the real map's thickness
SEGMENTATION_ERRORS = SegmentationErrors(
    mandible_thinning_mm=1.0, boundary_jitter_mm=0.5, islands=10, bone_holes=5, canal_gaps=4
)
EVALUATION_SET_ERRORS = PhantomSet(
    "data/phantoms_eval_segmentation_errors",
    44,
    777,
    lesion_kinds=EVALUATION_SET.lesion_kinds,
    segmentation_errors=SEGMENTATION_ERRORS,
)
# ... and with 1-3 teeth missing in every subject, healthy or not (healed sockets over resorbed crests), as jaws
# of the age of ONJ patients often are; the generator's default gives a quarter of the subjects gaps
EVALUATION_SET_MISSING_TEETH = PhantomSet(
    "data/phantoms_eval_missing_teeth",
    44,
    777,
    lesion_kinds=EVALUATION_SET.lesion_kinds,
    anatomy=(("missing_teeth_probability", 1.0),),
)
TUNING_SET = PhantomSet("data/phantoms_tune40", 40, 555)


def held_out_subject_seeds() -> set[int]:
    """The subject seeds of the held-out sets. A subject's anatomy is drawn from its seed, and the subject seeds from
    the set's seed: a set made with a held-out set's seed shares subjects with it even when its size and lesion
    kinds differ. ``scripts/tune_postprocessing.py`` refuses a tuning set that holds any of them."""
    return {plan.seed for phantom_set in (EVALUATION_SET, PARAMETRIC_SET) for plan in plan_cases(**phantom_set.plan())}


@dataclass(frozen=True)
class Run:
    """One evaluation run: its name (folder and key in docs/evaluation.json), title, data and config overrides."""

    name: str
    title: str
    phantoms: PhantomSet
    overrides: dict[str, str] = field(default_factory=dict)
    thresholds: bool = True


# the label map alone, as a user without the raw scan runs it: the CBCT is dropped before it is read
LABEL_MAP_ONLY = {"cbct_preprocessing": "{'_target_': 'DeleteItemsd', 'keys': 'cbct'}"}
VALIDATION = Run("validation", "tuning set (validation of the threshold rules)", TUNING_SET, thresholds=False)
RUNS = (
    Run("default", "held-out shapes, default configuration (search region on)", EVALUATION_SET),
    Run("search_region_off", "held-out shapes, search region off", EVALUATION_SET, {"use_search_region": "false"}),
    Run(
        "label_map_only",
        "held-out shapes, label map only (no CBCT: no soft-tissue avoidance, the label-map-only threshold and "
        "smallest region)",
        EVALUATION_SET,
        LABEL_MAP_ONLY,
    ),
    Run("native_05mm", "held-out shapes at 0.5 mm (the real maps' resolution)", EVALUATION_SET_05MM),
    Run(
        "segmentation_errors",
        "held-out shapes with a thinner mandible and segmentation errors in the label map (mandible 1 mm thinner, "
        "jitter 0.5 mm, 10 islands, 5 holes, 4 canal gaps)",
        EVALUATION_SET_ERRORS,
    ),
    # what a user with only DentalSegmentator's map of a real scan runs: its errors, and no CBCT
    Run(
        "segmentation_errors_label_map_only",
        "held-out shapes with the same segmentation errors, label map only",
        EVALUATION_SET_ERRORS,
        LABEL_MAP_ONLY,
    ),
    Run(
        "missing_teeth",
        "held-out shapes, 1-3 teeth missing in every subject (healed sockets over resorbed crests)",
        EVALUATION_SET_MISSING_TEETH,
    ),
    Run(
        "missing_teeth_label_map_only",
        "held-out shapes, 1-3 teeth missing in every subject, label map only",
        EVALUATION_SET_MISSING_TEETH,
        LABEL_MAP_ONLY,
    ),
    Run("parametric", "parametric (0.2) phantoms, search region on", PARAMETRIC_SET),
    Run(
        "parametric_search_region_off",
        "parametric (0.2) phantoms, search region off",
        PARAMETRIC_SET,
        {"use_search_region": "false"},
    ),
    Run("mirror", "held-out shapes, left-right mirror averaging", EVALUATION_SET, {"mirror_axes": "[0]"}),
    Run(
        "parametric_mirror",
        "parametric (0.2) phantoms, left-right mirror averaging",
        PARAMETRIC_SET,
        {"mirror_axes": "[0]"},
    ),
)


def vqvae_run(checkpoint: Path) -> Run:
    return Run(
        "vqvae",
        "held-out shapes, VQ-VAE baseline (same data)",
        EVALUATION_SET,
        {"checkpoint": str(checkpoint)},
        thresholds=False,
    )


def keep_previous_run(evaluation_json: Path, name: str, runs_dir: Path) -> tuple[Path, str]:
    """Copy run ``name`` of an earlier ``evaluation.json`` to ``runs_dir/<name>_kept/metrics.json``, for a baseline
    whose weights are not at hand; return that folder and a title naming the model version it was run with."""
    try:
        previous = json.loads(evaluation_json.read_text())[name]
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as error:
        raise SystemExit(f"run_evaluation: error: {evaluation_json}: no run {name!r} to keep ({error!r})") from None
    metrics = previous["metrics"]
    version = metrics["model"]["version"]
    title = previous["title"].split(" [kept")[0] + f" [kept from the evaluation of version {version}]"
    folder = runs_dir / f"{name}_kept"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder, title


def bundle_command(run: Run, output_dir: Path, thresholds_from: Path | None) -> list[str]:
    """The ``monai.bundle run`` command line of one run."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIGS]
    command += ["--bundle_root", str(ROOT), "--datalist", str(run.phantoms.datalist(ROOT))]
    command += ["--output_dir", str(output_dir)]
    for key, value in run.overrides.items():
        command += [f"--{key}", value]
    if run.thresholds and thresholds_from is not None:
        command += ["--thresholds_from", str(thresholds_from)]
    return command


def execute(run: Run, runs_dir: Path, thresholds_from: Path | None, reuse: bool) -> Path:
    """Run one evaluation into ``runs_dir/<name>`` and return its ``metrics.json``."""
    output_dir = runs_dir / run.name
    metrics = output_dir / "metrics.json"
    if reuse and metrics.is_file():
        print(f"[{run.name}] reusing {metrics}", flush=True)
        return metrics
    shutil.rmtree(output_dir, ignore_errors=True)
    print(f"[{run.name}] {run.title}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(bundle_command(run, output_dir, thresholds_from), cwd=ROOT, env=_environment())
    if result.returncode != 0:
        raise SystemExit(f"run_evaluation: error: run {run.name!r} failed (exit status {result.returncode})")
    print(f"[{run.name}] {time.perf_counter() - start:.0f} s", flush=True)
    return metrics


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs_dir", type=Path, default=ROOT / "runs" / "evaluation", help="run folders")
    parser.add_argument("--docs_dir", type=Path, default=ROOT / "docs", help="where the report goes")
    parser.add_argument(
        "--vqvae_checkpoint",
        type=Path,
        default=ROOT / "runs" / "bank_vqvae" / "model.pt",
        help="packaged VQ-VAE baseline (skipped, with a note in the report, when absent)",
    )
    parser.add_argument(
        "--keep_vqvae",
        action="store_true",
        help="without --vqvae_checkpoint, report the vqvae run of the existing evaluation.json of --docs_dir again",
    )
    parser.add_argument("--reuse_runs", action="store_true", help="keep runs whose metrics.json exists")
    parser.add_argument(
        "--no_metadata", action="store_true", help="leave configs/metadata.json and the model card as they are"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    for phantoms in {run.phantoms for run in (VALIDATION, *RUNS)}:
        if not phantoms.is_current(ROOT):
            print(f"making {phantoms.folder}", flush=True)
            phantoms.make(ROOT)
    thresholds_from = execute(VALIDATION, args.runs_dir, None, args.reuse_runs)
    runs = list(RUNS)
    kept_vqvae = None
    if args.vqvae_checkpoint.is_file():
        runs.append(vqvae_run(args.vqvae_checkpoint))
    elif args.keep_vqvae:
        kept_vqvae = keep_previous_run(args.docs_dir / "evaluation.json", "vqvae", args.runs_dir)
    else:
        print(f"no VQ-VAE baseline at {args.vqvae_checkpoint}: experiment 1 shows the VQ-GAN alone", flush=True)
    folders = {run.name: execute(run, args.runs_dir, thresholds_from, args.reuse_runs).parent for run in runs}
    report_argv = ["--json", str(args.docs_dir / "evaluation.json"), "--docs_dir", str(args.docs_dir)]
    for run in runs:
        report_argv += ["--run", f"{run.name}={folders[run.name]}", "--title", f"{run.name}={run.title}"]
    if kept_vqvae is not None:
        folder, title = kept_vqvae
        report_argv += ["--run", f"vqvae={folder}", "--title", f"vqvae={title}"]
    if not args.no_metadata:
        report_argv += ["--metadata", str(ROOT / "configs" / "metadata.json")]
        report_argv += ["--model_card", str(args.docs_dir / "README.md")]
    report_evaluation.main(report_argv)
    print(f"evaluation regenerated in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
