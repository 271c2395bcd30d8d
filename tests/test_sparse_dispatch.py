"""When `Temporal` runs a synapse event-driven (`stbp.sparse.dispatch`), and that it computes
the same as the dense path."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import stbp
from stbp.layers import Temporal
from stbp.sparse import dispatch


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test with its own crossover file and nothing remembered from another test (the
    kernels are loaded first, from the user's cache: a build takes minutes)."""
    stbp.sparse.available()
    monkeypatch.setenv("STBP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("STBP_SPARSE", raising=False)
    monkeypatch.delenv("STBP_SPARSE_CALIBRATE", raising=False)
    dispatch.forget()
    yield
    dispatch.forget()


class StandIn:
    """Dense stand-ins for `stbp.sparse`'s ops that count their calls (the decision logic is
    tested without the C++ kernels and without timing): fp32 compute, the output in the
    input's dtype, as the kernels."""

    def __init__(self):
        self.calls = {"conv2d": 0, "linear": 0}

    def available(self) -> bool:
        return True

    def conv2d(self, x, weight, bias=None):
        self.calls["conv2d"] += 1
        return F.conv2d(x.float(), weight, bias, padding=weight.shape[-1] // 2).to(x.dtype)

    def linear(self, x, weight, bias=None):
        self.calls["linear"] += 1
        return F.linear(x.float(), weight, bias).to(x.dtype)


@pytest.fixture
def stand_in(monkeypatch) -> StandIn:
    ops = StandIn()
    monkeypatch.setattr(dispatch, "ops", lambda: ops)
    return ops


def spikes(shape, density, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator) < density).float()


def conv_layer(c_in=4, c_out=6) -> Temporal:
    torch.manual_seed(0)
    return Temporal(nn.Conv2d(c_in, c_out, 3, padding=1), binary_input=True)


def key_of(layer: Temporal, x: torch.Tensor, autocast: bool = False) -> dispatch.LayerKey:
    return dispatch.layer_key(layer.module, x.flatten(0, 1), autocast)


# ---------------------------------------------------------------------- the decision alone


@pytest.mark.parametrize("crossover", [0.0, 0.03, 0.2, 0.5, 0.9, 1.0, 5.0])
def test_a_dense_input_always_takes_the_dense_path(crossover):
    assert dispatch.choose_path(1.0, crossover) == "dense"
    assert dispatch.choose_path(dispatch.MAX_CROSSOVER, crossover) == "dense"


def test_below_the_crossover_is_sparse_at_or_above_is_dense():
    assert dispatch.choose_path(0.049, 0.05) == "sparse"
    assert dispatch.choose_path(0.05, 0.05) == "dense"
    assert dispatch.choose_path(0.0, 0.0) == "dense"  # nothing wins: never sparse


def test_a_dense_input_decides_without_measuring(monkeypatch):
    def no_measuring(key):
        raise AssertionError("a dense input must not look up or measure a crossover")

    monkeypatch.setattr(dispatch, "crossover", no_measuring)
    key = dispatch.LayerKey("conv", (4, 6, 3, 8, 8), "fp32", 1)
    assert dispatch.decide(key, 1.0) == "dense"
    assert dispatch.decide(key, dispatch.MAX_CROSSOVER) == "dense"


def test_crossover_interpolates_between_the_last_win_and_the_first_loss():
    # sparse/dense 0.5 at 5% (wins), 1.3 at 10% (loses): crosses 0.9 at 7.5%
    assert dispatch._crossing({"0.05": 0.5, "0.1": 1.3}) == pytest.approx(0.075)
    assert dispatch._crossing({"0.01": 1.2}) == 0.0
    assert dispatch._crossing({"0.2": 0.3, "0.5": 0.6}) == dispatch.MAX_CROSSOVER


def test_default_crossover_before_any_measurement(stand_in, monkeypatch):
    monkeypatch.setenv("STBP_SPARSE_CALIBRATE", "0")
    key = dispatch.LayerKey("linear", (32, 16), "fp32", 1)
    assert dispatch.crossover(key) == dispatch.DEFAULT_CROSSOVER


def test_only_stride_1_same_padding_convs_and_linears_can_run_sparse():
    assert dispatch.sparse_kind(nn.Conv2d(2, 3, 3, padding=1)) == "conv"
    assert dispatch.sparse_kind(nn.Conv2d(2, 3, 5, padding=2)) == "conv"
    assert dispatch.sparse_kind(nn.Conv2d(2, 3, 3, padding=1, stride=2)) is None
    assert dispatch.sparse_kind(nn.Conv2d(2, 3, 3, padding=0)) is None
    assert dispatch.sparse_kind(nn.Conv2d(4, 4, 3, padding=1, groups=2)) is None
    assert dispatch.sparse_kind(nn.Conv2d(2, 3, 3, padding=2, dilation=2)) is None
    assert dispatch.sparse_kind(nn.Linear(5, 3)) == "linear"
    assert dispatch.sparse_kind(nn.Sequential(nn.Flatten(), nn.Linear(5, 3))) == "linear"
    assert dispatch.sparse_kind(nn.AvgPool2d(2)) is None


def test_layer_key_names_shape_precision_and_threads():
    layer = conv_layer()
    x = spikes((2, 3, 4, 9, 7), 0.1)
    key = key_of(layer, x)
    assert key == dispatch.LayerKey("conv", (4, 6, 3, 9, 7), "fp32", torch.get_num_threads())
    assert key_of(layer, x, autocast=True).dtype == "bf16"
    assert key_of(layer, x.double()) is None  # the kernels are fp32


def test_density_is_measured_on_a_sample_of_rows():
    x = spikes((200, 16, 10, 10), 0.05)
    assert dispatch.measure_density(x) == pytest.approx(0.05, abs=0.01)
    assert dispatch.measure_density(torch.ones(3, 4)) == 1.0
    assert dispatch.measure_density(torch.zeros(40, 4)) == 0.0


# ---------------------------------------------------------------------- Temporal


def test_temporal_runs_sparse_below_the_crossover_and_records_it(stand_in):
    layer, x = conv_layer(), spikes((3, 2, 4, 8, 8), 0.05)
    dispatch.set_crossover(key_of(layer, x), 0.2)
    y = layer(x)
    assert layer.last_path == "sparse" and stand_in.calls["conv2d"] == 1
    assert layer.last_input_density == pytest.approx(float((x != 0).float().mean()))
    expected = F.conv2d(x.flatten(0, 1), layer.module.weight, layer.module.bias, padding=1)
    torch.testing.assert_close(y, expected.unflatten(0, (3, 2)))
    assert y.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


def test_temporal_runs_dense_on_a_dense_input_whatever_the_crossover(stand_in):
    layer, x = conv_layer(), torch.ones(3, 2, 4, 8, 8)
    dispatch.set_crossover(key_of(layer, x), 1.0)
    layer(x)
    assert layer.last_path == "dense" and layer.last_input_density == 1.0
    assert stand_in.calls["conv2d"] == 0


def test_temporal_flatten_linear_runs_sparse(stand_in):
    torch.manual_seed(0)
    layer = Temporal(nn.Sequential(nn.Flatten(), nn.Linear(4 * 5 * 5, 7)), spike_input=True)
    x = spikes((2, 3, 4, 5, 5), 0.05) * 0.25  # average-pooled spikes
    dispatch.set_crossover(key_of(layer, x), 0.3)
    y = layer(x)
    assert layer.last_path == "sparse" and stand_in.calls["linear"] == 1
    torch.testing.assert_close(y, layer.module(x.flatten(0, 1)).unflatten(0, (2, 3)))


def test_stbp_sparse_0_restores_todays_path(stand_in, monkeypatch):
    monkeypatch.setenv("STBP_SPARSE", "0")
    layer, x = conv_layer(), spikes((3, 2, 4, 8, 8), 0.01)
    dispatch.set_crossover(key_of(layer, x), 0.5)
    y = layer(x)
    assert stand_in.calls["conv2d"] == 0
    assert layer.last_path == "dense" and layer.last_input_density is None
    today = layer._spike_input_synapse(
        x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    )
    assert torch.equal(y, today.unflatten(0, (3, 2)))


def test_unavailable_kernels_restore_todays_path(monkeypatch):
    unavailable = SimpleNamespace(available=lambda: False)  # not built: no compiler, say
    monkeypatch.setattr(dispatch, "ops", lambda: unavailable)
    layer = conv_layer()
    layer(spikes((3, 2, 4, 8, 8), 0.01))
    assert layer.last_path == "dense" and layer.last_input_density is None


def test_layers_without_spike_input_are_never_measured(stand_in):
    analog = Temporal(nn.Conv2d(4, 6, 3, padding=1))  # after NeuNorm, say
    pool = Temporal(nn.AvgPool2d(2), spike_input=True)
    x = spikes((3, 2, 4, 8, 8), 0.01)
    analog(x), pool(x)
    assert (analog.last_path, analog.last_input_density) == ("dense", None)
    assert (pool.last_path, pool.last_input_density, pool.spike_input) == (None, None, False)


def test_under_bf16_autocast_the_sparse_path_answers_in_bf16(stand_in):
    layer, x = conv_layer(), spikes((3, 2, 4, 8, 8), 0.05)
    dispatch.set_crossover(key_of(layer, x, autocast=True), 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert layer.last_path == "sparse" and y.dtype == torch.bfloat16


# ---------------------------------------------------------------------- the stored crossover


def test_calibration_is_stored_reused_and_reset(stand_in, monkeypatch, tmp_path):
    key = dispatch.LayerKey("linear", (64, 8), "fp32", 1)
    value = dispatch.crossover(key)
    stored = json.loads((tmp_path / dispatch.FILE_NAME).read_text())
    assert stored["fingerprint"] == dispatch.fingerprint()
    assert stored["crossovers"][key.text]["crossover"] == value
    assert 0 <= value <= dispatch.MAX_CROSSOVER

    dispatch.forget()
    monkeypatch.setattr(dispatch, "calibrate", lambda key: pytest.fail("measured again"))
    assert dispatch.crossover(key) == value  # read back from the file
    assert key.text in dispatch.show()
    assert dispatch.reset() and not (tmp_path / dispatch.FILE_NAME).exists()


def test_another_torch_version_discards_the_stored_crossovers(stand_in, monkeypatch):
    key = dispatch.LayerKey("linear", (64, 8), "fp32", 1)
    dispatch.crossover(key)
    assert key.text in dispatch.load()
    real = dispatch.fingerprint()
    monkeypatch.setattr(dispatch, "fingerprint", lambda: {**real, "torch": "0.0"})
    assert dispatch.load() == {}


def test_calibration_leaves_the_random_stream_alone(stand_in):
    torch.manual_seed(3)
    before = torch.rand(3)
    torch.manual_seed(3)
    dispatch.crossover(dispatch.LayerKey("linear", (32, 8), "fp32", 1))
    assert torch.equal(torch.rand(3), before)


def test_calibration_runs_inside_no_grad_and_autocast(stand_in):
    key = dispatch.LayerKey("conv", (3, 4, 3, 6, 6), "bf16", 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        entry = dispatch.calibrate(key, repeats=1)
    assert entry["sparse_over_dense"] and entry["dense_ms"] > 0


# ---------------------------------------------------------------------- with the real kernels


def _real_kernels() -> bool:
    return dispatch.ops().available()


needs_kernels = pytest.mark.skipif(
    not _real_kernels(), reason="stbp.sparse kernels not built here (stbp.sparse.available())"
)


def _forward_backward(model, x, labels):
    model.zero_grad(set_to_none=True)
    scores = model(x)
    F.mse_loss(scores, F.one_hot(labels, 10).float()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return scores.detach(), grads


@needs_kernels
def test_paper_network_sparse_equals_dense(monkeypatch):
    torch.manual_seed(0)
    model = stbp.build("8C3(Enc)-16C3-AP2-16C3-32FC-Voting", (2, 12, 12), T=4)
    x = spikes((4, 3, 2, 12, 12), 0.3)
    stbp.calibrate_(model, x, rate=0.05)
    labels = torch.tensor([1, 4, 7])
    synapses = [m for m in model.layers[1:] if isinstance(m, Temporal) and m.synapse_kind]
    for m in synapses:
        m.spike_input = True  # also the average-pooled inputs
    monkeypatch.setattr(dispatch, "crossover", lambda key: 0.45)
    sparse_scores, sparse_grads = _forward_backward(model, x, labels)
    assert [m.last_path for m in synapses] == ["sparse"] * len(synapses)
    assert all(0 < m.last_input_density < 0.45 for m in synapses)
    monkeypatch.setenv("STBP_SPARSE", "0")
    dense_scores, dense_grads = _forward_backward(model, x, labels)
    assert [m.last_path for m in synapses] == ["dense"] * len(synapses)
    torch.testing.assert_close(sparse_scores, dense_scores, rtol=1e-5, atol=1e-5)
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)
