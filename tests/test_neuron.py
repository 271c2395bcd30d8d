import pytest
import torch

import stbp
from stbp import kernels, neuron
from stbp.neuron import LIFParameters, lif, lif_reference
from stbp.surrogate import SURROGATES


def _input(shape=(7, 3, 5), seed=0, device="cpu"):
    """Seeded float64 input `[T, B, N]` (drawn on the CPU: the same numbers on every device)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 0.6 + 0.3
    return x.to(device).requires_grad_()


def _on_cpu(x: torch.Tensor, dtype=None) -> torch.Tensor:
    """A CPU copy of `x` (in `dtype`), a leaf that requires grad: the reference's input."""
    return x.detach().to("cpu", dtype).requires_grad_()


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
def test_fused_gradients_equal_per_step_reference(surrogate, device):
    x = _input(device=device)
    grad_out = torch.randn_like(x)
    p = LIFParameters(0.2, 0.5, surrogate, 1.0)
    fused = lif(x, *p)
    (g_fused,) = torch.autograd.grad(fused, x, grad_out)
    x_ref = _on_cpu(x)  # the reference: float64 on the CPU
    ref = lif_reference(x_ref, p)
    (g_ref,) = torch.autograd.grad(ref, x_ref, grad_out.cpu())
    assert fused.device.type == device.type
    assert torch.equal(fused.cpu(), ref)
    assert fused.sum() > 0 and g_ref.abs().sum() > 0
    torch.testing.assert_close(g_fused.cpu(), g_ref, rtol=0, atol=1e-6)


def test_reset_term_is_not_detached(device):
    # Input that fires at t=0 and stays near threshold: the reset path carries gradient.
    x = torch.tensor([[0.9], [0.45], [0.1]], dtype=torch.float64, device=device,
                     requires_grad=True)  # fmt: skip
    out = lif(x, 0.2, 0.5, "rect", 1.0)
    (g,) = torch.autograd.grad(out[1].sum(), x)
    # du[1]/dx[0] through decay*u[0]*(1-o[0]) = 0.2*(1 - o0) - 0.2*u0*h(u0): 0 - 0.2*0.9*1
    assert g[0, 0].item() == pytest.approx(-0.18)


def test_algorithm1_by_hand(device):
    x = torch.tensor([0.3, 0.3, 0.3, 0.6, 0.0], device=device).view(5, 1)
    # u: 0.3, 0.36, 0.372, 0.6744 (fires), 0 (reset) -> spikes 0 0 0 1 0
    assert lif(x).flatten().tolist() == [0, 0, 0, 1, 0]


def test_spikes_are_binary_and_keep_dtype(device):
    x = torch.randn(6, 4, 3, 5, 5, device=device)
    s = lif(x)
    assert s.dtype == x.dtype and s.shape == x.shape and s.device == x.device
    assert set(s.unique().tolist()) <= {0.0, 1.0}


def test_spike_count_and_rate_match_the_spikes(device):
    x = torch.randn(6, 4, 3, 5, 5, dtype=torch.bfloat16, device=device)
    spikes, count = neuron.lif_with_count(x, 0.2, 0.5, "rect", 1.0)
    assert count.dtype == torch.float32 and count.item() == spikes.float().sum().item() > 0
    layer = stbp.LIF()
    out = layer(x.float())
    assert layer.last_rate.item() == pytest.approx(out.mean().item())


def test_state_does_not_leak_between_calls(device):
    layer = stbp.LIF()
    x = torch.rand(5, 2, 10, device=device)
    first = layer(x)
    layer(torch.ones(5, 2, 10, device=device) * 3)
    assert torch.equal(layer(x), first)


def test_channels_last_input_gives_same_spikes_and_grads(device):
    x = torch.randn(4, 3, 8, 6, 6, device=device)
    x_cl = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (4, 3))
    a, b = x.clone().requires_grad_(), x_cl.clone().requires_grad_()
    sa, sb = lif(a), lif(b)
    assert torch.equal(sa, sb)
    g = torch.randn_like(sa)
    (ga,) = torch.autograd.grad(sa, a, g)
    (gb,) = torch.autograd.grad(sb, b, g)
    torch.testing.assert_close(ga, gb)


