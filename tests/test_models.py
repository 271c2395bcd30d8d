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
        ("conv", 128),
        ("pool", 2),
        ("pool", 2),
        ("fc", 1024),
        ("voting", 0),
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
    assert flags == {
        "conv1": False,
        "conv2": True,
        "pool1": False,
        "conv3": True,
        "pool2": False,
        "fc1": False,
        "fc2": True,
        "voting": True,
    }
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


# ------------------------------------------------------------------ dropout in the notation

# The authors' CIFAR-10 code (yjwu17/STBP-for-training-SpikingNN, code_cifar10/
# spiking_cnn_model.py) calls F.dropout(p=0.5) at every time step on conv1's spikes, after
# both average pools, on conv4's spikes, before fc1 and before fc2.
AUTHORS_CIFARNET = (
    "128C3(Enc)-DO-256C3-AP2-DO-512C3-AP2-DO-1024C3-DO-512C3-DO-1024FC-DO-512FC-Voting"
)


def _names(model):
    return [n for n, _ in model.layers.named_children()]


def test_do_tokens_parse():
    layers = stbp.parse("8C3-DO-AP2-DO-16FC-DO-Voting")
    assert [lay.kind for lay in layers] == [
        "conv",
        "dropout",
        "pool",
        "dropout",
        "fc",
        "dropout",
        "voting",
    ]


def test_authors_cifarnet_places_dropout_as_their_code():
    model = stbp.build(AUTHORS_CIFARNET, (3, 32, 32), T=2, dropout=0.5, dropout_mask="step")
    assert sum(p.numel() for p in model.parameters()) == PARAMS["cifarnet"]
    names, children = _names(model), dict(model.layers.named_children())
    around = [(names[i - 1], names[i + 1]) for i, n in enumerate(names) if n.startswith("dropout")]
    assert around == [
        ("lif_conv1", "conv2"),
        ("pool1", "conv3"),
        ("pool2", "conv4"),
        ("lif_conv4", "conv5"),
        ("lif_conv5", "fc1"),
        ("lif_fc1", "fc2"),
    ]
    drops = [m for n, m in children.items() if n.startswith("dropout")]
    assert all(isinstance(m, stbp.layers.StepDropout) and m.p == 0.5 for m in drops)
    assert model.build_args["dropout_mask"] == "step"


@pytest.mark.parametrize(
    "mask, kind", [("sample", stbp.SeqDropout), ("step", stbp.layers.StepDropout)]
)
def test_without_do_tokens_dropout_stays_after_hidden_fc_layers(mask, kind):
    model = stbp.build(
        "4C3(Enc)-AP2-8FC-8FC-Voting", (1, 8, 8), T=2, dropout=0.5, dropout_mask=mask
    )
    assert _names(model) == [
        "conv1",
        "lif_conv1",
        "pool1",
        "fc1",
        "lif_fc1",
        "dropout_fc1",
        "fc2",
        "lif_fc2",
        "dropout_fc2",
        "voting",
        "lif_voting",
        "vote",
    ]
    assert isinstance(model.layers.dropout_fc1, kind)
    assert not any(n.startswith("dropout") for n in _names(stbp.build("8FC-Voting", (4,))))


def test_default_build_is_the_same_network_as_before():
    torch.manual_seed(0)
    a = stbp.build("4C3(Enc)-AP2-8FC-Voting", (1, 8, 8), T=2, neunorm=True, dropout=0.5)
    torch.manual_seed(0)
    b = stbp.build(
        "4C3(Enc)-AP2-8FC-Voting",
        (1, 8, 8),
        T=2,
        neunorm=True,
        dropout=0.5,
        dropout_mask="sample",
        neunorm_reading="stbp",
    )
    assert isinstance(a.layers.dropout_fc1, stbp.SeqDropout)
    assert torch.equal(a.layers.neunorm_conv1.alpha, torch.ones(4, 8, 8))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_rebuild_of_old_build_args_defaults_to_sample_mask_and_our_neunorm():
    model = stbp.build("4C3(Enc)-8FC-Voting", (1, 6, 6), T=2, neunorm=True, dropout=0.5)
    old = {
        k: v for k, v in model.build_args.items() if k not in ("dropout_mask", "neunorm_reading")
    }
    again = stbp.rebuild(old)
    again.load_state_dict(model.state_dict())
    assert again.build_args == model.build_args
    assert stbp.models.complete_build_args(old) == model.build_args
    assert isinstance(again.layers.dropout_fc1, stbp.SeqDropout)


@pytest.mark.parametrize("mask", ["sample", "step"])
def test_layer_after_dropout_gets_no_binary_input_and_gradients_match(mask):
    torch.manual_seed(0)
    model = stbp.build(
        "4C3(Enc)-DO-8C3-MP2-DO-8FC-16FC-Voting", (2, 8, 8), T=3, dropout=0.5, dropout_mask=mask
    )
    flags = {
        n: m.binary_input for n, m in model.layers.named_children() if isinstance(m, stbp.Temporal)
    }
    # dropout scales the kept spikes by 1/(1-p) = 2: not 0/1 any more
    assert flags == {
        "conv1": False,
        "conv2": False,
        "pool1": False,
        "fc1": False,
        "fc2": True,
        "voting": True,
    }
    x = (torch.rand(3, 5, 2, 8, 8) < 0.5).float()
    labels = torch.randint(0, 10, (5,))

    def grads():
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks in both runs
        stbp.rate_mse_loss(model(x), labels).backward()
        return [p.grad.clone() for p in model.parameters()]

    fused = grads()
    for m in model.modules():
        if isinstance(m, stbp.Temporal):
            m.binary_input = False
    for a, b in zip(fused, grads(), strict=True):
        torch.testing.assert_close(a, b)


