import math

import pytest
import torch

from stbp import surrogate as sg


@pytest.mark.parametrize("name", sorted(sg.SURROGATES))
@pytest.mark.parametrize("width", [0.5, 1.0, 2.0])
def test_unit_area_and_peak(name, width):
    v = torch.linspace(-40, 40, 400_001, dtype=torch.float64)
    h = sg.get(name)(v, width)
    area = torch.trapezoid(h, v).item()
    # atan's heavy tails reach past +-40: compare with its exact mass inside the interval
    inside = 2 / math.pi * math.atan(math.pi * 40 / width) if name == "atan" else 1.0
    assert area == pytest.approx(inside, abs=1e-3)
    assert h.max().item() == pytest.approx(1 / width, rel=1e-3)


def test_rect_is_the_papers_window():
    v = torch.tensor([-0.6, -0.5, -0.49, 0.0, 0.49, 0.5])
    assert sg.rect(v, 1.0).tolist() == [0, 0, 1, 1, 1, 0]


def test_spike_forward_is_strict_step_and_backward_uses_surrogate():
    v = torch.tensor([-0.1, 0.0, 0.1], requires_grad=True)
    o = sg.spike(v, "rect", 1.0)
    assert o.tolist() == [0, 0, 1]  # u > V_th, not >=
    o.sum().backward()
    assert v.grad.tolist() == [1, 1, 1]


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown surrogate 'box'.*atan, rect, sigmoid, triangle"):
        sg.get("box")


@pytest.mark.parametrize("width", [0, -1.0, float("nan"), float("inf"), "1", None])
def test_bad_width_is_refused_by_name(width):
    with pytest.raises(ValueError, match=r"surrogate width = .* finite number > 0"):
        sg.spike(torch.zeros(3), "rect", width)
    with pytest.raises(ValueError, match=r"surrogate width = .* finite number > 0"):
        sg.check("rect", width)


@pytest.mark.parametrize("width", [1.0, 0.3])
def test_windowed_surrogates_are_open_exactly_inside_their_half_width(width):
    # the fused LIF rounds bf16 potentials to the right side of these edges (neuron.py)
    for name, half_width in sg.WINDOWED.items():
        c = torch.tensor(half_width(width))  # as the kernels compare it, in fp32
        edge = torch.stack([c, -c])
        v = torch.cat([edge, torch.nextafter(edge, torch.zeros(2)), torch.linspace(-1, 1, 201)])
        assert torch.equal(sg.get(name)(v, width) > 0, v.abs() < c)


@pytest.mark.parametrize("name", sorted(set(sg.SURROGATES) - set(sg.WINDOWED)))
def test_other_surrogates_have_no_jumps(name):
    v = torch.linspace(-3, 3, 600_001, dtype=torch.float64)
    assert sg.get(name)(v, 1.0).diff().abs().max() < 1e-4
