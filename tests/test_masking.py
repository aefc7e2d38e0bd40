"""bundle.masking: the stage-2 blob masking removes tissue inside rough ellipsoids, reproducibly, and nothing else."""

import numpy as np
import pytest
import torch

from bundle.masking import RandTissueBlobDropout, RandTissueBlobDropoutd
from jaw_phantoms.parametric import make_phantom


@pytest.fixture(scope="module")
def jaw() -> torch.Tensor:
    labels = make_phantom(3, 2.0, with_cbct=False).labels
    return torch.from_numpy(np.where(labels > 0, (labels + 5) / 10.0, 0.0).astype(np.float32))[None]


def test_removes_only_tissue_inside_blobs_within_the_radius_bounds(jaw):
    dropper = RandTissueBlobDropout(max_blobs=1, min_radius=3.0, max_radius=5.0, roughness=0.0)
    dropper.set_random_state(1)
    out = dropper(jaw)
    removed = (jaw > 0) & (out == 0)
    assert removed.sum() > 0
    torch.testing.assert_close(out[~removed], jaw[~removed])  # nothing else changes
    centre, radii, _ = dropper._blobs[0]
    assert jaw[(0, *centre.astype(int))] > 0  # centred on tissue
    assert np.all((3.0 <= radii) & (radii <= 5.0))
    coords = torch.nonzero(removed[0]).numpy()
    assert np.all(np.abs(coords - centre) <= radii + 1e-4)  # plain ellipsoid: inside its bounding box
    blob = dropper.mask(jaw.shape[1:])
    assert 0.9 * (4 / 3) * np.pi * np.prod(radii) <= blob.sum() <= 1.1 * (4 / 3) * np.pi * np.prod(radii) + 10


def test_rough_surface_differs_from_the_ellipsoid_and_draws_repeat_with_the_seed(jaw):
    first = RandTissueBlobDropout(roughness=0.5).set_random_state(7)
    second = RandTissueBlobDropout(roughness=0.5).set_random_state(7)
    torch.testing.assert_close(first(jaw), second(jaw))
    smooth = RandTissueBlobDropout(roughness=0.0).set_random_state(7)
    smooth(jaw)
    assert not torch.equal(first.mask(jaw.shape[1:]), smooth.mask(jaw.shape[1:]))


def test_centres_lie_only_above_min_centre_value(jaw):
    dropper = RandTissueBlobDropout(max_blobs=2, min_centre_value=0.65)
    for seed in range(20):
        dropper.set_random_state(seed)
        dropper(jaw)
        for centre, _, _ in dropper._blobs:
            assert jaw[(0, *centre.astype(int))] > 0.65  # mandible, teeth or canal, never the upper skull
    assert torch.equal(RandTissueBlobDropout(min_centre_value=1.0)(jaw), jaw)  # no voxel above 1: no blob


def test_log_uniform_radii_stay_in_range_and_favour_small_blobs(jaw):
    def radii(distribution: str) -> np.ndarray:
        dropper = RandTissueBlobDropout(max_blobs=1, min_radius=2.0, max_radius=16.0, radius_distribution=distribution)
        dropper.set_random_state(5)
        draws = []
        for _ in range(400):
            dropper.randomize(torch.ones(4, 4, 4, dtype=torch.bool))
            draws.append(dropper._blobs[0][1])
        return np.concatenate(draws)

    log_uniform, uniform = radii("log_uniform"), radii("uniform")
    assert log_uniform.min() >= 2.0 and log_uniform.max() <= 16.0
    # log-uniform on [2, 16]: a third of the radii in each of [2, 4], [4, 8], [8, 16]; uniform: 1/7, 2/7, 4/7
    assert 0.28 < np.mean(log_uniform < 4.0) < 0.39 and 0.28 < np.mean(log_uniform > 8.0) < 0.39
    assert np.mean(uniform < 4.0) < 0.2 and np.mean(uniform > 8.0) > 0.5


def test_no_tissue_or_prob_zero_leaves_the_image_as_it_is(jaw):
    empty = torch.zeros(1, 20, 20, 20)
    assert torch.equal(RandTissueBlobDropout()(empty), empty)
    assert torch.equal(RandTissueBlobDropout(prob=0.0)(jaw), jaw)


def test_dictionary_form_removes_the_same_blobs_from_every_key(jaw):
    out = RandTissueBlobDropoutd(["image", "copy"]).set_random_state(3)({"image": jaw, "copy": jaw.clone()})
    assert torch.equal(out["image"], out["copy"]) and not torch.equal(out["image"], jaw)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_blobs": 0},
        {"min_radius": 5.0, "max_radius": 2.0},
        {"roughness": -1.0},
        {"min_centre_value": -0.1},
        {"radius_distribution": "normal"},
    ],
)
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        RandTissueBlobDropout(**kwargs)
