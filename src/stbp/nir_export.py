"""Export to and import from NIR, the Neuromorphic Intermediate Representation.

NIR describes neurons in continuous time. Our LIF (Algorithm 1) is discrete,
`u[t] = decay * u[t-1] * (1 - o[t-1]) + x[t]`, so the mapping needs a time step `dt`, the
duration of one of our time steps (default 1 ms, stored in the graph's metadata). Forward-Euler
steps of NIR's LIF, `tau dv/dt = (v_leak - v) + r I`, are

    v[t] = (1 - dt/tau) v[t-1] + (dt/tau) v_leak + (dt/tau) r I[t]

which is Algorithm 1 exactly when

    tau = dt / (1 - decay),   r = tau / dt = 1 / (1 - decay),   v_leak = 0,
    v_threshold = threshold,  v_reset = 0        (fire when v > v_threshold; hard reset)

and import inverts it with `decay = 1 - dt / tau`. `decay = 1` (no leak) exports as NIR's `IF`
with `r = 1 / dt`. Conv layers map to `Conv2d`, average pooling to `AvgPool2d`, FC layers to
`Flatten` + `Affine`, and the voting layer to a `Linear` node holding the voting matrix M
(1/votes per class group): the class score is that node's output averaged over the T steps.
Dropout (`SeqDropout`, `StepDropout`: the `DO` token) is the identity at inference and is
left out; import builds no dropout. NeuNorm, max pooling and a spike encoder
(`build(..., encoding="bernoulli" | "latency")`) have no NIR equivalent and raise an error
naming the layer.

Neuron variants: NIR's nodes hold one value per neuron, so a learnt decay or threshold (per
layer or per channel) exports as its value at export time, `tau = dt / (1 - decay)` neuron
by neuron; import gives a fixed `stbp.LIF` with one value per layer, or per channel when the
values vary along the channels only. `detach_reset` changes only gradients: it exports as the
hard reset. The soft reset (`u -= threshold`) has no NIR equivalent (NIR resets to `v_reset`):
an error names the layer.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from stbp.layers import Encoding, SeqDropout, Temporal, Voting
from stbp.models import SNN
from stbp.neuron import LIF
from stbp.stats import friendly, load_run

if TYPE_CHECKING:
    import nir

DEFAULT_DT = 1e-3


def _nir():
    try:
        import nir
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "NIR export needs the 'nir' package: pip install 'stbp[nir]' (or pip install nir)"
        ) from err
    return nir


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


# ---------------------------------------------------------------------------------- export


def export_nir(model: SNN, path: str | Path | None = None, dt: float = DEFAULT_DT) -> nir.NIRGraph:
    """Write `model` to `path` as a NIR graph (HDF5) and return the `nir.NIRGraph`.

    `dt` is the duration of one time step (seconds) used to map the LIF decay to NIR's time
    constant (see the module docstring). Raises `ValueError` naming any layer without a NIR
    equivalent.
    """
    if dt <= 0:
        raise ValueError(f"dt must be positive, got {dt}")
    nir = _nir()
    shape = tuple(model.in_shape)
    nodes: dict = OrderedDict(input=nir.Input(input_type=np.array(shape)))
    for name, module in model.layers.named_children():
        new_nodes, shape = _export_layer(nir, name, module, shape, dt)
        nodes.update(new_nodes)
    nodes["output"] = nir.Output(output_type=np.array(shape))
    names = list(nodes)
    edges = list(zip(names[:-1], names[1:], strict=True))
    metadata = {"source": "stbp", "dt": float(dt), "T": int(model.T)}
    graph = nir.NIRGraph(nodes=dict(nodes), edges=edges, metadata=metadata)
    if path is not None:
        nir.write(str(path), graph)
    return graph


def _unsupported(name: str, module: nn.Module) -> ValueError:
    inner = module.module if isinstance(module, Temporal) else module
    return ValueError(
        f"layer {name!r} ({type(inner).__name__}) has no NIR equivalent; "
        "NIR export supports Conv2d, AvgPool2d, Linear, LIF and Voting layers"
    )


def _export_layer(nir, name: str, module: nn.Module, shape: tuple, dt: float):
    """NIR nodes `{name: node}` for one stbp layer, and the shape it outputs."""
    if isinstance(module, (SeqDropout, nn.Dropout)):  # the identity at inference
        return {}, shape
    if isinstance(module, LIF):
        return {name: _export_lif(nir, name, module, shape, dt)}, shape
    if isinstance(module, Voting):
        return {name: nir.Linear(weight=_voting_matrix(module))}, (module.num_classes,)
    inner = module.module if isinstance(module, Temporal) else None
    if isinstance(inner, nn.Conv2d):
        return _export_conv(nir, name, inner, shape)
    if isinstance(inner, nn.AvgPool2d):
        return _export_avgpool(nir, name, inner, shape)
    if isinstance(inner, (nn.Linear, nn.Sequential)):
        return _export_fc(nir, name, inner, shape, module)
    raise _unsupported(name, module)


def _export_lif(nir, name: str, module: LIF, shape: tuple, dt: float):
    """NIR's LIF (or IF) node of one LIF layer, with one value per neuron: a learnt decay or
    threshold (per layer or per channel) exports as it is at export time."""
    p = module.p
    if p.reset != "hard":
        raise ValueError(
            f"layer {name!r}: reset = {p.reset!r} (subtract the threshold) has no NIR "
            "equivalent (NIR's LIF and IF reset to v_reset); only reset = 'hard' exports"
        )
    decay, threshold = _per_neuron(p.decay, shape), _per_neuron(p.threshold, shape)
    if not np.all((decay >= 0.0) & (decay <= 1.0)):
        raise ValueError(f"layer {name!r}: LIF decay outside [0, 1] has no NIR equivalent")
    if np.all(decay == 1.0):
        return nir.IF(r=np.full(shape, 1.0 / dt), v_threshold=threshold, v_reset=0 * threshold)
    if np.any(decay == 1.0):
        raise ValueError(f"layer {name!r}: decay 1 (IF) beside decays < 1 cannot be exported")
    tau = dt / (1.0 - decay)
    return nir.LIF(tau=tau, r=tau / dt, v_leak=0 * tau, v_threshold=threshold, v_reset=0 * tau)


def _per_neuron(value, shape: tuple) -> np.ndarray:
    """A LIF constant (a number, a 0-dim tensor or one value per channel: dim 0 of `shape`)
    as a float64 array of `shape`, one value per neuron."""
    values = np.asarray(_array(value) if torch.is_tensor(value) else value, dtype=np.float64)
    if values.ndim == 1:
        values = values.reshape(-1, *([1] * (len(shape) - 1)))
    return np.broadcast_to(values, shape).copy()


def _export_conv(nir, name: str, conv: nn.Conv2d, shape: tuple):
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"layer {name!r}: only zero padding given as numbers can be exported")
    bias = _array(conv.bias) if conv.bias is not None else np.zeros(conv.out_channels)
    node = nir.Conv2d(
        input_shape=tuple(shape[1:]),
        weight=_array(conv.weight),
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=bias,
    )
    return {name: node}, tuple(int(s) for s in node.output_type["output"])


def _pair(v) -> np.ndarray:
    return np.array(v if isinstance(v, (tuple, list)) else (v, v))


def _export_avgpool(nir, name: str, pool: nn.AvgPool2d, shape: tuple):
    if pool.ceil_mode or pool.divisor_override is not None:
        raise ValueError(
            f"layer {name!r}: AvgPool2d with ceil_mode/divisor_override has no NIR equivalent"
        )
    k, s, p = _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)
    if p.any() and not pool.count_include_pad:
        raise ValueError(f"layer {name!r}: padded AvgPool2d must count the padding for NIR")
    out_hw = [(shape[i + 1] + 2 * p[i] - k[i]) // s[i] + 1 for i in range(2)]
    node = nir.AvgPool2d(kernel_size=k, stride=s, padding=p)
    return {name: node}, (shape[0], *out_hw)


def _export_fc(nir, name: str, inner: nn.Module, shape: tuple, module: nn.Module):
    parts = list(inner) if isinstance(inner, nn.Sequential) else [inner]
    nodes = {}
    if len(parts) == 2 and isinstance(parts[0], nn.Flatten):
        nodes[f"flatten_{name}"] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0)
        shape, parts = (int(np.prod(shape)),), parts[1:]
    if len(parts) != 1 or not isinstance(parts[0], nn.Linear):
        raise _unsupported(name, module)
    linear = parts[0]
    bias = _array(linear.bias) if linear.bias is not None else np.zeros(linear.out_features)
    nodes[name] = nir.Affine(weight=_array(linear.weight), bias=bias)
    return nodes, (linear.out_features,)


def _voting_matrix(vote: Voting) -> np.ndarray:
    """The paper's voting matrix M `[num_classes, num_classes * votes]`: 1/votes per group."""
    eye = np.eye(vote.num_classes)
    return np.repeat(eye, vote.votes, axis=1) / vote.votes


