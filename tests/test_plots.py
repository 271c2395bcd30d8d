import copy
from pathlib import Path

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

import stbp
import stbp.plots
from stbp.checkpoint import save_atomic
from stbp.cli import main
from stbp.config import DEFAULTS
from stbp.data.frames import events_to_frames
from stbp.data.nmnist import read_nmnist
from stbp.plots import MAX_ROWS, raster_figure, rates_figure, record_spikes
from stbp.stats import neuron_rates

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def model():
    torch.manual_seed(0)
    return stbp.build("4C3-AP2-16FC-Voting", (1, 8, 8), T=3)


def test_record_spikes_matches_the_network(model):
    x = torch.rand(1, 8, 8)
    spikes = record_spikes(model, x, ["conv1", "lif_fc1"])
    assert list(spikes) == ["lif_conv1", "lif_fc1"]
    assert spikes["lif_conv1"].shape == (3, 4 * 8 * 8)
    model(x.unsqueeze(0))
    assert float(spikes["lif_fc1"].mean()) == pytest.approx(float(model.layers.lif_fc1.last_rate))


def test_unknown_layer_names_the_choices(model):
    with pytest.raises(ValueError, match="no LIF layer 'fc9'; choose from: lif_conv1"):
        record_spikes(model, torch.rand(1, 8, 8), ["fc9"])


def test_raster_figure_static_and_sequence(model, tmp_path):
    fig = raster_figure(model, torch.rand(1, 8, 8), neurons=10)
    assert len(fig.axes) == 1 + 3  # the input image, one panel per LIF layer
    assert fig.axes[-1].get_xlabel() == "time step t"
    assert [ax.get_ylabel() for ax in fig.axes[1:]] == ["neuron", "neuron", "voters of class"]
    assert "100 neurons" in fig.axes[-1].get_title(loc="left")  # the voting layer is shown whole
    frames = (torch.rand(3, 1, 8, 8) < 0.4).float()
    fig = raster_figure(model, frames, layers=["fc1"])
    assert len(fig.axes) == 3 + 1  # one image per input frame, one raster panel
    fig.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes().startswith(PNG)


def test_rates_figure(model):
    x = torch.rand(6, 1, 8, 8)
    rates = neuron_rates(model, [x])
    assert set(rates) == {"lif_conv1", "lif_fc1", "lif_voting"}
    assert rates["lif_fc1"].shape == (16,) and 0 <= float(rates["lif_fc1"].min())
    fig = rates_figure(rates)
    assert len(fig.axes) == 3
    assert fig.axes[0].get_xlabel() == "firing rate (spikes per step)"
    assert fig.axes[0].get_ylabel() == "neurons (%)"


def test_cli_writes_pngs_next_to_the_checkpoint(tmp_path, capsys):
    net = stbp.build("4C3-AP4-16FC-Voting", (1, 28, 28), T=2)
    ckpt = tmp_path / "last.pt"
    save_atomic(
        {
            "model": net.state_dict(),
            "build_args": net.build_args,
            "config": copy.deepcopy(DEFAULTS),
        },
        ckpt,
    )
    assert main(["plot", "raster", "--checkpoint", str(ckpt), "--sample", "5"]) == 0
    assert main(["plot", "rates", "--checkpoint", str(ckpt), "--batches", "1"]) == 0
    assert (tmp_path / "raster_sample5.png").read_bytes().startswith(PNG)
    assert (tmp_path / "rates.png").read_bytes().startswith(PNG)
    assert "raster_sample5.png" in capsys.readouterr().out
    assert main(["plot", "raster", "--checkpoint", str(ckpt), "--sample", "99999"]) == 2
    assert "--sample 99999 is out of range" in capsys.readouterr().err


def test_neurons_below_one_is_an_error(model):
    with pytest.raises(ValueError, match="neurons must be at least 1"):
        raster_figure(model, torch.rand(1, 8, 8), neurons=0)


def test_cli_refuses_neurons_zero(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["plot", "raster", "--checkpoint", str(tmp_path / "x.pt"), "--neurons", "0"])
    assert info.value.code == 2
    assert "argument --neurons: must be a whole number >= 1, got '0'" in capsys.readouterr().err


def test_a_huge_neurons_request_keeps_every_row_visible():
    torch.manual_seed(0)
    net = stbp.build("32C3-AP2-16FC-Voting", (1, 8, 8), T=3)  # conv1: 2048 neurons
    fig = raster_figure(net, torch.rand(1, 8, 8), neurons=100_000)
    FigureCanvasAgg(fig).draw()  # lays the figure out as saving it does
    conv1, fc1 = fig.axes[1], fig.axes[2]
    rows = conv1.images[0].get_array().shape[0]
    assert rows == MAX_ROWS and f"{MAX_ROWS} of 2,048 neurons shown" in conv1.get_title(loc="left")
    assert conv1.get_window_extent().height / rows >= 1.5  # pixels per row
    assert fc1.images[0].get_array().shape[0] == 16  # capped to the layer's size
    assert "16 neurons" in fc1.get_title(loc="left")