def test_static_input_expanded_over_time(device):
    x = torch.rand(2, 5, device=device).requires_grad_()
    s = lif(x.unsqueeze(0).expand(4, 2, 5))
    s.sum().backward()
    assert x.grad.shape == x.shape


def test_bad_input_shape_and_surrogate():
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\]"):
        lif(torch.zeros(3))
    with pytest.raises(ValueError, match="atan, rect, sigmoid, triangle"):
        stbp.LIF(surrogate="gauss")


BAD_PARAMETERS = [
    ({"decay": 5}, r"decay = 5 .*\[0, 1\]"),
    ({"decay": -0.1}, r"decay = -0\.1 .*\[0, 1\]"),
    ({"decay": float("nan")}, r"decay = nan .*\[0, 1\]"),
    ({"decay": "0.2"}, r"decay = '0\.2' .*\[0, 1\]"),
    ({"threshold": 0.0}, r"threshold = 0\.0 .*finite number > 0"),
    ({"threshold": float("inf")}, r"threshold = inf .*finite number > 0"),
    ({"width": 0}, r"width = 0 .*finite number > 0"),
    ({"width": -1.0}, r"width = -1\.0 .*finite number > 0"),
    ({"width": float("nan")}, r"width = nan .*finite number > 0"),
    ({"surrogate": "rectangle"}, r"unknown surrogate 'rectangle'.*atan, rect, sigmoid, triangle"),
    ({"reset": "zero"}, r"reset = 'zero' .*'hard' or 'soft'"),
    ({"detach_reset": "yes"}, r"detach_reset = 'yes' .*True or False"),
    ({"decay": torch.tensor([0.2, 1.5])}, r"decay = tensor of shape \[2\].*\[0, 1\]"),
    ({"decay": torch.zeros(2, 2)}, r"decay = tensor of shape \[2, 2\].*shape \[\] or \[C\]"),
    ({"threshold": torch.tensor(0.0)}, r"threshold = tensor of shape \[\].*finite number > 0"),
    ({"threshold": torch.tensor([1, 2])}, r"threshold = tensor .*torch.int64.*floating-point"),
]


@pytest.mark.parametrize(("change", "message"), BAD_PARAMETERS)
def test_bad_parameters_are_refused_by_name(change, message):
    p = LIFParameters()._replace(**change)
    with pytest.raises(ValueError, match=message):
        p.validate()
    with pytest.raises(ValueError, match=message):
        stbp.LIF(*p)
    with pytest.raises(ValueError, match=message):
        lif(torch.zeros(2, 1), *p)
    with pytest.raises(ValueError, match=message):
        lif_reference(torch.zeros(2, 1), p)


def test_good_parameters_pass_validation():
    for p in (
        LIFParameters(),
        LIFParameters(0.0, 1e-3, "atan", 4.0),
        LIFParameters(1, 2, "rect", 1),
        LIFParameters(torch.tensor(1.0), torch.tensor([0.1, 2.0]), "rect", 1, "soft", True),
    ):
        assert p.validate() is p
    assert stbp.LIF(decay=1.0).p.decay == 1.0  # decay 1: the integrate-and-fire neuron


# --- bf16: the backward follows the fp32 forward's spikes and windows ---------------------------

DEFAULT = LIFParameters()
CIFAR_LIKE = LIFParameters(0.25, 0.75, "rect", 0.3)  # edges at 0.6 and 0.9, not bf16 numbers


