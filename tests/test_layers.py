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


def test_sample_dropout_keeps_one_mask_for_all_steps(device):
    torch.manual_seed(0)
    out = stbp.SeqDropout(0.5).train()(torch.ones(6, 4, 50, device=device))
    assert all(torch.equal(out[0], out[t]) for t in range(6))
    assert set(out.unique().tolist()) == {0.0, 2.0}  # kept values scaled by 1 / (1 - p)


def test_step_dropout_draws_a_fresh_mask_at_every_step(device):
    torch.manual_seed(0)
    drop = StepDropout(0.5).train()
    out = drop(torch.ones(6, 4, 50, device=device))
    assert not any(torch.equal(out[0], out[t]) for t in range(1, 6))
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert 0.4 < float((out == 0).float().mean()) < 0.6
    x = torch.rand(3, 2, 5, device=device)
    assert torch.equal(drop.eval()(x), x)  # the identity at inference


def test_step_dropout_on_an_input_repeated_over_time_still_draws_per_step(device):
    # A static image's encoding output is one map expanded over T (no copy): the masks must
    # still differ between steps.
    torch.manual_seed(0)
    x = torch.ones(1, 4, 50, device=device).expand(6, 4, 50)
    out = StepDropout(0.5).train()(x)
    assert not torch.equal(out[0], out[1])


def test_step_dropout_is_seeded_by_torch(device):
    x = torch.ones(4, 3, 20, device=device)
    torch.manual_seed(1)
    a = StepDropout(0.3).train()(x)
    torch.manual_seed(1)
    b = StepDropout(0.3).train()(x)
    assert torch.equal(a, b)


# ------------------------------------------------------------- synapses on spike inputs


def _synapses() -> list[nn.Module]:
    return [nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2, bias=False),
            nn.Linear(12, 7)]  # fmt: skip


@pytest.mark.parametrize("index", range(3), ids=["conv", "conv-strided", "linear"])
def test_spike_input_synapse_matches_the_plain_module(index, device):
    """`Temporal(..., binary_input=True)` keeps its 0/1 input as bool for the backward pass
    and runs its own backward: outputs and gradients are those of the wrapped module, on the
    CPU (oneDNN) and on CUDA (cuDNN, cuBLAS). float64, so only summation order differs."""
    torch.manual_seed(0)
    module = _synapses()[index].double()
    shape = (4, 2, 12) if isinstance(module, nn.Linear) else (4, 2, 3, 6, 6)
    spikes = (torch.rand(shape, dtype=torch.float64) < 0.3).double()
    outputs, grads = [], []
    for binary in (True, False):
        layer = stbp.Temporal(module, binary_input=binary).to(device)
        x = spikes.to(device).requires_grad_()
        y = layer(x)
        g = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        y.backward(g.to(device))
        outputs.append(y.detach().cpu())
        grads.append([t.grad.cpu() for t in (x, *module.parameters())])
        module.zero_grad(set_to_none=True)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-12)
    for fused, plain in zip(*grads, strict=True):
        torch.testing.assert_close(fused, plain, rtol=0, atol=1e-12)
