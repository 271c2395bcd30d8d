import pytest
import torch

import stbp
from stbp.functional import neunorm
from stbp.neunorm import neunorm_reference


def test_neunorm_matches_hand_computed_example(device):
    # T=2, B=1, F=2 feature maps, 1x2 positions; k=0.5 so v = F(1-k) = 1 and v/F^2 = 0.25
    o = torch.tensor(
        [
            [[[[1.0, 0.0]], [[1.0, 1.0]]]],  # t=0: sum over f = [2, 1] -> x0 = [0.5, 0.25]
            [[[[0.0, 0.0]], [[1.0, 0.0]]]],  # t=1: sum = [1, 0] -> x1 = [0.5, 0.125]
        ],
        device=device,
    )
    alpha = torch.ones(2, 1, 2, device=device)
    alpha[1, 0, 1] = 2.0
    expected = torch.tensor(
        [
            [[[[0.5, -0.25]], [[0.5, 0.5]]]],
            [[[[-0.5, -0.125]], [[0.5, -0.25]]]],
        ],
        device=device,
    )
    torch.testing.assert_close(neunorm(o, alpha, k=0.5), expected)


@pytest.mark.parametrize("v", [None, 0.2, 3.0])  # ours, SpikingJelly's 1 - k, another
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_gradients_equal_plain_autograd(channels_last, v, device):
    o = (torch.rand(5, 3, 4, 6, 7, dtype=torch.float64) < 0.3).double()
    alpha = torch.rand(4, 6, 7, dtype=torch.float64) - 0.3  # some < 0
    grad = torch.randn(5, 3, 4, 6, 7, dtype=torch.float64)
    o_ref, alpha_ref = o.clone().requires_grad_(), alpha.clone().requires_grad_()
    ref = neunorm_reference(o_ref, alpha_ref, k=0.8, v=v)  # float64 on the CPU
    o, alpha = o.to(device), alpha.to(device).requires_grad_()
    if channels_last:
        o = o.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (5, 3))
    o.requires_grad_()
    fused = neunorm(o, alpha, k=0.8, v=v)
    assert fused.device.type == device.type
    torch.testing.assert_close(fused.cpu(), ref, rtol=0, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad(fused, (o, alpha), grad.to(device)),
        torch.autograd.grad(ref, (o_ref, alpha_ref), grad),
        strict=True,
    ):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-12)


def test_auxiliary_neuron_tracks_mean_rate(device):
    o = (torch.rand(200, 1, 8, 3, 3, device=device) < 0.3).float()
    out = neunorm(o, torch.ones(8, 3, 3, device=device), k=0.9)
    x = (o - out)[-50:]  # alpha = 1: what was subtracted is x itself
    assert abs(x.mean().item() - 0.3) < 0.05


def test_module_has_trainable_per_position_weights(device):
    layer = stbp.NeuNorm(4, 5, 6).to(device)
    assert layer.alpha.shape == (4, 5, 6) and layer.alpha.requires_grad
    o = (torch.rand(3, 2, 4, 5, 6, device=device) < 0.5).float()
    layer(o).sum().backward()
    assert layer.alpha.grad.abs().sum() > 0


def test_network_with_neunorm_inserts_it_after_conv_lifs(device):
    model = stbp.build("4C3(Enc)-AP2-8C3-8FC-Voting", (1, 8, 8), T=2, neunorm=True).to(device)
    names = [n for n, _ in model.layers.named_children()]
    assert names.index("neunorm_conv1") == names.index("lif_conv1") + 1
    assert "neunorm_conv2" in names and not any(n.startswith("neunorm_fc") for n in names)
    assert model(torch.rand(3, 1, 8, 8, device=device)).shape == (3, 10)


# ------------------------------------------------------------------ the two readings of v


def _spikingjelly_recursion(o, alpha, k):
    """SpikingJelly's NeuNorm step by step: x = k x + (1 - k) / F^2 * sum_f o; o - w * x."""
    x, out = 0.0, []
    for o_t in o:
        x = k * x + (1 - k) / o.shape[2] ** 2 * o_t.sum(dim=1, keepdim=True)
        out.append(o_t - alpha * x)
    return torch.stack(out)


def test_spikingjelly_reading_drives_the_auxiliary_neuron_with_one_minus_k_over_f_squared(
    device,
):
    torch.manual_seed(0)
    layer = stbp.NeuNorm.from_reading("spikingjelly", 4, 3, 5, k=0.7).to(device)
    assert layer.v == pytest.approx(0.3)
    o = (torch.rand(6, 2, 4, 3, 5, device=device) < 0.4).float()
    with torch.no_grad():
        torch.testing.assert_close(layer(o), _spikingjelly_recursion(o, layer.alpha, 0.7))


def test_our_reading_drives_it_with_one_minus_k_times_the_mean(device):
    layer = stbp.NeuNorm.from_reading("stbp", 4, 3, 5, k=0.7).to(device)
    assert layer.v is None and torch.equal(layer.alpha, torch.ones(4, 3, 5, device=device))
    o = (torch.rand(6, 2, 4, 3, 5, device=device) < 0.4).float()
    x, expected = 0.0, []
    for o_t in o:
        x = 0.7 * x + 0.3 * o_t.mean(dim=1, keepdim=True)
        expected.append(o_t - x)
    with torch.no_grad():
        torch.testing.assert_close(layer(o), torch.stack(expected))


def test_spikingjelly_alpha_init_is_seeded_uniform_in_one_over_sqrt_hw():
    torch.manual_seed(3)
    alpha = stbp.NeuNorm.from_reading("spikingjelly", 8, 4, 5).alpha
    bound = 1 / (4 * 5) ** 0.5  # kaiming_uniform_(a=sqrt(5)) on [F, H, W]: fan-in H * W
    torch.manual_seed(3)
    assert torch.equal(alpha, torch.empty(8, 4, 5).uniform_(-bound, bound))
    assert alpha.abs().max() <= bound and alpha.min() < 0 < alpha.max()


def test_build_sets_the_reading_and_records_it():
    torch.manual_seed(0)
    model = stbp.build(
        "4C3(Enc)-AP2-8C3-8FC-Voting", (1, 8, 8), T=2, neunorm=True, neunorm_reading="spikingjelly"
    )
    assert model.build_args["neunorm_reading"] == "spikingjelly"
    layer = model.layers.neunorm_conv2
    assert layer.v == pytest.approx(0.1) and layer.alpha.shape == (8, 4, 4)
    assert not torch.equal(layer.alpha, torch.ones_like(layer.alpha))
    again = stbp.rebuild(model.build_args)
    again.load_state_dict(model.state_dict())
    assert again.layers.neunorm_conv2.v == layer.v


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": 0}, r"channels must be an integer >= 1, got 0"),
        ({"height": -2}, r"height must be an integer >= 1, got -2"),
        ({"k": 1.0}, r"NeuNorm k \(k_tau2\) must be a number in \[0, 1\), got 1.0"),
        ({"k": -0.5}, r"must be a number in \[0, 1\), got -0.5"),
        ({"v": 0}, r"NeuNorm v must be a number > 0 \(or None: F \(1 - k\)\), got 0"),
        ({"alpha_init": "ones"}, r"alpha_init must be a number or 'kaiming-uniform'"),
    ],
)
def test_neunorm_checks_its_arguments(kwargs, message):
    args = {"channels": 4, "height": 3, "width": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        stbp.NeuNorm(**args)


def test_unknown_reading_names_the_choices():
    with pytest.raises(ValueError, match="neunorm_reading must be one of 'stbp', 'spikingjelly'"):
        stbp.NeuNorm.from_reading("paper", 4, 3, 3)
