"""Every LIF layer of every paper network fires at init on real input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import stbp
from stbp.data import MNIST10k, events_to_frames, read_nmnist

T = 4


def _digits(n: int = 4) -> torch.Tensor:
    return MNIST10k(train=False).images[:n]


def _nmnist_frames(path, size: int) -> torch.Tensor:
    frames = events_to_frames(read_nmnist(path), T, (34, 34), binary=True)
    x = torch.from_numpy(frames.astype(np.float32))
    pad = (size - 34) // 2
    x = F.pad(x, (pad, size - 34 - pad) * 2)
    return x.unsqueeze(1).expand(T, 2, 2, size, size)  # [T, B=2, 2, H, W]


def _cifar_like_digits() -> torch.Tensor:
    # Real digits standing in for CIFAR images: padded to 32x32, 3 channels, standardised.
    x = F.pad(_digits(), (2, 2, 2, 2)).expand(-1, 3, -1, -1)
    return (x - x.mean()) / x.std()


def _real_input(name: str, sample) -> torch.Tensor:
    if name.startswith("mnist"):
        return _digits()
    if name.startswith("cifar"):
        return _cifar_like_digits()
    return _nmnist_frames(sample, 42 if name == "dvs-cifar10" else 34)


@pytest.mark.parametrize("name", sorted(stbp.PAPER_NETWORKS))
def test_every_layer_fires_at_init(name, nmnist_sample):
    torch.manual_seed(0)
    model = stbp.paper_network(name, T=T)
    with torch.no_grad():
        model(_real_input(name, nmnist_sample))
    rates = stbp.firing_rates(model)
    assert len(rates) == sum(isinstance(m, stbp.LIF) for m in model.modules())
    for layer, rate in rates.items():
        assert 0.01 <= rate <= 0.5, f"{name}: {layer} fires at {rate:.4f}"


def test_default_init_dies_without_threshold_scaling():
    """The problem being solved: PyTorch's default init leaves deep layers silent."""
    torch.manual_seed(0)
    model = stbp.paper_network("mnist-demo", T=T)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.reset_parameters()
    with torch.no_grad():
        model(_digits())
    assert min(stbp.firing_rates(model).values()) < 0.01


def test_calibration_reaches_the_target_rate_or_half_the_ceiling():
    torch.manual_seed(0)
    model = stbp.paper_network("mnist-demo", T=T)
    digits = _digits(16)
    with torch.no_grad():  # the most the encoding layer can fire: every positive input
        ceiling = float((model.layers.conv1(digits) > 0).float().mean())
    assert 0.1 < ceiling < 0.2  # digits on a zero background
    reached = stbp.calibrate_(model, digits, rate=0.1)
    assert set(reached) == set(stbp.firing_rates(model))
    assert reached["lif_conv1"] == pytest.approx(ceiling / 2, abs=0.01)
    for layer in ("lif_conv2", "lif_fc1", "lif_voting"):
        assert reached[layer] == pytest.approx(0.1, abs=0.01), layer


def test_calibrated_encoding_layer_still_learns():
    # On 16 digits the encoding layer can fire at most ~15%, the default target: chasing it
    # once scaled the encoding weights by ~1e6, every potential left the surrogate window and
    # the layer never received a gradient.
    torch.manual_seed(0)
    model = stbp.paper_network("mnist-demo", T=T)
    digits = _digits(16)
    encoding = model.layers.conv1.module.weight
    before = encoding.abs().mean().item()
    stbp.calibrate_(model, digits)
    assert encoding.abs().mean().item() < 100 * before
    stbp.rate_mse_loss(model(digits), torch.arange(16) % 10).backward()
    assert encoding.grad.abs().mean() > 1e-3 * model.layers.conv2.module.weight.grad.abs().mean()


def test_network_with_dropout_tokens_fires_at_init_and_calibrates():
    torch.manual_seed(0)
    model = stbp.build(
        "32C3(Enc)-DO-AP2-64C3-AP2-DO-256FC-DO-Voting",
        (1, 28, 28),
        T=T,
        dropout=0.5,
        dropout_mask="step",
    ).eval()
    with torch.no_grad():
        model(_digits())
    for layer, rate in stbp.firing_rates(model).items():
        assert 0.01 <= rate <= 0.5, f"{layer} fires at {rate:.4f}"
    reached = stbp.calibrate_(model.train(), _digits(16), rate=0.1)
    assert reached["lif_fc1"] == pytest.approx(0.1, abs=0.02)  # through the dropout


def test_calibration_runs_on_frames_of_another_window(nmnist_sample):
    torch.manual_seed(0)
    model = stbp.paper_network("nmnist-small", T=T + 2)  # frames have T steps, the model T + 2
    reached = stbp.calibrate_(model, _nmnist_frames(nmnist_sample, 34))
    assert set(reached) == set(stbp.firing_rates(model))
