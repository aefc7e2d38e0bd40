"""jaw_phantoms on the real mandible bank: the bank's split and checks, landmarks, anatomy, lesions with exact truth."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from jaw_phantoms.anatomy import (
    CANAL,
    CROWN_ABOVE_CREST_MM,
    LOWER_TEETH,
    MANDIBLE,
    UPPER_SKULL,
    UPPER_TEETH,
    AnatomyOptions,
    sample_subject,
)
from jaw_phantoms.lesions import ONJ_VOLUME_ML, sample_lesion
from jaw_phantoms.phantom import (
    crown_surface_on_bone,
    empty_space_to_lower_jaw_mm,
    make_phantom,
    render,
    tooth_gaps,
)
from jaw_phantoms.shape_bank import BANK_DIR, BANK_INDEX, bank_entries, load_shape, measure_landmarks

HELD_OUT = AnatomyOptions(shape_split="held_out", field_of_view="face")


@pytest.fixture(scope="module")
def face_phantom():
    return make_phantom(11, spacing=1.5, options=AnatomyOptions(field_of_view="face"))


def test_bank_is_split_by_patient_and_lists_its_excluded_shapes():
    index = json.loads((BANK_DIR / BANK_INDEX).read_text())
    patients = {
        split: {s["patient"] for s in index["shapes"] if s["split"] == split} for split in ("training", "held_out")
    }
    assert patients["training"] and patients["held_out"] and not patients["training"] & patients["held_out"]
    splits_of_0727 = {s["split"] for s in index["shapes"] if s["patient"] == "0522c0727"}
    assert len(splits_of_0727) == 1
    assert {e["case"] for e in index["excluded"]} == {"TCGA-CV-A6JY"}
    assert len(bank_entries("training")) + len(bank_entries("held_out")) == len(index["shapes"])


def test_a_damaged_or_missing_bank_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="bank.json"):
        bank_entries("training", tmp_path)
    shutil.copy(BANK_DIR / BANK_INDEX, tmp_path / BANK_INDEX)
    entry = bank_entries("held_out", tmp_path)[0]
    with pytest.raises(FileNotFoundError, match=entry.path.name):
        load_shape(entry.path, entry.sha256)
    entry.path.write_bytes(b"not a shape")
    with pytest.raises(ValueError, match=f"{entry.path.name}: checksum"):
        load_shape(entry.path, entry.sha256)
    (tmp_path / BANK_INDEX).write_text("{")
    with pytest.raises(ValueError, match="not a valid shape bank index"):
        bank_entries("training", tmp_path)
    with pytest.raises(ValueError, match="unknown shape split"):
        bank_entries("test")


def test_landmarks_lie_on_the_bone():
    entry = bank_entries("training")[0]
    shape = load_shape(entry.path, entry.sha256)
    landmarks = measure_landmarks(shape)
    assert np.allclose(shape.mirrored().mirrored().occupancy, shape.occupancy)
    # the crest centre curve runs on bone: 4 mm under the crest, every tooth-bearing arch point is inside it
    for side, end in zip((-1, 1), landmarks.teeth_end):
        assert 30.0 < end < 75.0
        s = side * np.arange(0.0, end, 2.0)
        point, _, _ = landmarks.at(s)
        below_crest = np.column_stack([point, landmarks.crest(s) - 4.0]).astype(np.float32)
        assert np.mean(shape.sample(below_crest) >= 128) > 0.9
    # the condyles are the mandible's highest points at the back, the foramina lie below them
    assert np.all(landmarks.condyles[:, 2] > landmarks.crest(0.0) + 20.0)
    assert np.all(landmarks.foramina[:, 2] < landmarks.condyles[:, 2] - 10.0)


def test_a_face_phantom_has_every_structure_in_place(face_phantom):
    labels = face_phantom.labels
    assert labels.dtype == np.int16 and set(np.unique(labels)) == {0, 1, 2, 3, 4, 5}
    # the canal runs inside the bone: nearly all its neighbours are mandible or canal
    canal = labels == CANAL
    shell = ndimage.binary_dilation(canal) & ~canal
    assert np.isin(labels[shell], (MANDIBLE, CANAL, LOWER_TEETH)).mean() > 0.9
    # lower teeth stand in the mandible, upper teeth in the upper skull, and the two rows meet
    for teeth, bone in ((LOWER_TEETH, MANDIBLE), (UPPER_TEETH, UPPER_SKULL)):
        shell = ndimage.binary_dilation(labels == teeth) & (labels != teeth)
        assert np.mean(labels[shell] == bone) > 0.2
    cube = np.ones((3, 3, 3), dtype=bool)
    in_contact = ndimage.binary_dilation(labels == UPPER_TEETH, cube) & (labels == LOWER_TEETH)
    assert in_contact.sum() > 20
    # the skull sits above the mandible's body, the field of view reaches far above the teeth
    assert np.argwhere(labels == UPPER_SKULL)[:, 2].mean() > np.argwhere(labels == MANDIBLE)[:, 2].mean()
    assert labels.shape[2] * 1.5 > 120.0


def test_a_joint_space_keeps_the_lower_jaw_off_the_skull(face_phantom):
    # the same subject with the two labels allowed to touch shows where the skull solids overlap the jaw
    touching = make_phantom(11, spacing=1.5, options=AnatomyOptions(field_of_view="face", joint_space_mm=(0.0, 0.0)))
    assert empty_space_to_lower_jaw_mm(touching.labels, touching.spacing) == 0.0
    joint_space = face_phantom.subject.joint_space_mm
    assert 1.0 <= joint_space <= 3.0
    assert empty_space_to_lower_jaw_mm(face_phantom.labels, face_phantom.spacing) >= joint_space
    # only upper-skull voxels near the jaw were removed, and they became background
    changed = face_phantom.labels != touching.labels
    assert changed.any()
    assert np.all(touching.labels[changed] == UPPER_SKULL) and np.all(face_phantom.labels[changed] == 0)
    near_jaw = ndimage.binary_dilation(np.isin(touching.labels, (MANDIBLE, LOWER_TEETH)), iterations=4)
    assert np.all(near_jaw[changed])
    with pytest.raises(ValueError, match="joint_space_mm"):
        AnatomyOptions(joint_space_mm=(2.0, 1.0))


def test_crowns_of_both_arches_stand_free_of_the_alveolar_bone():
    # the alveolar crest lies about 1.5 mm above the enamel-cement junction; before generator revision 3 the upper
    # alveolar process covered about 40 % of the upper crowns' surface
    subject = sample_subject(11, AnatomyOptions(shape_split="held_out", missing_teeth_probability=0.0))
    labels, _, crown, _, _ = render(subject, 1.0)
    assert crown_surface_on_bone(labels, crown, UPPER_TEETH, UPPER_SKULL) < 0.15
    assert crown_surface_on_bone(labels, crown, LOWER_TEETH, MANDIBLE) < 0.15
    # while the roots stay in their bone (test_a_face_phantom_has_every_structure_in_place)


def test_a_gap_resorbs_the_crest_beneath_it_and_nothing_else():
    options = AnatomyOptions(shape_split="held_out", missing_teeth_probability=1.0, ridge_resorption_mm=4.0)
    subject = sample_subject(7, options)
    assert subject.missing_teeth and len(subject.ridge_loss_mm) == len(subject.missing_teeth)
    assert all(2.0 <= loss <= 4.0 for loss in subject.ridge_loss_mm)
    resorbed, *_, grid = render(subject, 1.0)
    intact, *_ = render(dataclasses.replace(subject, ridge_loss_mm=()), 1.0)
    lost = resorbed != intact
    # only bone of the jaws went, and all of it within the gaps the missing teeth leave
    assert lost.sum() > 50 and set(np.unique(intact[lost])) <= {MANDIBLE, UPPER_SKULL}
    assert np.all(resorbed[lost] == 0)
    assert tooth_gaps(subject, 1.0)[lost].all()
    # at each gap's centre the crest went down by its loss (within a voxel), and nowhere deeper than the shoulders
    points = grid.points[lost]
    for index, loss in zip(subject.missing_teeth, subject.ridge_loss_mm):
        tooth = subject.teeth[index]
        offset = points - (tooth.cervical + CROWN_ABOVE_CREST_MM * tooth.axis)
        centre = (np.abs(offset @ tooth.tangent) < 1.0) & (np.abs(offset @ tooth.normal) < 1.0)
        depth = offset @ tooth.axis
        assert depth[centre].max() == pytest.approx(loss, abs=1.0)
        assert depth[np.abs(offset @ tooth.tangent) < 0.5 * tooth.width + 1.0].max() <= 1.5 * loss + 1.0
    # no loss keeps the whole crest, as before generator revision 3
    kept = sample_subject(7, dataclasses.replace(options, ridge_resorption_mm=0.0))
    assert kept.missing_teeth == subject.missing_teeth and not any(kept.ridge_loss_mm)
    np.testing.assert_array_equal(render(kept, 1.0)[0], intact)
    for bad in (-1.0, 7.0):
        with pytest.raises(ValueError, match="ridge_resorption_mm"):
            AnatomyOptions(ridge_resorption_mm=bad)


def test_fields_of_view_go_from_the_lower_jaw_to_the_face():
    heights = {}
    for fov in ("lower_jaw", "jaws", "face"):
        phantom = make_phantom(3, spacing=2.0, options=AnatomyOptions(field_of_view=fov), with_cbct=False)
        heights[fov] = phantom.labels.shape[2]
        assert (phantom.labels == MANDIBLE).any()
    assert heights["lower_jaw"] < heights["jaws"] < heights["face"]


def test_the_same_seed_gives_the_same_phantom_and_the_lesion_keeps_the_anatomy():
    healthy = make_phantom(21, spacing=2.0, options=HELD_OUT)
    again = make_phantom(21, spacing=2.0, options=HELD_OUT)
    np.testing.assert_array_equal(healthy.labels, again.labels)
    np.testing.assert_array_equal(healthy.cbct, again.cbct)
    lesioned = make_phantom(21, spacing=2.0, lesion="onj", options=HELD_OUT, with_cbct=False)
    np.testing.assert_array_equal(lesioned.healthy_labels, healthy.labels)


@pytest.mark.parametrize("kind", ["onj", "onj_ramus", "onj_maxilla", "teeth_and_jaw_removed"])
def test_lesion_truth_is_exactly_the_removed_tissue(kind):
    phantom = make_phantom(5, spacing=1.0, lesion=kind, options=HELD_OUT, lesion_volume_ml=2.0, with_cbct=False)
    removed = (phantom.healthy_labels > 0) & (phantom.labels == 0)
    np.testing.assert_array_equal(phantom.truth.astype(bool), removed)
    assert np.array_equal(phantom.labels[~removed], phantom.healthy_labels[~removed])
    volume_ml = phantom.truth.sum() / 1000.0
    if kind == "teeth_and_jaw_removed":
        assert volume_ml > 1.0 and set(np.unique(phantom.healthy_labels[removed])) >= {MANDIBLE, LOWER_TEETH}
    else:
        assert volume_ml == pytest.approx(2.0, rel=0.1)
        site = UPPER_SKULL if kind == "onj_maxilla" else MANDIBLE
        assert np.mean(phantom.healthy_labels[removed] == site) > 0.5
    if kind == "onj_ramus":
        # behind the last lower tooth, away from the tooth-bearing body
        landmarks = phantom.subject.landmarks
        nearest = np.argmin(np.linalg.norm(landmarks.arch - phantom.lesion.centre[:2], axis=1))
        s = landmarks.s[nearest]
        assert abs(s) > landmarks.teeth_end[0 if s < 0 else 1]
        assert not np.isin(phantom.healthy_labels[removed], [LOWER_TEETH]).any()


def test_a_volume_range_draws_the_target_volume_in_it_and_the_default_range_is_unchanged():
    subject = sample_subject(5, HELD_OUT)
    default = sample_lesion(subject, "onj", 5)
    assert sample_lesion(subject, "onj", 5, volume_range_ml=ONJ_VOLUME_ML).target_volume_ml == default.target_volume_ml
    assert sample_lesion(subject, "onj_ramus", 5, volume_range_ml=(1.2, 1.2)).target_volume_ml == pytest.approx(1.2)
    drawn = [sample_lesion(subject, "onj", seed, volume_range_ml=(0.5, 2.0)).target_volume_ml for seed in range(20)]
    assert 0.5 <= min(drawn) < max(drawn) <= 2.0
    phantom = make_phantom(
        5, spacing=1.0, lesion="onj", options=HELD_OUT, with_cbct=False, lesion_volume_range_ml=(1.5, 1.5)
    )
    assert phantom.truth.sum() / 1000.0 == pytest.approx(1.5, rel=0.1)


def test_impossible_requests_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="held-out shapes only"):
        make_phantom(1, spacing=2.0, lesion="onj")
    with pytest.raises(ValueError, match="does not fit"):
        make_phantom(1, spacing=2.0, lesion="onj", options=HELD_OUT, lesion_volume_ml=500.0, with_cbct=False)
    with pytest.raises(ValueError, match="field of view"):
        AnatomyOptions(field_of_view="whole_body")
    with pytest.raises(ValueError, match="spacing"):
        make_phantom(1, spacing=0.0)
    for bad_range in [(0.0, 1.0), (2.0, 1.0)]:
        with pytest.raises(ValueError, match="0 < min <= max"):
            make_phantom(1, spacing=2.0, lesion="onj", options=HELD_OUT, lesion_volume_range_ml=bad_range)


@pytest.mark.slow
def test_realism_table_and_figure_come_from_the_script(tmp_path):
    import sys

    sys.path.insert(0, str(BANK_DIR.parents[2] / "scripts"))
    import phantom_realism

    table, figure = tmp_path / "realism.md", tmp_path / "projections.png"
    assert phantom_realism.main(["--count", "1", "--markdown", str(table), "--figure", str(figure)]) == 0
    text = table.read_text()
    assert "| mandible | volume (cm^3) | 38.7 |" in text and "symphysis height" in text
    (space,) = [line.split(" | ") for line in text.splitlines() if line.startswith("| lower jaw to upper skull |")]
    assert float(space[3].split("-")[0]) >= sample_subject(0).joint_space_mm >= 1.0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert phantom_realism.main(["--count", "0", "--markdown", str(table), "--figure", str(figure)]) == 2
    thinned = ["--segmentation_errors", "mandible_thinning_mm=1.0"]
    assert phantom_realism.main(["--count", "1", "--markdown", str(table), "--figure", str(figure), *thinned]) == 0
    (mandible,) = [line.split(" | ") for line in table.read_text().splitlines() if line.startswith("| mandible | vol")]
    assert "bank phantoms with mandible_thinning_mm=1.0" in table.read_text()
    exact, thin = float(mandible[3].split("-")[0]), float(mandible[4].split("-")[0])
    assert len(mandible) == 6 and thin < 0.85 * exact
    assert (
        phantom_realism.main(
            ["--count", "1", "--markdown", str(table), "--figure", str(figure), "--segmentation_errors", "x=1"]
        )
        == 2
    )
