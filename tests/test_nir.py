import numpy as np
import pytest
import torch

import stbp
from stbp.checkpoint import save_atomic
from stbp.cli import main
from stbp.nir_export import export_nir, import_nir

nir = pytest.importorskip("nir")


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return stbp.paper_network("mnist-demo", T=4).eval()


def test_round_trip_gives_identical_outputs(demo, tmp_path):
    path = tmp_path / "demo.nir"
    export_nir(demo, path)
    back = import_nir(path)
    static = torch.rand(2, 1, 28, 28)
    frames = (torch.rand(4, 1, 1, 28, 28) < 0.3).float()
    with torch.no_grad():
        expected = demo(static)
        assert expected.sum() > 0  # the comparison is not between two silent networks
        assert torch.equal(expected, back(static))
        assert torch.equal(demo(frames), back(frames))
    assert back.T == demo.T and back.in_shape == demo.in_shape
    assert [type(m) for m in back.layers] == [type(m) for m in demo.layers]


def test_graph_holds_the_documented_lif_mapping(demo, tmp_path):
    path = tmp_path / "demo.nir"
    export_nir(demo, path, dt=1e-4)
    graph = nir.read(str(path))
    assert float(graph.metadata["dt"]) == 1e-4 and int(graph.metadata["T"]) == 4
    lif = graph.nodes["lif_conv1"]
    assert isinstance(lif, nir.LIF) and lif.tau.shape == (32, 28, 28)
    np.testing.assert_allclose(lif.tau, 1e-4 / (1 - 0.2))
    np.testing.assert_allclose(lif.r, 1 / (1 - 0.2))
    assert np.all(lif.v_leak == 0) and np.all(lif.v_reset == 0)
    assert np.all(lif.v_threshold == 0.5)
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    assert kinds["conv1"] == "Conv2d" and kinds["pool1"] == "AvgPool2d"
    assert kinds["flatten_fc1"] == "Flatten" and kinds["fc1"] == "Affine"
    assert kinds["vote"] == "Linear"


@pytest.mark.parametrize("decay", [0.0, 0.2, 0.5, 0.9, 0.123456789, 0.999, 1.0])
def test_decay_survives_the_round_trip(decay, tmp_path):
    model = stbp.build("8FC-Voting", (1, 2, 2), T=3, lif=stbp.LIFParameters(decay, 0.3))
    path = tmp_path / "m.nir"
    export_nir(model, path, dt=1e-3)
    back = import_nir(path)
    assert back.layers.lif_fc1.p.decay == pytest.approx(decay, rel=1e-14, abs=1e-15)
    assert np.float32(back.layers.lif_fc1.p.decay) == np.float32(decay)
    x = torch.rand(5, 1, 2, 2) * 2
    assert torch.equal(model(x), back(x))


def test_no_leak_exports_as_if():
    model = stbp.build("8FC-Voting", (1, 2, 2), T=3, lif=stbp.LIFParameters(1.0, 0.3))
    assert isinstance(export_nir(model).nodes["lif_fc1"], nir.IF)


def test_neunorm_has_no_nir_equivalent():
    model = stbp.build("4C3-AP2-8FC-Voting", (1, 8, 8), T=2, neunorm=True)
    with pytest.raises(ValueError, match=r"layer 'neunorm_conv1' \(NeuNorm\) has no NIR"):
        export_nir(model)


def test_max_pooling_has_no_nir_equivalent():
    model = stbp.build("4C3-MP2-8FC-Voting", (1, 8, 8), T=2)
    with pytest.raises(ValueError, match=r"layer 'pool1' \(MaxPool2d\) has no NIR"):
        export_nir(model)


def test_import_with_another_dt_is_refused(tmp_path):
    model = stbp.build("8FC-Voting", (1, 2, 2), T=3)
    path = tmp_path / "m.nir"
    export_nir(model, path, dt=1e-3)
    with pytest.raises(ValueError, match="'lif_fc1'.*check dt"):
        import_nir(path, dt=1e-2)


def test_import_refuses_a_lif_with_leak_voltage():
    graph = export_nir(stbp.build("8FC-Voting", (1, 2, 2), T=3))
    graph.nodes["lif_fc1"].v_leak[:] = 0.1
    with pytest.raises(ValueError, match="'lif_fc1'.*v_leak"):
        import_nir(graph)


def test_import_refuses_a_threshold_not_above_zero():
    graph = export_nir(stbp.build("8FC-Voting", (1, 2, 2), T=3))
    graph.nodes["lif_fc1"].v_threshold[:] = 0.0
    with pytest.raises(ValueError, match="'lif_fc1': v_threshold = 0.0; it must be above 0"):
        import_nir(graph)


