"""The stateless cosine learning-rate decay (bundle.lr_decay); its use through the training config and on resume is
tested in tests/test_training.py."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine, Events

from bundle.lr_decay import CosineLrDecayHandler, cosine_decay_factor


def test_factor_is_flat_then_half_a_cosine_to_the_final_factor():
    factors = [cosine_decay_factor(i, decay_start=4, total_iterations=8, final_factor=0.1) for i in range(1, 11)]
    assert factors[:4] == [1.0] * 4
    assert factors[5] == pytest.approx(0.1 + 0.9 * 0.5)  # iteration 6: half-way through the decay
    assert factors[7:] == [pytest.approx(0.1)] * 3  # the last iteration and after it
    assert all(a > b for a, b in zip(factors[3:8], factors[4:8]))


def test_handler_sets_every_group_from_the_engine_iteration_not_from_the_optimizer():
    parameters = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": parameters[:1]}, {"params": parameters[1:]}], lr=5.0)
    engine = Engine(lambda engine, batch: [group["lr"] for group in optimizer.param_groups])
    CosineLrDecayHandler(optimizer, base_lr=2.0, total_iterations=4, decay_fraction=0.5, final_factor=0.0).attach(
        engine
    )
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output))
    engine.run(range(4), max_epochs=1)
    # start = 4 - round(0.5 * 4) = 2; iteration 3 is half-way
    assert seen == [[2.0, 2.0], [2.0, 2.0], [pytest.approx(1.0)] * 2, [pytest.approx(0.0, abs=1e-12)] * 2]


def test_zero_fraction_keeps_the_rate():
    assert {cosine_decay_factor(i, 10, 10, 0.01) for i in range(1, 11)} == {1.0}
    assert math.isclose(cosine_decay_factor(10, 9, 10, 0.01), 0.01)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"decay_fraction": 1.5}, "decay_fraction"),
        ({"final_factor": -0.1}, "final_factor"),
        ({"base_lr": 0.0}, "base_lr"),
        ({"total_iterations": 0}, "total_iterations"),
    ],
)
def test_impossible_parameters_are_refused(arguments, message):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=message):
        CosineLrDecayHandler(optimizer, **{"base_lr": 1.0, "total_iterations": 4, **arguments})
