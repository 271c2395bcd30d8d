"""`SNN.step`: one time step of a whole network, equal to the multi-step forward."""

import pytest
import torch

import stbp
from stbp.models import SNNState

NETWORKS = {
    "conv-avgpool": dict(spec="4C3(Enc)-AP2-8FC-Voting", in_shape=(2, 6, 6)),
    "conv-maxpool": dict(spec="4C3(Enc)-MP2-4C3-8FC-Voting", in_shape=(2, 6, 6)),
    "neunorm": dict(spec="4C3(Enc)-4C3-AP2-8FC-Voting", in_shape=(2, 6, 6), neunorm=True),
    "neunorm-spikingjelly": dict(
        spec="4C3(Enc)-4C3-AP2-8FC-Voting",
        in_shape=(2, 6, 6),
        neunorm=True,
        neunorm_reading="spikingjelly",
    ),
    "dropout-sample": dict(spec="4C3(Enc)-AP2-8FC-DO-8FC-Voting", in_shape=(2, 6, 6), dropout=0.5),
    "dropout-step": dict(spec="16FC-8FC-Voting", in_shape=(12,), dropout=0.5, dropout_mask="step"),
    "soft-learnt-per-channel": dict(
        spec="4C3(Enc)-AP2-8FC-Voting",
        in_shape=(2, 6, 6),
        reset="soft",
        detach_reset=True,
        learn_decay=True,
        learn_threshold=True,
        per_channel=True,
    ),
    "if-neuron": dict(spec="16FC-Voting", in_shape=(12,), lif=stbp.LIFParameters(decay=1.0)),
}

T = 5


def _model(name: str, **extra) -> stbp.SNN:
    torch.manual_seed(0)
    model = stbp.build(**NETWORKS[name], num_classes=3, votes=2, T=T, **extra).double().eval()
    with torch.no_grad():  # a little more drive: every layer fires in these tiny nets
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.mul_(3)
    return model


def _stream(model: stbp.SNN, frames: torch.Tensor) -> list[torch.Tensor]:
    """The scores after each step of `frames` `[T, B, ...]`."""
    state, scores = None, []
    for x_t in frames:
        s, state = model.step(x_t, state)
        scores.append(s)
    return scores


@pytest.mark.parametrize("name", list(NETWORKS))
def test_stream_of_a_sequence_equals_the_forward(name):
    model = _model(name)
    frames = (torch.rand(T, 3, *model.in_shape, dtype=torch.float64) < 0.5).double()
    with torch.no_grad():
        expected = model(frames)
        scores = _stream(model, frames)
        assert expected.sum() > 0  # not two silent networks
        torch.testing.assert_close(scores[-1], expected, rtol=0, atol=1e-6)
        for k in (1, 3):  # after k steps: the forward over the first k frames
            torch.testing.assert_close(scores[k - 1], model(frames[:k], T=k), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["conv-avgpool", "neunorm", "if-neuron"])
def test_stream_of_a_static_image_equals_the_forward(name):
    model = _model(name)
    image = torch.rand(3, *model.in_shape, dtype=torch.float64)
    with torch.no_grad():
        scores = _stream(model, [image] * T)
        torch.testing.assert_close(scores[-1], model(image), rtol=0, atol=1e-6)
        torch.testing.assert_close(
            torch.stack(_stream(model, model.encode(image))), torch.stack(scores)
        )


@pytest.mark.parametrize("encoding", ["bernoulli", "latency"])
def test_stream_of_encoded_spikes_equals_the_forward(encoding):
    model = _model("conv-avgpool", encoding=encoding)
    image = torch.rand(3, *model.in_shape, dtype=torch.float64)
    with torch.no_grad():
        spikes = model.encode(image)  # eval mode: the Bernoulli draws are seeded
        assert spikes.shape == (T, 3, *model.in_shape)
        assert set(spikes.unique().tolist()) <= {0.0, 1.0}
        scores = _stream(model, spikes)
        torch.testing.assert_close(scores[-1], model(image), rtol=0, atol=1e-6)
        torch.testing.assert_close(scores[-1], model(spikes), rtol=0, atol=1e-6)


def test_state_is_explicit_and_nothing_is_kept_in_the_modules():
    model = _model("neunorm")
    frames = (torch.rand(2, 3, *model.in_shape, dtype=torch.float64) < 0.5).double()
    with torch.no_grad():
        _, state = model.step(frames[0])
        a, state_a = model.step(frames[1], state)
        b, state_b = model.step(frames[1], state)  # the same state again: the same answer
    assert isinstance(state, SNNState) and state.steps == 1 and state_a.steps == 2
    assert torch.equal(a, b)
    assert set(state.layers) == {"lif_conv1", "neunorm_conv1", "lif_conv2", "neunorm_conv2",
                                 "lif_fc1", "lif_voting", "vote"}  # fmt: skip
    assert state.layers["neunorm_conv1"].shape == (3, 1, 6, 6)  # one auxiliary neuron per (i, j)


def test_steps_in_training_mode_give_the_forward_gradients():
    torch.manual_seed(0)
    model = _model("soft-learnt-per-channel").train()
    frames = (torch.rand(T, 3, *model.in_shape, dtype=torch.float64) < 0.5).double()
    target = torch.rand(3, 3, dtype=torch.float64)
    loss = ((model(frames) - target) ** 2).sum()
    expected = torch.autograd.grad(loss, list(model.parameters()))
    loss = ((_stream(model, frames)[-1] - target) ** 2).sum()
    got = torch.autograd.grad(loss, list(model.parameters()))
    assert any(g.abs().sum() > 0 for g in expected)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-9)


def test_sample_dropout_keeps_its_mask_in_the_state_in_training_mode():
    model = _model("dropout-sample").train()
    frames = torch.rand(T, 3, *model.in_shape, dtype=torch.float64)
    _, first = model.step(frames[0])
    _, second = model.step(frames[1], first)
    mask = first.layers["dropout1"]
    assert second.layers["dropout1"] is mask
    assert set(mask.unique().tolist()) == {0.0, 2.0}  # kept units scaled by 1 / (1 - p)


def test_step_refuses_a_sequence_or_a_wrong_shape():
    model = _model("conv-avgpool")
    with pytest.raises(ValueError, match=r"step expects one frame \[B, 2, 6, 6\], got \[5, 3, 2"):
        model.step(torch.rand(T, 3, 2, 6, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"step expects one frame"):
        model.step(torch.rand(3, 1, 6, 6, dtype=torch.float64))


def test_neunorm_step_is_the_papers_auxiliary_neuron():
    from stbp.neunorm import neunorm, neunorm_step

    torch.manual_seed(0)
    spikes = (torch.rand(4, 2, 3, 5, 5) < 0.4).double()
    alpha = torch.rand(3, 5, 5, dtype=torch.float64)
    x, outs = None, []
    for o_t in spikes:
        out, x = neunorm_step(o_t, x, alpha, k=0.7, v=0.5)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs), neunorm(spikes, alpha, k=0.7, v=0.5))
    # by hand at the first step: x = (v / F^2) sum_f o
    first, _ = neunorm_step(spikes[0], None, alpha, k=0.7, v=0.5)
    torch.testing.assert_close(first, spikes[0] - alpha * spikes[0].sum(1, keepdim=True) * 0.5 / 9)
