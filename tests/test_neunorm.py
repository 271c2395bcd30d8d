import pytest
import torch

import stbp
from stbp.functional import neunorm
from stbp.neunorm import neunorm_reference


def test_neunorm_matches_hand_computed_example():
    # T=2, B=1, F=2 feature maps, 1x2 positions; k=0.5 so v = F(1-k) = 1 and v/F^2 = 0.25
    o = torch.tensor(
        [
            [[[[1.0, 0.0]], [[1.0, 1.0]]]],  # t=0: sum over f = [2, 1] -> x0 = [0.5, 0.25]
            [[[[0.0, 0.0]], [[1.0, 0.0]]]],  # t=1: sum = [1, 0] -> x1 = [0.5, 0.125]
        ]
    )
    alpha = torch.ones(2, 1, 2)
    alpha[1, 0, 1] = 2.0
    expected = torch.tensor(
        [
            [[[[0.5, -0.25]], [[0.5, 0.5]]]],
            [[[[-0.5, -0.125]], [[0.5, -0.25]]]],
        ]
    )
    torch.testing.assert_close(neunorm(o, alpha, k=0.5), expected)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_gradients_equal_plain_autograd(channels_last):
    o = (torch.rand(5, 3, 4, 6, 7, dtype=torch.float64) < 0.3).double()
    if channels_last:
        o = o.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (5, 3))
    o.requires_grad_()
    alpha = (torch.rand(4, 6, 7, dtype=torch.float64) + 0.5).requires_grad_()
    grad = torch.randn(5, 3, 4, 6, 7, dtype=torch.float64)
    fused, ref = neunorm(o, alpha, k=0.8), neunorm_reference(o, alpha, k=0.8)
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(fused, (o, alpha), grad),
                    torch.autograd.grad(ref, (o, alpha), grad), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_auxiliary_neuron_tracks_mean_rate():
    o = (torch.rand(200, 1, 8, 3, 3) < 0.3).float()
    out = neunorm(o, torch.ones(8, 3, 3), k=0.9)
    x = (o - out)[-50:]  # alpha = 1: what was subtracted is x itself
    assert abs(x.mean().item() - 0.3) < 0.05


def test_module_has_trainable_per_position_weights():
    layer = stbp.NeuNorm(4, 5, 6)
    assert layer.alpha.shape == (4, 5, 6) and layer.alpha.requires_grad
    o = (torch.rand(3, 2, 4, 5, 6) < 0.5).float()
    layer(o).sum().backward()
    assert layer.alpha.grad.abs().sum() > 0


def test_network_with_neunorm_inserts_it_after_conv_lifs():
    model = stbp.build("4C3(Enc)-AP2-8C3-8FC-Voting", (1, 8, 8), T=2, neunorm=True)
    names = [n for n, _ in model.layers.named_children()]
    assert names.index("neunorm_conv1") == names.index("lif_conv1") + 1
    assert "neunorm_conv2" in names and not any(n.startswith("neunorm_fc") for n in names)
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
