"""The GPU check: what stbp's CUDA path must do, in one run of a few minutes (issue 16).

No line of stbp's CUDA path had run when this was written: the test suite pins the CPU and the
eager kernels, and CI is CPU-only. Run this the day a GPU is there, and with `--device cpu`
as a dry run anywhere:

    python benchmarks/gpu_check.py                    # CUDA if present (else the CPU);
                                                      # sized for < 5 minutes on one GPU
    python benchmarks/gpu_check.py --device cpu       # dry run: small sizes (--quick)
    python benchmarks/gpu_check.py --only kernels,syncs [--quick] [--peers]

The checks (each its own function; a failure does not stop the others):

    kernels          fused LIF and NeuNorm against the per-step references (float64, fp32,
                     bf16), compiled against eager; no eager fallback, no recompile limit hit
    synapses         spike-input synapses (Temporal with binary_input) against nn.Conv2d and
                     nn.Linear, with TF32 off and under bf16 autocast
    paper-networks   one training step of every stbp.PAPER_NETWORKS in fp32 and bf16: finite
                     loss and gradients, time and peak memory (CUDA: max_memory_allocated; CPU:
                     the process's peak RSS during the step)
    syncs            host-device syncs in 20 demo training steps (CUDA only; n/a on the CPU)
    rng-restore      a checkpoint whose RNG states list more CUDA devices than are visible
    demo-resume      `stbp train --config demo` for one short epoch, then `--resume` to epoch 2
    torchrun         the same one-epoch run as one process under torchrun
    speed            benchmarks/step_time.py at T = 10, batch 64: the per-step loop against stbp
                     in fp32 and bf16 (the peers too with --peers)

Prints each check's table as it finishes, then one table of all checks and the line
`gpu_check: N passed, M failed`; exits 0 when none failed. Writes everything to
`--out`/gpu_check.json (default benchmarks/results/gpu_check/).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: the full check on a GPU, or the small dry run (`--quick`)."""

    T: int  # kernels and synapses
    batch: int
    channels: int
    side: int
    features: int  # the linear synapse's input features
    net_T: int  # paper networks
    net_batch: int
    net_steps: int  # the last one is timed
    demo_steps: int  # steps of each demo run (max_steps_per_epoch)
    speed_batch: int  # step_time.py
    speed_warmup: int
    speed_steps: int
    surrogates: tuple[str, ...]


FULL = Sizes(T=10, batch=64, channels=128, side=16, features=2048, net_T=10, net_batch=32,
             net_steps=2, demo_steps=20, speed_batch=64, speed_warmup=2, speed_steps=5,
             surrogates=("rect", "sigmoid"))  # fmt: skip
QUICK = Sizes(T=4, batch=2, channels=8, side=6, features=64, net_T=2, net_batch=1,
              net_steps=1, demo_steps=3, speed_batch=2, speed_warmup=0, speed_steps=2,
              surrogates=("rect",))  # fmt: skip


@dataclass
class Env:
    """What every check gets: the device, the sizes, where to write, the options."""

    device: torch.device
    sizes: Sizes
    out: Path
    quick: bool
    peers: bool = False


@dataclass
class Outcome:
    """One check's result: `pass`, `fail` or `n/a`, a one-line detail and a table."""

    status: str
    detail: str
    table: str = ""
    seconds: float = 0.0
    data: dict = field(default_factory=dict)


class CheckFailed(Exception):
    """A check found something wrong (the message says what)."""


def verdict(ok: bool, detail: str, table: str = "", **data) -> Outcome:
    return Outcome("pass" if ok else "fail", detail, table, data=data)


