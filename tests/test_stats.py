import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import stbp
from stbp.checkpoint import save_atomic
from stbp.cli import main
from stbp.config import DEFAULTS
from stbp.stats import format_table, neuron_rates, stats


def _record(model):
    """Spikes of every LIF layer in the next forward pass, by layer name."""
    seen = {}
    for name, m in model.layers.named_children():
        if isinstance(m, stbp.LIF):
            m.register_forward_hook(lambda _m, _i, out, n=name: seen.__setitem__(n, out))
    return seen


def test_fc_counts_by_hand():
    torch.manual_seed(0)
    model = stbp.build("6FC-Voting", (1, 2, 2), T=3, votes=2, num_classes=3)
    spikes = _record(model)
    x = torch.rand(5, 1, 2, 2) * 3
    result = stats(model, [(x, None)])
    fc1, voting = result["layers"]
    # encoding layer: analog input, dense MACs once per static sample
    assert fc1["sops"] == 0 and fc1["macs"] == fc1["ann_macs"] == 4 * 6
    # each spike of fc1 reaches all 3 * 2 voting neurons
    assert spikes["lif_fc1"].sum() > 0
    assert voting["sops"] == pytest.approx(float(spikes["lif_fc1"].sum()) * 6 / 5)
    assert voting["macs"] == 0 and voting["ann_macs"] == 6 * 6
    assert fc1["neurons"] == 6 and voting["neurons"] == 6
    assert fc1["params"] == 4 * 6 + 6 and voting["params"] == 6 * 6 + 6
    assert fc1["rate"] == pytest.approx(float(spikes["lif_fc1"].mean()))


def test_pooling_is_folded_into_the_fan_out():
    torch.manual_seed(1)
    model = stbp.build("3C3-AP2-5C3-Voting", (1, 8, 8), T=2)
    spikes = _record(model)
    x = (torch.rand(4, 2, 1, 8, 8) < 0.5).float()  # [B, T, C, H, W], as a DataLoader gives
    conv2 = stats(model, [x])["layers"][1]
    # a spike at (y, x) reaches pooled pixel (y//2, x//2); a 3x3 same conv on the 4x4 pooled
    # map reaches 2 rows/cols from a border pixel and 3 from an inner one, times 5 channels
    reach = torch.tensor([2.0, 3.0, 3.0, 2.0]).repeat_interleave(2)
    fanout = 5 * reach[:, None] * reach[None, :]
    assert spikes["lif_conv1"].sum() > 0
    assert conv2["sops"] == pytest.approx(float((spikes["lif_conv1"] * fanout).sum()) / 4)
    assert conv2["ann_macs"] == 3 * 5 * 10 * 10  # (2 + 3 + 3 + 2)^2 connections per map pair


def test_sequence_input_counts_encoding_macs_every_step():
    model = stbp.build("3C3-AP2-5C3-Voting", (1, 8, 8), T=2)
    frames = (torch.rand(2, 4, 1, 8, 8) < 0.5).float()
    conv1 = stats(model, [frames], time_first=True)["layers"][0]
    assert conv1["macs"] == 2 * conv1["ann_macs"]


def test_silent_and_saturated_neurons():
    model = stbp.build("4FC-Voting", (1, 2, 2), T=4)
    with torch.no_grad():
        model.layers.fc1.module[1].weight.zero_()
        model.layers.fc1.module[1].bias.copy_(torch.tensor([9.0, 9.0, -9.0, -9.0]))
    fc1, voting = stats(model, [torch.rand(3, 1, 2, 2)])["layers"]
    assert fc1["rate"] == 0.5 and fc1["silent"] == 0.5 and fc1["saturated"] == 0.5
    assert voting["sops"] == 2 * 4 * 100  # two neurons spiking at 4 steps, 100 targets each


def test_neunorm_input_counts_as_macs():
    model = stbp.build("3C3-AP2-5C3-Voting", (1, 8, 8), T=3, neunorm=True)
    conv2 = stats(model, [torch.rand(2, 1, 8, 8)])["layers"][1]
    assert conv2["macs"] == 3 * conv2["ann_macs"] and conv2["sops"] > 0


