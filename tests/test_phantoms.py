"""jaw_phantoms/parametric.py: anatomy plausible against real_anatomy.md, lesions with exact truth, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from jaw_phantoms.parametric import (
    CANAL,
    LESION_KINDS,
    LOWER_TEETH,
    MANDIBLE,
    UPPER_SKULL,
    UPPER_TEETH,
    ArchCurve,
    JawPhantom,
    make_phantom,
    render_phantom,
    sample_lesion,
    sample_subject,
)

# voxel counts of the real DentalSegmentator map resampled to 2 mm (shared/real_anatomy.md)
REAL_VOXELS_AT_2MM = {UPPER_SKULL: 22463, MANDIBLE: 4832, UPPER_TEETH: 1169, LOWER_TEETH: 1000, CANAL: 101}
SIX_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def subject_coordinates(phantom: JawPhantom, mask: np.ndarray) -> np.ndarray:
    """Subject-frame millimetres (N, 3) of the voxels in ``mask``, through the affine and the subject's pose."""
    voxels = np.argwhere(mask).astype(float)
    world = voxels @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]
    return (world - phantom.subject.translation) @ phantom.subject.rotation


def arch_position(phantom: JawPhantom, mask: np.ndarray) -> tuple[float, float, float]:
    """Arch coordinates (s, d, z) in mm of the centroid of ``mask`` (s: arc length from the midline)."""
    x, y, z = subject_coordinates(phantom, mask).mean(axis=0)
    s, d = ArchCurve(phantom.subject.arch_control, 0.5).project(np.array([x]), np.array([y]))
    return float(s[0]), float(d[0]), float(z)


def enclosed_fraction(mask: np.ndarray, tissue: np.ndarray) -> float:
    """Fraction of ``mask`` voxels whose six neighbours all lie in ``tissue``."""
    enclosed = ndimage.binary_erosion(tissue, structure=SIX_NEIGHBOURS, border_value=0)
    return float((enclosed & mask).sum() / mask.sum())


@pytest.fixture(scope="module")
def healthy_2mm() -> list[JawPhantom]:
    return [make_phantom(seed, 2.0, with_cbct=False) for seed in range(12)]


@pytest.fixture(scope="module")
def healthy_1mm() -> list[JawPhantom]:
    return [make_phantom(seed, 1.0) for seed in (3, 8)]


def test_healthy_phantoms_have_all_labels_as_int16(healthy_2mm):
    for phantom in healthy_2mm:
        assert phantom.labels.dtype == np.int16
        assert set(np.unique(phantom.labels).tolist()) == {0, 1, 2, 3, 4, 5}
        assert not phantom.truth.any()
        assert phantom.lesion is None


def test_label_volumes_at_2mm_within_a_factor_2_of_the_real_map(healthy_2mm):
    for phantom in healthy_2mm:
        counts = np.bincount(phantom.labels.ravel(), minlength=6)
        for label, real in REAL_VOXELS_AT_2MM.items():
            assert real / 2 <= counts[label] <= real * 2, (phantom.subject.seed, label, counts[label], real)


def test_grid_shapes_and_affine_at_2mm(healthy_2mm):
    shapes = np.array([phantom.labels.shape for phantom in healthy_2mm])
    assert shapes.min() >= 65 and shapes.max() <= 100
    assert len({tuple(s) for s in shapes}) > 1, "field of view should vary between subjects"
    for phantom in healthy_2mm:
        np.testing.assert_allclose(phantom.spacing, 2.0)
        assert phantom.affine.shape == (4, 4)
        np.testing.assert_array_equal(phantom.affine[3], [0, 0, 0, 1])


def test_mandible_is_thin_one_piece_and_horseshoe(healthy_1mm):
    for phantom in healthy_1mm:
        mandible = phantom.labels == MANDIBLE
        depth = ndimage.distance_transform_edt(mandible, sampling=phantom.spacing)
        half_thickness = depth.max() - phantom.spacing.min() / 2
        assert 2.0 <= half_thickness <= 6.0
        components, count = ndimage.label(mandible)
        assert np.bincount(components.ravel())[1:].max() > 0.95 * mandible.sum()
        # open posteriorly: behind the chin the midline holds no mandible, the rami lie far to both sides
        points = subject_coordinates(phantom, mandible)
        behind = points[points[:, 1] < points[:, 1].max() - 25.0]
        assert np.abs(behind[:, 0]).min() > 10.0
        assert points[:, 0].min() < -35.0 and points[:, 0].max() > 35.0
        # rami rise above the occlusal plane (z = 0 in the subject frame) up to the condyles
        assert points[:, 2].max() > 25.0 and points[:, 2].min() < -30.0


