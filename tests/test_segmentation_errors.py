"""Segmentation errors in a phantom's label map: each kind does what it says, where it says, and nothing else."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from jaw_phantoms.anatomy import CANAL, MANDIBLE, OTHER, UPPER_SKULL, AnatomyOptions
from jaw_phantoms.phantom import make_phantom
from jaw_phantoms.segmentation_errors import SegmentationErrors, apply_segmentation_errors
from jaw_phantoms.writing import make_phantom_set
from scripts.make_phantoms import main as make_phantoms_main

SPACING = np.array([1.5, 1.5, 1.5])


@pytest.fixture(scope="module")
def labels():
    options = AnatomyOptions(shape_split="held_out", field_of_view="jaws")
    return make_phantom(3, spacing=1.5, options=options, with_cbct=False).labels


def _changed(before, after):
    return np.argwhere(before != after)


def test_no_errors_change_nothing_and_the_same_seed_repeats(labels):
    assert not SegmentationErrors().changes_labels
    assert np.array_equal(apply_segmentation_errors(labels, SPACING, SegmentationErrors(), 1), labels)
    errors = SegmentationErrors(boundary_jitter_mm=0.5, islands=4, bone_holes=3, canal_gaps=2)
    first = apply_segmentation_errors(labels, SPACING, errors, 1)
    assert np.array_equal(first, apply_segmentation_errors(labels, SPACING, errors, 1))
    assert not np.array_equal(first, apply_segmentation_errors(labels, SPACING, errors, 2))
    assert not np.array_equal(first, labels)


def test_islands_are_bone_label_in_the_background_near_the_bone(labels):
    errors = SegmentationErrors(islands=6, island_reach_mm=8.0)
    out = apply_segmentation_errors(labels, SPACING, errors, 5)
    changed = _changed(labels, out)
    assert len(changed) > 0
    assert np.all(labels[tuple(changed.T)] == OTHER)
    assert set(np.unique(out[tuple(changed.T)])) <= {UPPER_SKULL, MANDIBLE}
    bone = np.isin(labels, (UPPER_SKULL, MANDIBLE))
    distance = ndimage.distance_transform_edt(~bone, sampling=SPACING)
    # centres lie within the reach, voxels within the reach plus the largest radius
    assert distance[tuple(changed.T)].max() <= 8.0 + errors.island_radius_mm[1] + 1e-6
    islands = ndimage.label(out != labels)[1]
    assert 1 <= islands <= 6


def test_holes_take_bone_inside_the_bone_only(labels):
    out = apply_segmentation_errors(labels, SPACING, SegmentationErrors(bone_holes=4), 5)
    changed = _changed(labels, out)
    assert len(changed) > 0
    assert set(np.unique(labels[tuple(changed.T)])) <= {UPPER_SKULL, MANDIBLE}
    assert np.all(out[tuple(changed.T)] == OTHER)
    assert 1 <= ndimage.label(out != labels)[1] <= 4
    # a hole is centred at least its radius deep in the bone: most of it does not border what was not bone before
    not_bone = ~np.isin(labels, (UPPER_SKULL, MANDIBLE))
    assert np.mean(ndimage.binary_dilation(not_bone)[tuple(changed.T)]) < 0.5


def test_canal_gaps_turn_canal_into_mandible_and_break_it(labels):
    before_pieces = ndimage.label(labels == CANAL, structure=np.ones((3, 3, 3)))[1]
    out = apply_segmentation_errors(labels, SPACING, SegmentationErrors(canal_gaps=3, canal_gap_mm=6.0), 5)
    changed = _changed(labels, out)
    assert len(changed) > 0
    assert np.all(labels[tuple(changed.T)] == CANAL) and np.all(out[tuple(changed.T)] == MANDIBLE)
    assert ndimage.label(out == CANAL, structure=np.ones((3, 3, 3)))[1] > before_pieces


def test_thinning_takes_the_mandible_surface_facing_the_background_only(labels):
    out = apply_segmentation_errors(labels, SPACING, SegmentationErrors(mandible_thinning_mm=1.5), 5)
    changed = _changed(labels, out)
    assert np.all(labels[tuple(changed.T)] == MANDIBLE) and np.all(out[tuple(changed.T)] == OTHER)
    distance = ndimage.distance_transform_edt(labels != OTHER, sampling=SPACING)
    assert distance[tuple(changed.T)].max() <= 1.5
    # the whole outer layer goes, nothing deeper: every mandible voxel one voxel from the background is taken
    surface = (labels == MANDIBLE) & (distance <= SPACING[0])
    assert np.array_equal(surface, (labels == MANDIBLE) & (out == OTHER))
    assert 0.2 < surface.sum() / np.sum(labels == MANDIBLE) < 0.8


def test_boundary_jitter_moves_boundaries_by_at_most_twice_the_deviation(labels):
    deviation = 0.75
    out = apply_segmentation_errors(labels, SPACING, SegmentationErrors(boundary_jitter_mm=deviation), 5)
    changed = _changed(labels, out)
    assert len(changed) > 0
    # every changed voxel takes a label found within the clipped displacement (2 x 0.75 mm along each axis)
    reach = int(np.ceil(2 * deviation / SPACING[0]))
    for label in np.unique(out[tuple(changed.T)]):
        near = ndimage.binary_dilation(labels == label, structure=np.ones((3, 3, 3)), iterations=reach)
        assert np.all(near[tuple(changed[out[tuple(changed.T)] == label].T)])
    # the volumes stay of the same order: a boundary error, not a different anatomy
    for label in (UPPER_SKULL, MANDIBLE):
        assert abs(np.sum(out == label) / np.sum(labels == label) - 1) < 0.1


@pytest.mark.parametrize(
    "settings, message",
    [
        (["islands=-1"], "islands must be >= 0"),
        (["island_radius_mm=3,1"], "0 < min <= max"),
        (["holes=3"], "expected NAME=VALUE"),
        (["islands"], "expected NAME=VALUE"),
        (["islands=many"], "not a valid int"),
        (["hole_radius_mm=2"], "not a valid tuple"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(settings, message):
    with pytest.raises(ValueError, match=message):
        SegmentationErrors.parse(settings)


def test_parse_reads_every_kind():
    errors = SegmentationErrors.parse(["boundary_jitter_mm=0.5", "islands=10", "island_radius_mm=1,2", "canal_gaps=4"])
    assert errors == SegmentationErrors(boundary_jitter_mm=0.5, islands=10, island_radius_mm=(1.0, 2.0), canal_gaps=4)


def test_a_set_with_errors_changes_the_label_maps_only(tmp_path):
    common = dict(
        train_subjects=0,
        val_subjects=0,
        test_subjects=2,
        lesion_fraction=0.5,
        spacing=2.0,
        seed=4,
        preview=False,
        log=lambda message: None,
    )
    exact = make_phantom_set(tmp_path / "exact", **common)
    errors = SegmentationErrors(islands=5, bone_holes=3)
    noisy = make_phantom_set(tmp_path / "noisy", segmentation_errors=errors, **common)
    entries = json.loads(noisy.read_text())["test"]
    assert entries == json.loads(exact.read_text())["test"]
    for entry in entries:
        for key in ("cbct", "truth", "intact"):
            if key in entry:
                a = np.asarray(nib.load(exact.parent / entry[key]).dataobj)
                assert np.array_equal(a, np.asarray(nib.load(noisy.parent / entry[key]).dataobj)), key
        exact_labels = np.asarray(nib.load(exact.parent / entry["image"]).dataobj)
        assert not np.array_equal(exact_labels, np.asarray(nib.load(noisy.parent / entry["image"]).dataobj))


def test_the_command_line_refuses_bad_errors_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / "set"
    code = make_phantoms_main([str(output), "--test_subjects", "1", "--segmentation_errors", "islands=-2"])
    assert code == 2
    assert "islands must be >= 0" in capsys.readouterr().err
    assert not output.exists()
