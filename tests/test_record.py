import pytest
import torch
from torch import nn

import stbp
from stbp.plots import record_spikes
from stbp.record import Recording, lif_layers


class TwoConvNet(nn.Module):
    """A network of one's own: two convs with LIFs in a custom forward, a residual sum."""

    def __init__(self, lif_b: stbp.LIF | None = None):
        super().__init__()
        self.conv_a = stbp.Temporal(nn.Conv2d(2, 4, 3, padding=1))
        self.lif_a = stbp.LIF()
        self.block = nn.Module()
        self.block.conv = stbp.Temporal(nn.Conv2d(4, 4, 3, padding=1), binary_input=True)
        self.block.lif_conv = lif_b or stbp.LIF(reset="soft")
        self.head = stbp.Temporal(nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.lif_a(self.conv_a(x) * 3)
        b = self.block.lif_conv(self.block.conv(a)) + a
        return self.head(b).mean(0)


def _inputs_of(lif: stbp.LIF) -> list:
    seen = []
    lif.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].clone()))
    return seen


def _hand_loop(x: torch.Tensor, decay: float, threshold: float) -> torch.Tensor:
    """Algorithm 1 written out: u[t] = decay * u[t-1] * (1 - o[t-1]) + x[t]."""
    u, o, us = torch.zeros_like(x[0]), torch.zeros_like(x[0]), []
    for x_t in x:
        u = decay * u * (1 - o) + x_t
        o = (u > threshold).float()
        us.append(u)
    return torch.stack(us)


def test_potentials_reproduce_the_spikes_and_a_hand_loop():
    torch.manual_seed(0)
    model = stbp.build("4C3-AP2-16FC-Voting", (1, 8, 8), T=5, lif=stbp.LIFParameters(0.3, 0.4))
    inputs = _inputs_of(model.layers.lif_fc1)
    rec = stbp.record(model, torch.rand(1, 8, 8) * 2, ["conv1", "fc1"], potentials=True)
    assert isinstance(rec, Recording) and list(rec.potentials) == ["lif_conv1", "lif_fc1"]
    for name in rec.spikes:
        u, s = rec.potentials[name], rec.spikes[name]
        assert u.shape == s.shape == (5, s.shape[1])
        assert torch.equal((u > 0.4).float(), s)
    assert 0 < float(rec.spikes["lif_fc1"].mean()) < 1  # both sides of the threshold seen
    by_hand = _hand_loop(inputs[0][:, 0], decay=0.3, threshold=0.4)
    torch.testing.assert_close(rec.potentials["lif_fc1"], by_hand, rtol=0, atol=0)
    assert torch.equal(rec.thresholds["lif_fc1"], torch.full((16,), 0.4))


def test_without_potentials_only_spikes_are_recorded():
    model = stbp.build("4FC-Voting", (1, 2, 2), T=3)
    rec = stbp.record(model, torch.rand(1, 2, 2))
    assert rec.potentials is None and list(rec.spikes) == ["lif_fc1", "lif_voting"]


def test_a_batch_keeps_its_dimension_and_matches_single_samples():
    torch.manual_seed(1)
    model = stbp.build("4C3-AP2-16FC-Voting", (1, 8, 8), T=4)
    frames = (torch.rand(4, 3, 1, 8, 8) < 0.5).float()  # [T, B, C, H, W]
    rec = stbp.record(model, frames, potentials=True, batch=True)
    assert rec.spikes["lif_conv1"].shape == (4, 3, 4 * 8 * 8)
    one = stbp.record(model, frames[:, 1], potentials=True)  # one sequence [T, C, H, W]
    assert torch.equal(one.spikes["lif_fc1"], rec.spikes["lif_fc1"][:, 1])
    torch.testing.assert_close(one.potentials["lif_fc1"], rec.potentials["lif_fc1"][:, 1])


def test_soft_reset_and_learnt_per_channel_thresholds():
    torch.manual_seed(2)
    lif = stbp.LIF(reset="soft", learn_threshold=True, per_channel=True, channels=4)
    with torch.no_grad():
        lif.threshold_log.copy_(torch.tensor([0.2, 0.4, 0.6, 0.8]).log())
    model = TwoConvNet(lif_b=lif)
    rec = stbp.record(model, torch.rand(6, 2, 6, 6), ["block.conv"], potentials=True)
    s, u, th = (r["block.lif_conv"] for r in rec)
    assert torch.equal(th.view(4, 36)[:, 0], lif.p.threshold.detach())
    assert torch.equal((u > th).float(), s)
    assert s.sum() > 0 and model.training  # the train mode is given back


def test_any_module_with_lif_layers_by_named_modules():
    model = TwoConvNet()
    assert list(lif_layers(model)) == ["lif_a", "block.lif_conv"]
    assert list(lif_layers(model, ["a", "block.lif_conv"])) == ["lif_a", "block.lif_conv"]
    spikes = stbp.record(model, torch.rand(5, 2, 6, 6)).spikes  # a sequence [T, C, H, W]
    assert spikes["block.lif_conv"].shape == (5, 4 * 6 * 6)
    with pytest.raises(ValueError, match="no LIF layer 'conv9'; choose from: lif_a, block"):
        stbp.record(model, torch.rand(5, 2, 6, 6), ["conv9"])


def test_one_sample_of_the_wrong_rank_is_one_clear_error():
    model = stbp.build("4FC-Voting", (1, 2, 2), T=3)
    with pytest.raises(ValueError, match=r"expected one sample \[1, 2, 2\] or \[T, 1, 2, 2\]"):
        stbp.record(model, torch.rand(2, 3, 1, 2, 2))


def test_record_spikes_is_kept_as_the_spikes_of_record():
    torch.manual_seed(3)
    model = stbp.build("4FC-Voting", (1, 2, 2), T=3)
    x = torch.rand(1, 2, 2)
    old, new = record_spikes(model, x), stbp.record(model, x).spikes
    assert list(old) == list(new) and all(torch.equal(old[n], new[n]) for n in old)
