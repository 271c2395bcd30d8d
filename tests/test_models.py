import pytest
import torch

import stbp

PARAMS = {  # counted by hand: conv Cin*Cout*9 + Cout, FC in*out + out, voting FC -> 100
    "nmnist": 27_663_204,
    "dvs-cifar10": 41_818_980,
    "nmnist-small": 17_473_508,
    "cifar10-small": 4_519_012,
    "cifar10-middle": 18_307_940,
    "cifarnet": 45_049_188,
    "mnist-demo": 847_588,
    "mnist-deep": 893_764,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_paper_networks_build_with_expected_size_and_output(name):
    model = stbp.paper_network(name, T=2)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    x = torch.rand(2, 3, *model.in_shape)  # [T, B, C, H, W]
    with torch.no_grad():
        assert model(x).shape == (3, 10)


def test_spec_tokens():
    layers = stbp.parse("128C3(Enc)-AP2-MP2-1024FC-Voting")
    assert [(lay.kind, lay.size) for lay in layers] == [
        ("conv", 128), ("pool", 2), ("pool", 2), ("fc", 1024), ("voting", 0)
    ]
    assert layers[0].kernel == 3 and layers[2].pool == "M"


def test_voting_layer_has_ten_neurons_per_class_and_scores_are_rates():
    model = stbp.build("16FC-Voting", (1, 4, 4), num_classes=3, T=4)
    assert model.layers.voting.module.out_features == 30
    scores = model(torch.rand(5, 1, 4, 4))
    assert scores.shape == (5, 3) and scores.min() >= 0 and scores.max() <= 1


def test_voting_averages_time_and_group():
    spikes = torch.zeros(4, 1, 20)
    spikes[:2, 0, :10] = 1  # class 0: all 10 voters fire in 2 of 4 steps
    spikes[:, 0, 10] = 1  # class 1: one voter fires always
    torch.testing.assert_close(stbp.Voting(2, 10)(spikes), torch.tensor([[0.5, 0.1]]))


def test_static_input_equals_repeated_frames():
    model = stbp.build("4C3(Enc)-AP2-8FC-Voting", (1, 6, 6), T=3)
    x = torch.rand(2, 1, 6, 6)
    with torch.no_grad():
        assert torch.equal(model(x), model(x.unsqueeze(0).expand(3, -1, -1, -1, -1)))


def test_rebuild_gives_the_same_architecture():
    model = stbp.build("4C3(Enc)-MP2-8FC-Voting", (2, 6, 6), T=3, neunorm=True, dropout=0.5)
    again = stbp.rebuild(model.build_args)
    again.load_state_dict(model.state_dict())
    assert again.build_args == model.build_args


@pytest.mark.parametrize(
    "spec, message",
    [
        ("12X3-Voting", "bad layer '12X3'"),
        ("", "empty network spec"),
        ("   ", "empty network spec"),
        ("8C3-AP2-AP2-AP2-Voting", "leaves less than 1x1"),
        ("8C3-16FC", "must end with 'Voting'"),
        ("8C3-Voting-16FC-Voting", "'Voting' must be the last"),
        ("8C3-16FC-8C3-Voting", "cannot follow an FC"),
        ("8C3-8C3(Enc)-Voting", "only the first layer"),
        ("8C0-Voting", "kernel size"),
        ("AP2-8C3-Voting", "first layer must be"),
    ],
)
def test_bad_specs_raise_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        stbp.build(spec, (1, 4, 4))


def test_wrong_input_shape_is_reported():
    model = stbp.build("4C3(Enc)-8FC-Voting", (2, 6, 6), T=2)
    with pytest.raises(ValueError, match=r"expected input \[T, B, 2, 6, 6\]"):
        model(torch.rand(2, 3, 1, 6, 6))


def test_unknown_paper_network():
    with pytest.raises(ValueError, match="unknown network 'resnet'"):
        stbp.paper_network("resnet")


def test_dropout_mask_is_shared_over_time():
    drop = stbp.SeqDropout(0.5).train()
    out = drop(torch.ones(6, 4, 50))
    assert torch.equal(out[0], out[5]) and (out[0] == 0).any()
    assert torch.equal(drop.eval()(torch.ones(2, 2)), torch.ones(2, 2))


def test_losses():
    scores = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    labels = torch.tensor([0, 1])
    assert stbp.rate_mse_loss(scores, labels).item() == pytest.approx(0.125)
    assert stbp.rate_ce_loss(scores, labels).item() > 0


def test_spike_input_synapses_save_bool_and_match_plain_gradients():
    torch.manual_seed(0)
    model = stbp.build("4C3(Enc)-8C3-MP2-6C3-AP2-8FC-16FC-Voting", (2, 8, 8), T=3)
    layers = model.layers.named_children()
    flags = {n: m.binary_input for n, m in layers if isinstance(m, stbp.Temporal)}
    assert flags == {"conv1": False, "conv2": True, "pool1": False, "conv3": True, "pool2": False,
                     "fc1": False, "fc2": True, "voting": True}
    x = (torch.rand(3, 5, 2, 8, 8) < 0.5).float()
    labels = torch.randint(0, 10, (5,))
    stbp.rate_mse_loss(model(x), labels).backward()
    fused = [p.grad.clone() for p in model.parameters()]
    for m in model.modules():
        if isinstance(m, stbp.Temporal):
            m.binary_input = False
    model.zero_grad()
    stbp.rate_mse_loss(model(x), labels).backward()
    for a, p in zip(fused, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)


@pytest.mark.parametrize("size", [(7, 9), (8, 6)])  # odd sizes: the floor drops a border
@pytest.mark.parametrize("channels_last", [False, True])
def test_spike_avg_pool_matches_avg_pool_gradients(size, channels_last):
    x = torch.rand(4, 3, *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    pooled = stbp.layers.SpikeAvgPool(2)(x)
    ref = torch.nn.AvgPool2d(2)(x)
    assert torch.equal(pooled, ref)
    g = torch.randn_like(ref).contiguous()  # as the flattened FC layer's gradient arrives
    (a,) = torch.autograd.grad(pooled, x, g)
    (b,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(a, b)
    assert a.is_contiguous(memory_format=torch.channels_last) == channels_last  # as the input
