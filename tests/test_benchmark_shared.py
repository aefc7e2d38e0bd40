"""scripts.benchmarking, what the benchmark scripts share: the naive peer and the timing loop."""

import pytest
import torch

from bundle.networks import VQGANGenerator
from scripts.benchmarking import naive_peer, peer_vqvae, time_in_turn

TINY = {"channels": [4, 8, 16], "num_res_blocks": [0, 1, 1], "num_embeddings": 16, "embedding_dim": 4}


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_peer_has_the_generators_latent_grid_and_codebook(stem_stride):
    arguments = {**TINY, "stem_stride": stem_stride}
    generator, peer = VQGANGenerator(**arguments).eval(), peer_vqvae(arguments).eval()
    image = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert peer.encode(image).shape == generator.encoder(image).shape
        assert peer(image)[0].shape == image.shape
    assert peer.quantizer.quantizer.num_embeddings == 16
    assert peer.channels == tuple(TINY["channels"][2 - stem_stride :])


def test_naive_peer_is_a_squared_difference_over_the_whole_volume():
    peer = naive_peer({**TINY, "channels": [4, 8]}, sw_batch_size=2)
    image = torch.rand(1, 1, 70, 66, 64)
    with torch.inference_mode():
        anomaly = peer(image)
    assert anomaly.shape == image.shape and anomaly.min() >= 0 and anomaly.max() > 0


def test_time_in_turn_runs_rounds_in_order_and_times_only_the_repeats():
    calls = []
    steps = {"first": lambda: calls.append("first"), "second": lambda: calls.append("second")}
    times = time_in_turn(steps, repeats=3, warmup=2, setup=lambda: calls.append("setup"))
    assert calls == ["setup", "first", "second"] * 5
    for timing in times.values():
        assert len(timing["runs"]) == 3 and timing["min"] <= timing["median"] and timing["min"] >= 0
    with pytest.raises(ValueError, match="repeats"):
        time_in_turn(steps, repeats=0)
