import copy
import json

import pytest
import torch

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