def test_event_input_titles_stay_inside_the_figure(model, nmnist_sample):
    frames = torch.as_tensor(events_to_frames(read_nmnist(nmnist_sample), 10, (34, 34)))
    net = stbp.build("4C3-AP2-16FC-Voting", (2, 34, 34), T=10)
    fig = raster_figure(net, frames.float(), title="sample 0")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert "t=0" in [t.get_text() for t in texts]
    for text in texts:  # titles, suptitles, tick labels: nothing cut off at an edge
        box = text.get_window_extent(renderer)
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width, text.get_text()
        assert 0 <= box.y0 and box.y1 <= fig.bbox.height, text.get_text()


def test_record_spikes_runs_on_the_models_device(model):
    """A CPU sample for a model on another device (meta: shapes only, no data) is moved."""
    spikes = record_spikes(model.to("meta"), torch.rand(1, 8, 8))
    assert {s.device.type for s in spikes.values()} == {"meta"}
    assert spikes["lif_fc1"].shape == (3, 16)


def test_raster_with_potential_traces(model, tmp_path):
    torch.manual_seed(1)
    fig = raster_figure(model, torch.rand(1, 8, 8) * 2, layers=["conv1", "fc1"], potentials=2)
    assert len(fig.axes) == 1 + 2 * 2  # the input; per layer a raster and a potential panel
    raster, traces = fig.axes[1], fig.axes[2]
    assert raster.get_ylabel() == "neuron" and traces.get_ylabel() == "u[t]"
    assert traces.get_title(loc="left").startswith("lif_conv1: membrane potential u[t] of 2")
    threshold = [line for line in traces.get_lines() if line.get_label() == "threshold"]
    assert len(threshold) == 1 and list(threshold[0].get_ydata()) == [0.5, 0.5]
    assert len([line for line in traces.get_lines() if line.get_label().startswith("#")]) == 2
    assert fig.axes[-1].get_xlabel() == "time step t"
    fig.savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes().startswith(PNG)


def test_raster_of_an_own_network():
    class Own(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = stbp.Temporal(torch.nn.Conv2d(1, 3, 3, padding=1))
            self.block = torch.nn.Sequential(stbp.LIF(), stbp.LIF(threshold=0.2))

        def forward(self, x):
            return self.block(self.conv(x.unsqueeze(0).expand(4, *x.shape)))

    fig = raster_figure(Own(), torch.rand(1, 5, 5), potentials=1)
    titles = [ax.get_title(loc="left") for ax in fig.axes[1:]]
    assert titles[0].startswith("block.0: ") and titles[3].startswith("block.1: membrane")


def test_cli_potentials_flag(tmp_path, monkeypatch):
    net = stbp.build("4C3-AP4-16FC-Voting", (1, 28, 28), T=2)
    ckpt = tmp_path / "last.pt"
    state = {"model": net.state_dict(), "build_args": net.build_args}
    save_atomic({**state, "config": copy.deepcopy(DEFAULTS)}, ckpt)
    args = ["plot", "raster", "--checkpoint", str(ckpt), "--layers", "fc1"]
    assert main([*args, "--potentials", "2", "--out", str(tmp_path / "u.png")]) == 0
    assert (tmp_path / "u.png").read_bytes().startswith(PNG)
    asked = []
    real = stbp.plots.raster_figure
    monkeypatch.setattr(
        stbp.plots, "raster_figure", lambda *a, **k: asked.append(k["potentials"]) or real(*a, **k)
    )
    assert main([*args, "--potentials"]) == 0 and main(args) == 0
    assert asked == [3, 0]  # the flag alone traces 3 neurons; without it, none


def test_cli_raster_with_potentials_of_a_factory_network(tmp_path, monkeypatch):
    from stbp import factory

    monkeypatch.chdir(Path(__file__).parents[1])  # where `examples` imports from
    net = factory.build("examples.resnet_factory:resnet", {"widths": [4]}, 3, (1, 28, 28))
    ckpt = tmp_path / "own.pt"
    state = {"model": net.state_dict(), "factory": net.factory_args}
    save_atomic({**state, "config": copy.deepcopy(DEFAULTS)}, ckpt)
    args = ["plot", "raster", "--checkpoint", str(ckpt), "--layers", "stem.2,fc"]
    assert main([*args, "--potentials", "2"]) == 0
    assert (tmp_path / "raster_sample0.png").read_bytes().startswith(PNG)
