"""The LIF variants (soft reset, detach_reset, learnable decay and threshold, per channel) in
the fused kernel against a plain per-step autograd loop of `lif_step`; streaming; the module."""

import itertools

import pytest
import torch

import stbp
from stbp import kernels
from stbp.neuron import LIF, LIFParameters, LIFState, lif, lif_reference, lif_step

T, B, C, N = 6, 3, 4, 5
RESETS = ("hard", "soft")
PARAMETERS = ("float", "learnt", "per-channel")
SURROGATES = ("rect", "sigmoid")


def _input(seed=0, dtype=torch.float64, shape=(T, B, C, N)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.6 + 0.3).to(dtype)


def _parameters(kind: str, dtype=torch.float64, device="cpu"):
    """(decay, threshold): numbers, 0-dim tensors or one per channel, learnt (require grad)."""
    if kind == "float":
        return 0.3, 0.5
    if kind == "learnt":
        values = torch.tensor(0.3), torch.tensor(0.5)
    else:
        values = torch.linspace(0.1, 0.9, C), torch.linspace(0.3, 0.8, C)
    return tuple(v.to(device, dtype).requires_grad_() for v in values)


def _spikes_and_gradients(run, kind, surrogate, reset, detach_reset, device="cpu"):
    x = _input().to(device).requires_grad_()
    decay, threshold = _parameters(kind, device=device)
    p = LIFParameters(decay, threshold, surrogate, 1.0, reset, detach_reset)
    spikes = run(x, p)
    inputs = [x] + ([decay, threshold] if kind != "float" else [])
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    grads = torch.autograd.grad(spikes, inputs, grad_out.to(device))
    return spikes.cpu(), [g.cpu() for g in grads]


def _fused(x, p):
    return lif(x, *p)


def _check_against_per_step_loop(kind, surrogate, reset, detach_reset, device="cpu"):
    spikes, grads = _spikes_and_gradients(_fused, kind, surrogate, reset, detach_reset, device)
    ref_spikes, ref_grads = _spikes_and_gradients(
        lif_reference, kind, surrogate, reset, detach_reset
    )
    assert torch.equal(spikes, ref_spikes) and 0 < spikes.mean() < 1
    for grad, ref in zip(grads, ref_grads, strict=True):
        assert ref.abs().sum() > 0
        assert grad.shape == ref.shape and grad.dtype == ref.dtype
        torch.testing.assert_close(grad, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("reset", "detach_reset", "kind", "surrogate"),
    list(itertools.product(RESETS, (False, True), PARAMETERS, SURROGATES)),
)
def test_gradients_equal_per_step_loop_eager(reset, detach_reset, kind, surrogate, device):
    _check_against_per_step_loop(kind, surrogate, reset, detach_reset, device)


@pytest.mark.parametrize(
    ("reset", "detach_reset", "kind", "surrogate"),
    [("soft", True, "learnt", "rect"), ("hard", False, "per-channel", "sigmoid")],
)
def test_gradients_equal_per_step_loop_compiled(
    reset, detach_reset, kind, surrogate, monkeypatch, device
):
    monkeypatch.setenv("STBP_COMPILE", "1")
    _check_against_per_step_loop(kind, surrogate, reset, detach_reset, device)
    assert not kernels.failed(), "torch.compile fell back to eager"


def test_soft_reset_by_hand():
    x = torch.tensor([0.9, 0.45, 0.1, 0.0], dtype=torch.float64).view(4, 1)
    # soft: u = 0.9 (fires), 0.2 * (0.9 - 0.5) + 0.45 = 0.53 (fires), 0.2 * 0.03 + 0.1 = 0.106
    assert lif(x, 0.2, 0.5, reset="soft").flatten().tolist() == [1, 1, 0, 0]
    # hard: u = 0.9 (fires), 0 + 0.45, 0.09 + 0.1 = 0.19
    assert lif(x, 0.2, 0.5).flatten().tolist() == [1, 0, 0, 0]


def test_detach_reset_drops_the_reset_path():
    x = torch.tensor([[0.9], [0.45], [0.1]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(lif(x, 0.2, 0.5, detach_reset=True)[1].sum(), x)
    assert g[0, 0].item() == 0  # 0.2 * (1 - o0) only; attached it is -0.18 (test_neuron)
    (g,) = torch.autograd.grad(lif(x, 0.2, 0.5, reset="soft")[1].sum(), x)
    assert g[0, 0].item() == pytest.approx(0.2 * (1 - 0.5 * 1.0))  # decay * (1 - V_th h)
    (g,) = torch.autograd.grad(lif(x, 0.2, 0.5, reset="soft", detach_reset=True)[1].sum(), x)
    assert g[0, 0].item() == pytest.approx(0.2)


def test_integrate_and_fire():
    x = torch.full((4, 1), 0.2)
    assert lif(x, 1.0, 0.5).flatten().tolist() == [0, 0, 1, 0]  # 0.2, 0.4, 0.6, reset: 0.2
    assert stbp.LIF(decay=1.0)(x).flatten().tolist() == [0, 0, 1, 0]


def test_per_channel_channels_last_equals_contiguous():
    x = _input(shape=(T, B, C, 3, 3)).float()
    x_cl = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (T, B))
    results = []
    for inp in (x, x_cl):
        inp = inp.clone().requires_grad_()
        decay, threshold = _parameters("per-channel", torch.float32)
        spikes = lif(inp, decay, threshold, reset="soft")
        grads = torch.autograd.grad(spikes, [inp, decay, threshold], torch.ones_like(spikes))
        results.append((spikes, *grads))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def test_per_channel_shape_must_match_the_input():
    with pytest.raises(ValueError, match=r"one value per channel \(4\).*dim 2"):
        lif(torch.zeros(T, B, 3, N), torch.full((4,), 0.2), 0.5)
    with pytest.raises(ValueError, match=r"one value per channel \(4\).*dim 2"):
        lif_reference(torch.zeros(T, B), LIFParameters(0.2, torch.ones(4)))


# --- bf16 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["learnt", "per-channel"])
def test_bf16_spikes_equal_fp32_forward(kind):
    x = _input(shape=(T, 8, C, 64)).float()
    decay, threshold = _parameters(kind, torch.float32)
    spikes = lif(x.to(torch.bfloat16).requires_grad_(), decay, threshold, reset="soft")
    ref = lif_reference(x.to(torch.bfloat16).float(), LIFParameters(decay, threshold, reset="soft"))
    assert spikes.dtype == torch.bfloat16 and torch.equal(spikes.float(), ref)
    grads = torch.autograd.grad(spikes, [decay, threshold], torch.ones_like(spikes))
    ref_grads = torch.autograd.grad(ref, [decay, threshold], torch.ones_like(ref))
    for grad, expected in zip(grads, ref_grads, strict=True):  # fp32 sums of bf16-rounded v
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad, expected, rtol=2**-6, atol=1e-2)