def test_energy_totals_and_override():
    torch.manual_seed(0)
    model = stbp.build("3C3-AP2-5C3-Voting", (1, 8, 8), T=3)
    x = torch.rand(4, 1, 8, 8)
    result = stats(model, [x, x], batches=1)
    t, e = result["total"], result["energy"]
    assert result["samples"] == 4 and result["T"] == 3
    assert t["sops"] == sum(r["sops"] for r in result["layers"]) > 0
    assert e["snn_uj"] == pytest.approx((t["sops"] * 0.9 + t["macs"] * 4.6) * 1e-6)
    assert e["ann_uj"] == pytest.approx(t["ann_macs"] * 4.6e-6)
    assert "Horowitz" in e["source"] and "ISSCC 2014" in e["source"]
    cheap = stats(model, [x], energy_ac_pj=0.1, energy_mac_pj=1.0)["energy"]
    assert cheap["snn_uj"] == pytest.approx((t["sops"] * 0.1 + t["macs"]) * 1e-6)
    json.dumps(result)  # plain values only
    table = format_table(result)
    assert "conv2" in table and "voting" in table and "0.9 pJ" in table


def test_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="no batch"):
        stats(stbp.build("4FC-Voting", (1, 2, 2), T=2), [])


def test_cli_table_and_json(tmp_path, capsys):
    model = stbp.build("4C3-AP4-16FC-Voting", (1, 28, 28), T=2)
    config = copy.deepcopy(DEFAULTS)  # the embedded MNIST digits
    ckpt = tmp_path / "last.pt"
    save_atomic(
        {"model": model.state_dict(), "build_args": model.build_args, "config": config}, ckpt
    )
    out = tmp_path / "stats.json"
    code = main(
        [
            "stats",
            "--checkpoint",
            str(ckpt),
            "--batches",
            "2",
            "--batch-size",
            "8",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "16 samples" in printed and "fc1" in printed and "Horowitz" in printed
    result = json.loads(out.read_text())
    assert [r["layer"] for r in result["layers"]] == ["conv1", "fc1", "voting"]
    assert result["samples"] == 16


def test_neuron_rates_run_on_the_models_device():
    """CPU batches for a model on another device (meta: shapes only, no data) are moved,
    and the helper tensors of the operation counts are made there."""
    model = stbp.build("4C3-AP2-16FC-Voting", (1, 8, 8), T=3, neunorm=True)
    rates = neuron_rates(model.to("meta"), [torch.rand(2, 1, 8, 8)])
    assert {r.device.type for r in rates.values()} == {"meta"}
    assert rates["lif_conv1"].shape == (4 * 8 * 8,)


class OwnNet(nn.Module):
    """A network of one's own: convs and LIFs in a custom forward with a residual sum."""

    def __init__(self, conv=stbp.Temporal):
        super().__init__()
        self.conv_a = conv(nn.Conv2d(2, 4, 3, padding=1))
        self.lif_a = stbp.LIF()
        self.block = nn.Module()
        self.block.conv = conv(nn.Conv2d(4, 4, 3, padding=1))
        self.block.lif = stbp.LIF()
        self.head = conv(nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 3)))

    def forward(self, x):
        a = self.lif_a(self.conv_a(x) * 3)
        return self.head(self.block.lif(self.block.conv(a)) + a).mean(0)


