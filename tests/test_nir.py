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
