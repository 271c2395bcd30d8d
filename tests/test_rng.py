"""RNG states across machines and processes: the CUDA state of the training device only (a
resume may see fewer GPUs, or none), per-process seeds and states under torchrun, and the
time-based mid-epoch save that every process must take at the same step.

No GPU here: `FakeCuda` stands in for torch.cuda's generator functions, one state per device,
failing on a device that does not exist as torch does."""

import random
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import stbp.runs as runs
from stbp import checkpoint as ck
from stbp import distributed as dd
from stbp.config import load_config, merge
from stbp.distributed import Context
from stbp.runs import checkpoint_state, own_rank_states, run_training
from stbp.train import CHECK_EVERY, augmentation_generator

PATH = Path("run/last.pt")


class FakeCuda:
    """`n` GPUs' generators, each state a distinct tensor; records what is restored."""

    def __init__(self, monkeypatch, n: int, current: int = 0):
        self.states = [torch.full((8,), 10 + i, dtype=torch.uint8) for i in range(n)]
        self.current, self.restored = current, []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(map(self.get, range(n))))
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.set_all)

    def _index(self, device) -> int:
        index = device if isinstance(device, int) else torch.device(device).index
        index = self.current if index is None else index
        if not 0 <= index < len(self.states):
            raise IndexError(f"no CUDA device {index} ({len(self.states)} visible)")
        return index

    def get(self, device="cuda") -> torch.Tensor:
        return self.states[self._index(device)].clone()

    def set(self, state: torch.Tensor, device="cuda") -> None:
        index = self._index(device)
        self.states[index] = state.clone()
        self.restored.append(index)

    def set_all(self, states) -> None:  # as torch.cuda.set_rng_state_all: device i gets state i
        for i, state in enumerate(states):
            self.set(state, i)


def cpu_states(seed: int = 1) -> dict:
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    return ck.rng_states("cpu")


def draws():
    return random.random(), np.random.rand(), torch.rand(1).item()


# ------------------------------------------------------------------ the CUDA state (item 2)


def test_only_the_training_devices_cuda_state_is_saved(monkeypatch):
    cuda = FakeCuda(monkeypatch, 4, current=1)
    assert torch.equal(ck.rng_states("cuda:2")["cuda"], cuda.states[2])
    assert torch.equal(ck.rng_states()["cuda"], cuda.states[1])  # the current device
    assert "cuda" not in ck.rng_states("cpu")  # a CPU run draws nothing on a GPU


