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