def test_stats_counts_a_dropout_network_like_its_twin_without_dropout():
    torch.manual_seed(0)
    with_do = stbp.build(
        "4C3(Enc)-DO-8C3-AP2-DO-8FC-Voting", (1, 8, 8), T=3, dropout=0.5, dropout_mask="step"
    )
    torch.manual_seed(0)
    without = stbp.build("4C3(Enc)-8C3-AP2-8FC-Voting", (1, 8, 8), T=3)
    x = torch.rand(4, 1, 8, 8)
    a, b = stbp.stats(with_do, [x]), stbp.stats(without, [x])
    assert a["total"] == b["total"] and a["total"]["sops"] > 0


# ------------------------------------------------------------------ checked arguments


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"T": 0}, r"T must be an integer >= 1, got 0"),
        ({"T": -1}, r"T must be an integer >= 1, got -1"),
        ({"T": 2.0}, r"T must be an integer >= 1, got 2.0"),
        ({"dropout": -0.1}, r"dropout must be a number in \[0, 1\), got -0.1"),
        ({"dropout": 1}, r"dropout must be a number in \[0, 1\), got 1"),
        ({"votes": 0}, r"votes must be an integer >= 1, got 0"),
        ({"num_classes": 0}, r"num_classes must be an integer >= 1, got 0"),
        ({"in_shape": (0, 6, 6)}, r"in_shape must be a non-empty sequence of integers >= 1"),
        ({"in_shape": ()}, r"in_shape must be .* got \(\)"),
        ({"in_shape": 6}, r"in_shape must be .* got 6"),
        ({"neunorm": "yes"}, r"neunorm must be True or False, got 'yes'"),
        ({"dropout_mask": "time"}, r"dropout_mask must be one of 'sample', 'step'; got 'time'"),
        ({"neunorm_reading": "x"}, r"neunorm_reading must be one of 'stbp', 'spikingjelly'"),
        ({"lif": {"decay": 0.2}}, r"lif must be an stbp.LIFParameters"),
        ({"spec": None}, r"spec must be a string"),
    ],
)
def test_build_checks_every_argument(kwargs, message):
    args = {"spec": "4C3(Enc)-8FC-Voting", "in_shape": (1, 6, 6), **kwargs}
    with pytest.raises(ValueError, match=message):
        stbp.build(**args)


def test_paper_network_and_snn_check_their_arguments():
    with pytest.raises(ValueError, match="T must be an integer >= 1, got -1"):
        stbp.paper_network("mnist-demo", T=-1)
    with pytest.raises(ValueError, match="dropout must be a number in"):
        stbp.paper_network("mnist-demo", dropout=-0.1)
    with pytest.raises(ValueError, match="T must be an integer >= 1, got 0"):
        stbp.SNN(torch.nn.Sequential(), "", (1, 2, 2), 0, 10)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        stbp.SNN(torch.nn.Sequential(), "", (1, 2, 2), 4, -3)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("DO-8C3-Voting", "first layer must be"),
        ("8C3-DO-DO-Voting", "two dropouts in a row"),
        ("8C3-DO", "must end with 'Voting'"),
        ("8C3-Voting-DO", "must end with 'Voting'"),
        ("8C3-DO(Enc)-Voting", "only the first layer"),
    ],
)
def test_bad_do_placement_raises(spec, message):
    with pytest.raises(ValueError, match=message):
        stbp.build(spec, (1, 4, 4), dropout=0.5)


def test_do_tokens_need_a_dropout_probability():
    with pytest.raises(ValueError, match="has DO .* tokens but dropout is 0"):
        stbp.build("8C3-DO-8FC-Voting", (1, 4, 4))


# ------------------------------------------------------------------ no silent layout guess


def test_batch_first_sequence_is_refused_with_the_fix():
    model = stbp.build("8FC-Voting", (1, 8, 8), T=4)
    batch_first = torch.rand(3, 4, 1, 8, 8)  # a DataLoader batch [B, T, C, H, W]
    with pytest.raises(
        ValueError,
        match=r"has 3 time steps, but the model was built for T = 4"
        r".*x\.transpose\(0, 1\).*model\(x, T=3\)",
    ):
        model(batch_first)
    assert model(batch_first.transpose(0, 1)).shape == (3, 10)


def test_another_window_runs_when_asked_for():
    torch.manual_seed(0)
    model = stbp.build("4C3(Enc)-AP2-8FC-Voting", (1, 6, 6), T=4)
    frames = torch.rand(6, 2, 1, 6, 6)
    assert model(frames, T=6).shape == (2, 10)
    with pytest.raises(ValueError, match=r"model\(x, T=5\) asks for 5"):
        model(frames, T=5)
    with pytest.raises(ValueError, match="T must be an integer >= 1, got 0"):
        model(frames, T=0)
    image = torch.rand(2, 1, 6, 6)  # a static input presented for T = 6 steps
    with torch.no_grad():
        assert torch.equal(model(image, T=6), model(image.expand(6, -1, -1, -1, -1), T=6))
        assert torch.equal(model(image, T=4), model(image))