def test_a_resume_on_fewer_gpus_restores_the_training_devices_state(monkeypatch):
    FakeCuda(monkeypatch, 4)
    saved = ck.rng_states("cuda:3")  # rank 3 of a machine with 4 GPUs
    cuda = FakeCuda(monkeypatch, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ck.set_rng_states(saved, "cuda:0")
    assert cuda.restored == [0] and torch.equal(cuda.states[0], saved["cuda"])


def test_an_older_checkpoint_with_one_state_per_gpu_resumes_on_one_gpu(monkeypatch):
    old = {**cpu_states(), "cuda": FakeCuda(monkeypatch, 4).states}  # what stbp saved before
    cuda = FakeCuda(monkeypatch, 1)
    with pytest.raises(IndexError):  # the old restore: torch.cuda.set_rng_state_all
        torch.cuda.set_rng_state_all(old["cuda"])
    cuda.restored.clear()
    ck.set_rng_states(old, "cuda:0")
    assert cuda.restored == [0] and torch.equal(cuda.states[0], old["cuda"][0])


@pytest.mark.parametrize("gpus", [0, 2])
def test_a_cpu_resume_of_a_gpu_run_restores_the_rest_and_says_so(monkeypatch, gpus):
    states = {**cpu_states(), "cuda": torch.full((8,), 99, dtype=torch.uint8)}
    expected = draws()
    cuda = FakeCuda(monkeypatch, gpus)
    cpu_states(seed=5)
    with pytest.warns(ck.RNGStateWarning, match="CUDA RNG state is not restored: the run now"):
        ck.set_rng_states(states, "cpu")
    assert draws() == expected and cuda.restored == []


def test_a_gpu_resume_of_a_cpu_run_says_the_gpu_keeps_its_seed(monkeypatch):
    states = cpu_states()
    cuda = FakeCuda(monkeypatch, 1)
    with pytest.warns(ck.RNGStateWarning, match="no CUDA RNG state .* cuda:0 keeps"):
        ck.set_rng_states(states, "cuda:0")
    assert cuda.restored == []


def tiny(**tables):
    config = merge(load_config("demo"), {
        "run": {"epochs": 1, "device": "cpu", "max_steps_per_epoch": 2, "eval_batch_size": 100,
                "precision": "fp32"},
        "data": {"T": 2, "n_train": 9800},
        "model": {"spec": "8C3(Enc)-AP2-16FC-Voting", "dropout": 0.5},
        "optim": {"batch_size": 8},
    })  # fmt: skip
    return merge(config, tables)


def test_a_gpu_checkpoint_resumes_on_a_machine_without_gpu(tmp_path):
    out = tmp_path / "run"
    run_training(tiny(), out)
    state = ck.load_checkpoint(out / "last.pt")
    state["rng"]["cuda"] = [torch.zeros(8, dtype=torch.uint8)] * 2  # saved with 2 GPUs
    ck.save_atomic(state, out / "last.pt")
    with pytest.warns(ck.RNGStateWarning, match="now trains on the CPU"):
        summary = run_training(tiny(run={"epochs": 2}), out, resume=True)
    assert summary["epochs"] == 2


# ------------------------------------------------------------- several processes (item 3)


def test_every_process_but_rank_0_draws_from_its_own_seed():
    assert dd.rank_seed(7, 0) == 7  # one process draws what it always drew
    seeds = [dd.rank_seed(7, rank) for rank in range(1, 5)]
    assert len(set(seeds)) == 4 and all(0 <= s < 2**32 for s in seeds)
    assert seeds[0] == dd.rank_seed(7, 1) != dd.rank_seed(8, 1)


def test_augmentation_streams_differ_between_processes_and_epochs():
    firsts = {(epoch, rank): torch.rand(1, generator=augmentation_generator(3, epoch, rank)).item()
              for epoch in range(3) for rank in range(3)}  # fmt: skip
    assert len(set(firsts.values())) == 9  # earlier: rank 1's epoch 0 was rank 0's epoch 1
    assert firsts[1, 0] == torch.rand(1, generator=torch.Generator().manual_seed(3 * 7919 + 1))


def test_make_trainer_reseeds_every_rank_but_0_after_the_same_initial_weights(monkeypatch):
    monkeypatch.setattr(runs.Trainer, "__post_init__", lambda t: setattr(t, "steps_per_epoch", 1))
    settings = runs.Settings.of(tiny())
    splits = types.SimpleNamespace(train_set=[(torch.zeros(1, 28, 28), 0)])
    trainers = []
    for rank in (0, 1):
        trainers.append(runs.make_trainer(settings, Context(rank, 2), splits))
        trainers[-1].draw = torch.rand(4)
    weights = [t.model.state_dict() for t in trainers]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(trainers[0].draw, trainers[1].draw)


def rank_entry(seed: int, step: int) -> dict:
    return {"rng": cpu_states(seed), "generator": torch.Generator().manual_seed(seed).get_state(),
            "totals": [float(seed), float(step), 8.0]}  # fmt: skip


def saved_by(world: int, step: int = 3) -> dict:
    ranks = [rank_entry(seed, step) for seed in range(world)]
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(state_dict=dict, build_args={}),
        optimizer=types.SimpleNamespace(state_dict=dict),
        schedule=types.SimpleNamespace(state_dict=dict),
        progress=runs.Progress(epoch=1, step=step, epoch_seconds=2.0),
    )
    return checkpoint_state(trainer, {}, ranks if world > 1 else ranks[:1])


def test_a_checkpoint_holds_every_processs_states_and_rank_0s_as_before():
    state = saved_by(world=2)
    assert len(state["ranks"]) == 2 and state["ranks"][1]["totals"] == [1.0, 3.0, 8.0]
    assert state["rng"] is state["ranks"][0]["rng"]  # readable by earlier stbp versions
    assert state["partial"]["totals"] == [0.0, 3.0, 8.0]
    assert "ranks" not in saved_by(world=1)  # one process: the checkpoint as it was


