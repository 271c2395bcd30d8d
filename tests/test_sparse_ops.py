"""stbp.sparse: the event-driven conv and linear synapses equal the dense fp32 ones (forward,
weight, input and bias gradients) on random shapes, densities, layouts and spike values; the
kernels are off with STBP_SPARSE=0 and a failed build warns once."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stbp import sparse
from stbp.sparse import ops

RTOL = 1e-5


@pytest.fixture(scope="module")
def kernels():
    if not sparse.available():
        pytest.skip("stbp.sparse kernels could not be built here")


def spikes(shape, density: float, pooled: bool, seed: int) -> torch.Tensor:
    """0/1 spikes at `density`, or (pooled) 2x2 average-pooled spikes: values in
    {0, 1/4, ..., 1}."""
    gen = torch.Generator().manual_seed(seed)
    if not pooled:
        return (torch.rand(shape, generator=gen) < density).float()
    n, c, h, w = shape
    fine = (torch.rand((n, c, 2 * h, 2 * w), generator=gen) < density).float()
    return F.avg_pool2d(fine, 2)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to `RTOL` relative to the largest entry of `expected` (sums in another order)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= RTOL * max(scale, 1e-30), (err, scale)


def run_both(sparse_fn, dense_fn, x, weight, bias):
    """Outputs and (input, weight, bias) gradients of both under the same output gradient."""
    results = []
    grad = None
    for fn in (sparse_fn, dense_fn):
        xs, ws = x.clone().requires_grad_(), weight.clone().requires_grad_()
        bs = bias.clone().requires_grad_() if bias is not None else None
        y = fn(xs, ws, bs)
        if grad is None:
            grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        y.backward(grad)
        results.append((y, xs.grad, ws.grad, bs.grad if bs is not None else None))
    return results


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    steps=st.integers(1, 2),
    cin=st.integers(1, 21),
    cout=st.sampled_from([1, 3, 8, 13, 17, 64, 70, 150]),
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    k=st.sampled_from([1, 3, 5]),
    density=st.sampled_from([0.0, 0.01, 0.05, 0.3, 0.7, 1.0]),
    pooled=st.booleans(),
    channels_last=st.booleans(),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv2d_equals_dense(
    kernels, batch, steps, cin, cout, size, k, density, pooled, channels_last, with_bias, seed
):
    x = spikes((steps * batch, cin, *size), density, pooled, seed)  # T folded into the batch
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed + 1)
    weight = torch.randn((cout, cin, k, k), generator=gen)
    bias = torch.randn(cout, generator=gen) if with_bias else None
    got, want = run_both(
        sparse.conv2d, lambda x, w, b: F.conv2d(x, w, b, padding=k // 2), x, weight, bias
    )
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    for actual, expected in zip(got, want, strict=True):
        if expected is not None:
            assert_close(actual, expected)


@settings(max_examples=20, deadline=None)
@given(
    lead=st.sampled_from([(1,), (5,), (2, 3)]),
    features=st.integers(1, 300),
    cout=st.sampled_from([1, 10, 13, 64, 100, 130]),
    density=st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0]),
    levels=st.sampled_from([1, 4, 9]),
    with_bias=st.booleans(),
    large=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_linear_equals_dense(
    kernels, lead, features, cout, density, levels, with_bias, large, seed
):
    with pytest.MonkeyPatch.context() as patch:
        if large:  # the weight gradient by blocks of output channels, as for a big FC layer
            patch.setattr(ops, "PRIVATE_ACCUMULATOR_BYTES", 0)
        check_linear(lead, features, cout, density, levels, with_bias, seed)


def check_linear(lead, features, cout, density, levels, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    active = torch.rand((*lead, features), generator=gen) < density
    values = torch.randint(1, levels + 1, active.shape, generator=gen) / levels
    x = active * values  # 0/1 spikes (levels=1) or pooled-spike values {1/levels, ..., 1}
    weight = torch.randn((cout, features), generator=gen)
    bias = torch.randn(cout, generator=gen) if with_bias else None
    got, want = run_both(sparse.linear, F.linear, x, weight, bias)
    for actual, expected in zip(got, want, strict=True):
        if expected is not None:
            assert_close(actual, expected)


def test_bf16_input_accumulates_in_fp32(kernels):
    """A bf16 input gives a bf16 output: the fp32 sum rounded once."""
    x = spikes((4, 24, 7, 7), 0.2, pooled=True, seed=3)
    weight = torch.randn(40, 24, 3, 3)
    y = sparse.conv2d(x.bfloat16(), weight)
    assert y.dtype == torch.bfloat16
    exact = F.conv2d(x, weight, padding=1)
    assert ((y.float() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()  # one rounding
    grad = torch.randn(y.shape).bfloat16()
    xs, ws = x.bfloat16().requires_grad_(), weight.clone().requires_grad_()
    sparse.conv2d(xs, ws).backward(grad)
    assert ws.grad.dtype == torch.float32 and xs.grad.dtype == torch.bfloat16
    expected = torch.nn.grad.conv2d_weight(x, weight.shape, grad.float(), padding=1)
    assert_close(ws.grad, expected)


def test_bad_shapes_raise_one_clear_error(kernels):
    with pytest.raises(ValueError, match="odd square kernel"):
        sparse.conv2d(torch.zeros(1, 2, 5, 5), torch.zeros(3, 2, 2, 2))
    with pytest.raises(ValueError, match="weight \\[Cout, F\\]"):
        sparse.linear(torch.zeros(4, 5), torch.zeros(3, 6))
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        sparse.linear(torch.zeros(4, 5, dtype=torch.float64), torch.zeros(3, 5))


def test_off_with_stbp_sparse_0_without_building(monkeypatch):
    monkeypatch.setenv("STBP_SPARSE", "0")
    monkeypatch.setitem(ops._STATE, "tried", False)
    monkeypatch.setitem(ops._STATE, "module", None)
    monkeypatch.setattr(ops, "_build", lambda: pytest.fail("built despite STBP_SPARSE=0"))
    assert sparse.available() is False
    with pytest.raises(sparse.SparseUnavailableError):
        sparse.linear(torch.zeros(2, 3), torch.zeros(4, 3))


def test_failed_build_warns_once_and_gives_false(monkeypatch):
    monkeypatch.delenv("STBP_SPARSE", raising=False)
    monkeypatch.setitem(ops._STATE, "tried", False)
    monkeypatch.setitem(ops._STATE, "module", None)
    calls = []

    def broken_build():
        calls.append(1)
        raise RuntimeError("line 1\nsynapse.cpp:1: error: no compiler here")

    monkeypatch.setattr(ops, "_build", broken_build)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sparse.available() is False
        assert sparse.available() is False
    assert len(caught) == 1 and len(calls) == 1
    assert "no compiler here" in str(caught[0].message)
    assert "dense" in str(caught[0].message)