# ---------------------------------------------------------------------------------- import


def import_nir(
    source: str | Path | nir.NIRGraph, dt: float | None = None, T: int | None = None
) -> SNN:
    """Build a runnable `stbp.SNN` from a NIR graph (a file path or a `nir.NIRGraph`).

    The graph must be a chain Input -> ... -> Output of the nodes `export_nir` writes. `dt`
    and `T` default to the graph's metadata (else 1 ms and 8 steps). LIF nodes must map to
    Algorithm 1 exactly (`v_leak = v_reset = 0`, `r = tau/dt`, one value per layer or channel).
    """
    nir = _nir()
    graph = nir.read(str(source)) if isinstance(source, (str, Path)) else source
    meta = getattr(graph, "metadata", None) or {}
    dt = float(dt if dt is not None else meta.get("dt", DEFAULT_DT))
    T = int(T if T is not None else meta.get("T", 8))
    chain = _chain(graph)
    in_shape = tuple(int(s) for s in graph.nodes[chain[0]].input_type["input"])
    modules: dict[str, nn.Module] = OrderedDict()
    pending_flatten = False
    for name in chain[1:-1]:
        node = graph.nodes[name]
        if isinstance(node, nir.Flatten):
            pending_flatten = True
            continue
        module = _import_node(
            nir,
            name,
            node,
            dt,
            first=not modules,
            flatten=pending_flatten,
            T=T,
            in_dims=len(in_shape),
        )
        pending_flatten = False
        modules[name] = module
    vote = list(modules.values())[-1] if modules else None
    if not isinstance(vote, Voting):
        raise ValueError(
            "the graph must end with the voting matrix (a Linear node) to be "
            "imported as an stbp SNN"
        )
    return SNN(nn.Sequential(modules), "", in_shape, T, vote.num_classes)


