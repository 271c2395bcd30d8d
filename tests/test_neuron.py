import pytest
import torch

import stbp
from stbp import kernels, neuron
from stbp.neuron import LIFParameters, lif, lif_reference
from stbp.surrogate import SURROGATES


def _input(shape=(7, 3, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.6 + 0.3).requires_grad_()


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
def test_fused_gradients_equal_per_step_reference(surrogate):
    x = _input()
    grad_out = torch.randn_like(x)
    p = LIFParameters(0.2, 0.5, surrogate, 1.0)
    fused = lif(x, *p)
    (g_fused,) = torch.autograd.grad(fused, x, grad_out)
    ref = lif_reference(x, p)
    (g_ref,) = torch.autograd.grad(ref, x, grad_out)
    assert torch.equal(fused, ref)
    assert fused.sum() > 0 and g_ref.abs().sum() > 0
    torch.testing.assert_close(g_fused, g_ref, rtol=0, atol=1e-6)


def test_reset_term_is_not_detached():
    # Input that fires at t=0 and stays near threshold: the reset path carries gradient.
    x = torch.tensor([[0.9], [0.45], [0.1]], dtype=torch.float64, requires_grad=True)
    out = lif(x, 0.2, 0.5, "rect", 1.0)
    (g,) = torch.autograd.grad(out[1].sum(), x)
    # du[1]/dx[0] through decay*u[0]*(1-o[0]) = 0.2*(1 - o0) - 0.2*u0*h(u0): 0 - 0.2*0.9*1
    assert g[0, 0].item() == pytest.approx(-0.18)


def test_algorithm1_by_hand():
    x = torch.tensor([0.3, 0.3, 0.3, 0.6, 0.0]).view(5, 1)
    # u: 0.3, 0.36, 0.372, 0.6744 (fires), 0 (reset) -> spikes 0 0 0 1 0
    assert lif(x).flatten().tolist() == [0, 0, 0, 1, 0]


def test_spikes_are_binary_and_keep_dtype():
    x = torch.randn(6, 4, 3, 5, 5)
    s = lif(x)
    assert s.dtype == x.dtype and s.shape == x.shape
    assert set(s.unique().tolist()) <= {0.0, 1.0}


def test_spike_count_and_rate_match_the_spikes():
    x = torch.randn(6, 4, 3, 5, 5, dtype=torch.bfloat16)
    spikes, count = neuron.lif_with_count(x, 0.2, 0.5, "rect", 1.0)
    assert count.dtype == torch.float32 and count.item() == spikes.float().sum().item() > 0
    layer = stbp.LIF()
    out = layer(x.float())
    assert layer.last_rate.item() == pytest.approx(out.mean().item())


def test_state_does_not_leak_between_calls():
    layer = stbp.LIF()
    x = torch.rand(5, 2, 10)
    first = layer(x)
    layer(torch.ones(5, 2, 10) * 3)
    assert torch.equal(layer(x), first)


def test_channels_last_input_gives_same_spikes_and_grads():
    x = torch.randn(4, 3, 8, 6, 6)
    x_cl = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (4, 3))
    a, b = x.clone().requires_grad_(), x_cl.clone().requires_grad_()
    sa, sb = lif(a), lif(b)
    assert torch.equal(sa, sb)
    g = torch.randn_like(sa)
    (ga,) = torch.autograd.grad(sa, a, g)
    (gb,) = torch.autograd.grad(sb, b, g)
    torch.testing.assert_close(ga, gb)


def test_static_input_expanded_over_time():
    x = torch.rand(2, 5).requires_grad_()
    s = lif(x.unsqueeze(0).expand(4, 2, 5))
    s.sum().backward()
    assert x.grad.shape == x.shape


def test_compiled_kernels_match_eager(monkeypatch):
    monkeypatch.setenv("STBP_COMPILE", "1")
    x = _input((5, 2, 3), seed=1)
    grad_out = torch.randn_like(x)
    fused, count = neuron.lif_with_count(x, 0.2, 0.5, "triangle", 1.0)
    (g,) = torch.autograd.grad(fused, x, grad_out)
    ref = lif_reference(x, LIFParameters(0.2, 0.5, "triangle", 1.0))
    (g_ref,) = torch.autograd.grad(ref, x, grad_out)
    assert not kernels.failed(), "torch.compile fell back to eager"
    assert torch.equal(fused, ref) and count.item() == ref.sum().item()
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-6)


def test_bad_input_shape_and_surrogate():
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\]"):
        lif(torch.zeros(3))
    with pytest.raises(ValueError, match="atan, rect, sigmoid, triangle"):
        stbp.LIF(surrogate="gauss")