def test_each_process_restores_its_own_states():
    state = saved_by(world=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mine = [own_rank_states(state, Context(rank, 2), PATH) for rank in (0, 1)]
    assert mine[0] is state["ranks"][0] and mine[1] is state["ranks"][1]


def test_a_single_process_checkpoint_reads_as_rank_0s_entry():
    state = saved_by(world=1)
    mine = own_rank_states(state, Context(0, 1), PATH)
    assert mine["rng"] is state["rng"] and mine["totals"] == state["partial"]["totals"]
    assert mine["generator"] is state["partial"]["generator"]


def test_another_number_of_processes_warns_and_new_ranks_start_fresh():
    state = saved_by(world=2)
    with pytest.warns(ck.RNGStateWarning, match="saved by 2 process.* resumes with 3: ranks 0..1"):
        assert own_rank_states(state, Context(0, 3), PATH) is state["ranks"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only rank 0 says it
        assert own_rank_states(state, Context(2, 3), PATH) is None
    with pytest.warns(ck.RNGStateWarning, match="states of ranks 1..1 are left out"):
        assert own_rank_states(state, Context(0, 1), PATH) is state["ranks"][0]


def test_restore_sets_this_processs_rng_generator_and_totals(monkeypatch):
    state = {**saved_by(world=2), "config": {}, "history": [], "best": {"acc": -1.0, "epoch": 0},
             "seconds": 0.0}  # fmt: skip
    monkeypatch.setattr(ck, "check_same_network", lambda *args: None)
    monkeypatch.setattr(ck, "load_weights", lambda *args: None)
    trainer = types.SimpleNamespace(ctx=Context(1, 2), model=types.SimpleNamespace(build_args={}),
                                    optimizer=types.SimpleNamespace(load_state_dict=id),
                                    schedule=types.SimpleNamespace(load_state_dict=id))  # fmt: skip
    cpu_states(seed=9)
    runs.restore(trainer, state, PATH)
    p = trainer.progress
    assert (p.epoch, p.step, p.totals) == (1, 3, [1.0, 3.0, 8.0])
    assert torch.equal(p.generator, state["ranks"][1]["generator"])
    cpu_states(seed=1)
    expected = draws()
    runs.restore(trainer, state, PATH)
    assert draws() == expected


# -------------------------------------------------- the time-based save under torchrun


def checkpointer(ctx: Context, minutes: float = 1.0):
    settings = types.SimpleNamespace(run=types.SimpleNamespace(
        checkpoint_every=0, checkpoint_minutes=minutes, epochs=1))  # fmt: skip
    trainer = types.SimpleNamespace(settings=settings, ctx=ctx, progress=runs.Progress(),
                                    steps_per_epoch=100)  # fmt: skip
    hook = runs.Checkpointer(trainer, None, {})
    hook.saved_at -= 3600  # this process's clock says: an hour since the last save
    return hook


def test_under_torchrun_rank_0s_clock_decides_at_checked_steps_only(monkeypatch):
    asked = []
    monkeypatch.setattr(dd, "agree", lambda ctx, flag: asked.append(flag) or False)
    hook = checkpointer(Context(1, 2))
    assert not hook.due(CHECK_EVERY - 3) and asked == []  # no collective between checks
    assert not hook.due(CHECK_EVERY) and not hook.due(CHECK_EVERY)  # rank 0 says: not yet
    assert asked == [True]  # one broadcast for the step, although asked twice
    monkeypatch.setattr(dd, "agree", lambda ctx, flag: True)
    assert hook.due(2 * CHECK_EVERY)


def test_one_process_saves_when_its_own_clock_says_so(monkeypatch):
    monkeypatch.setattr(dd, "agree", lambda ctx, flag: pytest.fail("no collective"))
    assert checkpointer(Context(0, 1)).due(3)
    assert not checkpointer(Context(0, 1), minutes=0.0).due(3)
