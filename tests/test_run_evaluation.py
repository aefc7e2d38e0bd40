"""The one evaluation command: its runs are the documented overlay, and its phantom sets are made again when they
are not the ones it specifies."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from jaw_phantoms.anatomy import sample_subject
from jaw_phantoms.segmentation_errors import SegmentationErrors
from jaw_phantoms.writing import ANATOMY_OPTIONS_KEY, GENERATOR_REVISION_KEY, anatomy_options, plan_cases
from scripts.run_evaluation import (
    EVALUATION_SET,
    PARAMETRIC_SET,
    RUNS,
    TUNING_SET,
    VALIDATION,
    PhantomSet,
    bundle_command,
    held_out_subject_seeds,
    keep_previous_run,
    vqvae_run,
)

ROOT = Path(__file__).resolve().parents[1]


def test_run_commands_are_the_documented_overlay_with_thresholds_from_the_validation_run(tmp_path):
    thresholds = tmp_path / "validation" / "metrics.json"
    default = bundle_command(RUNS[0], tmp_path / "default", thresholds)
    assert default[1:6] == [
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['configs/inference.json','configs/evaluate.json']",
    ]
    assert default[-2:] == ["--thresholds_from", str(thresholds)]
    off = bundle_command(RUNS[1], tmp_path / "off", thresholds)
    assert off[off.index("--use_search_region") + 1] == "false"
    assert "--thresholds_from" not in bundle_command(VALIDATION, tmp_path / "v", None)
    vqvae = bundle_command(vqvae_run(tmp_path / "vae.pt"), tmp_path / "vae", thresholds)
    assert vqvae[vqvae.index("--checkpoint") + 1] == str(tmp_path / "vae.pt") and "--thresholds_from" not in vqvae
    assert VALIDATION.phantoms.folder != RUNS[0].phantoms.folder  # thresholds are never fixed on the test set


def test_a_phantom_set_is_current_only_with_its_subjects_kinds_and_intact_maps(tmp_path):
    tiny = PhantomSet("set", 2, 5, lesion_kinds=("onj_ramus",))
    assert not tiny.is_current(tmp_path)  # missing
    tiny.make(tmp_path)
    assert tiny.is_current(tmp_path)
    assert not PhantomSet("set", 2, 5).is_current(tmp_path)  # other lesion kinds
    assert not PhantomSet("set", 2, 6, lesion_kinds=("onj_ramus",)).is_current(tmp_path)  # other subjects
    datalist = tiny.datalist(tmp_path)
    written = datalist.read_text()
    entries = json.loads(written)
    entries.pop(GENERATOR_REVISION_KEY)  # a set written before the joint space: the same seeds drew other anatomy
    datalist.write_text(json.dumps(entries))
    assert not tiny.is_current(tmp_path)
    entries = json.loads(written)
    for entry in entries["test"]:
        entry.pop("intact", None)  # a set written before the generator kept intact maps
    datalist.write_text(json.dumps(entries))
    assert not tiny.is_current(tmp_path)


def test_sets_differing_only_in_spacing_or_segmentation_errors_are_told_apart(tmp_path):
    errors = SegmentationErrors(islands=3)
    noisy = PhantomSet("set", 2, 5, lesion_kinds=("onj",), spacing=2.0, segmentation_errors=errors)
    noisy.make(tmp_path)
    assert noisy.is_current(tmp_path)
    assert not PhantomSet("set", 2, 5, lesion_kinds=("onj",), spacing=2.0).is_current(tmp_path)
    other = SegmentationErrors(islands=3, island_radius_mm=(1.0, 2.0))
    assert not PhantomSet("set", 2, 5, lesion_kinds=("onj",), spacing=2.0, segmentation_errors=other).is_current(
        tmp_path
    )
    assert not PhantomSet("set", 2, 5, lesion_kinds=("onj",), spacing=1.5, segmentation_errors=errors).is_current(
        tmp_path
    )
    gaps = PhantomSet("set", 2, 5, lesion_kinds=("onj",), spacing=2.0, anatomy=(("missing_teeth_probability", 1.0),))
    assert not gaps.is_current(tmp_path)
    # the same subjects as the set without errors, with the same files beside the label maps
    exact = PhantomSet("exact", 2, 5, lesion_kinds=("onj",), spacing=2.0)
    exact.make(tmp_path)
    assert (
        json.loads(noisy.datalist(tmp_path).read_text())["test"]
        == json.loads(exact.datalist(tmp_path).read_text())["test"]
    )


def test_the_extra_held_out_runs_take_the_evaluation_subjects_under_other_input_conditions():
    runs = {run.name: run.phantoms for run in RUNS}
    for name in ("native_05mm", "segmentation_errors", "missing_teeth"):
        phantoms = runs[name]
        assert (phantoms.subjects, phantoms.seed, phantoms.lesion_kinds) == (
            EVALUATION_SET.subjects,
            EVALUATION_SET.seed,
            EVALUATION_SET.lesion_kinds,
        )
        assert phantoms.folder != EVALUATION_SET.folder
    assert runs["native_05mm"].spacing == 0.5 and not runs["native_05mm"].segmentation_errors.changes_labels
    assert runs["segmentation_errors"].spacing == 1.0 and runs["segmentation_errors"].segmentation_errors.changes_labels
    assert runs["missing_teeth"].anatomy == (("missing_teeth_probability", 1.0),)
    assert runs["missing_teeth_label_map_only"] == runs["missing_teeth"]


def test_a_set_with_anatomy_overrides_records_them_and_its_subjects_lack_teeth(tmp_path):
    gaps = PhantomSet("gaps", 2, 5, lesion_kinds=("onj",), spacing=2.0, anatomy=(("missing_teeth_probability", 1.0),))
    gaps.make(tmp_path)
    assert gaps.is_current(tmp_path)
    assert not PhantomSet("gaps", 2, 5, lesion_kinds=("onj",), spacing=2.0).is_current(tmp_path)
    datalist = json.loads(gaps.datalist(tmp_path).read_text())
    assert datalist[ANATOMY_OPTIONS_KEY] == {"missing_teeth_probability": 1.0}
    options = anatomy_options("test", datalist[ANATOMY_OPTIONS_KEY])
    assert all(sample_subject(entry["seed"], options).missing_teeth for entry in datalist["test"])


def test_the_tuning_set_shares_no_subject_with_the_held_out_sets():
    """Subject seeds are drawn from the set's seed: a second tuning set made with the evaluation set's seed (and
    another size and lesion order) shared 2 of its 40 subjects with it."""
    held_out = held_out_subject_seeds()
    assert len(held_out) == EVALUATION_SET.subjects + PARAMETRIC_SET.subjects
    assert not {plan.seed for plan in plan_cases(**TUNING_SET.plan())} & held_out
    shares_the_seed = PhantomSet("tune_b", 40, EVALUATION_SET.seed, lesion_kinds=("onj", "onj_ramus"))
    assert len({plan.seed for plan in plan_cases(**shares_the_seed.plan())} & held_out) == 2


def test_a_kept_baseline_run_is_reported_under_its_recorded_version(tmp_path):
    metrics = {"model": {"version": "0.9.0", "sha256": "c5b1"}, "num_lesion_cases": 22}
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"vqvae": {"title": "VQ-VAE baseline", "metrics": metrics}}))
    folder, title = keep_previous_run(evaluation, "vqvae", tmp_path / "runs")
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    assert title == "VQ-VAE baseline [kept from the evaluation of version 0.9.0]"
    evaluation.write_text(json.dumps({"vqvae": {"title": title, "metrics": metrics}}))
    assert keep_previous_run(evaluation, "vqvae", tmp_path / "runs")[1] == title  # kept twice, named once
    evaluation.write_text(json.dumps({"default": {}}))
    with pytest.raises(SystemExit, match=r"evaluation\.json: no run 'vqvae' to keep"):
        keep_previous_run(evaluation, "vqvae", tmp_path / "runs")


def test_the_label_map_only_run_drops_the_cbct_before_it_is_read(phantom_dataset):
    (run,) = [run for run in RUNS if run.name == "label_map_only"]
    entry = json.loads((phantom_dataset / "datalist.json").read_text())["validation"][0]
    item = {"image": str(phantom_dataset / entry["image"]), "cbct": str(phantom_dataset / entry["cbct"])}

    def preprocessed(**overrides) -> dict:
        parser = ConfigParser()
        parser.read_config([str(ROOT / "configs" / "inference.json"), str(ROOT / "configs" / "evaluate.json")])
        parser.update({"bundle_root": str(ROOT), **overrides})
        return parser.get_parsed_content("preprocessing")(dict(item))

    with_cbct = preprocessed()
    assert with_cbct["cbct"].shape == with_cbct["image"].shape  # the other runs read and resample it
    # the override as `monai.bundle run` receives it (python-fire turns the text into the dict)
    label_map_only = preprocessed(cbct_preprocessing=ast.literal_eval(run.overrides["cbct_preprocessing"]))
    assert "cbct" not in label_map_only
    assert torch.equal(label_map_only["image"], with_cbct["image"])