def _near_edges(p: LIFParameters, T=9, n=2048, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 input `[T, 1, n]` whose fp32 potentials land within about one bf16 rounding of the
    threshold or of the rectangle's edges at every step, and those potentials (fp32): a
    backward that rebuilt its decisions from rounded potentials gets many of them wrong."""
    g = torch.Generator().manual_seed(seed)
    edges = torch.tensor([p.threshold - p.width / 2, p.threshold, p.threshold + p.width / 2])
    u = o = torch.zeros(n)
    xs, us = [], []
    for _ in range(T):
        target = edges[torch.randint(0, 3, (n,), generator=g)]
        target = target + (torch.rand(n, generator=g) - 0.5) * 0.01
        leak = p.decay * u * (1 - o)
        x_t = (target - leak).to(torch.bfloat16)
        u = x_t + leak  # as the forward computes it, in fp32
        o = (u > p.threshold).float()
        xs.append(x_t)
        us.append(u)
    return torch.stack(xs).unsqueeze(1), torch.stack(us).unsqueeze(1)


def _decisions_lost_by_rounding(u: torch.Tensor, p: LIFParameters, dtype: torch.dtype) -> int:
    rounded = u.to(dtype).float()
    spikes = (u > p.threshold) != (rounded > p.threshold)
    half = p.width / 2
    windows = ((u - p.threshold).abs() < half) != ((rounded - p.threshold).abs() < half)
    return int(spikes.sum() + windows.sum())


def _check_gradient_follows_fp32_decisions(p: LIFParameters, dtype=torch.bfloat16, device="cpu"):
    x, u = _near_edges(p)
    x = x.to(dtype)
    assert _decisions_lost_by_rounding(u, p, dtype) > 100  # the input does reach the edges
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    x = x.to(device).requires_grad_()
    spikes = lif(x, *p)
    (grad,) = torch.autograd.grad(spikes, x, grad_out.to(device))
    spikes, grad = spikes.cpu(), grad.cpu()
    x_ref = _on_cpu(x, torch.float32)  # fp32 reference on the CPU: the forward's own decisions
    ref = lif_reference(x_ref, p)
    (grad_ref,) = torch.autograd.grad(ref, x_ref, grad_out.float())
    assert spikes.dtype == grad.dtype == dtype
    assert torch.equal(spikes.float(), ref)
    # bf16 rounding of v = u - V_th (in u*h and a smooth h) and of dL/dx; a decision taken
    # from a rounded potential instead costs O(0.1-1) on thousands of entries
    torch.testing.assert_close(grad.float(), grad_ref, rtol=2**-7, atol=1e-2)


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
def test_bf16_gradient_follows_fp32_decisions_eager(surrogate, device):
    _check_gradient_follows_fp32_decisions(DEFAULT._replace(surrogate=surrogate), device=device)


def test_bf16_gradient_follows_fp32_decisions_edges_between_bf16_numbers(device):
    _check_gradient_follows_fp32_decisions(CIFAR_LIKE, device=device)


def test_fp16_gradient_follows_fp32_decisions(device):
    _check_gradient_follows_fp32_decisions(DEFAULT, torch.float16, device)


@pytest.mark.parametrize(
    "p", [DEFAULT, DEFAULT._replace(surrogate="sigmoid")], ids=["rect", "sigmoid"]
)
def test_bf16_gradient_follows_fp32_decisions_compiled(p, monkeypatch, device):
    monkeypatch.setenv("STBP_COMPILE", "1")
    _check_gradient_follows_fp32_decisions(p, device=device)
    assert not kernels.failed(), "torch.compile fell back to eager"


def test_rectangle_edges_in_bf16():
    assert neuron._window_in_bf16("rect", 1.0) == (0.5, 0.5 - 2**-9, 0.5)
    c, inner, outer = neuron._window_in_bf16("rect", 0.3)
    assert c == torch.tensor(0.15).item() and inner < c < outer
    assert torch.tensor([inner, outer]).to(torch.bfloat16).tolist() == [inner, outer]
    assert outer - inner == 2**-10  # neighbours in bf16 (0.15 lies in [2^-3, 2^-2))
    assert neuron._window_in_bf16("sigmoid", 1.0) is None


def _saved_bytes_per_neuron_step(x: torch.Tensor, surrogate: str) -> float:
    saved = []

    def pack(t):
        saved.append(t.nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lif(x.requires_grad_(), 0.2, 0.5, surrogate, 1.0)
    return sum(saved) / x.numel()


def test_saved_memory_per_neuron_step(device):
    x = torch.randn(8, 2, 3, 5, device=device)
    for surrogate in ("rect", "sigmoid"):  # one potential per neuron-step, nothing else
        assert _saved_bytes_per_neuron_step(x, surrogate) == 4
        assert _saved_bytes_per_neuron_step(x.double(), surrogate) == 8
        assert _saved_bytes_per_neuron_step(x.to(torch.bfloat16), surrogate) == 2
        assert _saved_bytes_per_neuron_step(x.to(torch.float16), surrogate) == 2
