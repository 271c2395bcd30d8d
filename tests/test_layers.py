"""The layers around the LIF neurons: their argument checks and the two dropouts."""

import pytest
import torch
from torch import nn

import stbp
from stbp.layers import StepDropout, check_choice, check_fraction, check_int


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: stbp.Encoding(nn.Linear(2, 2), 0, 1), r"T must be an integer >= 1, got 0"),
        (lambda: stbp.Encoding(nn.Linear(2, 2), -1, 1), r"T must be an integer >= 1, got -1"),
        (lambda: stbp.Encoding(nn.Linear(2, 2), 2.5, 1), r"T must be an integer >= 1, got 2.5"),
        (lambda: stbp.Encoding(nn.Linear(2, 2), 4, 0), r"in_dims must be an integer >= 1"),
        (lambda: stbp.Voting(0), r"num_classes must be an integer >= 1, got 0"),
        (lambda: stbp.Voting(10, votes=0), r"votes must be an integer >= 1, got 0"),
        (lambda: stbp.Voting(True), r"num_classes must be an integer >= 1, got True"),
        (lambda: stbp.SeqDropout(-0.1), r"dropout probability p must be a number in \[0, 1\)"),
        (lambda: stbp.SeqDropout(1.0), r"in \[0, 1\), got 1.0"),
        (lambda: StepDropout(1.5), r"dropout probability p must be a number in \[0, 1\)"),
        (lambda: StepDropout(float("nan")), r"in \[0, 1\), got nan"),
    ],
)
def test_constructors_name_the_bad_argument_value_and_range(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_temporal_refuses_a_non_module():
    with pytest.raises(TypeError, match="Temporal wraps an nn.Module, got function"):
        stbp.Temporal(lambda x: x)


def test_checks_return_the_value():
    assert check_int("T", 3) == 3 and check_fraction("p", 0) == 0.0
    assert check_choice("mask", "step", ("sample", "step")) == "step"
    with pytest.raises(ValueError, match=r"mask must be one of 'sample', 'step'; got 'time'"):
        check_choice("mask", "time", ("sample", "step"))


def test_sample_dropout_keeps_one_mask_for_all_steps():
    torch.manual_seed(0)
    out = stbp.SeqDropout(0.5).train()(torch.ones(6, 4, 50))
    assert all(torch.equal(out[0], out[t]) for t in range(6))
    assert set(out.unique().tolist()) == {0.0, 2.0}  # kept values scaled by 1 / (1 - p)


def test_step_dropout_draws_a_fresh_mask_at_every_step():
    torch.manual_seed(0)
    drop = StepDropout(0.5).train()
    out = drop(torch.ones(6, 4, 50))
    assert not any(torch.equal(out[0], out[t]) for t in range(1, 6))
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert 0.4 < float((out == 0).float().mean()) < 0.6
    x = torch.rand(3, 2, 5)
    assert torch.equal(drop.eval()(x), x)  # the identity at inference


def test_step_dropout_on_an_input_repeated_over_time_still_draws_per_step():
    # A static image's encoding output is one map expanded over T (no copy): the masks must
    # still differ between steps.
    torch.manual_seed(0)
    x = torch.ones(1, 4, 50).expand(6, 4, 50)
    out = StepDropout(0.5).train()(x)
    assert not torch.equal(out[0], out[1])


def test_step_dropout_is_seeded_by_torch():
    x = torch.ones(4, 3, 20)
    torch.manual_seed(1)
    a = StepDropout(0.3).train()(x)
    torch.manual_seed(1)
    b = StepDropout(0.3).train()(x)
    assert torch.equal(a, b)