class Folded(nn.Module):
    """Time folded into the batch, and nothing reported about the input."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class Scripted(stbp.Temporal):
    """A stand-in for an event-driven synapse: reports the densities and paths it is given."""

    def __init__(self, module, reports):
        super().__init__(module)
        self.reports = iter(reports)

    def forward(self, x):
        y = super().forward(x)
        self.last_input_density, self.last_path = next(self.reports)
        return y


def test_own_network_gets_firing_per_lif_and_a_note_instead_of_operations():
    torch.manual_seed(0)
    model = OwnNet(conv=Folded)
    spikes = {}
    for name in ("lif_a", "block.lif"):
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, n=name: spikes.setdefault(n, []).append(out)
        )
    x = torch.rand(4, 5, 2, 6, 6)  # [B, T, C, H, W]
    result = stats(model, [x[:2], x[2:]])
    assert result["structure"] == "generic" and result["energy"] is None
    assert [r["layer"] for r in result["layers"]] == ["lif_a", "block.lif"]
    assert result["samples"] == 4 and result["T"] == 5 and result["synapses"] == []
    block = result["layers"][1]
    assert block["neurons"] == 4 * 6 * 6
    assert block["rate"] == pytest.approx(float(torch.cat(spikes["block.lif"], 1).mean()))
    assert result["total"]["params"] == sum(p.numel() for p in model.parameters())
    table = format_table(result)
    header = table.splitlines()[1]
    assert header.split() == ["layer", "neurons", "rate", "silent", "satur."]
    assert "block.lif" in table and "in density" not in table
    assert "note: SOPs, MACs and energy are not counted: OwnNet is not an stbp.SNN" in table
    rates = neuron_rates(model, [x])
    assert set(rates) == {"lif_a", "block.lif"} and rates["lif_a"].shape == (4 * 6 * 6,)


def test_own_network_shows_the_density_and_path_its_synapses_report():
    model = OwnNet(conv=lambda m: Scripted(m, [(0.5, "dense"), (0.1, "sparse")]))
    model.conv_a = stbp.Temporal(model.conv_a.module)  # analog input: reports a dense call
    x = torch.rand(2, 3, 2, 6, 6)
    result = stats(model, [x, x])
    synapses = {s["layer"]: s for s in result["synapses"]}
    assert synapses["block.conv"] == {
        "layer": "block.conv",
        "calls": 2,
        "input_density": pytest.approx(0.3),
        "paths": {"dense": 0.5, "sparse": 0.5},
    }
    assert synapses["conv_a"]["paths"] == {"dense": 1.0}
    table = format_table(result)
    assert "block.conv" in table and "30.0%" in table and "dense 50%/sparse 50%" in table


def test_sequential_network_gets_density_and_path_columns():
    torch.manual_seed(0)
    model = stbp.build("3C3-AP2-5C3-Voting", (1, 8, 8), T=3)
    model.layers.conv2 = Scripted(model.layers.conv2.module, [(0.2, "sparse"), (None, "dense")])
    x = torch.rand(2, 1, 8, 8)
    result = stats(model, [x, x])
    _, conv2, _ = result["layers"]
    assert result["structure"] == "sequential" and conv2["sops"] > 0
    assert conv2["input_density"] == 0.2 and conv2["paths"] == {"dense": 0.5, "sparse": 0.5}
    table = format_table(result)
    assert "in density" in table.splitlines()[1] and "20.0%" in table
    assert "dense 50%/sparse 50%" in table


def test_sequential_table_has_no_input_columns_when_nothing_reports():
    model = stbp.build("4C3-AP2-4C3-Voting", (1, 4, 4), T=2)
    for name in ("conv1", "conv2", "voting"):  # synapses that report nothing (as before)
        quiet = Scripted(model.layers.get_submodule(name).module, [(None, None)])
        setattr(model.layers, name, quiet)
    x = (torch.rand(2, 2, 1, 4, 4) < 0.5).float()  # [B, T, C, H, W] event frames
    result = stats(model, [x])
    assert result["structure"] == "sequential" and result["layers"][1]["sops"] > 0
    assert result["synapses"] == [] and "in density" not in format_table(result)


def test_cli_on_a_factory_checkpoint(tmp_path, capsys, monkeypatch):
    from stbp import factory

    monkeypatch.chdir(Path(__file__).parents[1])  # where `examples` imports from
    net = factory.build("examples.resnet_factory:resnet", {"widths": [4]}, 2, (1, 28, 28))
    ckpt = tmp_path / "own.pt"
    state = {"model": net.state_dict(), "factory": net.factory_args}
    save_atomic({**state, "config": copy.deepcopy(DEFAULTS)}, ckpt)
    out = tmp_path / "stats.json"
    args = ["stats", "--checkpoint", str(ckpt), "--batches", "1", "--batch-size", "4"]
    assert main([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "stages.0.lif2" in printed and "note: SOPs, MACs and energy are not counted" in printed
    result = json.loads(out.read_text())
    assert result["structure"] == "generic" and result["samples"] == 4 and result["T"] == 2
    assert [r["layer"] for r in result["layers"]][-1] == "lif_fc"


def test_a_spike_encoder_makes_the_first_layer_count_sops():
    torch.manual_seed(0)
    model = stbp.build("3C3-AP2-5C3-Voting", (1, 8, 8), T=3, encoding="bernoulli")
    encoded = []
    model.layers.encode.register_forward_hook(lambda _m, _i, out: encoded.append(out))
    conv1 = stats(model, [torch.rand(2, 1, 8, 8)])["layers"][0]
    reach = torch.tensor([2.0, 3, 3, 3, 3, 3, 3, 2])  # rows/cols a 3x3 same conv reaches
    fanout = 3 * reach[:, None] * reach[None, :]
    assert conv1["macs"] == 0 and encoded[0].sum() > 0
    assert conv1["sops"] == pytest.approx(float((encoded[0] * fanout).sum()) / 2)
