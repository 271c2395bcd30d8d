"""Building blocks of your own networks: tdBN (Zheng et al., AAAI 2021) against its formula,
in training and eval mode, and the spiking residual block."""

import math

import pytest
import torch
from torch import nn

from stbp.blocks import RESIDUAL_ALPHA, ResidualBlock, TDBatchNorm

T, B, C, H, W = 3, 4, 5, 6, 7


def tdbn_formula(x, mean, var, alpha, threshold, weight, bias, eps=1e-5):
    """y = lambda * alpha * V_th * (x - mean) / sqrt(var + eps) + beta, per channel (dim 2)."""
    shape = (1, 1, -1, 1, 1)
    x_hat = alpha * threshold * (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)
    return weight.view(shape) * x_hat + bias.view(shape)


def random_norm(alpha=0.7, threshold=0.4):
    norm = TDBatchNorm(C, alpha=alpha, threshold=threshold).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    return norm


def test_training_mode_normalises_over_time_batch_and_space_per_channel():
    torch.manual_seed(0)
    norm = random_norm()
    x = torch.randn(T, B, C, H, W, dtype=torch.float64) * 3 + 1
    mean = x.mean(dim=(0, 1, 3, 4))
    var = x.var(dim=(0, 1, 3, 4), unbiased=False)
    expected = tdbn_formula(x, mean, var, 0.7, 0.4, norm.weight, norm.bias)
    torch.testing.assert_close(norm(x), expected, rtol=1e-10, atol=1e-10)
    # with lambda = 1, beta = 0 the output has std alpha * V_th per channel
    plain = TDBatchNorm(C, alpha=0.7, threshold=0.4).double()
    out = plain(x)
    std = out.transpose(0, 2).reshape(C, -1).std(dim=1, unbiased=False)
    torch.testing.assert_close(std, torch.full((C,), 0.28, dtype=torch.float64), rtol=1e-4, atol=0)


def test_running_statistics_update_as_batch_norm_and_serve_in_eval():
    torch.manual_seed(1)
    norm = random_norm()
    x = torch.randn(T, B, C, H, W, dtype=torch.float64) * 2 - 1
    norm(x)
    n = T * B * H * W
    mean = x.mean(dim=(0, 1, 3, 4))
    unbiased = x.var(dim=(0, 1, 3, 4), unbiased=False) * n / (n - 1)
    torch.testing.assert_close(norm.running_mean, 0.1 * mean)
    torch.testing.assert_close(norm.running_var, 0.9 + 0.1 * unbiased)
    assert int(norm.num_batches_tracked) == 1
    norm.eval()
    before = norm.running_mean.clone()
    sample = x[:, :1]  # one sample: eval mode does not depend on the batch
    expected = tdbn_formula(sample, norm.running_mean, norm.running_var, 0.7, 0.4,
                            norm.weight, norm.bias)  # fmt: skip
    torch.testing.assert_close(norm(sample), expected)
    assert torch.equal(norm.running_mean, before) and int(norm.num_batches_tracked) == 1


def test_state_dict_carries_the_running_statistics():
    torch.manual_seed(2)
    norm = random_norm()
    for _ in range(3):
        norm(torch.randn(T, B, C, H, W, dtype=torch.float64))
    state = norm.state_dict()
    assert set(state) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    again = TDBatchNorm(C, alpha=0.7, threshold=0.4).double()
    again.load_state_dict(state)
    x = torch.randn(T, 2, C, H, W, dtype=torch.float64)
    torch.testing.assert_close(again.eval()(x), norm.eval()(x))


def test_tdbn_also_normalises_features_of_fc_layers():
    norm = TDBatchNorm(C)
    x = torch.randn(T, B, C) * 5 + 3
    out = norm(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.mean(dim=(0, 1)), torch.zeros(C), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs, words", [
    ({"alpha": 0.0}, "alpha must be a finite number > 0"),
    ({"threshold": -1.0}, "threshold must be a finite number > 0"),
    ({"momentum": 1.5}, "momentum must be a number in (0, 1]"),
])  # fmt: skip
def test_bad_tdbn_arguments_are_one_clear_error(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        TDBatchNorm(C, **kwargs)


def test_tdbn_refuses_an_input_without_its_channels_at_dim_2():
    with pytest.raises(ValueError, match=r"takes \[T, B, 5, \.\.\.\], got \[4, 5, 6, 7\]"):
        TDBatchNorm(C)(torch.zeros(B, C, H, W))


def spikes(*shape, rate=0.3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=generator) < rate).float()


def test_residual_block_downsamples_with_a_normalised_1x1_shortcut():
    block = ResidualBlock(4, 8, stride=2)
    out = block(spikes(T, B, 4, 8, 8))
    assert out.shape == (T, B, 8, 4, 4)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    _, conv, norm = block.shortcut
    x = spikes(T, B, 4, 8, 8, seed=1)
    strided = nn.functional.conv2d(x.flatten(0, 1), conv.module.weight, stride=2)
    torch.testing.assert_close(block.shortcut[:2](x), strided.unflatten(0, (T, B)))
    assert norm.alpha == block.norm2.alpha == RESIDUAL_ALPHA == 1 / math.sqrt(2)
    assert block.norm1.alpha == 1.0


def test_residual_block_passes_its_input_through_the_identity_shortcut():
    """With the residual branch silenced (tdBN_2's lambda = beta = 0), the last LIF sees the
    input spikes: 1 > V_th fires, and the reset leaves nothing for the next step."""
    block = ResidualBlock(4, 4)
    assert isinstance(block.shortcut, nn.Identity)
    with torch.no_grad():
        block.norm2.weight.zero_()
    x = spikes(T, B, 4, 6, 6, rate=0.5)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("size", [8, 14])  # 14: torch 2.13's strided 1x1 conv bug (see blocks)
def test_residual_block_trains_every_parameter_and_uses_the_lif_settings(size):
    block = ResidualBlock(3, 6, stride=2, threshold=0.3, decay=0.5)
    assert block.lif1.p.threshold == block.lif2.p.threshold == 0.3
    assert block.norm1.threshold == 0.3 and block.lif2.p.decay == 0.5
    out = block(spikes(4, 2, 3, size, size, rate=0.5))
    assert 0 < out.mean() < 1
    out.sum().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_residual_block_refuses_what_is_not_a_spike_sequence():
    with pytest.raises(ValueError, match=r"takes \[T, B, C, H, W\] spikes, got \[2, 4, 6, 6\]"):
        ResidualBlock(4, 4)(torch.zeros(2, 4, 6, 6))
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        ResidualBlock(4, 4, stride=0)