def test_canal_is_two_tubes_inside_the_mandible_below_the_roots(healthy_1mm):
    for phantom in healthy_1mm:
        canal = phantom.labels == CANAL
        assert ndimage.label(canal)[1] == 2
        assert enclosed_fraction(canal, np.isin(phantom.labels, (MANDIBLE, LOWER_TEETH, CANAL))) > 0.95
        # below the lower teeth where both run under the body
        canal_points = subject_coordinates(phantom, canal)
        teeth_points = subject_coordinates(phantom, phantom.labels == LOWER_TEETH)
        assert np.median(canal_points[:, 2]) < np.median(teeth_points[:, 2])
        assert set(np.sign(canal_points[:, 0]).tolist()) == {-1.0, 1.0}


def test_roots_are_seated_in_their_jaw(healthy_1mm):
    for phantom in healthy_1mm:
        labels = phantom.labels
        lower = labels == LOWER_TEETH
        lower_roots = lower.copy()
        lower_roots[lower] = subject_coordinates(phantom, lower)[:, 2] < -14.0
        assert enclosed_fraction(lower_roots, np.isin(labels, (MANDIBLE, LOWER_TEETH, CANAL))) > 0.9
        upper = labels == UPPER_TEETH
        upper_roots = upper.copy()
        upper_roots[upper] = subject_coordinates(phantom, upper)[:, 2] > 14.0
        assert enclosed_fraction(upper_roots, np.isin(labels, (UPPER_SKULL, UPPER_TEETH))) > 0.9


def test_upper_skull_has_cavities(healthy_1mm):
    for phantom in healthy_1mm:
        skull = phantom.labels == UPPER_SKULL
        # sinuses and the nasal airway open into each other, but coronal slices show them ringed by bone
        holes = sum(int((ndimage.binary_fill_holes(plane) & ~plane).sum()) for plane in np.moveaxis(skull, 1, 0))
        assert holes * np.prod(phantom.spacing) > 2000.0  # mm3


def test_zero_to_three_missing_teeth_and_they_are_really_absent():
    missing_counts = set()
    for seed in range(30):
        subject = sample_subject(seed)
        missing_counts.add(int(subject.teeth.missing.sum()))
        assert len(subject.missing_teeth) <= 3
        if subject.teeth.missing.any():
            phantom = render_phantom(subject, 2.0, with_cbct=False)
            teeth = subject.teeth
            arch = ArchCurve(subject.arch_control, 0.5)
            for index in range(len(teeth.fdi)):
                if not (teeth.missing[index] or teeth.present[index]):
                    continue
                upward = teeth.label[index] == UPPER_TEETH
                mid_crown = 0.5 + teeth.crown_height[index] / 2 if upward else -teeth.crown_height[index] / 2
                xy = arch.point(teeth.s[index]) + teeth.d[index] * arch.normal(teeth.s[index])
                world = subject.rotation @ np.array([*xy, mid_crown]) + subject.translation
                voxel = np.rint(np.linalg.solve(phantom.affine[:3, :3], world - phantom.affine[:3, 3])).astype(int)
                value = phantom.labels[tuple(voxel)]
                assert (value == teeth.label[index]) == bool(teeth.present[index]), teeth.fdi[index]
    assert missing_counts == {0, 1, 2, 3}


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", LESION_KINDS[1:])
def test_lesion_truth_is_exactly_the_removed_tissue(seed, kind):
    phantom = make_phantom(seed, 2.0, lesion=kind)
    healthy, labels, truth = phantom.healthy_labels, phantom.labels, phantom.truth
    assert truth.dtype == np.uint8 and set(np.unique(truth).tolist()) == {0, 1}
    np.testing.assert_array_equal(truth, ((healthy > 0) & (labels == 0)).astype(np.uint8))
    np.testing.assert_array_equal(labels[truth == 0], healthy[truth == 0])
    assert (labels[truth > 0] == 0).all()
    # the healthy map is the subject without lesion
    np.testing.assert_array_equal(healthy, make_phantom(seed, 2.0, with_cbct=False).labels)
    # removed tissue: lower jaw only, bone included, a meaningful amount
    removed = healthy[truth > 0]
    assert np.isin(removed, (MANDIBLE, LOWER_TEETH, CANAL)).all()
    assert (removed == MANDIBLE).sum() >= 20
    assert truth.sum() >= 30


@pytest.mark.parametrize("seed", range(8))
def test_onj_lesions_lie_in_the_posterior_mandible_body(seed):
    phantom = make_phantom(seed, 2.0, lesion="onj", with_cbct=False)
    s, d, z = arch_position(phantom, phantom.truth > 0)
    assert abs(s) >= 18.0  # behind the canines
    assert abs(d) <= 8.0  # on the arch
    assert -45.0 <= z <= 0.0  # below the occlusal plane
    assert abs(s - phantom.lesion.s_centre) < phantom.lesion.s_half + 4.0