# --- streaming ------------------------------------------------------------------------------


@pytest.mark.parametrize("reset", RESETS)
def test_lif_step_over_frames_equals_lif(reset):
    x = _input()
    p = LIFParameters(*_parameters("per-channel"), "rect", 1.0, reset)
    state, frames = None, []
    for x_t in x:
        o, state = lif_step(x_t, state, p)
        frames.append(o)
    assert isinstance(state, LIFState) and state.u.shape == x[0].shape
    assert torch.equal(torch.stack(frames), lif(x, *p))


def test_module_step_equals_forward_and_keeps_no_state():
    layer = LIF(0.5, 0.4, reset="soft", learn_decay=True, per_channel=True, channels=C)
    x = _input().float()
    state, frames = None, []
    for x_t in x:
        o, state = layer.step(x_t, state)
        frames.append(o)
    assert torch.equal(torch.stack(frames), layer(x))
    assert torch.equal(layer.step(x[0])[0], frames[0])  # state None: zeros, nothing kept


# --- the module -----------------------------------------------------------------------------


def test_learnt_parameters_get_gradients_and_stay_in_range():
    layer = LIF(0.2, 0.5, learn_decay=True, learn_threshold=True, per_channel=True, channels=C)
    assert set(layer.state_dict()) == {"decay_logit", "threshold_log"}
    p = layer.p
    torch.testing.assert_close(p.decay, torch.full((C,), 0.2))
    torch.testing.assert_close(p.threshold, torch.full((C,), 0.5))
    optimizer = torch.optim.Adam(layer.parameters(), lr=2.0)  # large steps
    x = _input().float()
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    for step in range(3):
        optimizer.zero_grad()
        (layer(x) * weights).sum().backward()
        if step == 0:  # later steps may push a channel out of the surrogate window: no gradient
            assert layer.decay_logit.grad.abs().min() > 0
            assert layer.threshold_log.grad.abs().min() > 0
        optimizer.step()
    p = layer.p
    assert ((p.decay >= 0) & (p.decay <= 1)).all() and (p.threshold > 0).all()
    assert not torch.equal(p.decay, torch.full((C,), 0.2))
    assert layer.last_rate is not None


def test_learnt_layer_state_dict_round_trip():
    a = LIF(0.3, 0.7, learn_decay=True, learn_threshold=True)
    with torch.no_grad():
        a.decay_logit.add_(1.0)
    b = LIF(0.3, 0.7, learn_decay=True, learn_threshold=True)
    b.load_state_dict(a.state_dict())
    assert b.p.decay.dim() == 0 and torch.equal(b.p.decay, a.p.decay)


def test_fixed_layer_has_numbers_and_no_state():
    layer = LIF(0.25, 0.75, reset="soft", detach_reset=True)
    assert layer.p == LIFParameters(0.25, 0.75, "rect", 1.0, "soft", True)
    assert layer.state_dict() == {} and list(layer.parameters()) == []


def test_extra_repr_shows_the_variant():
    text = repr(LIF(0.2, 0.5, reset="soft", learn_threshold=True, per_channel=True, channels=3))
    assert "reset='soft'" in text and "threshold=learnt per channel, from 0.5" in text
    assert "decay=0.2" in text and "detach_reset=False" in text


BAD_MODULES = [
    ({"decay": 0.0, "learn_decay": True}, r"decay = 0\.0 cannot be learnt.*between 0 and 1"),
    ({"decay": 1.0, "learn_decay": True}, r"decay = 1\.0 cannot be learnt.*between 0 and 1"),
    ({"learn_decay": True, "per_channel": True}, r"per_channel = True needs channels"),
    ({"learn_decay": True, "per_channel": True, "channels": 0}, r"channels = 0"),
    ({"per_channel": True, "channels": 4}, r"needs learn_decay or learn_threshold"),
    ({"learn_threshold": "yes"}, r"learn_threshold = 'yes' .*True or False"),
    ({"reset": "subtract"}, r"reset = 'subtract' .*'hard' or 'soft'"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_MODULES)
def test_bad_module_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LIF(**kwargs)
