"""Your own network: `[model] factory = "package.module:function"` (or `stbp train --model`).

The function is imported as Python would from the folder stbp runs in (that folder is put
first on `sys.path`, as `python -m` does) or from any installed package, and called as

    function(T=T, in_shape=(C, H, W), **factory_kwargs)

with `T` the time window (`[data] T`), `in_shape` the shape of one input frame or image as the
data set gives it, and the keyword arguments of `[model] factory_kwargs` (where the number of
classes goes, if the function takes one: stbp does not pass it). It returns an `nn.Module`
that maps a batch to class scores `[B, num_classes]`: event frames arrive time-first
`[T, B, C, H, W]`, static images as `[B, C, H, W]` (with `[data] encoding` other than
"analog", an encoder in front of the network turns them into `[T, B, C, H, W]` spikes).

The network carries `factory_args` (the function's name, its keyword arguments, `T`,
`in_shape`, the encoding and the number of scores it gives), which checkpoints store instead
of `build_args`, so `stbp eval`, `load_model` and `--resume` build the same network again.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from stbp.config import ConfigError, ModelSettings

FORMAT = "package.module:function"
SETTING = "[model] factory"
PASSED = ("T", "in_shape")  # what stbp passes itself; factory_kwargs may not set them
_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
DUMMY_BATCH = 2


class FactoryError(ConfigError):
    """A model factory cannot be imported or called, or its network does not fit."""


def make_model(
    model: ModelSettings, T: int, in_shape: tuple[int, ...], encoding: str = "analog"
) -> nn.Module:
    """The network of `[model] factory` called with `T`, `in_shape` and `[model]
    factory_kwargs` (see the module docstring); `FactoryError` (a `ConfigError`) naming the
    setting if it cannot be imported or called, or its module does not give class scores."""
    return build(model.factory, dict(model.factory_kwargs), T, in_shape, encoding)


def build(
    factory: str,
    kwargs: dict,
    T: int,
    in_shape: tuple[int, ...],
    encoding: str = "analog",
) -> nn.Module:
    """`import_factory(factory)(T=T, in_shape=in_shape, **kwargs)`, checked on a dummy batch,
    behind the encoder of `encoding` if that is not "analog"; with `factory_args` set."""
    function = import_factory(factory)
    clash = sorted(set(kwargs) & set(PASSED))
    if clash:
        raise FactoryError(
            f"[model] factory_kwargs may not set {', '.join(clash)}: stbp passes T ([data] T) "
            "and in_shape (the data's shape) itself"
        )
    in_shape = tuple(int(s) for s in in_shape)
    extra = "".join(f", {key}={value!r}" for key, value in kwargs.items())
    call = f"{factory}(T={T}, in_shape={in_shape}{extra})"
    try:
        network = function(T=T, in_shape=in_shape, **kwargs)
    except Exception as err:  # the user's code: any error is theirs to read, in one line
        raise FactoryError(f"{SETTING}: {call} failed: {_one_line(err)}") from None
    if not isinstance(network, nn.Module):
        raise FactoryError(
            f"{SETTING}: {call} returned a {type(network).__module__}.{type(network).__qualname__}"
            ", not a torch.nn.Module"
        )
    network = _with_encoder(network, encoding, T, len(in_shape))
    outputs = _check_outputs(network, call, T, in_shape, kwargs.get("num_classes"))
    network.factory_args = {"factory": factory, "kwargs": kwargs, "T": int(T),
                            "in_shape": list(in_shape), "encoding": encoding,
                            "outputs": outputs}  # fmt: skip
    return network


def import_factory(factory: str, setting: str = SETTING) -> Callable:
    """The function named by `"package.module:function"` (a dotted path after the colon
    reaches into classes: `"pkg.nets:Builders.resnet"`); errors name `setting` (`[model]
    factory`, `[data] factory`). The current folder is put first on `sys.path` (once), so a
    module beside the config imports as with `python -m`."""
    named = f"{setting} = {factory!r}"
    if not isinstance(factory, str) or factory.count(":") != 1:
        raise FactoryError(f"{named} is not of the form {FORMAT!r}")
    module_name, attribute = factory.split(":")
    if not _NAME.fullmatch(module_name) or not _NAME.fullmatch(attribute):
        raise FactoryError(f"{named} is not of the form {FORMAT!r} (dotted Python names)")
    _current_folder_on_path()
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ModuleNotFoundError, or any error the module raises on import
        raise FactoryError(
            f"{named}: module {module_name!r} cannot be imported ({_one_line(err)}); it is "
            f"looked up in the current folder {os.getcwd()} and the installed packages"
        ) from None
    found = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise FactoryError(
                f"{named}: module {module_name!r} ({_origin(module)}) has no {attribute!r}"
            )
    if not callable(found):
        raise FactoryError(f"{named}: {attribute!r} is not a function")
    return found


def factory_args(model: nn.Module) -> dict | None:
    """What `build` recorded on a factory network (`None` for any other module)."""
    record = getattr(model, "factory_args", None)
    return record if isinstance(record, dict) else None


def rebuild(record: dict) -> nn.Module:
    """The network of a stored `factory_args` record, built again (fresh weights)."""
    return build(record["factory"], dict(record["kwargs"]), record["T"],
                 tuple(record["in_shape"]), record.get("encoding", "analog"))  # fmt: skip


class Encoded(nn.Module):
    """An encoder (`stbp.encoders.make`) in front of a factory network: a static batch
    `[B, *in_shape]` becomes `[T, B, *in_shape]` spikes; sequences pass through unchanged."""

    def __init__(self, encode: nn.Module, network: nn.Module, in_dims: int):
        super().__init__()
        self.encode, self.network, self.in_dims = encode, network, in_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self.in_dims + 1:
            x = self.encode(x)
        return self.network(x)


def _with_encoder(network: nn.Module, encoding: str, T: int, in_dims: int) -> nn.Module:
    if encoding == "analog":
        return network
    from stbp import encoders

    return Encoded(encoders.make(encoding, T), network, in_dims)


@torch.no_grad()
def _check_outputs(
    network: nn.Module, call: str, T: int, in_shape: tuple[int, ...], num_classes=None
) -> int:
    """The number of class scores the network gives on a zero batch, static `[2, *in_shape]`
    or (if that fails) time-first `[T, 2, *in_shape]`; `FactoryError` if neither gives
    `[2, K]` (with K = `num_classes` when the factory takes one). Run in eval mode, with the
    random generators left as they were, so the check changes nothing of the run."""
    forms = OrderedDict(static=(DUMMY_BATCH, *in_shape), frames=(T, DUMMY_BATCH, *in_shape))
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    was_training = network.training
    network.eval()
    found = {}
    try:
        with torch.random.fork_rng(devices=[]):
            for form, shape in forms.items():
                try:
                    found[form] = network(torch.zeros(shape, device=device))
                except Exception as err:
                    found[form] = err
                    continue
                if _scores(found[form], num_classes):
                    return int(found[form].shape[1])
    finally:
        network.train(was_training)
    wanted = f"[{DUMMY_BATCH}, {num_classes if isinstance(num_classes, int) else 'num_classes'}]"
    seen = "; ".join(f"{form} input {list(forms[form])} gave {_describe(out)}"
                     for form, out in found.items())  # fmt: skip
    raise FactoryError(
        f"{SETTING}: the module of {call} does not map a batch to class scores {wanted}: {seen}"
    )


def _scores(out, num_classes) -> bool:
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != DUMMY_BATCH:
        return False
    return not isinstance(num_classes, int) or out.shape[1] == num_classes


def _describe(out) -> str:
    if isinstance(out, torch.Tensor):
        return f"shape {list(out.shape)}"
    if isinstance(out, Exception):
        return _one_line(out)
    return f"a {type(out).__name__}"


def _current_folder_on_path() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _origin(module) -> str:
    return getattr(module, "__file__", None) or "a namespace package"


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
