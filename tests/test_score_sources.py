"""scripts/score_sources.py: which tissue, lesion or tooth gap a subject's scored voxels lie in."""

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from jaw_phantoms.anatomy import AnatomyOptions, sample_subject
from jaw_phantoms.phantom import make_phantom, render, tooth_gaps
from jaw_phantoms.writing import anatomy_options
from scripts import score_sources
from tests.conftest import INFERENCE_GENERATOR

HELD_OUT = AnatomyOptions(shape_split="held_out")
SEED_MISSING_TEETH, SEED_ALL_TEETH = 7, 8  # subjects 7 (two teeth missing) and 8 (none) of the held-out shapes


def test_counts_scored_voxels_by_nearest_tissue_lesion_and_gap():
    x = np.zeros((12, 4, 4), dtype=np.float32)
    x[:3] = 0.7  # mandible
    x[9:] = 0.6  # upper skull
    scored = np.zeros(x.shape, dtype=bool)
    scored[4, 1, 1] = scored[4, 2, 2] = True  # 2 voxels from the mandible, 5 from the skull
    scored[7, 1, 1] = True  # 2 voxels from the skull
    truth = np.zeros(x.shape, dtype=bool)
    truth[4] = True
    gap = np.zeros(x.shape, dtype=bool)
    gap[7] = True
    sources = score_sources.score_sources(scored, x, (2.0, 2.0, 2.0), truth, gap)
    assert sources["score"] == 3
    assert sources["by_nearest_tissue"] == {
        "upper_skull": 1,
        "mandible": 2,
        "upper_teeth": 0,
        "lower_teeth": 0,
        "canal": 0,
    }
    assert sources["median_distance_to_tissue_mm"] == 4.0
    assert sources["in_lesion"] == 2 and sources["in_tooth_gap"] == 1
    none = score_sources.score_sources(np.zeros_like(scored), x, (2.0, 2.0, 2.0))
    assert none["score"] == 0 and none["in_lesion"] is None and none["median_distance_to_tissue_mm"] is None


def test_tooth_gaps_are_the_empty_crowns_and_resorbed_crests_of_the_missing_teeth():
    subject = sample_subject(SEED_MISSING_TEETH, HELD_OUT)
    assert subject.missing_teeth
    gap = tooth_gaps(subject, 1.0)
    labels, *_ = render(subject, 1.0)
    with_all_teeth, *_ = render(dataclasses.replace(subject, missing_teeth=(), ridge_loss_mm=()), 1.0)
    added = with_all_teeth != labels
    assert gap.shape == labels.shape and gap.sum() > 100
    assert (labels[gap] == 0).mean() > 0.99  # the space the crowns leave is empty in the subject
    assert (gap & ~added).sum() <= 0.01 * gap.sum()  # and the missing teeth would fill it
    assert (added & ~gap & (labels == 2)).any()  # their roots would stand in bone: not part of the gap
    assert not tooth_gaps(sample_subject(SEED_ALL_TEETH, HELD_OUT), 1.0).any()


def test_tooth_gap_on_the_model_grid_and_a_foreign_grid(tmp_path):
    phantom = make_phantom(SEED_MISSING_TEETH, 2.0, options=HELD_OUT, with_cbct=False)
    label_file = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(phantom.labels, phantom.affine), label_file)
    gap = score_sources.tooth_gap_on_grid(SEED_MISSING_TEETH, "test", label_file, phantom.affine, phantom.labels.shape)
    crowns = tooth_gaps(phantom.subject, 2.0)
    assert gap[crowns].all()  # on its own grid, and the 2 mm around it
    assert gap.sum() < 10 * crowns.sum() and not gap[phantom.labels == 2].all()
    with pytest.raises(ValueError, match="labels.nii.gz: not the grid of subject 8"):
        score_sources.tooth_gap_on_grid(SEED_ALL_TEETH, "test", label_file, phantom.affine, phantom.labels.shape)


def test_command_line_scores_every_voxel_at_threshold_zero(lesion_and_healthy_set, tmp_path, tiny_weights):
    datalist = lesion_and_healthy_set
    output, table = tmp_path / "sources.json", tmp_path / "sources.md"
    argv = [str(datalist), "--checkpoint", str(tiny_weights), "--tooth_gaps", "--json", str(output)]
    argv += ["--markdown", str(table), "--override", f"generator_def={json.dumps(INFERENCE_GENERATOR)}"]
    argv += ["search_region_mm=null", "score_threshold=-1", "score_erosion_iterations=0"]
    assert score_sources.main(argv) == 0
    result = json.loads(output.read_text())
    assert result["score_threshold"] == -1 and len(result["cases"]) == 2
    for row in result["cases"]:
        # every voxel of the 2 mm grid scores, and each is attributed to exactly one tissue
        assert sum(row["by_nearest_tissue"].values()) == row["score"] > 1000
        assert row["in_tooth_gap"] is not None
        assert (row["in_lesion"] is None) == (row["lesion"] == "none")
    assert table.read_text().count("\n| case_") == 2
    assert score_sources.main(argv) == 2  # the outputs exist: not replaced without --overwrite


def test_command_line_leaves_autograd_as_it_found_it(lesion_and_healthy_set, tiny_weights, tmp_path):
    argv = [str(lesion_and_healthy_set), "--checkpoint", str(tiny_weights)]
    argv += ["--override", f"generator_def={json.dumps(INFERENCE_GENERATOR)}"]
    assert score_sources.main(argv) == 0
    assert torch.is_grad_enabled()  # later code in the same process (a training test) still gets gradients


def test_tooth_gaps_of_a_set_with_its_own_chance_of_missing_teeth(tmp_path):
    options = anatomy_options("test", {"missing_teeth_probability": 1.0})
    phantom = make_phantom(SEED_ALL_TEETH, 2.0, options=options, with_cbct=False)
    assert phantom.subject.missing_teeth  # subject 8 lacks teeth when every subject must
    label_file = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(phantom.labels, phantom.affine), label_file)
    grid = (label_file, phantom.affine, phantom.labels.shape)
    gap = score_sources.tooth_gap_on_grid(SEED_ALL_TEETH, "test", *grid, {"missing_teeth_probability": 1.0})
    assert gap[tooth_gaps(phantom.subject, 2.0)].all()
    with pytest.raises(ValueError, match="not the grid of subject 8"):  # drawn with the default chance instead
        score_sources.tooth_gap_on_grid(SEED_ALL_TEETH, "test", *grid)