def test_teeth_and_jaw_removed_takes_adjacent_lower_teeth_and_bone():
    for seed in range(4):
        phantom = make_phantom(seed, 2.0, lesion="teeth_and_jaw_removed", with_cbct=False)
        removed_teeth = phantom.subject.teeth.fdi[list(phantom.lesion.removed_teeth)]
        assert len(removed_teeth) >= 1 and (removed_teeth // 10 >= 3).all()
        assert len(set(removed_teeth // 10)) == 1  # one quadrant
        removed = phantom.healthy_labels[phantom.truth > 0]
        assert (removed == LOWER_TEETH).sum() >= 50 and (removed == MANDIBLE).sum() >= 50


def test_cbct_intensities_match_the_labels():
    phantom = make_phantom(5, 1.0, lesion="onj")
    cbct, labels, truth = phantom.cbct, phantom.labels, phantom.truth
    assert cbct.dtype == np.float32 and cbct.shape == labels.shape
    assert cbct[0, 0, 0] == -1000.0  # outside the reconstructed cylinder
    median = {label: np.median(cbct[labels == label]) for label in range(6)}
    assert 700 <= median[UPPER_SKULL] <= 1500 and 700 <= median[MANDIBLE] <= 1500
    assert 1500 <= median[LOWER_TEETH] <= 2500 and 1500 <= median[UPPER_TEETH] <= 2500
    assert median[CANAL] < median[MANDIBLE] - 300
    soft = cbct[(labels == 0) & (cbct > -300)]
    assert 0 <= np.median(soft) <= 100  # soft-tissue envelope
    assert (cbct[labels == 0] < -900).mean() > 0.2  # air around the head and in the airways
    assert np.median(cbct[truth > 0]) < -500  # removed bone leaves an open (air) wound
    assert np.median(make_phantom(5, 1.0).cbct[truth > 0]) > 700


def test_same_seed_same_arrays_and_different_seed_different_arrays():
    first, second = make_phantom(11, 2.0, lesion="onj"), make_phantom(11, 2.0, lesion="onj")
    for name in ("labels", "healthy_labels", "truth", "cbct", "affine"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    other = make_phantom(12, 2.0, lesion="onj")
    assert other.labels.shape != first.labels.shape or not np.array_equal(other.labels, first.labels)


def test_subject_rasterises_alike_at_any_spacing():
    subject = sample_subject(21)
    lesion = sample_lesion(subject, "onj")
    coarse = render_phantom(subject, 2.0, lesion, with_cbct=False)
    anisotropic = render_phantom(subject, (0.9, 0.9, 1.4), lesion, with_cbct=False)
    np.testing.assert_allclose(anisotropic.spacing, (0.9, 0.9, 1.4))
    for label in (UPPER_SKULL, MANDIBLE, UPPER_TEETH, LOWER_TEETH):
        volumes = [(p.labels == label).sum() * np.prod(p.spacing) for p in (coarse, anisotropic)]
        assert volumes[0] == pytest.approx(volumes[1], rel=0.15), label
    truth_volumes = [p.truth.sum() * np.prod(p.spacing) for p in (coarse, anisotropic)]
    assert truth_volumes[0] == pytest.approx(truth_volumes[1], rel=0.3)


def test_lps_axes_hold_the_same_anatomy_flipped():
    ras = make_phantom(4, 2.0, lesion="onj", with_cbct=False)
    lps = make_phantom(4, 2.0, lesion="onj", axcodes="LPS", with_cbct=False)
    assert np.sign(np.diag(lps.affine)[:3]).tolist() == [-1.0, -1.0, 1.0]
    np.testing.assert_array_equal(np.flip(lps.labels, (0, 1)), ras.labels)
    np.testing.assert_array_equal(np.flip(lps.truth, (0, 1)), ras.truth)
    # the same world point: voxel 0 of the LPS grid is the last voxel along x and y of the RAS grid
    corner = np.array([ras.labels.shape[0] - 1, ras.labels.shape[1] - 1, 0, 1])
    np.testing.assert_allclose(ras.affine @ corner, lps.affine[:, 3])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lesion": "fracture"}, "unknown lesion kind"),
        ({"axcodes": "SAR"}, "axcodes"),
        ({"spacing": 0.0}, "spacing"),
        ({"spacing": (1.0, -1.0, 1.0)}, "spacing"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_phantom(0, **{"spacing": 2.0, **kwargs})
