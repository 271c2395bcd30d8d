"""Side-by-side training-step benchmark on `nmnist-small`, a smaller neuromorphic net (issue 6).

One training step = forward, backward and Adam update of
128C3(Enc)-128C3-AP2-128C3-256C3-AP2-1024FC-Voting on binary input [T, B=20, 2, 34, 34] with the
MSE voting loss. Every row runs in its own subprocess (so its peak memory is its own):

    stbp (compiled)     stbp.paper_network, fused LIF with torch.compile'd kernels
    stbp (eager)        the same with STBP_COMPILE=0 (fused autograd.Function, eager kernels)
    stbp (compiled, CL) the compiled model and input in channels_last
    stbp (learnt)       the compiled model with a learnt decay and threshold per channel
    per-step loop       benchmarks/baselines.py PerStepSNN: Algorithm 1 step by step (baseline)
    ANN twin            the same layers with ReLU, T folded into the batch
    snntorch / norse / spikingjelly   (--peers) the same network in each framework, run by
                        the throw-away venv of benchmarks/peers/setup.sh
    sparse / dense      (--rates 5,15) stbp with its hidden layers calibrated to fire at each
                        rate (`stbp.calibrate_` on the benchmark input, Adam's learning rate 0
                        so the rates stay), with the event-driven synapses on (`stbp.sparse`,
                        issue 17) and off (STBP_SPARSE=0)

    python benchmarks/step_time.py [--T 5,10,20,40] [--precision fp32,bf16] [--peers]
    python benchmarks/step_time.py --T 10 --rows loop,ann,sparse,dense --rates 5,15 \
        --precision fp32,bf16                      # issue 17's rows

Prints the table (ms/step, samples/s, peak memory, ratios against the per-step loop at the
same T) and writes benchmarks/results/step_time.csv and step_time.png.

Time: median of --steps steps after --warmup steps (the first compiles), every row with glibc
keeping freed memory for reuse as `stbp train` does (STBP_MALLOC=default: glibc's own
behaviour, which maps and zeroes big blocks afresh at every allocation). Memory on CPU: the
peak resident set size (VmHWM, reset through /proc/self/clear_refs) during one extra training
step, minus the RSS just before it, with glibc told to serve every block of 64 KiB or more by
mmap (mallopt) and its free heap trimmed first, so freed activations leave the RSS and the peak
is the step's own (model, gradients and Adam state are already allocated before it). On CUDA:
torch.cuda.max_memory_allocated over that step minus the allocation before it.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"
PEERS_PYTHON = PEERS_DIR / ".venv" / "bin" / "python"
NETWORK = "nmnist-small"
OWN_ROWS = ["loop", "ann", "stbp", "stbp-eager", "stbp-cl", "stbp-learn"]
RATE_ROWS = ["sparse", "dense"]  # need --rates
PEER_ROWS = ["snntorch", "norse", "spikingjelly"]
LABELS = {
    "loop": "per-step loop",
    "ann": "ANN twin",
    "stbp": "stbp (compiled)",
    "stbp-eager": "stbp (eager, STBP_COMPILE=0)",
    "stbp-cl": "stbp (compiled, channels_last)",
    "stbp-learn": "stbp (compiled), learnt decay and threshold per channel",
    "snntorch": "snnTorch Leaky",
    "norse": "Norse LIFBox",
    "spikingjelly": "SpikingJelly LIFNode (m)",
    "sparse": "stbp, sparse synapses on",
    "dense": "stbp, sparse off (STBP_SPARSE=0)",
}
# The rows that honour --precision:
PRECISION_ROWS = {"ann", "stbp", "stbp-eager", "stbp-cl", "stbp-learn", "sparse", "dense"}


# --------------------------------------------------------------------------- worker side


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4


def _reuse_freed_memory() -> None:
    """The allocator setting of `stbp train` (`stbp.devices.reuse_freed_memory`), given to every
    row alike (this file also runs in the peers' environment, without stbp)."""
    if os.environ.get("STBP_MALLOC") != "default":
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def _prepare_memory_measure() -> str:
    """Make freed memory leave the RSS, then reset the peak RSS; returns the method used."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_MAX, 65536)  # glibc's default: mmap on again
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)  # fixed, so big blocks are unmapped
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
        libc.malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def _build(row: str, T: int):
    """The model of `row` for T steps."""
    if row in PEER_ROWS:
        sys.path.insert(0, str(PEERS_DIR))
        module = importlib.import_module(f"{row}_net")
        return module.build(T), module.version()
    import stbp

    sys.path.insert(0, str(HERE))
    from baselines import ANNTwin, PerStepSNN

    learnt = dict(learn_decay=True, learn_threshold=True, per_channel=True)
    net = stbp.paper_network(NETWORK, T=T, **(learnt if row == "stbp-learn" else {}))
    version = f"stbp {stbp.__version__}"
    if row == "loop":
        return PerStepSNN(net), version
    if row == "ann":
        return ANNTwin(net), version
    return net, version


def _loss(scores, labels):
    import torch.nn.functional as F

    target = F.one_hot(labels, scores.shape[-1]).to(scores.dtype)
    return F.mse_loss(scores.float(), target.float())


def _fire_at(model, x, rate: float) -> dict:
    """Calibrate `model`'s hidden layers to fire at `rate` on `x`, and mark every hidden
    synapse of nmnist-small (no NeuNorm: each one takes spikes or average-pooled spikes) as
    spike input, as `build` does once it passes `spike_input`."""
    import stbp

    for m in list(model.layers)[1:]:
        if isinstance(m, stbp.Temporal) and m.synapse_kind:
            m.spike_input = True
    return stbp.calibrate_(model, x, rate=rate)


def _synapse_paths(model) -> dict:
    """Per synapse layer: the input density of the last forward and the path that ran."""
    import stbp

    return {
        name: {"density": m.last_input_density, "path": m.last_path}
        for name, m in model.layers.named_children()
        if isinstance(m, stbp.Temporal) and m.last_path is not None
    }


def worker(
    row: str,
    T: int,
    batch: int,
    precision: str,
    warmup: int,
    steps: int,
    profile: int = 0,
    rate: float | None = None,
) -> dict:
    import torch

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, version = _build(row, T)
    model = model.to(device)
    x = (torch.rand(T, batch, 2, 34, 34, device=device) < 0.15).float()
    labels = torch.randint(0, 10, (batch,), device=device)
    if row == "stbp-cl":
        model = model.to(memory_format=torch.channels_last)
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (T, batch))
    reached = _fire_at(model, x, rate) if row in RATE_ROWS else None
    lr = 0.0 if row in RATE_ROWS else 1e-3  # lr 0: the calibrated rates stay
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)  # every row alike
    autocast = precision == "bf16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            scores = model(x)
        loss = _loss(scores, labels)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss

    # Memory is measured with glibc's own mmap behaviour (each big block its own mapping, so
    # the RSS follows the live tensors); time with freed memory reused, as `stbp train` runs.
    reuse = device.type == "cpu" and os.environ.get("STBP_MALLOC") != "default"
    if reuse:
        step()  # compiles, allocates Adam's state
        peak_mb, method = _measure_memory(step, device)
        _reuse_freed_memory()
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)

    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile))

    if not reuse:
        peak_mb, method = _measure_memory(step, device)
    ms = statistics.median(times) * 1000
    extra = {}
    if row in RATE_ROWS:
        extra = {"rate": rate, "rates_reached": reached, "synapses": _synapse_paths(model)}
    return {
        **extra,
        "row": row,
        "T": T,
        "batch": batch,
        "precision": precision,
        "ms_per_step": ms,
        "samples_per_s": batch / (ms / 1000),
        "peak_mem_mb": peak_mb,
        "warmup_s": warmup_s,
        "step_ms_all": [t * 1000 for t in times],
        "memory_method": method,
        "version": version,
        "torch": torch.__version__,
        "device": device.type,
        "threads": torch.get_num_threads(),
    }


def _measure_memory(step, device) -> tuple[float, str]:
    """Peak memory of one more training step, in MB, and the method used."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return (torch.cuda.max_memory_allocated() - before) / 2**20, "cuda.max_memory_allocated"
    import gc

    gc.collect()
    method = _prepare_memory_measure()
    before_kb = _status_kb("VmRSS")
    step()
    peak_kb = _status_kb("VmHWM") if method == "VmHWM" else _ru_maxrss_kb()
    return (peak_kb - before_kb) / 1024, method


def _ru_maxrss_kb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --------------------------------------------------------------------------- parent side


def machine_info() -> dict:
    info = {"nproc": os.cpu_count(), "python": platform.python_version()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu"] = value.strip()
            if key.strip() == "Flags":
                flags = value.split()
                wanted = ("avx", "fma", "f16c", "amx", "bf16", "vnni")
                info["flags"] = " ".join(f for f in flags if f.startswith(wanted))
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["mkldnn_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        info["threads"] = torch.get_num_threads()
        info["malloc"] = os.environ.get("STBP_MALLOC", "reuse freed memory")
    except Exception as err:  # noqa: BLE001 - informative only
        info["torch"] = f"unavailable ({err})"
    return info


def run_row(row: str, T: int, args, precision: str, rate: float | None = None) -> dict:
    python = str(PEERS_PYTHON) if row in PEER_ROWS else sys.executable
    env = dict(os.environ)
    if row == "stbp-eager":
        env["STBP_COMPILE"] = "0"
    if row == "dense":
        env["STBP_SPARSE"] = "0"
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        row,
        "--T",
        str(T),
        "--batch",
        str(args.batch),
        "--precision",
        precision,
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
    ]
    if rate is not None:
        cmd += ["--rate", str(rate)]
    base = {"row": row, "T": T, "batch": args.batch, "precision": precision, "rate": rate}
    if row in PEER_ROWS and not PEERS_PYTHON.exists():
        return {**base, "error": "peers venv missing (run benchmarks/peers/setup.sh)"}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {args.timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {**base, "error": f"failed: {tail[:160]}"}


def plan(args) -> list[tuple[str, int, str, float | None]]:
    """Rows in run order: T in the order given; all rows at the T of --full-T, only
    --few-rows at the others; the sparse/dense rows at each of --rates; the peers right after
    the first T of --peers-T."""
    jobs = []
    for T in args.T:
        rows = OWN_ROWS + RATE_ROWS if T in args.full_T else args.few_rows
        for row in OWN_ROWS + RATE_ROWS:
            if row not in rows or row not in args.rows:
                continue
            precisions = args.precision if row in PRECISION_ROWS else ["fp32"]
            rates = [r / 100 for r in args.rates] if row in RATE_ROWS else [None]
            for rate in rates:
                for precision in precisions:
                    jobs.append((row, T, precision, rate))
        if args.peers and T in args.peers_T:
            for row in PEER_ROWS:
                jobs.append((row, T, "fp32", None))
    return jobs


def add_ratios(results: list[dict]) -> None:
    """Speed and memory against the per-step loop, and time against the ANN twin in bf16
    (issue 17's target: <= 0.6x at 5% hidden firing), at the same T."""
    loop = {r["T"]: r for r in results if r["row"] == "loop" and "error" not in r}
    ann = {
        r["T"]: r
        for r in results
        if r["row"] == "ann" and r["precision"] == "bf16" and "error" not in r
    }
    for r in results:
        twin = ann.get(r["T"])
        ok = twin is not None and "error" not in r
        r["time_vs_ann_bf16"] = r["ms_per_step"] / twin["ms_per_step"] if ok else None
        base = loop.get(r["T"])
        if base is None or "error" in r:
            r["speedup_vs_loop"] = r["mem_vs_loop"] = None
            continue
        r["speedup_vs_loop"] = base["ms_per_step"] / r["ms_per_step"]
        r["mem_vs_loop"] = r["peak_mem_mb"] / base["peak_mem_mb"]


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def _label(r: dict) -> str:
    rate = r.get("rate")
    return LABELS[r["row"]] + ("" if rate is None else f", firing {rate:.0%}")


def table(results: list[dict]) -> str:
    head = (
        "| row | T | precision | ms/step | samples/s | peak MB | speed vs loop "
        "| memory vs loop | time vs ANN bf16 |\n|---|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in results:
        label = _label(r)
        if "error" in r:
            lines.append(f"| {label} | {r['T']} | {r['precision']} | {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {label} | {r['T']} | {r['precision']} | {r['ms_per_step']:.0f} "
            f"| {r['samples_per_s']:.1f} | {r['peak_mem_mb']:.0f} "
            f"| {_fmt(r['speedup_vs_loop'], '.2f')}× | {_fmt(r['mem_vs_loop'], '.2f')}× "
            f"| {_fmt(r.get('time_vs_ann_bf16'), '.2f')}× |"
        )
    return "\n".join(lines + _synapse_lines(results))


def _synapse_lines(results: list[dict]) -> list[str]:
    """Under the table: per sparse/dense row, the density each synapse saw and its path."""
    lines = []
    for r in results:
        if "synapses" not in r:
            continue
        seen = ", ".join(
            f"{name} {_fmt(s['density'], '.1%')} {s['path']}" for name, s in r["synapses"].items()
        )
        lines.append(f"- {_label(r)}, {r['precision']}: {seen}")
    return [""] + lines if lines else []


def write_csv(results: list[dict], path: Path) -> None:
    fields = [
        "row",
        "label",
        "T",
        "batch",
        "precision",
        "rate",
        "ms_per_step",
        "samples_per_s",
        "peak_mem_mb",
        "speedup_vs_loop",
        "mem_vs_loop",
        "time_vs_ann_bf16",
        "version",
        "error",
    ]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in results:
            out = {**r, "label": _label(r)}
            for k in ("ms_per_step", "samples_per_s", "peak_mem_mb"):
                if out.get(k) is not None:
                    out[k] = f"{out[k]:.1f}"
            for k in ("speedup_vs_loop", "mem_vs_loop", "time_vs_ann_bf16"):
                if out.get(k) is not None:
                    out[k] = f"{out[k]:.3f}"
            w.writerow(out)


def plot(results: list[dict], path: Path) -> None:
    """Time and memory against T, one line per row and precision; the x ticks are exactly
    the measured T values and the legend sits below both panels (it covers no point)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullLocator

    fig = Figure(figsize=(10, 5.2), layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2)
    series: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        if "error" not in r:
            series.setdefault((r["row"], r["precision"], r.get("rate")), []).append(r)
    for (row, precision, _rate), rs in series.items():
        rs.sort(key=lambda r: r["T"])
        label = _label(rs[0]) + ("" if precision == "fp32" else f" {precision}")
        style = "o--" if row in PEER_ROWS or row in ("loop", "ann") else "o-"
        Ts = [r["T"] for r in rs]
        ax_t.plot(Ts, [r["ms_per_step"] for r in rs], style, label=label)
        ax_m.plot(Ts, [r["peak_mem_mb"] for r in rs], style, label=label)
    measured = sorted({r["T"] for rs in series.values() for r in rs})
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    for ax, ylabel in ((ax_t, "ms / training step"), (ax_m, "peak memory of a step (MB)")):
        ax.set_xlabel("T (time steps)")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(measured, [str(T) for T in measured])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(f"{NETWORK}: one training step, batch 20")
    fig.savefig(path, dpi=90)


def save(results: list[dict], info: dict, args) -> None:
    """Sort by T (then run order), add the ratios, write the CSV and JSON."""
    results.sort(key=lambda r: r["T"])
    add_ratios(results)
    write_csv(results, args.out / f"{args.name}.csv")
    payload = {"machine": info, "command": sys.argv, "results": results}
    tmp = args.out / f"{args.name}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(args.out / f"{args.name}.json")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _names(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=_ints, default=[5, 10, 20, 40], help="time steps, e.g. 5,10")
    ap.add_argument("--precision", type=_names, default=["fp32"], help="fp32,bf16")
    ap.add_argument("--peers", action="store_true", help="also snnTorch, Norse, SpikingJelly")
    ap.add_argument("--peers-T", type=_ints, default=[10], help="T for the peer rows")
    ap.add_argument(
        "--rows",
        type=_names,
        default=OWN_ROWS,
        help=",".join(OWN_ROWS + RATE_ROWS) + f" (default {','.join(OWN_ROWS)})",
    )
    ap.add_argument(
        "--rates",
        type=_ints,
        default=[5, 15],
        help="hidden firing rates in %% of the sparse/dense rows (default 5,15)",
    )
    ap.add_argument("--rate", type=float, help=argparse.SUPPRESS)  # a worker's one rate
    ap.add_argument(
        "--full-T",
        type=_ints,
        default=[5, 10, 20],
        help="T at which every row runs (default 5,10,20)",
    )
    ap.add_argument(
        "--few-rows",
        type=_names,
        default=["loop", "stbp"],
        help="the rows run at the other T (default loop,stbp)",
    )
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per row")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--name", default="step_time", help="file name stem of the CSV/PNG")
    ap.add_argument("--worker", help="run one row in this process (e.g. stbp) and print it")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="with --worker: also profile one step, print the top N ops",
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="no run: combine the .json of earlier runs into --name's CSV/PNG",
    )
    args = ap.parse_args(argv)

    if args.merge:
        runs = [json.loads(path.read_text()) for path in args.merge]
        results = [r for run in runs for r in run["results"]]
        args.out.mkdir(parents=True, exist_ok=True)
        save(results, runs[0]["machine"], args)
        print(table(results))
        plot(results, args.out / f"{args.name}.png")
        return 0

    if args.worker:
        result = worker(
            args.worker,
            args.T[0],
            args.batch,
            args.precision[0],
            args.warmup,
            args.steps,
            args.profile,
            args.rate,
        )
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    if args.peers and not PEERS_PYTHON.exists():
        subprocess.run(["bash", str(PEERS_DIR / "setup.sh")], check=False)
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    print("command: python " + " ".join([os.path.relpath(__file__), *sys.argv[1:]]), flush=True)
    results: list[dict] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for row, T, precision, rate in plan(args):
        t0 = time.perf_counter()
        r = run_row(row, T, args, precision, rate)
        results.append(r)
        shown = r.get("error") or f"{r['ms_per_step']:.0f} ms/step, {r['peak_mem_mb']:.0f} MB"
        print(
            f"  {_label(r):45s} T={T:<3d} {precision}: {shown} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        save(results, info, args)  # after every row, so an interrupted run keeps its rows
    print()
    print(table(results))
    plot(results, args.out / f"{args.name}.png")
    print(f"\nwrote {args.out / (args.name + '.csv')} and .png/.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