def markdown(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def compile_kernels(on: bool) -> Iterator[None]:
    """stbp's compiled (`on`) or eager kernels inside the block (`STBP_COMPILE`)."""
    before = os.environ.get("STBP_COMPILE")
    os.environ["STBP_COMPILE"] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("STBP_COMPILE")
        else:
            os.environ["STBP_COMPILE"] = before


def fresh_compiler() -> None:
    """Empty Dynamo's caches and stbp's table of compiled kernels, so that variants compiled
    by an earlier check do not count towards the recompile limit of this one."""
    import torch._dynamo

    from stbp import kernels

    torch._dynamo.reset()
    kernels._COMPILED.clear()
    kernels._OVER_LIMIT.clear()


def kernel_warnings(caught: list) -> list[str]:
    """stbp.kernels' warnings among `caught`: an eager fallback or a recompile limit hit."""
    texts = [str(w.message) for w in caught]
    return [t for t in texts if "torch.compile failed" in t or t.startswith("stbp kernel")]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (in float64), 0 for two zero tensors."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale else (a - b).abs().max().item()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """`{"mb": ...}` after the block: the peak of CUDA memory allocated during it, or on the CPU
    the process's peak resident set size during it (VmHWM, reset through clear_refs)."""
    result = {"mb": float("nan")}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        result["mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    yield result
    result["mb"] = _status_kb("VmHWM") / 1024


def _status_kb(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def run_command(cmd: list[str], env: Env, timeout: int = 900,
                eager_dry_run: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
    """`cmd` from the repository root, on the check's device only (no CUDA device visible to a
    CPU run); `CheckFailed` with the output's tail if it fails. In the quick CPU dry run the
    training runs use the eager kernels (`eager_dry_run`): the kernels check compiles."""
    child = dict(os.environ)
    if env.device.type == "cpu":
        child["CUDA_VISIBLE_DEVICES"] = ""
        if env.quick and eager_dry_run:
            child["STBP_COMPILE"] = "0"
    done = subprocess.run(cmd, cwd=ROOT, env=child, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
        raise CheckFailed(f"exit {done.returncode}: {' / '.join(tail)[-600:]}")
    return done


# ------------------------------------------------------------------------------ kernels

TOLERANCES = {  # (rtol, atol) against the reference; bf16 as in tests/test_neuron.py
    torch.float64: (0.0, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2**-7, 1e-2),
}
COMPILED_VS_EAGER = {
    torch.float64: (0.0, 1e-10),
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (2**-7, 1e-3),
}
NEUNORM_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 1e-2}


def _lif_run(x: torch.Tensor, grad: torch.Tensor, p, compiled: bool):
    """Fused LIF spikes and dL/dx for input `x` (a fresh leaf) and output gradient `grad`."""
    from stbp import neuron

    x = x.detach().requires_grad_()
    with compile_kernels(compiled):
        spikes = neuron.lif(x, *p)
        (dx,) = torch.autograd.grad(spikes, x, grad)
    return spikes.detach(), dx


def _lif_reference(x: torch.Tensor, grad: torch.Tensor, p):
    """The per-step autograd loop in fp32 (float64 for float64 input): spikes and dL/dx."""
    from stbp.neuron import lif_reference

    x = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    x.requires_grad_()
    spikes = lif_reference(x, p)
    (dx,) = torch.autograd.grad(spikes, x, grad.to(x.dtype))
    return spikes.detach(), dx


def compare_spikes_and_grads(spikes, dx, ref_spikes, ref_dx, rtol, atol) -> tuple[int, float]:
    """(spikes that differ, worst |dx - ref| / (atol + rtol |ref|) over the neurons whose whole
    spike train agrees): a ratio <= 1 passes."""
    T = spikes.shape[0]
    s, r = spikes.float().reshape(T, -1), ref_spikes.float().reshape(T, -1)
    agree = (s == r).all(0)
    g, gr = dx.double().reshape(T, -1)[:, agree], ref_dx.double().reshape(T, -1)[:, agree]
    ratio = ((g - gr).abs() / (atol + rtol * gr.abs())).max().item() if g.numel() else 0.0
    return int((s != r).sum().item()), ratio


def _allowed_mismatches(dtype: torch.dtype, numel: int, compiled: bool) -> int:
    """Spikes that may differ from the reference: none in float64 or eagerly (the same
    arithmetic); compiled fp32 potentials may be rounded differently (fused multiply-add) and
    flip a spike lying within one rounding of the threshold, a few per million."""
    return 0 if dtype == torch.float64 or not compiled else max(1, numel // 100_000)


def lif_rows(env: Env, surrogate: str) -> tuple[list[list], list[str]]:
    """The LIF rows of the kernels table; `CheckFailed` on the first failure."""
    from stbp.neuron import LIFParameters

    s, device = env.sizes, env.device
    g = torch.Generator(device=device).manual_seed(0)
    shape = (s.T, s.batch, s.channels, s.side, s.side)
    x64 = torch.randn(shape, generator=g, device=device, dtype=torch.float64) * 0.6 + 0.3
    grad64 = torch.randn(shape, generator=g, device=device, dtype=torch.float64)
    p = LIFParameters(0.2, 0.5, surrogate, 1.0)
    rows, failures = [], []
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        x, grad = x64.to(dtype), grad64.to(dtype)
        ref = _lif_reference(x, grad, p)
        eager = _lif_run(x, grad, p, compiled=False)
        fused = _lif_run(x, grad, p, compiled=True)
        vs_ref = compare_spikes_and_grads(*fused, *ref, *TOLERANCES[dtype])
        vs_eager_ref = compare_spikes_and_grads(*eager, *ref, *TOLERANCES[dtype])
        vs_eager = compare_spikes_and_grads(*fused, *eager, *COMPILED_VS_EAGER[dtype])
        allowed = _allowed_mismatches(dtype, x.numel(), compiled=True)
        ok = (vs_ref[0] <= allowed and vs_eager[0] <= allowed and vs_eager_ref[0] == 0
              and max(vs_ref[1], vs_eager_ref[1], vs_eager[1]) <= 1)  # fmt: skip
        rows.append([f"LIF {surrogate}", str(dtype).removeprefix("torch."),
                     f"{vs_ref[0]} / {vs_ref[1]:.2g}", f"{vs_eager_ref[0]} / {vs_eager_ref[1]:.2g}",
                     f"{vs_eager[0]} / {vs_eager[1]:.2g}", "ok" if ok else "FAIL"])  # fmt: skip
        if not ok:
            failures.append(f"LIF {surrogate} {dtype}")
    return rows, failures


def _neunorm_run(o, alpha, grad, compiled: bool):
    from stbp.neunorm import neunorm

    o, alpha = o.detach().requires_grad_(), alpha.detach().requires_grad_()
    with compile_kernels(compiled):
        out = neunorm(o, alpha, k=0.9)
        grads = torch.autograd.grad(out, (o, alpha), grad)
    return [out.detach(), *grads]


def neunorm_rows(env: Env) -> tuple[list[list], list[str]]:
    """The NeuNorm rows: the fused function (its input spikes in each dtype, alpha in fp32 or
    float64, as in training) against `neunorm_reference` in float64, and compiled against
    eager; errors relative to the largest reference value."""
    from stbp.neunorm import neunorm_reference

    s, device = env.sizes, env.device
    g = torch.Generator(device=device).manual_seed(1)
    shape = (s.T, s.batch, s.channels, s.side, s.side)
    o64 = (torch.rand(shape, generator=g, device=device, dtype=torch.float64) < 0.2).double()
    alpha64 = torch.rand(shape[2:], generator=g, device=device, dtype=torch.float64) - 0.3
    grad64 = torch.randn(shape, generator=g, device=device, dtype=torch.float64)
    o_ref, a_ref = o64.clone().requires_grad_(), alpha64.clone().requires_grad_()
    out_ref = neunorm_reference(o_ref, a_ref, k=0.9)
    ref = [out_ref.detach(), *torch.autograd.grad(out_ref, (o_ref, a_ref), grad64)]
    rows, failures = [], []
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        param = torch.float64 if dtype == torch.float64 else torch.float32
        grad = grad64.to(param)  # the next layer's gradient, in the output's dtype
        eager = _neunorm_run(o64.to(dtype), alpha64.to(param), grad, compiled=False)
        fused = _neunorm_run(o64.to(dtype), alpha64.to(param), grad, compiled=True)
        vs_ref = max(relative_error(a, b) for a, b in zip(fused, ref, strict=True))
        eager_ref = max(relative_error(a, b) for a, b in zip(eager, ref, strict=True))
        vs_eager = max(relative_error(a, b) for a, b in zip(fused, eager, strict=True))
        ok = max(vs_ref, eager_ref, vs_eager) <= NEUNORM_TOLERANCE[dtype]
        rows.append(["NeuNorm", str(dtype).removeprefix("torch."), f"{vs_ref:.2g}",
                     f"{eager_ref:.2g}", f"{vs_eager:.2g}", "ok" if ok else "FAIL"])  # fmt: skip
        if not ok:
            failures.append(f"NeuNorm {dtype}")
    return rows, failures


def check_kernels(env: Env) -> Outcome:
    """Fused LIF and NeuNorm against the per-step references, compiled against eager."""
    from stbp import kernels

    fresh_compiler()
    rows, failures = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for surrogate in env.sizes.surrogates:
            more, bad = lif_rows(env, surrogate)
            rows, failures = rows + more, failures + bad
        more, bad = neunorm_rows(env)
        rows, failures = rows + more, failures + bad
    fallbacks = kernel_warnings(caught)
    if kernels.failed():
        failures.append("torch.compile failed: the kernels ran eagerly")
    failures += fallbacks
    head = ["kernel", "dtype", "compiled vs reference", "eager vs reference",
            "compiled vs eager", ""]  # fmt: skip
    note = (
        "LIF cells: spikes that differ / worst gradient error in units of the tolerance "
        "(<= 1 passes); NeuNorm cells: relative error of output and gradients"
    )
    table = markdown(head, rows) + "\n" + note
    detail = "; ".join(failures) if failures else f"{len(rows)} cases agree, no eager fallback"
    return verdict(not failures, detail, table)


# ----------------------------------------------------------------------------- synapses


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """Full fp32 matmuls and convolutions on CUDA (TF32 off), restored afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch prefers fp32_precision; both work
        before = matmul.allow_tf32, cudnn.allow_tf32
        matmul.allow_tf32 = cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            matmul.allow_tf32, cudnn.allow_tf32 = before


def _synapse_run(module: nn.Module, spikes: torch.Tensor, grad: torch.Tensor, binary: bool,
                 bf16: bool):  # fmt: skip
    """Output and gradients (input, weight, bias) of `Temporal(module, binary)`, and whether
    its input was kept as bool for the backward pass."""
    import stbp

    layer = stbp.Temporal(module, binary_input=binary)
    module.zero_grad(set_to_none=True)
    x = spikes.detach().requires_grad_()
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.dtype) or t,
                                                  lambda t: t):  # fmt: skip
        with torch.autocast(spikes.device.type, dtype=torch.bfloat16, enabled=bf16):
            y = layer(x)
    y.float().backward(grad)
    return [y.detach().float(), x.grad, *(p.grad for p in module.parameters())], (
        torch.bool in kept
    )


def check_synapses(env: Env) -> Outcome:
    """Spike-input synapses against nn.Conv2d / nn.Linear: TF32 off (fp32, only summation
    order may differ) and under bf16 autocast (where Temporal takes the module's own path)."""
    s, device = env.sizes, env.device
    torch.manual_seed(0)
    cases = [
        ("conv 3x3", nn.Conv2d(s.channels, s.channels, 3, padding=1),
         (s.T, s.batch, s.channels, s.side, s.side)),
        ("linear", nn.Linear(s.features, s.features // 4), (s.T, s.batch, s.features)),
    ]  # fmt: skip
    rows, failures = [], []
    for name, module, shape in cases:
        module = module.to(device)
        spikes = (torch.rand(shape, device=device) < 0.15).float()
        out_shape = module(spikes.flatten(0, 1)).unflatten(0, shape[:2]).shape
        grad = torch.randn(out_shape, device=device)
        for bf16, limit in ((False, 1e-5), (True, 1e-2)):
            with tf32_off():
                fused, kept_bool = _synapse_run(module, spikes, grad, True, bf16)
                plain, _ = _synapse_run(module, spikes, grad, False, bf16)
            error = max(relative_error(a, b) for a, b in zip(fused, plain, strict=True))
            ok = error <= limit and kept_bool == (not bf16)
            precision = "bf16 autocast" if bf16 else "fp32, TF32 off"
            rows.append([name, precision, f"{error:.2g}", "yes" if kept_bool else "no",
                         "ok" if ok else "FAIL"])  # fmt: skip
            if not ok:
                failures.append(f"{name} {precision}")
    table = markdown(["synapse", "precision", "relative error vs module", "input kept as bool",
                      ""], rows)  # fmt: skip
    detail = "; ".join(failures) if failures else "outputs and gradients match the modules"
    return verdict(not failures, detail, table)


# ----------------------------------------------------------------------- paper networks


def network_step(name: str, precision: str, env: Env) -> list:
    """`net_steps` training steps of `paper_network(name)` (the first compiles and creates the
    optimizer's state); the last one's loss, time and peak memory, and whether its loss and
    gradients are finite."""
    import stbp
    from stbp.config import OptimSettings
    from stbp.devices import autocast
    from stbp.train import make_optimizer

    s, device = env.sizes, env.device
    torch.manual_seed(0)
    model = stbp.paper_network(name, T=s.net_T).to(device)
    optimizer = make_optimizer(model, OptimSettings())
    C, H, W = model.in_shape
    if C == 2:  # event frames: binary, time-first
        x = (torch.rand(s.net_T, s.net_batch, C, H, W, device=device) < 0.15).float()
    else:  # a static image, presented at every step
        x = torch.randn(s.net_batch, C, H, W, device=device)
    labels = torch.randint(0, 10, (s.net_batch,), device=device)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            scores = model(x)
        loss = stbp.rate_mse_loss(scores.float(), labels)
        loss.backward()
        optimizer.step()
        return loss.detach()

    for _ in range(s.net_steps - 1):
        step()
    synchronize(device)
    with peak_memory(device) as memory:
        start = time.perf_counter()
        loss = step()
        synchronize(device)
        seconds = time.perf_counter() - start
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    finite = math.isfinite(loss.item()) and all(bool(torch.isfinite(g).all()) for g in grads)
    rates = list(stbp.firing_rates(model).values())
    rate = sum(rates) / max(1, len(rates))
    return [name, precision, f"{loss.item():.4f}", "yes" if finite else "NO",
            f"{1000 * seconds:.0f}", f"{memory['mb']:.0f}", f"{rate:.3f}"]  # fmt: skip


def check_paper_networks(env: Env) -> Outcome:
    """One training step of every paper network in fp32 and bf16."""
    import stbp

    rows, failures = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in stbp.PAPER_NETWORKS:
            for precision in ("fp32", "bf16"):
                try:
                    row = network_step(name, precision, env)
                except Exception as err:  # noqa: BLE001 - one network's failure is a row
                    row = [name, precision, "", f"error: {_first_line(err)}", "", "", ""]
                rows.append(row)
                if row[3] != "yes":
                    failures.append(f"{name} {precision}")
                if env.device.type == "cuda":
                    torch.cuda.empty_cache()
    memory = "CUDA max_memory_allocated" if env.device.type == "cuda" else "peak RSS"
    head = ["network", "precision", "loss", "finite", "ms/step", f"{memory} MB", "mean rate"]
    s = env.sizes
    timed = "its first step (with compilation)" if s.net_steps == 1 else "the last step"
    note = f"B = {s.net_batch}, T = {s.net_T}, {s.net_steps} step(s) each; timed: {timed}"
    detail = "; ".join(failures) if failures else f"{len(rows)} steps, all finite"
    fallbacks = kernel_warnings(caught)
    if fallbacks:  # not this check's failure (the kernels check's), but worth reading
        detail += f" (kernels warned: {'; '.join(sorted(set(fallbacks)))[:200]})"
    return verdict(not failures, detail, markdown(head, rows) + "\n" + note)


# -------------------------------------------------------------------------------- syncs

SYNC_WARNING = "synchroniz"  # "called a synchronizing CUDA operation"


def check_syncs(env: Env) -> Outcome:
    """Host-device syncs in 20 steps of the demo (CUDA): each sync's place in stbp's code.
    Passes when none happens inside `train_step` (the loop syncs at the NaN check and at the
    start and end of the epoch only)."""
    if env.device.type != "cuda":
        return Outcome("n/a", "sync debug mode needs CUDA")
    from stbp import distributed as dd
    from stbp import train
    from stbp.config import Settings, load_config, merge
    from stbp.datasets import make_splits
    from stbp.devices import resolve_precision
    from stbp.runs import make_trainer

    steps = 20
    config = merge(load_config("demo"), {"run": {"device": "cuda", "max_steps_per_epoch": steps,
                                                 "epochs": 2}})  # fmt: skip
    config["run"]["precision"] = resolve_precision("auto", env.device)
    settings = Settings.of(config)
    trainer = make_trainer(settings, dd.Context(device=env.device), make_splits(settings.data))
    train.train_one_epoch(trainer, 0)  # warm-up: compiles, creates the optimizer's state
    places: Counter = Counter()
    with sync_warnings(places):
        train.train_one_epoch(trainer, 1)
    inside = sum(n for place, n in places.items() if "train_step" in place)
    rows = [[place, n] for place, n in places.most_common()]
    detail = (
        f"{sum(places.values())} syncs in {steps} steps ({settings.run.precision}); "
        f"{inside} inside train_step"
    )
    return verdict(inside == 0, detail, markdown(["where (innermost stbp frames)", "syncs"], rows))


@contextlib.contextmanager
def sync_warnings(places: Counter) -> Iterator[None]:
    """Count CUDA syncs by their place in stbp's code, with sync debug mode "warn"."""

    def record(message, category, filename, lineno, file=None, line=None):
        if SYNC_WARNING in str(message):
            places[_stbp_frames()] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)


def _stbp_frames() -> str:
    """The two innermost frames of stbp's own code on the stack, as `file:line function`."""
    import stbp

    package = str(Path(stbp.__file__).resolve().parent) + os.sep
    frames = [f for f in traceback.extract_stack() if f.filename.startswith(package)]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[::-1][:2])


# --------------------------------------------------------------------------- RNG restore


def check_rng_restore(env: Env) -> Outcome:
    """A checkpoint written on a machine with more GPUs than this one: its RNG states list one
    CUDA state per GPU that process saw (as stbp saved them before per-rank states), one more
    than are visible here. `stbp.checkpoint.set_rng_states` must restore the CPU generators and
    the training device's (the first state: a single process trained on `cuda:0`) without
    failing."""
    from stbp import checkpoint as ck

    visible = torch.cuda.device_count() if env.device.type == "cuda" else 0
    states = ck.rng_states()
    own = [torch.cuda.get_rng_state(i) for i in range(visible)]
    states["cuda"] = own + [own[0] if own else torch.zeros(16, dtype=torch.uint8)]
    expected = _draws(env.device)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = Path(folder) / "more-gpus.pt"
        ck.save_atomic({"rng": states}, path)
        _reseed(12345)  # move every generator on
        try:
            ck.set_rng_states(ck.load_checkpoint(path)["rng"])
        except Exception as err:  # noqa: BLE001 - the failure is the finding
            return Outcome("fail", f"set_rng_states: {type(err).__name__}: {_first_line(err)}")
    same = _draws(env.device) == expected
    detail = f"{len(states['cuda'])} CUDA states saved, {visible} visible: " + (
        "restored" if same else "the generators do not continue where they were"
    )
    said = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return verdict(same, detail + "".join(f" ({text[:160]})" for text in said))


def _reseed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _draws(device: torch.device) -> list:
    """The next numbers of the Python, numpy and torch generators, and of `device`'s CUDA
    generator (the current CUDA device's) when it is a CUDA device."""
    import random

    import numpy as np

    draws = [random.random(), float(np.random.rand()), torch.rand(3).tolist()]
    if device.type == "cuda":
        draws.append(torch.rand(3, device="cuda").tolist())
    return draws


# ------------------------------------------------------------------------ demo and torchrun


def _train_command(env: Env, out: Path, epochs: int) -> list[str]:
    return ["-m", "stbp", "train", "--config", "demo", "--device", env.device.type,
            "--epochs", str(epochs), "--max-steps-per-epoch", str(env.sizes.demo_steps),
            "--out", str(out)]  # fmt: skip


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def check_demo_resume(env: Env) -> Outcome:
    """`stbp train --config demo` for one epoch cut to a few steps, then `--resume` to 2."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "demo"
        run_command([sys.executable, *_train_command(env, out, 1)], env)
        first = _summary(out)
        run_command([sys.executable, *_train_command(env, out, 2), "--resume"], env)
        second = _summary(out)
    ok = (
        first["epochs"] == 1
        and second["epochs"] == 2
        and second["device"].startswith(env.device.type)
    )
    detail = (
        f"epoch 1 then resumed to {second['epochs']} on {second['device']} "
        f"({second['precision']}): test accuracy {100 * first['final_test_acc']:.1f}% -> "
        f"{100 * second['final_test_acc']:.1f}% after {env.sizes.demo_steps} steps/epoch"
    )
    return verdict(ok, detail)


def check_torchrun(env: Env) -> Outcome:
    """The demo's short epoch as one process under torchrun. With one process stbp joins no
    process group (it does with two or more: nccl on CUDA, gloo on the CPU)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "torchrun"
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
        run_command([sys.executable, *launcher, *_train_command(env, out, 1)], env)
        summary = _summary(out)
    ok = summary["epochs"] == 1 and summary["processes"] == 1
    backend = "nccl" if env.device.type == "cuda" else "gloo"
    detail = (
        f"1 process on {summary['device']}: epoch {summary['epochs']} done (a process "
        f"group, {backend}, is joined from 2 processes on)"
    )
    return verdict(ok, detail)


# -------------------------------------------------------------------------------- speed


def check_speed(env: Env) -> Outcome:
    """benchmarks/step_time.py at T = 10: the per-step loop (fp32) and stbp (fp32, bf16), and
    the peers with --peers, each in its own process."""
    sys.path.insert(0, str(HERE))
    import step_time

    from stbp.devices import resolve_precision

    s, out = env.sizes, env.out
    name = "gpu_check_step_time"
    precisions, note = "fp32,bf16", ""
    if env.quick and resolve_precision("auto", env.device) != "bf16":
        precisions, note = "fp32", " (bf16 left out of the dry run: emulated on this CPU)"
    cmd = [sys.executable, str(HERE / "step_time.py"), "--T", "10", "--full-T", "10",
           "--rows", "loop,stbp", "--precision", precisions, "--batch", str(s.speed_batch),
           "--warmup", str(s.speed_warmup), "--steps", str(s.speed_steps),
           "--out", str(out), "--name", name]  # fmt: skip
    if env.peers:
        cmd.append("--peers")
    run_command(cmd, env, timeout=1800, eager_dry_run=False)  # its rows set STBP_COMPILE
    results = json.loads((out / f"{name}.json").read_text())["results"]
    errors = [f"{r['row']} {r['precision']}: {r['error']}" for r in results if "error" in r]
    detail = "; ".join(errors) if errors else (
        f"{len(results)} rows at batch {s.speed_batch}: " + ", ".join(
            f"{r['row']} {r['precision']} {r['ms_per_step']:.0f} ms" for r in results))  # fmt: skip
    return verdict(not errors, detail + note, step_time.table(results))


# ------------------------------------------------------------------------------ the run

CHECKS: dict[str, Callable[[Env], Outcome]] = {
    "kernels": check_kernels,
    "synapses": check_synapses,
    "paper-networks": check_paper_networks,
    "syncs": check_syncs,
    "rng-restore": check_rng_restore,
    "demo-resume": check_demo_resume,
    "torchrun": check_torchrun,
    "speed": check_speed,
}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines() or [type(err).__name__])[0][:300]


def run_check(name: str, env: Env) -> Outcome:
    """One check; an exception is its failure (traceback on stderr), never the run's end."""
    print(f"\n## {name}", flush=True)
    start = time.perf_counter()
    try:
        outcome = CHECKS[name](env)
    except CheckFailed as err:
        outcome = Outcome("fail", str(err))
    except Exception as err:  # noqa: BLE001 - a crash is this check's failure
        traceback.print_exc()
        outcome = Outcome("fail", f"{type(err).__name__}: {_first_line(err)}")
    outcome.seconds = time.perf_counter() - start
    if outcome.table:
        print(outcome.table)
    print(f"{name}: {outcome.status} ({outcome.seconds:.0f} s): {outcome.detail}", flush=True)
    return outcome


def machine(device: torch.device) -> dict:
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "device": str(device)}  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gb=round(props.total_memory / 2**30), cuda=torch.version.cuda,
                    gpus=torch.cuda.device_count())  # fmt: skip
    return info


def summary_table(outcomes: dict[str, Outcome]) -> str:
    rows = [[name, o.status, f"{o.seconds:.0f}", o.detail] for name, o in outcomes.items()]
    return markdown(["check", "result", "s", "detail"], rows)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda, but torch sees no CUDA device "
                         "(--device cpu runs the dry run)")  # fmt: skip
    return torch.device(name)


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(CHECKS)
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise SystemExit(f"gpu_check: unknown check {', '.join(unknown)}; choose from "
                         f"{', '.join(CHECKS)}")  # fmt: skip
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--only", metavar="NAME[,NAME]", help="run only these: " + ", ".join(CHECKS))
    ap.add_argument("--quick", action="store_true", help="small sizes (always on the CPU)")
    ap.add_argument("--peers", action="store_true", help="speed: snnTorch, Norse, SpikingJelly")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check")
    args = ap.parse_args(argv)
    names = parse_only(args.only)
    device = pick_device(args.device)
    quick = args.quick or device.type == "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    env = Env(device, QUICK if quick else FULL, args.out.resolve(), quick, args.peers)
    info = machine(device)
    print("gpu_check: " + ", ".join(f"{k}={v}" for k, v in info.items())
          + (" (quick sizes)" if quick else ""), flush=True)  # fmt: skip
    start = time.perf_counter()
    outcomes = {name: run_check(name, env) for name in names}
    passed = sum(o.status == "pass" for o in outcomes.values())
    failed = sum(o.status == "fail" for o in outcomes.values())
    total = time.perf_counter() - start
    print(f"\n{summary_table(outcomes)}\n\ntotal {total:.0f} s")
    record = {"machine": info, "sizes": asdict(env.sizes), "seconds": total,
              "checks": {n: asdict(o) for n, o in outcomes.items()}}  # fmt: skip
    (args.out / "gpu_check.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"gpu_check: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