def test_cli_export(tmp_path, capsys):
    model = stbp.build("4C3-AP2-8FC-Voting", (1, 8, 8), T=2)
    ckpt = tmp_path / "last.pt"
    save_atomic({"model": model.state_dict(), "build_args": model.build_args}, ckpt)
    out = tmp_path / "model.nir"
    assert main(["export-nir", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model.eval()(x), import_nir(out)(x))


@pytest.mark.parametrize("mask", ["sample", "step"])
def test_dropout_is_left_out_of_the_export(mask, tmp_path):
    torch.manual_seed(0)
    model = stbp.build(
        "4C3(Enc)-DO-8C3-AP2-DO-16FC-DO-Voting", (1, 8, 8), T=3, dropout=0.5, dropout_mask=mask
    ).eval()
    graph = export_nir(model, tmp_path / "m.nir")
    assert not any("dropout" in name for name in graph.nodes)
    back = import_nir(tmp_path / "m.nir")
    assert not any("dropout" in name for name, _ in back.layers.named_children())
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
        assert expected.sum() > 0
        assert torch.equal(expected, back(x))  # dropout is the identity at inference


def _learnt(per_channel: bool, **kwargs) -> stbp.SNN:
    """A net whose learnt decays and thresholds differ between layers (and channels)."""
    torch.manual_seed(0)
    model = stbp.build("4C3(Enc)-AP2-8FC-Voting", (1, 6, 6), T=3, learn_decay=True,
                       learn_threshold=True, per_channel=per_channel, **kwargs)  # fmt: skip
    with torch.no_grad():
        for lif in model.modules():
            if isinstance(lif, stbp.LIF):
                lif.decay_logit.uniform_(-2, 2)
                lif.threshold_log.uniform_(-1.5, -0.2)
                for w in lif.parameters():
                    w.copy_(w.to(torch.float64).to(torch.float32))
    return model.eval()


@pytest.mark.parametrize("per_channel", [False, True])
def test_learnt_decay_and_threshold_export_per_neuron(per_channel, tmp_path):
    model = _learnt(per_channel)
    graph = export_nir(model, tmp_path / "m.nir", dt=1e-3)
    node, p = graph.nodes["lif_conv1"], model.layers.lif_conv1.p
    assert isinstance(node, nir.LIF) and node.tau.shape == (4, 6, 6)
    decay = p.decay.detach().double().numpy().reshape(-1, 1, 1)
    np.testing.assert_allclose(node.tau, np.broadcast_to(1e-3 / (1 - decay), (4, 6, 6)))
    np.testing.assert_allclose(node.r, node.tau / 1e-3)
    threshold = p.threshold.detach().double().numpy().reshape(-1, 1, 1)
    np.testing.assert_allclose(node.v_threshold, np.broadcast_to(threshold, (4, 6, 6)))
    if per_channel:
        assert len(np.unique(node.tau[:, 0, 0])) == 4  # one value per channel
    fc = graph.nodes["lif_fc1"]
    assert fc.tau.shape == (8,)
    fc_decay = model.layers.lif_fc1.p.decay.detach().double().numpy()
    np.testing.assert_allclose(fc.tau, 1e-3 / (1 - fc_decay))


@pytest.mark.parametrize("per_channel", [False, True])
def test_learnt_decay_survives_the_round_trip(per_channel, tmp_path):
    model = _learnt(per_channel)
    export_nir(model, tmp_path / "m.nir")
    back = import_nir(tmp_path / "m.nir")
    for name in ("lif_conv1", "lif_fc1", "lif_voting"):
        got, want = getattr(back.layers, name).p, getattr(model.layers, name).p
        for field in ("decay", "threshold"):
            value = torch.as_tensor(getattr(got, field)).float()
            torch.testing.assert_close(value, getattr(want, field).detach(), rtol=1e-6, atol=0)
    x = torch.rand(2, 1, 6, 6)
    with torch.no_grad():
        expected = model(x)
        assert expected.sum() > 0
        torch.testing.assert_close(back(x), expected)


def test_soft_reset_has_no_nir_equivalent():
    model = stbp.build("4C3-AP2-8FC-Voting", (1, 8, 8), T=2, reset="soft")
    with pytest.raises(ValueError, match=r"layer 'lif_conv1': reset = 'soft' .* no NIR equiv"):
        export_nir(model)


def test_detached_reset_exports_as_the_hard_reset(tmp_path):
    torch.manual_seed(0)
    model = stbp.build("4C3-AP2-8FC-Voting", (1, 8, 8), T=2, detach_reset=True).eval()
    torch.manual_seed(0)
    plain = stbp.build("4C3-AP2-8FC-Voting", (1, 8, 8), T=2).eval()
    a, b = export_nir(model), export_nir(plain)
    for name, node in a.nodes.items():
        if isinstance(node, nir.LIF):
            np.testing.assert_array_equal(node.tau, b.nodes[name].tau)
    export_nir(model, tmp_path / "m.nir")
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(import_nir(tmp_path / "m.nir")(x), model(x))


def test_a_spike_encoder_has_no_nir_equivalent():
    model = stbp.build("4C3-AP2-8FC-Voting", (1, 8, 8), T=2, encoding="bernoulli")
    with pytest.raises(ValueError, match=r"layer 'encode' \(Bernoulli\) has no NIR equivalent"):
        export_nir(model)


def test_import_refuses_values_that_vary_inside_a_channel():
    graph = export_nir(stbp.build("4C3-AP2-8FC-Voting", (1, 8, 8), T=2))
    graph.nodes["lif_conv1"].v_threshold[0, 0, 0] = 0.7
    with pytest.raises(ValueError, match="'lif_conv1': v_threshold differs between neurons of a"):
        import_nir(graph)