def _chain(graph) -> list[str]:
    """Node names of a linear graph from its Input to its Output."""
    nexts: dict[str, str] = {}
    for src, dst in graph.edges:
        if src in nexts:
            raise ValueError(f"node {src!r} has two successors; only chains can be imported")
        nexts[src] = dst
    inputs = [k for k, n in graph.nodes.items() if type(n).__name__ == "Input"]
    if len(inputs) != 1:
        raise ValueError(f"expected one Input node, found {len(inputs)}")
    chain = [inputs[0]]
    while chain[-1] in nexts and len(chain) <= len(graph.nodes):
        chain.append(nexts[chain[-1]])
    if type(graph.nodes[chain[-1]]).__name__ != "Output" or len(chain) != len(graph.nodes):
        raise ValueError("the graph is not a single chain from Input to Output")
    return chain


def _import_node(
    nir, name: str, node, dt: float, first: bool, flatten: bool, T: int, in_dims: int
) -> nn.Module:
    if isinstance(node, (nir.LIF, nir.IF)):
        return _import_lif(name, node, dt)
    if isinstance(node, nir.Conv2d):
        synapse = _import_conv(node)
    elif isinstance(node, nir.AvgPool2d):
        synapse = nn.AvgPool2d(_ints(node.kernel_size), _ints(node.stride), _ints(node.padding))
    elif isinstance(node, nir.Affine):
        synapse = _import_affine(node)
        synapse = nn.Sequential(nn.Flatten(), synapse) if flatten else synapse
    elif isinstance(node, nir.Linear):
        return _import_voting(name, node)
    else:
        raise ValueError(f"NIR node {name!r} ({type(node).__name__}) has no stbp equivalent")
    return Encoding(synapse, T, in_dims) if first else Temporal(synapse)


def _uniform(name: str, field: str, values) -> float:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 or not np.all(arr == arr.flat[0]):
        raise ValueError(
            f"NIR node {name!r}: {field} differs between neurons; stbp's LIF "
            "takes one value per layer"
        )
    return float(arr.flat[0])


def _per_channel(name: str, field: str, values) -> np.ndarray:
    """One value per layer (a 0-dim array) or per channel (`[C]`: the values vary along the
    first axis only, as a per-channel learnt decay or threshold exports); else `ValueError`."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"NIR node {name!r}: {field} is empty")
    if np.all(arr == arr.flat[0]):
        return np.asarray(arr.flat[0])
    channels = arr.reshape(arr.shape[0], -1)
    if arr.ndim == 0 or not np.all(channels == channels[:, :1]):
        raise ValueError(
            f"NIR node {name!r}: {field} differs between neurons of a channel; stbp's LIF "
            "takes one value per layer or per channel"
        )
    return channels[:, 0]


def _lif_value(values: np.ndarray) -> float | torch.Tensor:
    """A LIF constant for `stbp.LIF`: a number, or a float32 tensor of one per channel."""
    if values.ndim == 0:
        return float(values)
    return torch.as_tensor(values, dtype=torch.float32)


def _import_lif(name: str, node, dt: float) -> LIF:
    """`stbp.LIF` of a NIR LIF/IF node: fixed constants, one per layer or per channel."""
    threshold = _per_channel(name, "v_threshold", node.v_threshold)
    if not np.all(threshold > 0):
        raise ValueError(f"NIR node {name!r}: v_threshold = {threshold}; it must be above 0")
    if np.any(np.asarray(node.v_reset) != 0.0):
        raise ValueError(f"NIR node {name!r}: v_reset must be 0 (Algorithm 1 resets to 0)")
    if type(node).__name__ == "IF":
        r = _uniform(name, "r", node.r)
        _check_close(name, "r * dt", r * dt, 1.0)
        return LIF(1.0, _lif_value(threshold))
    tau = np.asarray(node.tau, dtype=np.float64)
    if np.any(np.asarray(node.v_leak) != 0.0):
        raise ValueError(f"NIR node {name!r}: v_leak must be 0 to map to Algorithm 1")
    _check_close(name, "r * dt / tau", np.asarray(node.r, dtype=np.float64) * dt / tau, 1.0)
    # drop the round-off of tau = dt / (1 - decay)
    decay = _per_channel(name, "tau", np.vectorize(lambda v: float(f"{v:.15g}"))(1.0 - dt / tau))
    if not np.all((decay >= 0.0) & (decay < 1.0)):
        raise ValueError(
            f"NIR node {name!r}: tau = {tau.min():g}..{tau.max():g} with dt = {dt} gives "
            f"decays outside [0, 1); pass the dt the graph was made for"
        )
    return LIF(_lif_value(decay), _lif_value(threshold))


def _check_close(name: str, what: str, value, expected: float) -> None:
    values = np.asarray(value, dtype=np.float64)
    if not np.all(np.isclose(values, expected, rtol=1e-9, atol=0.0)):
        value = values.flat[np.argmax(~np.isclose(values, expected, rtol=1e-9, atol=0.0))]
        raise ValueError(
            f"NIR node {name!r}: {what} = {value:.6g}, but Algorithm 1 needs "
            f"{expected} (input gain 1 per step); check dt"
        )


def _ints(v) -> tuple[int, int]:
    return tuple(int(x) for x in np.broadcast_to(np.asarray(v), 2))


def _import_conv(node) -> nn.Conv2d:
    weight = torch.as_tensor(np.asarray(node.weight, dtype=np.float32))
    padding = node.padding if isinstance(node.padding, str) else _ints(node.padding)
    conv = nn.Conv2d(
        weight.shape[1] * int(node.groups),
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=_ints(node.stride),
        padding=padding,
        dilation=_ints(node.dilation),
        groups=int(node.groups),
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(torch.as_tensor(np.asarray(node.bias, dtype=np.float32)))
    return conv


def _import_affine(node) -> nn.Linear:
    weight = torch.as_tensor(np.asarray(node.weight, dtype=np.float32))
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(torch.as_tensor(np.asarray(node.bias, dtype=np.float32)))
    return linear


def _import_voting(name: str, node) -> Voting:
    weight = np.asarray(node.weight, dtype=np.float64)
    classes, units = weight.shape
    if units % classes == 0:
        vote = Voting(classes, units // classes)
        if np.array_equal(weight, _voting_matrix(vote)):
            return vote
    raise ValueError(
        f"NIR node {name!r}: a Linear node is imported only as the voting "
        "matrix (1/votes for each class's group of neurons)"
    )


# ---------------------------------------------------------------------------------- CLI


def register(subparsers) -> None:
    """Add `stbp export-nir` to the CLI."""
    p = subparsers.add_parser(
        "export-nir", help="export a checkpoint to NIR (HDF5)", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    p.add_argument("--out", required=True, help="output file, e.g. model.nir")
    p.add_argument(
        "--dt",
        type=float,
        default=DEFAULT_DT,
        help=f"seconds per time step for the LIF mapping (default {DEFAULT_DT})",
    )
    p.set_defaults(func=friendly(_cli))


def _cli(args: argparse.Namespace) -> int:
    model, _ = load_run(args.checkpoint)
    graph = export_nir(model, args.out, dt=args.dt)
    print(f"wrote {args.out}: {len(graph.nodes)} NIR nodes, dt = {args.dt} s per step")
    return 0
